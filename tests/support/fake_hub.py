"""A stand-in Hugging Face Hub on 127.0.0.1 for download tests: these machines have no network.

Serves HEAD/GET /<org>/<repo>/resolve/<revision>/<filename> for the files it holds, with the headers
huggingface_hub reads (X-Repo-Commit, ETag, X-Linked-Etag = the LFS sha256, X-Linked-Size, Content-Length),
Range requests (206 + Content-Range), and the Hub's X-Error-Code on a 404. Two faults for tests: drop the
connection after N bytes (once), and advertise a wrong sha256. No CDN redirect, no Xet, no auth.
"""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

COMMIT = "0123456789abcdef0123456789abcdef01234567"
RANGE = re.compile(r"bytes=(\d+)-$")


@dataclass
class HubFile:
    data: bytes
    sha256: str          # what the Hub advertises (a test may make it wrong)


class FakeHub:
    """`with FakeHub() as endpoint:` serves until the block ends. `requests` lists (method, path, Range header)."""

    def __init__(self) -> None:
        self.files: dict[tuple[str, str], HubFile] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self.drop_after: int | None = None     # the next GET sends this many bytes, then closes the connection
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def add(self, repo_id: str, filename: str, data: bytes, sha256: str | None = None) -> None:
        self.files[(repo_id, filename)] = HubFile(data, sha256 or hashlib.sha256(data).hexdigest())

    def __enter__(self) -> str:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                hub._answer(self, body=False)

            def do_GET(self) -> None:
                hub._answer(self, body=True)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __exit__(self, *exc) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    def _answer(self, handler: BaseHTTPRequestHandler, body: bool) -> None:
        range_header = handler.headers.get("Range")
        with self.lock:
            self.requests.append((handler.command, handler.path, range_header))
        parts = unquote(handler.path.split("?", 1)[0]).lstrip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            return self._error(handler, 404, "RepoNotFound")
        repo_id, revision, filename = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
        if not any(repo == repo_id for repo, _ in self.files):
            return self._error(handler, 404, "RepoNotFound")
        if revision not in ("main", COMMIT):
            return self._error(handler, 404, "RevisionNotFound")
        file = self.files.get((repo_id, filename))
        if file is None:
            return self._error(handler, 404, "EntryNotFound")
        start = int(RANGE.match(range_header).group(1)) if range_header and RANGE.match(range_header) else 0
        handler.send_response(206 if start else 200)
        handler.send_header("X-Repo-Commit", COMMIT)
        handler.send_header("ETag", f'"{hashlib.sha1(file.data).hexdigest()}"')
        handler.send_header("X-Linked-Etag", f'"{file.sha256}"')
        handler.send_header("X-Linked-Size", str(len(file.data)))
        handler.send_header("Accept-Ranges", "bytes")
        handler.send_header("Content-Length", str(len(file.data) - start))
        if start:
            handler.send_header("Content-Range", f"bytes {start}-{len(file.data) - 1}/{len(file.data)}")
        handler.end_headers()
        if not body:
            return None
        payload = file.data[start:]
        with self.lock:
            drop, self.drop_after = self.drop_after, None
        if drop is not None:
            handler.wfile.write(payload[:drop])
            handler.wfile.flush()
            handler.close_connection = True
            return None
        handler.wfile.write(payload)
        return None

    def _error(self, handler: BaseHTTPRequestHandler, status: int, code: str) -> None:
        handler.send_response(status)
        handler.send_header("X-Error-Code", code)
        handler.send_header("X-Repo-Commit", COMMIT)
        handler.send_header("Content-Length", "0")
        handler.end_headers()
