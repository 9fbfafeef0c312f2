"""Writing user-facing files safely: temp file beside the target, renamed into place; free-space checks.

Nothing a user made is lost: an existing output is never replaced without `force`, and a failed or
cancelled write leaves no partial file behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from engine.errors import AhaError, Cancelled
from engine.jobs import OnEvent, Progress, format_bytes, ignore

HASH_CHUNK = 1 << 20  # 1 MiB


def sha256_file(path: Path, on_event: OnEvent = ignore, *, stage: str = "sha256", cancel=None,
                cancelled_message: str = "cancelled while hashing") -> str:
    """The file's sha256 as hex, read in 1 MiB chunks, with `progress` events (bytes) for `stage`."""
    path = Path(path)
    progress = Progress(on_event, stage, path.stat().st_size, unit="B")
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(HASH_CHUNK):
            if cancel is not None and cancel.cancelled:
                raise Cancelled(cancelled_message)
            digest.update(chunk)
            progress.advance(len(chunk))
    progress.update(progress.done, force=True)
    return digest.hexdigest()


def check_output(path: Path, force: bool) -> None:
    """Refuse to overwrite an existing file unless forced; make sure the folder exists."""
    if path.exists() and not force:
        raise AhaError(f"{path} already exists; pass --force to overwrite it or choose another output path.")
    if path.exists() and path.is_dir():
        raise AhaError(f"{path} is a folder; give a file name ending in .gguf.")
    path.parent.mkdir(parents=True, exist_ok=True)


def check_free_space(folder: Path, needed_bytes: int, margin_bytes: int = 64 << 20) -> None:
    """Raise when the disk holding `folder` has less than needed + margin free."""
    free = shutil.disk_usage(folder).free
    if free < needed_bytes + margin_bytes:
        raise AhaError(f"not enough disk space in {folder}: need about "
                       f"{format_bytes(needed_bytes + margin_bytes)}, {format_bytes(free)} free; free some space or write elsewhere.")


@contextlib.contextmanager
def atomic_output(path: Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    check_output(path, force)
    temp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        yield temp
        os.replace(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


def atomic_write_text(path: Path, text: str) -> None:
    """Write a small text file atomically (overwrites: for files Aha owns, such as a Modelfile)."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        with open(temp, "w", encoding="utf-8", newline="\n") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
