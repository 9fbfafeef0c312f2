"""Register a GGUF with a local Ollama server: Modelfile text, blob upload, create and show over HTTP.

Knows the DeepSeek-R1 prompt format as an Ollama Go template, Ollama's stop strings and OLLAMA_HOST
rules, and speaks the documented REST subset with the standard library only. It does not read GGUF
files, run or install Ollama, or check the answers a registered model gives.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import re
import socket
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from engine.errors import AhaError, Cancelled
from engine.fileio import atomic_write_text, sha256_file
from engine.jobs import OnEvent, Progress, ignore, make_event
from engine.r1 import ASSISTANT, EOS, STOPS, TEMPERATURE, TOP_P, USER

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11434
CHUNK_BYTES = 1 << 20  # 1 MiB: the upload streams the file in chunks of this size

R1_STOPS = STOPS

# The DeepSeek-R1 format for Ollama's Go text/template. No BOS: llama.cpp adds it from the GGUF's
# add_bos flag. Earlier assistant turns drop their reasoning, but keep the blank line that followed
# `</think>` in the raw output (Ollama strips it from `content`; the HF template's split keeps it).
# The last message, when it is an assistant message with `.Thinking`, carries the think block: this
# is where Ollama's InferTags finds `<think>`/`</think>` and so reports the `thinking` capability.
# The generation prompt is pre-filled with `<think>\n`, or closes an empty block when think is off.
R1_GO_TEMPLATE = (
    "{{- if .System }}{{ .System }}{{ end }}\n"
    "{{- range $i, $_ := .Messages }}\n"
    "{{- $last := eq (len (slice $.Messages $i)) 1 }}\n"
    '{{- if eq .Role "user" }}' + USER + "{{ .Content }}\n"
    '{{- else if eq .Role "assistant" }}' + ASSISTANT + "\n"
    "{{- if not $last }}{{ if .Thinking }}\n\n{{ end }}{{ .Content }}" + EOS + "\n"
    "{{- else }}{{ if .Thinking }}<think>\n{{ .Thinking }}\n</think>\n\n{{ end }}{{ .Content }}\n"
    "{{- end }}\n"
    "{{- end }}\n"
    '{{- if and $last (ne .Role "assistant") }}' + ASSISTANT + "\n"
    "{{- if and $.IsThinkSet (not $.Think) }}<think>\n\n</think>\n\n{{ else }}<think>\n{{ end }}\n"
    "{{- end }}\n"
    "{{- end }}"
)


def r1_parameters(num_ctx: int, temperature: float = TEMPERATURE, top_p: float = TOP_P) -> dict:
    """The /api/create `parameters` for an R1 model: DeepSeek's sampling advice and the stop strings."""
    return {"stop": list(R1_STOPS), "temperature": temperature, "top_p": top_p, "num_ctx": num_ctx}


def _quoted(value: str) -> str:
    if '"' in value or "\n" in value:
        raise ValueError(f"a Modelfile PARAMETER value cannot hold quotes or newlines: {value!r}")
    return f'"{value}"'


def _triple_quoted(value: str) -> str:
    if '"""' in value:
        raise ValueError('a Modelfile block cannot contain """')
    return f'"""{value}"""'


def modelfile_text(gguf_filename: str, *, num_ctx: int, template: str = R1_GO_TEMPLATE,
                   stops=R1_STOPS, temperature: float = TEMPERATURE, top_p: float = TOP_P,
                   system: str | None = None) -> str:
    """A Modelfile for `ollama create -f`: FROM the GGUF beside it, the template, stops and sampling."""
    lines = [f"FROM ./{gguf_filename}", f"TEMPLATE {_triple_quoted(template)}"]
    if system:
        lines.append(f"SYSTEM {_triple_quoted(system)}")
    lines += [f"PARAMETER stop {_quoted(stop)}" for stop in stops]
    lines += [f"PARAMETER temperature {temperature:g}", f"PARAMETER top_p {top_p:g}",
              f"PARAMETER num_ctx {int(num_ctx)}"]
    return "\n".join(lines) + "\n"


def write_modelfile(gguf_path: Path, num_ctx: int, **kw) -> Path:
    """Write `<stem>.Modelfile` next to the GGUF, atomically (temp file in the same folder, then replace)."""
    gguf_path = Path(gguf_path)
    target = gguf_path.with_name(f"{gguf_path.stem}.Modelfile")
    text = modelfile_text(gguf_path.name, num_ctx=num_ctx, **kw)
    atomic_write_text(target, text)
    return target


def _split_scheme(value: str) -> tuple[str, str, int]:
    """("http"|"https"|…, host[:port][/path], default port), as Ollama reads OLLAMA_HOST."""
    scheme, sep, rest = value.partition("://")
    if not sep:
        return "http", value, DEFAULT_PORT
    return scheme.lower(), rest, {"http": 80, "https": 443}.get(scheme.lower(), DEFAULT_PORT)


def _connect_host(host: str) -> str:
    """Where a client connects: unspecified addresses mean this machine; IPv6 goes in brackets."""
    host = {"": DEFAULT_HOST, "0.0.0.0": DEFAULT_HOST, "::": "::1"}.get(host, host)
    return f"[{host}]" if ":" in host else host


def _split_host_port(hostport: str, default_port: int, value: str) -> tuple[str, int]:
    """(host, port) from `host`, `host:port`, `:port`, `[v6]:port` or a bare IP address."""
    try:
        return str(ipaddress.ip_address(hostport.strip("[]"))), default_port
    except ValueError:
        pass
    split = urllib.parse.urlsplit(f"//{hostport}")
    try:
        return split.hostname or "", split.port or default_port
    except ValueError as exc:
        raise AhaError(f"OLLAMA_HOST {value!r} has an invalid port; use host:port, e.g. 127.0.0.1:11434") from exc


def ollama_base_url(host: str | None = None) -> str:
    """The server URL from `host` or OLLAMA_HOST: `host`, `host:port`, `:port`, `http(s)://host[:port]`.

    As Ollama: no scheme → http with port 11434; `http://host` → port 80, `https://host` → 443.
    """
    value = (host if host is not None else os.environ.get("OLLAMA_HOST", "")).strip().strip("\"'").strip()
    scheme, hostport, default_port = _split_scheme(value)
    hostport, _, path = hostport.partition("/")
    host, port = _split_host_port(hostport, default_port, value)
    base = f"{scheme}://{_connect_host(host)}:{port}"
    return f"{base}/{path.strip('/')}" if path.strip("/") else base


def _full_digest(digest: str) -> str:
    return digest if digest.startswith("sha256:") else f"sha256:{digest}"


def _error_text(body: bytes) -> str:
    """Ollama's `{"error": "..."}` text, or the raw body when it is not that."""
    text = body.decode("utf-8", "replace").strip()
    try:
        payload = json.loads(text)
    except ValueError:
        return text or "no details"
    return str(payload.get("error", text)) if isinstance(payload, dict) else text


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, socket.gaierror):
        return "unknown host"
    return str(exc) or type(exc).__name__


class OllamaClient:
    """The documented Ollama REST calls Aha needs, one HTTP connection per call."""

    def __init__(self, base_url: str, timeout_s: float = 600.0):
        self.base_url = base_url.rstrip("/")
        split = urllib.parse.urlsplit(self.base_url)
        self._scheme, self._host, self._port = split.scheme, split.hostname, split.port
        self._prefix = split.path.rstrip("/")
        self.timeout_s = timeout_s

    def _connection(self) -> http.client.HTTPConnection:
        kind = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        return kind(self._host, self._port, timeout=self.timeout_s)

    def _request(self, method: str, path: str, body=None, headers: dict | None = None,
                 expect: tuple[int, ...] = (200,), hint: str = "see the Ollama server log") -> tuple[int, bytes]:
        """Send one request; any failure to connect or an unexpected status becomes one AhaError line."""
        connection = self._connection()
        try:
            connection.request(method, self._prefix + path, body=body, headers=headers or {})
            response = connection.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise AhaError(f"cannot reach Ollama at {self.base_url} ({_reason(exc)}); "
                           "start it with `ollama serve` or set OLLAMA_HOST") from exc
        finally:
            connection.close()
        if response.status not in expect:
            raise AhaError(f"Ollama at {self.base_url} refused {method} {path} "
                           f"(HTTP {response.status}: {_error_text(data)}); {hint}")
        return response.status, data

    def _json(self, method: str, path: str, payload: dict | None = None, **kw) -> dict:
        body = None if payload is None else json.dumps(payload, ensure_ascii=False).encode("utf-8")
        headers = {"Content-Type": "application/json"} if body is not None else {}
        _, data = self._request(method, path, body=body, headers=headers, **kw)
        return json.loads(data) if data.strip() else {}

    def version(self) -> str:
        """The server's version string (GET /api/version)."""
        return str(self._json("GET", "/api/version").get("version", ""))

    def blob_exists(self, digest: str) -> bool:
        """Whether the server already holds this blob (HEAD /api/blobs/sha256:<hex>: 200 yes, 404 no)."""
        status, _ = self._request("HEAD", f"/api/blobs/{_full_digest(digest)}", expect=(200, 404))
        return status == 200

    def push_blob(self, path: Path, digest: str, on_event: OnEvent | None = None, cancel=None) -> None:
        """Upload a file as a blob, streamed from disk with Content-Length; `progress` events in bytes
        (stage "register"). A cancel stops between chunks (Ollama discards the unfinished blob)."""
        path, digest = Path(path), _full_digest(digest)
        size = path.stat().st_size
        progress = Progress(on_event or ignore, "register", size, unit="B")
        headers = {"Content-Length": str(size), "Content-Type": "application/octet-stream"}
        with path.open("rb") as stream:
            status, data = self._request("POST", f"/api/blobs/{digest}", body=_chunks(stream, progress, cancel),
                                         headers=headers, expect=(200, 201, 400))
        if status == 400:
            text = _error_text(data)
            hint = ("the file changed while uploading or the transfer was corrupted: register again"
                    if "mismatch" in text else "see the Ollama server log")
            raise AhaError(f"Ollama at {self.base_url} rejected the upload of {path.name} ({text}); {hint}")
        progress.update(size, force=True)

    def create(self, name: str, files: dict[str, str], template: str, parameters: dict,
               system: str | None = None) -> dict:
        """Create (or replace) a model from uploaded blobs (POST /api/create, not streamed)."""
        payload = {"model": name, "files": files, "template": template, "parameters": parameters,
                   "stream": False}
        if system is not None:
            payload["system"] = system
        return self._json("POST", "/api/create", payload,
                          hint=f"Ollama could not create model {name!r}; check the name and the GGUF file")

    def show(self, name: str) -> dict:
        """A model's template, parameters and capabilities (POST /api/show)."""
        return self._json("POST", "/api/show", {"model": name},
                          hint=f"is {name!r} registered? `ollama list` shows the models Ollama has")


def _chunks(stream: BinaryIO, progress: Progress, cancel=None) -> Iterator[bytes]:
    """The file in 1 MiB chunks, counting each one sent; never holds the whole file in memory."""
    while chunk := stream.read(CHUNK_BYTES):
        if cancel is not None and cancel.cancelled:
            raise Cancelled("registration cancelled while uploading; the GGUF is complete, register it again "
                            "to finish")
        yield chunk
        progress.advance(len(chunk))


def _phase(emit: OnEvent, phase: str, label: str) -> OnEvent:
    """The registration's progress events with their phase (hash, upload) and what a person reads."""
    return lambda event: emit({**event, "phase": phase, "label": label} if event["type"] == "progress" else event)


# [host[:port]/][namespace/]model[:tag], as Ollama's model names (types/model/name.go): letters, digits, _ . -
MODEL_NAME = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9._:-]*/){0,2}[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}"
                        r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,79})?")


def check_model_name(name: str) -> str:
    """Refuse a name Ollama would refuse, before an export writes anything (it asks only at the end)."""
    if not MODEL_NAME.fullmatch(name):
        raise AhaError(f"{name!r} is not an Ollama model name; use letters, digits, _ . - as in aha-r1 or "
                       "aha-r1:1.5b (namespace/model:tag at most).")
    return name


def check_reachable(host: str | None = None, timeout_s: float = 5.0) -> str:
    """The server's version, or the one-line "cannot reach Ollama" AhaError within `timeout_s`: asked
    before an export starts, so an Ollama that is not running is said first, not after the work."""
    return OllamaClient(ollama_base_url(host), timeout_s=timeout_s).version()


def connection_status(host: str | None = None, timeout_s: float = 2.0) -> str:
    """One line for a settings form: "Ollama 0.9.0 is running at http://127.0.0.1:11434", or an AhaError
    that says Ollama is not running there (nothing listens, the host is unknown, it timed out) and how to
    start it, or that what answers there is not Ollama. `host` as OLLAMA_HOST (None: the variable)."""
    base = ollama_base_url(host)
    client = OllamaClient(base, timeout_s=timeout_s)
    try:
        version = client.version()
    except AhaError as error:
        if isinstance(error.__cause__, (OSError, http.client.HTTPException)):
            raise AhaError(f"Ollama is not running at {base} ({_reason(error.__cause__)}): start it with "
                           "`ollama serve` (or set OLLAMA_HOST)") from None
        raise AhaError(f"something answers at {base}, but not as Ollama does (GET /api/version failed); check "
                       "the host and port") from None
    except ValueError:  # a body that is not JSON
        raise AhaError(f"something answers at {base}, but not as Ollama does (GET /api/version is not JSON); "
                       "check the host and port") from None
    return f"Ollama {version or '(version unknown)'} is running at {base}"


def register(gguf_path: Path, name: str, *, num_ctx: int, host: str | None = None,
             on_event: OnEvent | None = None, cancel=None) -> dict:
    """Hash, upload when missing, create `name` with the R1 template, then return Ollama's /api/show.

    Steps: 1. sha256 of the GGUF; 2. HEAD the blob; 3. POST it if the server lacks it; 4. POST
    /api/create with R1_GO_TEMPLATE and r1_parameters(num_ctx); 5. POST /api/show to confirm.
    """
    emit = on_event or ignore
    gguf_path = Path(gguf_path)
    client = OllamaClient(ollama_base_url(host))
    digest = "sha256:" + sha256_file(gguf_path, _phase(emit, "hash", f"hashing {gguf_path.name}"), stage="register",
                                     cancel=cancel, cancelled_message="registration cancelled while hashing; the "
                                     f"GGUF {gguf_path.name} is complete, register it again to finish")
    if client.blob_exists(digest):
        emit(make_event("log", message=f"Ollama already has {gguf_path.name}; upload skipped"))
    else:
        emit(make_event("log", message=f"uploading {gguf_path.name} to {client.base_url}"))
        client.push_blob(gguf_path, digest, _phase(emit, "upload", f"uploading {gguf_path.name}"), cancel=cancel)
    client.create(name, {gguf_path.name: digest}, R1_GO_TEMPLATE, r1_parameters(num_ctx))
    shown = client.show(name)
    if "thinking" not in shown.get("capabilities", []):
        emit(make_event("log", level="warning",
                        message=f"Ollama does not list 'thinking' for {name}; `think` requests will fail"))
    emit(make_event("artifact", kind="ollama", message=f"Ollama model {name} at {client.base_url}", name=name,
                    url=client.base_url, digest=digest))
    return shown
