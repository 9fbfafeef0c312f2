"""Aha's data files: icons and pipeline files, `assets/` in a checkout and the package `aha_assets` once
installed (setup.py maps one to the other), found with importlib.resources so that a wheel install reads the
same files as a source checkout. Knows nothing of what the files hold.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

PACKAGE = "aha_assets"


def assets_dir() -> Path:
    """The folder of Aha's data files: the installed package aha_assets (a wheel, or an editable install),
    else assets/ beside the source tree, for a checkout whose editable install predates aha_assets (`make`
    reinstalls it). Wheels install unzipped, so the package is a folder on disk."""
    try:
        root = resources.files(PACKAGE)
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[1] / "assets"
    return Path(str(root))


def asset_path(*parts: str) -> Path:
    """One data file, e.g. asset_path("aha.svg") or asset_path("pipelines", "r1.toml")."""
    return assets_dir().joinpath(*parts)
