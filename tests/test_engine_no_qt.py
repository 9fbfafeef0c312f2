"""`engine` is GUI-free: every engine module imports with PySide6 made unimportable."""

import subprocess
import sys
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[1] / "engine"
BLOCK_AND_IMPORT = r"""
import importlib, importlib.abc, pkgutil, sys

class BlockQt(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "PySide6" or name.startswith("PySide6.") or name.startswith("shiboken6"):
            raise ImportError(f"{name} is blocked in this test")
        return None

sys.meta_path.insert(0, BlockQt())
import engine
names = [m.name for m in pkgutil.walk_packages(engine.__path__, "engine.")]
for name in names:
    importlib.import_module(name)
assert not any(m.startswith("PySide6") for m in sys.modules)
heavy = [m for m in ("torch", "transformers", "peft", "bitsandbytes", "llama_cpp") if m in sys.modules]
print(" ".join(names))
print("heavy:", heavy)
"""


def engine_modules() -> set[str]:
    """Every module under engine/ on disk, as a dotted name (packages by their __init__)."""
    names = set()
    for path in ENGINE.rglob("*.py"):
        parts = path.relative_to(ENGINE.parent).with_suffix("").parts
        names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names - {"engine"}


def test_every_engine_module_imports_without_pyside6():
    result = subprocess.run([sys.executable, "-c", BLOCK_AND_IMPORT], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    imported, heavy = result.stdout.splitlines()
    assert set(imported.split()) == engine_modules()  # all of them, none skipped
    assert heavy == "heavy: []"  # heavy libraries are imported lazily, inside functions
