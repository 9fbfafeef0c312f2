"""The wheel is complete: `python -m build` makes an sdist and, from it, a wheel that carries every module and
every data file (assets/ as the package aha_assets); installed in a fresh virtual environment outside the
checkout (base dependencies only, no train extra), `aha --help`, `aha models add/list`, `aha serve` and the window
(offscreen, its icon loaded from the installed package, no Qt warning) work from there.

The install reuses pip's cache: the llama-cpp-python wheel `make` built for .venv (a machine whose pip cache
lacks it builds it from source here, for minutes). About a minute in all, most of it pip installing PySide6,
matplotlib and numpy into the new environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from tests.support.children import reap

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

# Runs in the installed environment: opens the window through `aha`'s own entry point (its event loop starts
# with `check` queued), checks its icon, waits for the welcome screen's model search to end, closes it, and
# prints what it saw as JSON.
WINDOW = r"""
import json, sys
from pathlib import Path
from app.qt import QtCore, QtWidgets
import app, app.launch, app.main

problems = []
def on_message(mode, context, message):
    if mode not in (QtCore.QtMsgType.QtDebugMsg, QtCore.QtMsgType.QtInfoMsg) and "propagateSizeHints" not in message:
        problems.append(message)
QtCore.qInstallMessageHandler(on_message)
seen = {}

def check(tries=0):
    qapp = QtWidgets.QApplication.instance()
    window = next(w for w in qapp.topLevelWidgets() if isinstance(w, app.main.MainWindow))
    if window.empty.found_label.text().startswith("Looking") and tries < 200:
        QtCore.QTimer.singleShot(50, lambda: check(tries + 1))
        return
    icon = window.windowIcon()
    seen.update(icon_file=str(app.main.ICON), icon_pixmap=not icon.pixmap(64, 64).isNull(),
                app_icon_pixmap=not qapp.windowIcon().pixmap(64, 64).isNull(), visible=window.isVisible(),
                found=window.empty.found_label.text())
    window.close()
    qapp.quit()

event_loop = QtWidgets.QApplication.exec
def exec_then_check(*_):            # called as app.exec(), a static method set on the class
    QtCore.QTimer.singleShot(0, check)
    return event_loop()
QtWidgets.QApplication.exec = exec_then_check
code = app.launch.main([])
seen.update(code=code, app=str(Path(app.__file__).parent), warnings=problems)
print(json.dumps(seen))
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """The sdist and the wheel `python -m build` makes (the wheel is built from the sdist)."""
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {"wheel": next(out.glob("*.whl")), "sdist": next(out.glob("*.tar.gz"))}


@pytest.fixture(scope="module")
def installed(built, tmp_path_factory) -> Path:
    """A fresh virtual environment, outside the checkout, with the wheel and its base dependencies."""
    env = tmp_path_factory.mktemp("venv") / "env"
    venv.create(env, with_pip=True)
    result = subprocess.run([str(env / "bin" / "python"), "-m", "pip", "install", "-q", "--no-compile",
                             "--disable-pip-version-check", str(built["wheel"])], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return env


def clean_env(home: Path) -> dict[str, str]:
    """The environment of a user with nothing of this checkout: no PYTHONPATH, an empty home and data dir."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(HOME=str(home), AHA_HOME=str(home / "aha"), XDG_DATA_HOME=str(home / "share"),
               XDG_CONFIG_HOME=str(home / "config"), OLLAMA_MODELS=str(home / "no-ollama"),
               HF_HUB_CACHE=str(home / "hf"), HF_HUB_OFFLINE="1", QT_QPA_PLATFORM="offscreen")
    return env


def run_in(env_dir: Path, args: list[str], home: Path) -> subprocess.CompletedProcess:
    home.mkdir(parents=True, exist_ok=True)
    return subprocess.run(args, capture_output=True, text=True, cwd=home, env=clean_env(home), timeout=120)


def test_the_wheel_carries_every_module_and_data_file(built):
    names = set(zipfile.ZipFile(built["wheel"]).namelist())
    modules = {path.relative_to(ROOT).as_posix() for folder in ("app", "engine") for path in (ROOT / folder).rglob("*.py")}
    data = {"aha_assets/" + path.relative_to(ROOT / "assets").as_posix() for path in (ROOT / "assets").rglob("*")
            if path.is_file() and "__pycache__" not in path.parts}
    assert {"aha_assets/aha.svg", "aha_assets/check.svg", "aha_assets/pipelines/r1.toml"} <= data
    assert modules and modules <= names, sorted(modules - names)
    assert data <= names, sorted(data - names)
    assert not [name for name in names if name.startswith(("tests/", "assets/"))]


def test_aha_runs_from_a_fresh_environment(installed, gguf_file, tmp_path):
    aha = str(installed / "bin" / "aha")
    home = tmp_path / "user"
    usage = run_in(installed, [aha, "--help"], home)
    assert usage.returncode == 0 and usage.stdout.startswith("usage: aha"), usage.stderr
    assert not run_in(installed, [aha, "models", "list"], home).stdout   # an empty library lists nothing
    model = gguf_file("qwen2", "f16")
    added = run_in(installed, [aha, "models", "add", str(model)], home)
    assert added.returncode == 0, added.stderr
    listed = run_in(installed, [aha, "models", "list"], home)
    assert listed.returncode == 0 and model.stem in listed.stdout and "qwen2" in listed.stdout, listed.stderr
    pipelines = run_in(installed, [str(installed / "bin" / "python"), "-c",
                                   "from engine.pipeline.spec import bundled_dir, bundled_names; "
                                   "print(bundled_dir()); print(*bundled_names())"], home)
    assert pipelines.stdout.split("\n")[1] == "r1 r1-mini", pipelines.stderr
    assert Path(pipelines.stdout.split("\n")[0]).is_relative_to(installed)


def test_aha_serve_runs_from_a_fresh_environment(installed, gguf_file, tmp_path):
    """The base dependencies carry the server's ASGI stack (starlette, uvicorn): `aha serve` answers there."""
    import urllib.request

    home = tmp_path / "user"
    home.mkdir(parents=True)
    child = subprocess.Popen([str(installed / "bin" / "aha"), "serve", "--models", str(gguf_file("qwen2", "f16")),
                              "--port", "0", "--events", "jsonl"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=home, env=clean_env(home))
    try:
        start, ready = (json.loads(child.stdout.readline()) for _ in range(2))
        assert (start["kind"], ready["event"]) == ("serve", "ready"), child.stderr.read()
        with urllib.request.urlopen(f"{ready['url']}/models", timeout=30) as response:
            assert [model["id"] for model in json.loads(response.read())["data"]] == ["qwen2-f16"]
        child.stdin.write("cancel\n")
        child.stdin.flush()
        assert child.wait(30) == 130
    finally:
        reap(child)


def test_the_window_opens_from_a_fresh_environment_with_its_icon(installed, tmp_path):
    result = run_in(installed, [str(installed / "bin" / "python"), "-c", WINDOW], tmp_path / "user")
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["code"] == 0 and seen["visible"] and seen["warnings"] == [], seen
    assert Path(seen["app"]).is_relative_to(installed) and not Path(seen["app"]).is_relative_to(ROOT)
    assert Path(seen["icon_file"]).is_relative_to(installed) and Path(seen["icon_file"]).is_file()
    assert seen["icon_pixmap"] and seen["app_icon_pixmap"], seen
    assert seen["found"] == "No models found in Ollama, LM Studio or the Hugging Face cache."


def test_export_runs_in_the_environment_without_torch(installed, checkpoint, tmp_path):
    """The base install has no torch or transformers, and `aha export` (an HF checkpoint, and with a LoRA
    adapter merged) runs there, writing the bytes this checkout's export writes."""
    from engine.export.pipeline import export
    from tests import tiny_models

    python = str(installed / "bin" / "python")
    home = tmp_path / "user"
    probe = run_in(installed, [python, "-c", "import importlib.util as u; print(u.find_spec('torch'), "
                                             "u.find_spec('transformers'))"], home)
    assert probe.stdout.split() == ["None", "None"], probe.stdout + probe.stderr
    src = checkpoint("llama")
    adapter = tiny_models.make_lora_adapter(src, tmp_path / "adapter")
    for name, extra in (("plain", []), ("merged", ["--adapter", str(adapter)])):
        out = tmp_path / f"{name}.gguf"
        result = run_in(installed, [str(installed / "bin" / "aha"), "export", str(src), "-o", str(out),
                                    "--type", "f16", *extra], home)
        assert result.returncode == 0, result.stderr[-2000:]
        here = export(src, tmp_path / f"{name}-here.gguf", "f16", adapter=adapter if extra else None)["gguf"]
        assert out.read_bytes() == Path(here).read_bytes(), name
