"""`aha ARGS` in a child process with its stderr on a pseudo-terminal (where the progress bar and the run's
lines are drawn) and its stdout on a pipe. POSIX only: callers carry `platforms.pseudo_terminal`."""

from __future__ import annotations

import os
import select
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_on_a_terminal(*args: str, silence_s: float = 300) -> tuple[int, str, str]:
    """(exit code, stdout, what the terminal received, "\\r\\n" as "\\n"); fails when the child writes nothing
    to the terminal for `silence_s`."""
    import pty

    master, slave = pty.openpty()
    child = subprocess.Popen([sys.executable, "-m", "engine.cli", *args], cwd=REPO, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    received = bytearray()
    try:
        while True:
            ready, _, _ = select.select([master], [], [], silence_s)
            assert ready, f"the child wrote nothing for {silence_s:.0f} s"
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: every writer of the terminal is gone
                break
            if not chunk:
                break
            received += chunk
        stdout = child.stdout.read().decode()
        child.wait(timeout=60)
    finally:
        os.close(master)
        if child.poll() is None:
            child.kill()
    return child.returncode, stdout, received.decode().replace("\r\n", "\n")
