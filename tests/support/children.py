"""Child processes the tests start: whatever a test's assertions did, the child is gone and its pipes closed."""

from __future__ import annotations

import subprocess


def reap(child: subprocess.Popen) -> None:
    """Kill the child if it still runs, wait for it, close its pipes."""
    if child.poll() is None:
        child.kill()
        child.wait()
    for stream in (child.stdin, child.stdout, child.stderr):
        if stream is not None:
            stream.close()
