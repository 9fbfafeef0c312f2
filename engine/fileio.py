"""Writing user-facing files safely: temp file beside the target, renamed into place; free-space checks.

Nothing a user made is lost: an existing output is never replaced without `force`, and a failed or
cancelled write leaves no partial file behind.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
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
    """Refuse, before any work, an output that is a folder, an existing file without `force`, or a place
    that cannot be written (under a file, a folder without write permission). Creates nothing: the
    folder is made when the file is written (atomic_output), so a job refused later leaves no folder."""
    path = Path(path)
    if path.is_dir():
        raise AhaError(f"{path} is a folder; give the path of a file to write (inside it or elsewhere).")
    if path.exists() and not force:
        raise AhaError(f"{path} already exists; pass --force to overwrite it or choose another output path.")
    check_writable_folder(path.parent)


def existing_ancestor(folder: Path) -> Path:
    """The folder itself, or the nearest of its parents that exists (what a mkdir would create under)."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def check_writable_folder(folder: Path) -> None:
    """One line when files cannot be made in `folder` (or where it would be created): a file in its
    place, no permission, a read-only disk. Probes with a file created and removed at once."""
    base = existing_ancestor(folder)
    if not base.is_dir():
        raise AhaError(f"{base} is a file, not a folder, so nothing can be written under it; choose another "
                       "output path.")
    try:
        handle, probe = tempfile.mkstemp(prefix=".aha-probe-", dir=base)
    except OSError as error:
        raise AhaError(f"cannot write in {base} ({error.strerror or error}); choose another output path or "
                       "fix the folder's permissions.") from None
    os.close(handle)
    with contextlib.suppress(OSError):
        os.unlink(probe)


def make_folder(folder: Path) -> Path:
    """mkdir -p, with one line instead of an OSError."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise AhaError(f"cannot create the folder {folder} ({error.strerror or error}); choose another "
                       "output path.") from None
    return folder


def check_free_space(folder: Path, needed_bytes: int, margin_bytes: int = 64 << 20) -> None:
    """Raise when the disk holding `folder` (or the parent it would be created in) has less than needed +
    margin free."""
    free = shutil.disk_usage(existing_ancestor(folder)).free
    if free < needed_bytes + margin_bytes:
        raise AhaError(f"not enough disk space in {folder}: need about "
                       f"{format_bytes(needed_bytes + margin_bytes)}, {format_bytes(free)} free; free some space or write elsewhere.")


# errno → what a failed write means for the user; other OSErrors are not the disk's and stay what they are.
DISK_ERRORS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
               errno.EROFS: "the disk is read-only", errno.EIO: "the disk reported an input/output error"}


@contextlib.contextmanager
def disk_errors(what: Path | str) -> Iterator[None]:
    """A write that fails for want of disk (full, over quota, read-only, I/O error) as one line naming
    `what`; the free-space checks catch most of it before, a disk filled meanwhile is caught here."""
    try:
        yield
    except OSError as error:
        if error.errno not in DISK_ERRORS:
            raise
        raise AhaError(f"cannot write {what}: {DISK_ERRORS[error.errno]}; free some space or write "
                       "elsewhere.") from error


@contextlib.contextmanager
def atomic_output(path: Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    check_output(path, force)
    created = missing_folders(path.parent)
    make_folder(path.parent)
    temp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        with disk_errors(path):
            yield temp
            os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        for folder in reversed(created):  # the folders made for this file, innermost first, if still empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


def missing_folders(folder: Path) -> list[Path]:
    """The folders a mkdir -p of `folder` would create, outermost first."""
    folder, missing = Path(folder).absolute(), []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing[::-1]


def atomic_write_text(path: Path, text: str) -> None:
    """Write a small text file atomically (overwrites: for files Aha owns, such as a Modelfile)."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        with disk_errors(path), open(temp, "w", encoding="utf-8", newline="\n") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
