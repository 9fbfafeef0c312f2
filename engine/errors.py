"""The one exception type users see: a single line that names the problem and what to do.

The CLI prints `aha: error: <message>` and exits non-zero; the GUI shows the same line.
Anything else that escapes is a bug, reported with a traceback.
"""


class AhaError(Exception):
    """A user-facing error. The message is one line: the problem, then what to do about it."""

    def __init__(self, message: str):
        super().__init__(" ".join(message.split()))


class Cancelled(AhaError):
    """The user cancelled the job (Ctrl+C, SIGTERM, `cancel` on stdin) and it stopped at a safe point: the
    message says what was kept. Jobs end `done{status: "cancelled"}`, exit 130, not an error."""
