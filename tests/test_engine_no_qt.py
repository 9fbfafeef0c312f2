"""`engine` is GUI-free: every engine module imports with PySide6 made unimportable."""

import subprocess
import sys

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
print(len(names), "modules;", "heavy:", heavy)
"""


def test_every_engine_module_imports_without_pyside6():
    result = subprocess.run([sys.executable, "-c", BLOCK_AND_IMPORT], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    count = int(result.stdout.split()[0])
    assert count >= 8
    assert "heavy: []" in result.stdout  # heavy libraries are imported lazily, inside functions
