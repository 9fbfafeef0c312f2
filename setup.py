"""The package list, the one thing pyproject.toml cannot say: engine and app as found (namespace packages
too, like app/eval), plus assets/ installed as the package `aha_assets`.

assets/ stays at the top of the checkout; in a wheel it is `aha_assets`, read with importlib.resources
(engine.assets), so an installed Aha carries its icons and pipeline files. Everything else is in pyproject.toml.
"""

from setuptools import find_namespace_packages, setup

setup(
    packages=[*find_namespace_packages(include=["engine", "engine.*", "app", "app.*"]), "aha_assets"],
    package_dir={"aha_assets": "assets"},
    package_data={"aha_assets": ["*.svg", "*.md", "icons/*.png", "pipelines/*.toml"]},
)
