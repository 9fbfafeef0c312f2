"""Downloads from the Hugging Face Hub: one GGUF file, pinned to a commit, resumable, verified by sha256, then
added to the library. huggingface_hub is imported inside the functions that use it, never at import time.
Knows nothing about GGUF contents beyond the header check the library does when adding."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import urllib.parse
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from engine.errors import AhaError, Cancelled
from engine.fileio import check_free_space, sha256_file
from engine.jobs import CancelToken, OnEvent, Progress, format_bytes, ignore, make_event
from engine.models.library import Library
from engine.paths import subdir

# The model the app offers to download on first run.
R1_DEFAULT = ("unsloth/DeepSeek-R1-Distill-Qwen-1.5B-GGUF", "DeepSeek-R1-Distill-Qwen-1.5B-Q4_K_M.gguf")

_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class _Remote(NamedTuple):
    url: str                         # the resolve URL pinned to `commit`
    commit: str
    size: int | None
    sha256: str | None               # the LFS object id; None for a small (non-LFS) file


class _Cancelled(Exception):
    """Raised from inside huggingface_hub's download loop when the cancel token is set."""


class _QuietBar:
    """huggingface_hub draws a tqdm bar unless handed a class: progress goes out as events instead."""

    def __init__(self, *args: Any, **kwargs: Any):
        pass

    def __enter__(self) -> _QuietBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def update(self, n: float = 1) -> None:
        pass


class _ProgressFile:
    """The partial file as huggingface_hub's http_get sees it: counts bytes into `progress`, stops on cancel."""

    def __init__(self, raw: BinaryIO, progress: Progress, cancel: CancelToken | None):
        self.raw, self.progress, self.cancel = raw, progress, cancel

    def write(self, chunk: bytes) -> int:
        if self.cancel is not None and self.cancel.cancelled:
            raise _Cancelled
        written = self.raw.write(chunk)
        self.progress.update(self.raw.tell())
        return written

    def tell(self) -> int:
        return self.raw.tell()

    def seek(self, *args: int) -> int:
        return self.raw.seek(*args)

    def truncate(self, *args: int) -> int:       # http_get restarts from 0 when a server ignores Range
        result = self.raw.truncate(*args)
        self.progress.update(self.raw.tell(), force=True)
        return result


def _network_errors() -> tuple[type[BaseException], ...]:
    """What a failed request raises: OSError (huggingface_hub's HTTP errors are OSErrors) and the transport's."""
    errors: tuple[type[BaseException], ...] = (OSError,)
    with contextlib.suppress(ImportError):
        import httpx2

        errors += (httpx2.HTTPError, httpx2.InvalidURL)
    return errors


def _unreachable_errors() -> tuple[type[BaseException], ...]:
    """What a request raises when no answer came at all: no network, no DNS, refused, timed out."""
    errors: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError, socket.gaierror)
    with contextlib.suppress(ImportError):
        import httpx2

        errors += (httpx2.TransportError,)
    return errors


def _network_failure(label: str, exc: BaseException, endpoint: str | None) -> AhaError:
    """One line for a failed request; when the Hub cannot be reached at all, what an offline user can do."""
    if isinstance(exc, _unreachable_errors()):
        return AhaError(f"cannot download {label}: cannot reach {endpoint or 'the Hugging Face Hub'} "
                        f"({_reason(exc)}); check the connection or set HF_ENDPOINT. Offline, open a GGUF file you "
                        "already have or add a folder of models, and download this one when online.")
    return AhaError(f"cannot download {label}: {_reason(exc)}; check the connection or set HF_ENDPOINT.")


def _reason(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0].rstrip(".") if lines else exc.__class__.__name__


def _download_target(repo_id: str, filename: str, dest: Path | str | None) -> Path:
    """Where a pull lands: dest/<filename>, by default data_dir()/models/<org>/<repo>/<filename>."""
    if not _REPO_ID.fullmatch(repo_id) or ".." in repo_id:
        raise AhaError(f"{repo_id!r} is not a Hugging Face repository id (like unsloth/DeepSeek-R1-Distill-Qwen-1.5B-GGUF).")
    parts = filename.split("/")
    if filename.startswith("/") or "\\" in filename or any(part in ("", ".", "..") for part in parts):
        raise AhaError(f"{filename!r} is not a file name inside a repository.")
    if not filename.lower().endswith(".gguf"):
        raise AhaError(f"{filename} is not a .gguf file; `aha models pull` downloads GGUF models.")
    folder = Path(dest).expanduser() if dest is not None else subdir("models").joinpath(*repo_id.split("/"))
    return folder.joinpath(*parts)


def hub_endpoint() -> str | None:
    """HF_ENDPOINT (read now, not at import), checked: huggingface_hub reads it when it is imported, and a
    malformed one there is a ValueError and a line of its own on stderr."""
    endpoint = os.environ.get("HF_ENDPOINT", "").rstrip("/") or None
    if endpoint is None:
        return None
    try:
        parts = urllib.parse.urlsplit(endpoint)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as error:
        raise AhaError(f"HF_ENDPOINT {endpoint!r} is not a URL ({error}); set it like https://huggingface.co "
                       "or unset it.") from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise AhaError(f"HF_ENDPOINT {endpoint!r} is not an http(s) URL; set it like https://huggingface.co "
                       "or unset it.")
    return endpoint


def _remote_file(repo_id: str, filename: str, revision: str | None) -> _Remote:
    """HEAD the file's resolve URL: commit, size and sha256; Hub errors become one line."""
    endpoint = hub_endpoint()
    from huggingface_hub import errors as hub
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    label = f"{repo_id}/{filename}"
    try:
        url = hf_hub_url(repo_id, filename, revision=revision, endpoint=endpoint)
        meta = get_hf_file_metadata(url, endpoint=endpoint)
    except hub.GatedRepoError:
        raise AhaError(f"cannot download {label}: {repo_id} is gated; accept its terms on the Hub, then log in "
                       "with `hf auth login`.") from None
    except hub.RepositoryNotFoundError:
        raise AhaError(f"cannot download {label}: no repository {repo_id} on the Hub (or it is private: log in "
                       "with `hf auth login`).") from None
    except hub.RevisionNotFoundError:
        raise AhaError(f"cannot download {label}: {repo_id} has no revision {revision!r}.") from None
    except hub.EntryNotFoundError:
        raise AhaError(f"cannot download {label}: {repo_id} has no file {filename}; check the file name on "
                       "the repository's \"Files\" tab.") from None
    except hub.HFValidationError as exc:
        raise AhaError(f"cannot download {label}: {_reason(exc)}.") from None
    except _network_errors() as exc:
        raise _network_failure(label, exc, endpoint) from None
    if not meta.commit_hash:
        raise AhaError(f"cannot download {label}: {endpoint or 'the Hub'} did not answer like the Hugging Face "
                       "Hub (no X-Repo-Commit header); check the connection or set HF_ENDPOINT.")
    sha256 = meta.etag if meta.etag and _SHA256.fullmatch(meta.etag) else None
    pinned = hf_hub_url(repo_id, filename, revision=meta.commit_hash, endpoint=endpoint)
    return _Remote(pinned, meta.commit_hash, meta.size, sha256)


def _sha256(path: Path, on_event: OnEvent, cancel: CancelToken | None, label: str) -> str:
    return sha256_file(path, on_event, stage="verify", cancel=cancel,
                       cancelled_message=f"download of {label} cancelled while verifying; the same pull finishes it.")


def _mismatch(path: Path, remote: _Remote, on_event: OnEvent, cancel: CancelToken | None, label: str) -> str | None:
    """How the file differs from what the Hub serves (sha256 when the Hub lists one, else the size), or None."""
    size = path.stat().st_size
    if remote.size is not None and size != remote.size:
        return f"{size} bytes where the Hub lists {remote.size}"
    if remote.sha256 is None:
        return None
    actual = _sha256(path, on_event, cancel, label)
    return None if actual == remote.sha256 else f"sha256 {actual[:16]}… where the Hub lists {remote.sha256[:16]}…"


def _fetch(remote: _Remote, partial: Path, on_event: OnEvent, cancel: CancelToken | None, label: str) -> None:
    """GET the file into `partial`, continuing what is already there with a Range request."""
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    resume = partial.stat().st_size if partial.exists() else 0
    if remote.size is not None and resume > remote.size:
        partial.unlink()
        resume = 0
    if resume:
        on_event(make_event("log", message=f"resuming {label} at {format_bytes(resume)}"))
    partial.parent.mkdir(parents=True, exist_ok=True)
    check_free_space(partial.parent, (remote.size or 0) - resume)
    progress = Progress(on_event, "download", remote.size or 0, unit="B")
    with partial.open("ab") as raw:
        progress.update(raw.tell(), force=True)
        try:
            http_get(remote.url, _ProgressFile(raw, progress, cancel), resume_size=resume,
                     headers=build_hf_headers(), expected_size=remote.size,
                     displayed_filename=partial.name, tqdm_class=_QuietBar)
        except _Cancelled:
            raise Cancelled(f"download of {label} cancelled at {format_bytes(raw.tell())}; the same pull resumes "
                           "it.") from None
        except _network_errors() as exc:
            raise _network_failure(label, exc, os.environ.get("HF_ENDPOINT", "").rstrip("/") or None) from None
    progress.update(progress.done, force=True)


def pull(repo_id: str, filename: str, *, revision: str | None = None, dest: Path | str | None = None,
         on_event: OnEvent = ignore, cancel: CancelToken | None = None, library: Library | None = None) -> Path:
    """Download one GGUF file from the Hugging Face Hub, verify it and add it to the library; returns its path.

    1. HEAD its resolve URL (huggingface_hub.get_hf_file_metadata): commit, size, sha256 (the LFS etag).
    2. GET it, pinned to that commit, into `.<file>.<sha256>.incomplete` beside the target; a partial left by a
       cancelled or killed pull continues with a Range request, and so does a connection dropped mid-file
       (huggingface_hub's http_get retries). Progress events: stage "download", then "verify", in bytes.
    3. Hash it: on a mismatch the partial is deleted and nothing is added; else it is renamed into place.
    Cancel raises AhaError and keeps the partial. Without `dest`, files land in data_dir()/models/<org>/<repo>/.
    """
    label = f"{repo_id}/{filename}"
    target = _download_target(repo_id, filename, dest)
    if cancel is not None and cancel.cancelled:
        raise Cancelled(f"download of {label} cancelled before it started.")
    remote = _remote_file(repo_id, filename, revision)
    if target.exists():
        if _mismatch(target, remote, on_event, cancel, label):
            raise AhaError(f"{target} already exists and differs from {label} at {remote.commit[:12]}; move it "
                           "away or pass another destination.")
        on_event(make_event("log", message=f"{target.name} is already downloaded"))
    else:
        partial = target.with_name(f".{target.name}.{(remote.sha256 or remote.commit)[:16]}.incomplete")
        for stale in target.parent.glob(f".{target.name}.*.incomplete"):
            if stale != partial:
                stale.unlink()                    # a partial of an older version of the file
        _fetch(remote, partial, on_event, cancel, label)
        if problem := _mismatch(partial, remote, on_event, cancel, label):
            partial.unlink()
            raise AhaError(f"{label} failed verification: {problem}; the download was deleted, pull it again.")
        os.replace(partial, target)
    (library or Library()).add(target, origin=f"{label}@{remote.commit}")
    on_event(make_event("artifact", kind="model", path=str(target), message=f"downloaded {label} to {target}"))
    return target
