"""llama-cpp-python's own OpenAI-compatible server (`llama_cpp.server`) on a free loopback port.

The real endpoint teacher of the distillation tests: it serves a fixture GGUF behind an API key and
logs its requests, so a test can count the chat completions it answered.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Server:
    url: str
    log: Path
    process: subprocess.Popen

    def chat_requests(self) -> int:
        """Chat completions the server has answered (from uvicorn's access log)."""
        return self.log.read_text(errors="replace").count("POST /v1/chat/completions")


@contextlib.contextmanager
def serve_gguf(model: Path, log: Path, api_key: str, n_ctx: int = 1024) -> Iterator[Server]:
    """Start the server, wait until `/v1/models` answers, yield it, stop it."""
    port = free_port()
    with open(log, "wb") as stream:
        process = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(model),
                                    "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx),
                                    "--n_threads", "1", "--api_key", api_key], stdout=stream, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                request = urllib.request.Request(f"{url}/models", headers={"Authorization": f"Bearer {api_key}"})
                with urllib.request.urlopen(request, timeout=2):
                    break
            except OSError as error:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("llama_cpp.server did not start:\n"
                                       + log.read_text(errors="replace")[-2000:]) from error
                time.sleep(0.1)
        yield Server(url, log, process)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
