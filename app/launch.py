"""The `aha` command: with arguments it is the engine's CLI; without, it opens the desktop window.

Qt is imported only when the window opens, so `aha chat …` and `aha --help` start fast and work
without a display.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args:
        from engine.cli import main as cli_main

        return cli_main(args)
    from app.main import run

    return run()


if __name__ == "__main__":
    sys.exit(main())
