"""`aha serve` as a job: the app (engine.serve.app) on uvicorn, on a socket bound here, speaking the job
contract (engine.jobs): a `log` event "ready" with the URL once it listens, one `log` event "request" per
answered request, and it runs until its cancel token is set (SIGINT, SIGTERM, `cancel` on stdin).

It binds to loopback by default and refuses any other address without an API key: whoever reaches the port
could use the models and this machine's time. The signals stay the job's: uvicorn installs none of its own.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
from dataclasses import dataclass

from engine.errors import AhaError
from engine.jobs import OnEvent, format_seconds, ignore, make_event
from engine.serve.host import ModelHost, served_models

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 11435
GRACEFUL_S = 5  # how long open connections get to finish when the server stops (their decoding is cancelled)


@dataclass(frozen=True)
class ServeOptions:
    """What `aha serve` was asked for (its flags)."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT         # 0: any free port (the ready event says which)
    models: tuple[str, ...] = ()     # library names or .gguf paths; empty: the whole library
    api_key: str | None = None       # Bearer key every request must send
    save: bool = False               # write each chat to the store as a conversation
    n_ctx: int = 4096
    gpu_layers: int = -1


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or a name) only reaches this machine."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(address.split("%")[0]).is_loopback for address in addresses)


def check_bind(host: str, api_key: str | None) -> None:
    """Refuse a non-loopback address without an API key, with the reason."""
    if not api_key and not is_loopback(host):
        raise AhaError(f"refusing to serve on {host} without an API key: anyone who can reach it could use your "
                       "models; pass --api-key KEY (or set AHA_API_KEY), or keep the default --host 127.0.0.1")


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or one line saying why not."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise AhaError(f"port {port!r} is not a TCP port; give --port from 1 to 65535 (0: any free one)")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as error:
        raise AhaError(f"cannot serve on {host}: {error.strerror or error}; give an address of this machine "
                       "with --host") from error
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as error:
        sock.close()
        raise AhaError(f"cannot listen on {host}:{port}: {error.strerror or error}; pick another --port "
                       "(0: any free one)") from error
    return sock


def url_of(sock: socket.socket) -> str:
    """The base URL OpenAI clients take, http://host:port/v1."""
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/v1"


def request_line(record: dict) -> str:
    """One terminal line per request: method path model status tokens time (and why it stopped early)."""
    parts = [f"{record['method']} {record['path']}", record.get("model") or "-", str(record["status"])]
    if record.get("completion_tokens") is not None:
        parts.append(f"{record.get('prompt_tokens') or 0} prompt + {record['completion_tokens']} tokens "
                     f"({record.get('reasoning_tokens') or 0} thinking)")
    parts.append(format_seconds(record["duration_s"]))
    if record.get("queued_s"):
        parts.append(f"waited {format_seconds(record['queued_s'])}")
    if record.get("load_s") and record["load_s"] >= 0.01:
        parts.append(f"loaded the model in {format_seconds(record['load_s'])}")
    if record.get("stop_reason") == "cancelled":
        parts.append("cancelled: the client went away" if record.get("client_gone") else "cancelled")
    elif record.get("client_gone"):
        parts.append("the client went away before the reply was sent")
    if record.get("budget_ended_thought"):
        parts.append("the thinking budget ended the thought")
    if record.get("error"):
        parts.append(record["error"])
    return " · ".join(parts)


def request_event(record: dict) -> dict:
    """The `log` event of one answered request (event "request"), its counts as fields."""
    fields = {"method": record["method"], "path": record["path"], "model": record.get("model"),
              "status": record["status"], "stream": bool(record.get("stream")),
              "prompt_tokens": record.get("prompt_tokens"), "completion_tokens": record.get("completion_tokens"),
              "reasoning_tokens": record.get("reasoning_tokens"), "duration_s": record["duration_s"]}
    extra = {key: record[key] for key in ("stop_reason", "finish_reason", "queued_s", "load_s", "thinking_budget", "budget_ended_thought",
                                          "client_gone", "conversation_id", "error") if record.get(key) is not None}
    return make_event("log", message=request_line(record), level="warning" if record["status"] >= 500 else "info",
                      event="request", **fields, **extra)


def _uvicorn_server(config, on_ready, on_stop, should_stop):
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server without its signal handlers, stopping when `should_stop()` says so; `on_ready`
        once it listens, `on_stop` first thing when it stops (the decodings in flight are cancelled)."""

        @contextlib.contextmanager
        def capture_signals(self):
            yield

        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)
            if self.started:
                on_ready()

        async def on_tick(self, counter: int) -> bool:
            if should_stop():
                self.should_exit = True
            return await super().on_tick(counter)

        async def shutdown(self, sockets=None) -> None:
            on_stop()
            await super().shutdown(sockets)

    return Server(config)


class AhaServer:
    """`aha serve` set up: the models resolved, the address checked and bound (errors are one line, before
    anything listens). `run()` serves until `cancel` is set or `stop()` is called; `ready` is set once the
    server listens at `url`."""

    def __init__(self, options: ServeOptions, on_event: OnEvent = ignore):
        import uvicorn  # the ASGI stack is imported when a server is made, not by `aha --help`

        from engine.serve.app import create_app

        check_bind(options.host, options.api_key)
        models, skipped = served_models(options.models)
        self.options, self.on_event = options, on_event
        self.skipped = skipped
        self.host = ModelHost(models, n_ctx=options.n_ctx, gpu_layers=options.gpu_layers)
        self.requests = 0
        self.app, self.state = create_app(self.host, api_key=options.api_key, save=options.save,
                                          on_request=self._answered)
        self.socket = bind(options.host, options.port)
        self.url = url_of(self.socket)
        self.ready = threading.Event()
        self._config = uvicorn.Config(self.app, log_config=None, log_level="warning", access_log=False,
                                      lifespan="off", timeout_graceful_shutdown=GRACEFUL_S)
        self._stop = threading.Event()

    @property
    def in_flight(self) -> int:
        """Requests being answered (or answered and not yet logged)."""
        return self.app.in_flight

    def startup_line(self) -> str:
        names = ", ".join(model.id for model in self.host.models)
        key = "API key required" if self.options.api_key else "no API key (loopback only)"
        saved = ("each chat is saved to Aha's store (--save)" if self.options.save
                 else "chats are not saved (--save keeps them)")
        return (f"serving {names} at {self.url} (OpenAI-compatible) · one request decodes at a time, others wait "
                f"(no batching) · {saved} · {key}")

    def _answered(self, record: dict) -> None:
        self.requests += 1
        self.on_event(request_event(record))

    def _ready(self) -> None:
        for line in self.skipped:
            self.on_event(make_event("log", message=line, level="warning"))
        self.on_event(make_event("log", message=self.startup_line(), event="ready", url=self.url,
                                 models=[model.id for model in self.host.models], save=self.options.save,
                                 api_key=bool(self.options.api_key)))
        self.ready.set()

    def run(self, cancel=None) -> dict:
        """Serve until `cancel` (a CancelToken) is set or stop() is called; the job's result."""
        def should_stop() -> bool:
            return self._stop.is_set() or bool(cancel is not None and cancel.cancelled)

        server = _uvicorn_server(self._config, self._ready, self.state.cancel_all, should_stop)
        try:
            server.run(sockets=[self.socket])
        finally:
            self.state.cancel_all()
            self.host.close()
            self.socket.close()
        return {"status": "cancelled", "url": self.url, "requests": self.requests}

    def stop(self) -> None:
        """Stop serving (from any thread): run() returns within a tick and the graceful wait."""
        self._stop.set()


def serve(options: ServeOptions, on_event: OnEvent = ignore, cancel=None) -> dict:
    """Run `aha serve` until cancelled; the result of the job (url, requests answered)."""
    return AhaServer(options, on_event).run(cancel)
