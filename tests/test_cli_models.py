"""`aha models` end to end: add, list, info, remove (the file stays), a name that matches nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys


def test_models_add_list_info_remove(gguf_file, tmp_path):
    env = {**os.environ, "AHA_HOME": str(tmp_path / "home")}
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(gguf_file("qwen2", "q8_0"), folder / "tiny-r1.gguf")

    def aha(*args):
        return subprocess.run([sys.executable, "-m", "engine.cli", "models", *args], capture_output=True,
                              text=True, env=env)

    assert "added   tiny-r1" in aha("add", str(folder)).stdout
    listing = aha("list").stdout
    assert "tiny-r1" in listing and "qwen2" in listing and "Q8_0" in listing
    info = aha("info", "tiny-r1").stdout
    assert "reasoning       yes" in info and "architecture    qwen2" in info
    assert "removed tiny-r1" in aha("remove", "tiny-r1").stdout
    assert (folder / "tiny-r1.gguf").exists()
    missing = aha("info", "tiny-r1")
    assert missing.returncode == 2 and missing.stderr.startswith("aha: error: no model called")
