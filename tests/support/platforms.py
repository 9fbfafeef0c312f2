"""Skip markers for tests that need what only some platforms have, each with the reason it prints.

The suite runs whole on Linux (CI) and macOS; on Windows these are skipped, and `pytest -rs` lists why.
"""

from __future__ import annotations

import os
import sys
import tempfile

import pytest


def _can_symlink() -> bool:
    """Windows creates symlinks only with Developer Mode or as administrator."""
    with tempfile.TemporaryDirectory() as folder:
        try:
            os.symlink(folder, os.path.join(folder, "link"))
        except (OSError, NotImplementedError):
            return False
    return True


posix_signals = pytest.mark.skipif(
    sys.platform == "win32", reason="sends SIGKILL/SIGTERM to a process: POSIX signals, which Windows does not have")
symlinks = pytest.mark.skipif(
    not _can_symlink(), reason="creates symlinks (as the Hugging Face cache does): this Windows account cannot")
mpi_on_linux = pytest.mark.skipif(
    not sys.platform.startswith("linux"),
    reason="accelerate launch --cpu starts its processes through mpirun; the dev extra installs MPICH on Linux only")
pseudo_terminal = pytest.mark.skipif(
    sys.platform == "win32", reason="runs `aha` on a pseudo-terminal (the pty module): POSIX only")
