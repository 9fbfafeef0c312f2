"""Where Aha keeps what a user makes: one data directory (platformdirs' user data dir, or $AHA_HOME).

Layout: aha.db (SQLite), runs/<run-id>/, exports/, models/. Knows nothing of what goes inside.
"""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    """The data directory, created on first use. `AHA_HOME` overrides the platform default."""
    override = os.environ.get("AHA_HOME")
    if override:
        path = Path(override).expanduser()
    else:
        import platformdirs

        path = Path(platformdirs.user_data_dir("aha", appauthor=False))
    path.mkdir(parents=True, exist_ok=True)
    return path


def subdir(name: str) -> Path:
    """A named folder under the data directory ("runs", "exports", "models"), created on first use."""
    path = data_dir() / name
    path.mkdir(parents=True, exist_ok=True)
    return path
