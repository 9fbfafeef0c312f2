"""A stand-in Ollama server for tests: Ollama cannot be installed on these machines, so this implements
the documented subset of its REST API that registration uses, on 127.0.0.1 with an ephemeral port.

Routes: HEAD/POST /api/blobs/sha256:<hex>, POST /api/create, POST /api/show, GET /api/version,
GET /api/tags — with Ollama's status codes and `{"error": "..."}` bodies. It stores blobs in memory,
checks only a GGUF file's magic (Ollama parses the whole file), does not parse Go templates (tests do
that with Go itself), and reports `thinking` when the template references `.Thinking` (Ollama infers
it from the `<think>` tags around that reference). It runs no model: /api/chat is absent.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DIGEST = re.compile(r"^sha256[:-]([0-9a-fA-F]{64})$")
MODEL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*(/[A-Za-z0-9_][A-Za-z0-9_.\-]*)*(:[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127})?$")
THINKING_FIELD = re.compile(r"\{\{[^}]*\.Thinking\b")
BLOBS_DIR = "/usr/share/ollama/.ollama/models/blobs"  # where a Linux service install keeps blobs


class OllamaError(Exception):
    """An error answer: HTTP status and the `error` text."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def full_name(name: str) -> str:
    """Ollama's short names get the `latest` tag: "aha-r1" → "aha-r1:latest"."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def parameters_text(parameters: dict) -> str:
    """Parameters as /api/show writes them: one `name value` line each, list values repeated, Go-quoted."""
    lines = []
    for key, value in parameters.items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, float) and item.is_integer():
                item = int(item)
            shown = json.dumps(item, ensure_ascii=False) if isinstance(item, str) else str(item)
            lines.append(f"{key:<30} {shown}")
    return "\n".join(lines)


class FakeOllama:
    """`with FakeOllama() as base_url:` serves until the block ends; `blobs`, `models`, `requests` are its state."""

    def __init__(self, version: str = "0.0.0"):
        self.version = version
        self.blobs: dict[str, bytes] = {}     # "sha256:<hex>" → body
        self.models: dict[str, dict] = {}     # "name:tag" → the create request, plus "modified_at"
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> str:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.fake = self
        # A short poll interval: shutdown() waits for the loop to notice, up to one interval.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        daemon=True)
        self._thread.start()
        return self.base_url

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def count(self, method: str, prefix: str) -> int:
        """How many requests with this method had a path starting with prefix."""
        with self.lock:
            return sum(1 for m, p in self.requests if m == method and p.startswith(prefix))

    # --- the API, one method per route; each returns (status, JSON payload or None) or raises ---

    def blob_digest(self, param: str) -> str:
        match = DIGEST.match(param)
        if not match:
            raise OllamaError(400, "invalid digest format")
        return f"sha256:{match.group(1)}"

    def head_blob(self, param: str) -> tuple[int, dict | None]:
        digest = self.blob_digest(param)
        with self.lock:
            if digest not in self.blobs:
                raise OllamaError(404, f'blob "{param}" not found')
        return 200, None

    def post_blob(self, param: str, body: bytes) -> tuple[int, dict | None]:
        digest = self.blob_digest(param)
        with self.lock:
            if digest in self.blobs:
                return 200, None
        actual = "sha256:" + hashlib.sha256(body).hexdigest()
        if actual != digest:
            raise OllamaError(400, f'digest mismatch, expected "{param}", got "{actual}"')
        with self.lock:
            self.blobs[digest] = body
        return 201, None

    def _check_files(self, files: dict) -> None:
        for filename, param in files.items():
            digest = self.blob_digest(param)
            with self.lock:
                body = self.blobs.get(digest)
            if body is None:
                raise OllamaError(400, f"open {BLOBS_DIR}/{digest.replace(':', '-')}: no such file or directory")
            if filename.endswith(".gguf") and not body.startswith(b"GGUF"):
                raise OllamaError(400, "supplied file was not in GGUF format")

    def create(self, request: dict) -> tuple[int, dict | list]:
        name = request.get("model") or request.get("name") or ""
        if not MODEL_NAME.match(name):
            raise OllamaError(400, "invalid model name")
        if not request.get("files") and not request.get("from"):
            raise OllamaError(400, "neither 'from' or 'files' was specified")
        self._check_files(request.get("files") or {})
        with self.lock:
            self.models[full_name(name)] = dict(request, modified_at=datetime.now(UTC).isoformat())
        if request.get("stream") is False:
            return 200, {"status": "success"}
        return 200, [{"status": "parsing GGUF"}, {"status": "writing manifest"}, {"status": "success"}]

    def _model(self, request: dict) -> dict:
        name = request.get("model") or request.get("name") or ""
        with self.lock:
            model = self.models.get(full_name(name)) if name else None
        if model is None:
            raise OllamaError(404, f"model '{name}' not found")
        return model

    def show(self, request: dict) -> tuple[int, dict]:
        model = self._model(request)
        template = model.get("template", "")
        capabilities = ["completion"] + (["thinking"] if THINKING_FIELD.search(template) else [])
        answer = {"template": template, "parameters": parameters_text(model.get("parameters") or {}),
                  "details": {"format": "gguf"}, "capabilities": capabilities,
                  "modified_at": model["modified_at"]}
        if model.get("system"):
            answer["system"] = model["system"]
        return 200, answer

    def tags(self) -> tuple[int, dict]:
        with self.lock:
            models = [{"name": name, "model": name, "modified_at": model["modified_at"],
                       "size": sum(len(self.blobs.get(d, b"")) for d in (model.get("files") or {}).values()),
                       "digest": hashlib.sha256(json.dumps(model.get("files"), sort_keys=True).encode()).hexdigest(),
                       "details": {"format": "gguf"}}
                      for name, model in self.models.items()]
        return 200, {"models": models}


class _Handler(BaseHTTPRequestHandler):
    """Routes requests to the FakeOllama in `self.server.fake`; speaks HTTP/1.1 with Content-Length."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        """Quiet: tests read `FakeOllama.requests` instead of a log."""

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return self._chunked_body()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _chunked_body(self) -> bytes:
        parts = []
        while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
            parts.append(self.rfile.read(size))
            self.rfile.readline()
        while self.rfile.readline().strip():  # trailer lines, then the blank line
            pass
        return b"".join(parts)

    def _json_body(self) -> dict:
        body = self._body()
        if not body.strip():
            raise OllamaError(400, "missing request body")
        try:
            request = json.loads(body)
        except ValueError as exc:
            raise OllamaError(400, str(exc)) from exc
        if not isinstance(request, dict):
            raise OllamaError(400, "json: cannot unmarshal into Go value of type api.Request")
        return request

    def _send(self, status: int, payload: dict | list | None, content_type: str = "application/json") -> None:
        if isinstance(payload, list):  # a streamed answer: newline-delimited JSON
            body, content_type = "".join(json.dumps(p) + "\n" for p in payload).encode(), "application/x-ndjson"
        elif isinstance(payload, dict):
            body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        else:
            body = b""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _route(self) -> tuple[int, dict | list | None]:
        fake: FakeOllama = self.server.fake
        with fake.lock:
            fake.requests.append((self.command, self.path))
        route = (self.command, self.path)
        if self.path.startswith("/api/blobs/"):
            param = self.path.removeprefix("/api/blobs/")
            if self.command == "HEAD":
                return fake.head_blob(param)
            if self.command == "POST":
                return fake.post_blob(param, self._body())
        handlers = {("POST", "/api/create"): lambda: fake.create(self._json_body()),
                    ("POST", "/api/show"): lambda: fake.show(self._json_body()),
                    ("GET", "/api/version"): lambda: (200, {"version": fake.version}),
                    ("GET", "/api/tags"): fake.tags}
        if route not in handlers:
            self._body()
            raise OllamaError(404, "404 page not found")
        return handlers[route]()

    def _handle(self) -> None:
        try:
            status, payload = self._route()
        except OllamaError as exc:
            status, payload = exc.status, {"error": str(exc)}
        self._send(status, payload)

    do_GET = do_POST = do_HEAD = _handle
