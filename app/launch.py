"""The `aha` command: with arguments it is the engine's CLI; without, it opens the desktop window.

Qt is imported only when the window opens, so `aha chat …` and `aha --help` start fast and work
without a display. `aha --smoke MODEL.gguf "QUESTION"` opens the window, chats once and exits
(app.main.smoke: the check that an install, the standalone bundle above all, works).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--smoke"]:               # the window, one chat with a model, its reply printed: exit
        from app.main import smoke

        return smoke(args[1:])
    if args:
        from engine.cli import main as cli_main

        return cli_main(args)
    from app.main import run

    return run()


if __name__ == "__main__":
    sys.exit(main())
