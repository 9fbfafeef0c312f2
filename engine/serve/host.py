"""The models `aha serve` offers and the one it holds: names resolved through the model library (GGUF files
only), one ChatModel in memory at a time (a request for another model swaps it), and a first-come
first-served queue of turns: one request decodes at a time, the others wait. There is no batching.

Knows nothing of HTTP: the app (engine.serve.app) asks for a turn from a worker thread and streams.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.errors import AhaError

TURN_POLL_S = 0.05  # how often a waiting request looks whether its client went away


@dataclass(frozen=True)
class ServedModel:
    """One model on offer: its id in /v1/models and requests, the GGUF file, the file's mtime."""

    id: str
    path: Path
    created: int


def served_models(names: Sequence[str] = (), library=None) -> tuple[list[ServedModel], list[str]]:
    """The models to serve and a warning line per library entry left out. Each name is what `aha chat`
    takes (a library name or a .gguf path, one-line AhaError when it names nothing); no names: every
    model of the library whose file is there. LoRA adapters and unreadable files are never served."""
    from engine.models import Library, read_gguf_info

    library = library or Library()
    named = bool(names)
    entries = [library.find(name) for name in names] if named else library.entries()
    models: list[ServedModel] = []
    skipped: list[str] = []
    for entry in entries:
        try:
            info = read_gguf_info(entry.path)
        except AhaError as error:
            skipped.append(f"{entry.name} is not served: {error}")
            continue
        if info.kind == "adapter":
            if named:
                raise AhaError(f"{entry.name} is a LoRA adapter, not a model; serve its base model instead.")
            skipped.append(f"{entry.name} is not served: it is a LoRA adapter")
            continue
        if any(model.id == entry.name for model in models):
            if any(os.path.realpath(model.path) == os.path.realpath(entry.path) for model in models):
                continue
            skipped.append(f"{entry.name} ({entry.path}) is not served: another model has that name; "
                           "serve it by its path with --models")
            continue
        models.append(ServedModel(entry.name, Path(entry.path), int(Path(entry.path).stat().st_mtime)))
    if not models:
        raise AhaError("no model to serve: the library has no GGUF model; add one with `aha models add PATH` "
                       "or pass --models PATH.gguf")
    return models, skipped


class TurnQueue:
    """One holder at a time, the waiters served in the order they came; a waiter whose `cancel` is set
    leaves the queue."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._waiting: deque[object] = deque()
        self._busy = False

    @property
    def waiting(self) -> int:
        with self._condition:
            return len(self._waiting)

    def acquire(self, cancel: threading.Event | None = None, timeout_s: float | None = None) -> bool:
        """Wait for the turn; False when `cancel` was set (or `timeout_s` passed) first."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        me = object()
        with self._condition:
            self._waiting.append(me)
            while self._busy or self._waiting[0] is not me:
                gave_up = (cancel is not None and cancel.is_set()) or (deadline is not None and time.monotonic() > deadline)
                if gave_up:
                    self._waiting.remove(me)
                    self._condition.notify_all()
                    return False
                self._condition.wait(TURN_POLL_S)
            self._waiting.popleft()
            self._busy = True
            return True

    def release(self) -> None:
        with self._condition:
            self._busy = False
            self._condition.notify_all()


class ModelHost:
    """The served models and the one loaded. `load` is only called by the holder of a turn, so a swap
    never happens under a decoding request."""

    def __init__(self, models: Sequence[ServedModel], n_ctx: int = 4096, gpu_layers: int = -1,
                 loader: Callable[..., object] | None = None):
        self.models = list(models)
        self.n_ctx, self.gpu_layers = n_ctx, gpu_layers
        self.turns = TurnQueue()
        self._loader = loader
        self._loaded = None
        self._loaded_id: str | None = None

    @property
    def loaded_id(self) -> str | None:
        return self._loaded_id

    def resolve(self, name: str) -> ServedModel | None:
        """The served model a request names: its exact id, else the id ignoring case."""
        for rule in (lambda m: m.id == name, lambda m: m.id.lower() == name.lower()):
            found = [model for model in self.models if rule(model)]
            if found:
                return found[0]
        return None

    def load(self, model: ServedModel):
        """The ChatModel of `model`, loading it (and closing the one held) when another is held."""
        if self._loaded_id != model.id:
            self._close_loaded()
            if self._loader is None:
                from engine.chat.runtime import ChatModel

                self._loader = ChatModel
            self._loaded = self._loader(model.path, n_ctx=self.n_ctx, n_gpu_layers=self.gpu_layers)
            self._loaded_id = model.id
        return self._loaded

    def _close_loaded(self) -> None:
        loaded, self._loaded, self._loaded_id = self._loaded, None, None
        if loaded is not None:
            loaded.close()

    def close(self, wait_s: float = 30.0) -> None:
        """Free the loaded model once no request decodes (waiting at most `wait_s` for the one that does)."""
        if self.turns.acquire(timeout_s=wait_s):
            try:
                self._close_loaded()
            finally:
                self.turns.release()
