"""`aha` with one function slowed down, so that a test can cancel a job at a point of its choosing while it
runs: `python -m tests.support.slowed_cli MODULE:ATTR SECONDS ARGS…` wraps MODULE.ATTR (a function, or a
method as Class.method) to sleep SECONDS before each call, then runs engine.cli.main(ARGS). Only the
timing changes; every line of the job's code runs as under `aha`.
"""

from __future__ import annotations

import functools
import importlib
import sys
import time


def slowed(function, seconds: float):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        time.sleep(seconds)
        return function(*args, **kwargs)

    return wrapper


def main(argv: list[str]) -> int:
    target, seconds, *args = argv
    module_name, attribute = target.split(":")
    owner = importlib.import_module(module_name)
    *parents, name = attribute.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    setattr(owner, name, slowed(getattr(owner, name), float(seconds)))
    from engine.cli import main as aha

    return aha(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
