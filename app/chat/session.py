"""Qt adapter over engine.chat.conversation: one chat turn at a time on a worker thread, events as signals.

`ModelHost` keeps one loaded ChatModel and swaps it when a conversation asks for another file or
context size; loading and generation happen on the worker thread, never on the GUI thread. Holds no
chat logic of its own: send/regenerate/render are engine calls.
"""

from __future__ import annotations

import threading

from app.qt import QtCore, Signal
from app.workers import ThreadJob
from engine import r1
from engine.chat.conversation import LEAF, TurnSettings, messages_for, regenerate, send
from engine.chat.reasoning import ThinkingSwitch, thinking_switch
from engine.chat.runtime import ChatEvent, ChatModel
from engine.chat_template import ChatTemplate
from engine.errors import AhaError
from engine.store import Store

DEFAULT_N_CTX = 4096


def settings_for(conversation_settings: dict) -> TurnSettings:
    return TurnSettings.from_conversation(conversation_settings)


def read_thinking_switch(path: str) -> ThinkingSwitch:
    """The thinking switch of a GGUF's chat template (the known R1 template when it has none), read from the
    file's header without loading the model: what ChatModel.thinking_switch will say."""
    from pathlib import Path

    from engine.models import read_gguf_info

    source = read_gguf_info(path).chat_template or r1.CHAT_TEMPLATE
    return thinking_switch(ChatTemplate(source, origin=Path(path).name))


class ModelHost:
    """The loaded model, shared by chat turns and prompt previews (used on worker threads only)."""

    def __init__(self) -> None:
        self._model: ChatModel | None = None
        self._key: tuple | None = None
        self.lock = threading.Lock()

    def get(self, path: str, n_ctx: int = DEFAULT_N_CTX, gpu_layers: int = -1) -> ChatModel:
        """The model for these settings, loading it (and closing the previous one) when needed."""
        if not path:
            raise AhaError("no model chosen for this conversation; pick one in the model list above.")
        key = (path, n_ctx, gpu_layers)
        if key != self._key:
            self.close()
            self._model = ChatModel(path, n_ctx=n_ctx, n_gpu_layers=gpu_layers)
            self._key = key
        return self._model

    def close(self) -> None:
        if self._model is not None:
            self._model.close()
        self._model, self._key = None, None


class ChatSession(QtCore.QObject):
    """Runs chat turns; emits `delta(kind, text)`, `finished(stats)`, `failed(message)`, `status(text)`."""

    delta = Signal(str, str)
    finished = Signal(dict)
    failed = Signal(str)
    status = Signal(str)
    busy_changed = Signal(bool)
    prompt_ready = Signal(object)  # engine.chat.runtime.RenderedPrompt
    switch_ready = Signal(str, object)  # a model's path, its ThinkingSwitch (or an AhaError's line as a str)

    def __init__(self, store: Store, host: ModelHost | None = None, parent=None):
        super().__init__(parent)
        self.store = store
        self.host = host or ModelHost()
        self.job: ThreadJob | None = None

    @property
    def busy(self) -> bool:
        return self.job is not None and self.job.is_running()

    def send(self, conversation_id: int, text: str, parent_id: int | str | None = LEAF) -> None:
        settings = self.store.get_conversation(conversation_id).settings

        def turn(model, cancel):
            return send(self.store, model, conversation_id, text, parent_id=parent_id,
                        settings=settings_for(settings), cancel=cancel)
        self._run(settings, turn)

    def regenerate(self, conversation_id: int, assistant_message_id: int) -> None:
        settings = self.store.get_conversation(conversation_id).settings

        def turn(model, cancel):
            return regenerate(self.store, model, conversation_id, assistant_message_id,
                              settings=settings_for(settings), cancel=cancel)
        self._run(settings, turn)

    def stop(self) -> None:
        if self.job is not None:
            self.job.stop()

    def preview_prompt(self, conversation_id: int | None, settings: dict, pending_text: str = "",
                       parent_id: int | str | None = LEAF) -> None:
        """Render the exact prompt the model will see when `pending_text` is sent after `parent_id` (as in
        `send`), on the worker thread; emits prompt_ready."""
        if conversation_id is None or parent_id is None:
            leaf = None
        else:
            leaf = self.store.get_conversation(conversation_id).leaf_id if parent_id == LEAF else parent_id
        turn = settings_for(settings)
        messages = messages_for(self.store, leaf, turn.system_prompt)
        if pending_text.strip():
            messages.append({"role": "user", "content": pending_text})

        def work(emit, cancel):
            with self.host.lock:
                model = self.host.get(settings.get("model", ""), settings.get("n_ctx", DEFAULT_N_CTX),
                                      settings.get("gpu_layers", -1))
                return model.render(messages, turn.history, turn.thinking)
        job = ThreadJob(work, self)
        job.finished.connect(self.prompt_ready.emit)
        job.failed.connect(self.failed.emit)
        job.start()

    def read_switch(self, path: str) -> None:
        """Read the thinking switch of the model at `path` on a worker thread; emits switch_ready."""
        job = ThreadJob(lambda emit, cancel: read_thinking_switch(path), self)
        job.finished.connect(lambda switch: self.switch_ready.emit(path, switch))
        job.failed.connect(lambda message: self.switch_ready.emit(path, message))
        job.start()

    def _run(self, settings: dict, turn) -> None:
        if self.busy:
            raise AhaError("a reply is still being written; stop it first.")

        def work(emit, cancel):
            with self.host.lock:
                emit({"status": "Loading model…"})
                model = self.host.get(settings.get("model", ""), settings.get("n_ctx", DEFAULT_N_CTX),
                                      settings.get("gpu_layers", -1))
                emit({"status": ""})
                for event in turn(model, cancel):
                    emit(event)
        self.job = ThreadJob(work, self)
        self.job.event.connect(self._on_event)
        self.job.failed.connect(self._on_failed)
        self.job.finished.connect(lambda _: self.busy_changed.emit(False))
        self.busy_changed.emit(True)
        self.job.start()

    def _on_event(self, event) -> None:
        if isinstance(event, ChatEvent):
            if event.kind == "done":
                self.finished.emit(event.stats or {})
            else:
                self.delta.emit(event.kind, event.text)
        else:
            self.status.emit(event["status"])

    def _on_failed(self, message: str) -> None:
        self.busy_changed.emit(False)
        self.failed.emit(message)

    def close(self) -> None:
        self.stop()
        if self.job is not None:
            self.job.wait(5)
        self.host.close()
