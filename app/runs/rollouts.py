"""The Runs pane's rollout browser: pick a step, then one of its prompts, and see its G completions side by
side, each with its think trace folded as in Chat (app.chat.messages' ThinkBlock), the answer, every reward,
the total and the advantage; sort them by reward, follow one prompt across the steps, search every rollout's
text. A trace-generation run shows its teacher's replies the same way, accepted or rejected with the
verifier's reason.

The rollouts come from samples.jsonl (engine.train.follow.SampleIndex: positions only, parsed when shown) and
are followed by polling, so a run started anywhere is browsed the same way; `add_event` adds a job's
`sample` events before the file has them, and the file's copy replaces them.
"""

from __future__ import annotations

import math
from pathlib import Path

from app.chat.messages import AutoHeightText, ThinkBlock
from app.qt import Qt, QtCore, QtWidgets
from engine.train.follow import SampleIndex, read_jsonl, trace_records, with_verdicts

POLL_MS = 1000
CARD_WIDTH = 270  # four side by side next to the prompt list in a 1600 px window
SORTS = {"as sampled": None, "reward, best first": True, "reward, worst first": False}


class RolloutThought(ThinkBlock):
    """Chat's think block for a finished rollout: folded, its header counts the trace's lines (a rollout has
    no timing) and says when the completion ended inside its thought."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.unfinished = False

    def show_thought(self, thinking: str, unfinished: bool) -> None:
        self.unfinished = unfinished
        self.body.setPlainText(thinking)
        self.setVisible(bool(thinking))
        self.set_expanded(False)

    def _update_header(self) -> None:
        lines = self.text().count("\n") + 1 if self.text() else 0
        what = "Cut off while thinking" if self.unfinished else "Thought"
        self.header.setText(f"{what} · {lines} line{'s' if lines != 1 else ''}")
        self.header.setToolTip(self.header.text())


def _number(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "none"
    return f"{value:+.3g}" if isinstance(value, float) and value < 0 else f"{value:.3g}"


def completion_header(index: int, completion: dict) -> str:
    """'#2 · reward 1.2 · advantage +0.71 · 8 tokens · clipped' (a trace: accepted / rejected: reason)."""
    parts = [f"#{index + 1}", f"reward {_number(completion.get('reward'))}"]
    if completion.get("advantage") is not None:
        parts.append(f"advantage {completion['advantage']:+.3g}")
    if completion.get("length") is not None:
        parts.append(f"{completion['length']} tokens")
    if completion.get("truncated"):
        parts.append("clipped")
    if "verdict" in completion:  # a teacher's reply in a trace-generation run
        verdict = completion["verdict"]
        parts.append("accepted" if completion.get("accepted") else f"rejected: {verdict}" if verdict
                     else "passed, not kept (a duplicate or the keep rule)")
    return " · ".join(parts)


def rewards_line(completion: dict) -> str:
    return "  ".join(f"{name} {_number(value)}" for name, value in (completion.get("rewards") or {}).items())


class CompletionCard(QtWidgets.QFrame):
    """One completion: header (reward, advantage, length), each reward, the folded thought, the answer. Cards
    are reused from step to step (`show_completion`): making one costs more than filling it."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setObjectName("MessageCard")
        self.completion: dict = {}
        self.setFixedWidth(CARD_WIDTH)
        self.setSizePolicy(QtWidgets.QSizePolicy.Policy.Fixed, QtWidgets.QSizePolicy.Policy.Maximum)
        self.header = QtWidgets.QLabel(wordWrap=True)
        font = self.header.font()
        font.setBold(True)
        self.header.setFont(font)
        self.rewards = QtWidgets.QLabel(objectName="Muted", wordWrap=True)
        self.think = RolloutThought()
        self.answer = AutoHeightText()  # plain text: what the rewards read, not its Markdown rendering
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(10, 8, 10, 8)
        layout.setSpacing(4)
        for widget in (self.header, self.rewards, self.think, self.answer):
            layout.addWidget(widget)
        layout.addStretch()

    def show_completion(self, index: int, completion: dict) -> None:
        self.completion = completion
        self.header.setText(completion_header(index, completion))
        self.rewards.setText(rewards_line(completion))
        answer_text = str(completion.get("answer_text") or "")
        self.think.show_thought(str(completion.get("thinking") or ""),
                                bool(completion.get("truncated")) and not answer_text.strip())
        self.answer.setPlainText(answer_text.strip() or "(no answer)")


class RolloutBrowser(QtWidgets.QWidget):
    """A run's rollouts by step and prompt. `open_run(run)` (a store row), `add_event(event)` (a job's
    `sample` events, the fast path), `clear()`."""

    def __init__(self, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.step_box = QtWidgets.QComboBox(minimumContentsLength=8)
        self.step_box.setSizeAdjustPolicy(QtWidgets.QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.latest = QtWidgets.QCheckBox("Latest step", checked=True)
        self.latest.setToolTip("Show each new step as the run writes it")
        self.sort_box = QtWidgets.QComboBox()
        self.sort_box.addItems(list(SORTS))
        self.search = QtWidgets.QLineEdit(placeholderText="Search the rollouts (prompt, answer, completion text)",
                                          clearButtonEnabled=True)
        self.follow_button = QtWidgets.QPushButton("Follow this prompt")
        self.follow_button.setToolTip("Show the selected prompt at every step: how its answers changed")
        self.back_button = QtWidgets.QPushButton("Back to the step")
        self.status = QtWidgets.QLabel(objectName="Muted")
        bar = QtWidgets.QHBoxLayout()
        for widget in (QtWidgets.QLabel("Step"), self.step_box, self.latest, QtWidgets.QLabel("Sort"), self.sort_box):
            bar.addWidget(widget)
        bar.addWidget(self.search, 1)
        bar.addWidget(self.follow_button)
        bar.addWidget(self.back_button)
        self.list = QtWidgets.QListWidget()
        self.list.setWordWrap(True)
        self.list.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.prompt_view = QtWidgets.QLabel(wordWrap=True)
        self.prompt_view.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.cards_host = QtWidgets.QWidget()
        self.cards_layout = QtWidgets.QHBoxLayout(self.cards_host)
        self.cards_layout.setContentsMargins(0, 0, 0, 0)
        self.cards_layout.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        self.cards_scroll = QtWidgets.QScrollArea(widgetResizable=True, frameShape=QtWidgets.QFrame.Shape.NoFrame)
        self.cards_scroll.setWidget(self.cards_host)
        right = QtWidgets.QWidget()
        right_layout = QtWidgets.QVBoxLayout(right)
        right_layout.setContentsMargins(0, 0, 0, 0)
        right_layout.addWidget(self.prompt_view)
        right_layout.addWidget(self.cards_scroll, 1)
        split = QtWidgets.QSplitter()
        split.addWidget(self.list)
        split.addWidget(right)
        split.setStretchFactor(1, 3)
        split.setSizes([260, 800])
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(bar)
        layout.addWidget(self.status)
        layout.addWidget(split, 1)
        self.cards: list[CompletionCard] = []  # the cards in view, in the order shown
        self._card_pool: list[CompletionCard] = []
        self.mode = "step"          # "step" (a step's prompts), "prompt" (one prompt over the steps), "search"
        self.run: dict | None = None
        self._poll = QtCore.QTimer(self, interval=POLL_MS, timeout=self._on_poll)
        self._search_timer = QtCore.QTimer(self, interval=300, singleShot=True, timeout=self._run_search)
        self.step_box.activated.connect(self._on_step_picked)
        self.sort_box.currentIndexChanged.connect(lambda _: self._show_selected())
        self.list.currentRowChanged.connect(lambda _: self._show_selected())
        self.search.textChanged.connect(lambda _: self._search_timer.start())
        self.follow_button.clicked.connect(self.follow_selected_prompt)
        self.back_button.clicked.connect(self.back_to_step)
        self.latest.toggled.connect(lambda on: on and self.steps() and self.show_step(self.steps()[-1]))
        self.clear()

    # the interface

    def open_run(self, run: dict) -> None:
        """Browse `run` (a Store row: id, kind, status, dir, config) from its files, then keep following them."""
        self.clear()
        self.run = run
        config = run.get("config") or {}
        self._threshold = float(config.get("pass_threshold", 1.0))
        if run.get("kind") == "generate":
            self._traces = Path(config["output"]).expanduser() if config.get("output") else None
        elif run.get("dir"):
            self._index = SampleIndex(Path(run["dir"]) / "samples.jsonl")
        self._refresh()
        self._poll.start()

    def add_event(self, event: dict) -> None:
        """A job's `sample` event: shown at once (its step joins the list), replaced by the file's copy later."""
        if self.run is None or event.get("type") != "sample" or not isinstance(event.get("step"), int):
            return
        record = {key: value for key, value in event.items() if key not in ("v", "type")}
        if self.run.get("kind") == "generate":
            record = with_verdicts(record, self._threshold)
        self._live[(record["step"], str(record.get("prompt_id")))] = record

    def clear(self) -> None:
        self._poll.stop()
        self.run = None
        self._index: SampleIndex | None = None
        self._traces: Path | None = None
        self._trace_records: list[dict] = []
        self._trace_stamp: tuple | None = None  # (size, mtime) of the traces and progress files last read
        self._live: dict[tuple[int, str], dict] = {}   # (step, prompt_id) → a job's sample not yet in the file
        self._shown: tuple[int | None, int] = (None, 0)  # the step in view and its record count
        self._threshold = 1.0
        self._records: list[dict] = []  # what the list shows, row by row
        self.mode = "step"
        self._followed: str | None = None
        self.step_box.clear()
        self.list.clear()
        self.search.blockSignals(True)
        self.search.clear()
        self.search.blockSignals(False)
        self.status.setText("")
        self.prompt_view.setText("")
        self._set_cards([])
        self._update_buttons()

    # what the files hold, with the live records the files do not have yet

    def _refresh(self) -> None:
        """Read what the files gained; new steps join the step box, the newest is shown while "Latest step"
        is ticked, and the step in view is shown again when it gained prompts."""
        if self._index is not None:
            self._index.refresh()
        elif self._traces is not None:
            from engine.distill.generate import progress_path, rejected_path

            files = (self._traces, progress_path(self._traces), rejected_path(self._traces))
            stamp = tuple((path.stat().st_size, path.stat().st_mtime_ns) if path.exists() else None for path in files)
            if stamp != self._trace_stamp:  # read again only when a file changed (traces files grow large)
                self._trace_stamp = stamp
                self._trace_records = trace_records(*map(read_jsonl, files), pass_threshold=self._threshold)
        steps = self.steps()
        known = [self.step_box.itemData(index) for index in range(self.step_box.count())]
        if steps != known:
            current = self.step_box.currentData()
            self.step_box.blockSignals(True)
            self.step_box.clear()
            for step in steps:
                self.step_box.addItem(f"{step}", step)
            target = steps[-1] if steps and (self.latest.isChecked() or current not in steps) else current
            if target is not None:
                self.step_box.setCurrentIndex(steps.index(target))
            self.step_box.blockSignals(False)
        if self.mode == "step":
            step = self.step_box.currentData()
            if step != self._shown[0] or (step is not None and len(self.records(step)) != self._shown[1]):
                self._show_step(step)

    def steps(self) -> list[int]:
        steps = set(self._index.steps()) if self._index is not None else {r["step"] for r in self._trace_records}
        steps.update(step for step, _ in self._live)
        return sorted(steps)

    def records(self, step: int) -> list[dict]:
        """The step's records, one per prompt: the file's, then the job's that the file does not have yet."""
        if self._index is not None:
            found = self._index.records(step)
        else:
            found = [dict(record) for record in self._trace_records if record["step"] == step]
        ids = {str(record.get("prompt_id")) for record in found}
        for (live_step, identity), record in self._live.items():
            if live_step != step:
                continue
            if identity in ids:
                # A trace prompt: the event's replies until the files have them all (theirs hold the verifier's reasons).
                if self._index is None:
                    found = [record if str(r.get("prompt_id")) == identity
                             and len(r.get("completions", ())) < len(record.get("completions", ())) else r for r in found]
                continue
            found.append(record)
        return found

    def _all_records(self) -> list[dict]:
        return [record for step in self.steps() for record in self.records(step)]

    # the list on the left

    def _on_step_picked(self, index: int) -> None:
        step = self.step_box.itemData(index)
        self.latest.setChecked(step == (self.steps() or [None])[-1])
        self.mode = "step"
        self._show_step(step)

    def show_step(self, step: int) -> None:
        """Show `step`'s prompts (the first selected)."""
        if step in self.steps():
            self.step_box.setCurrentIndex(self.steps().index(step))
            self.latest.setChecked(step == self.steps()[-1])
        self.mode = "step"
        self._show_step(step)

    def _show_step(self, step: int | None) -> None:
        records = self.records(step) if step is not None else []
        self._shown = (step, len(records))
        self._fill(records, lambda record: _prompt_item_text(record))
        count = sum(len(record.get("completions", ())) for record in records)
        self.status.setText(f"step {step}: {len(records)} prompts, {count} completions" if step is not None
                            else "No rollouts yet: they appear with the run's first step.")

    def follow_selected_prompt(self) -> None:
        """Show the selected prompt at every step it was drawn (how its answers changed)."""
        record = self.selected_record()
        if record is None:
            return
        self.follow_prompt(str(record.get("prompt_id")))

    def follow_prompt(self, prompt_id: str) -> None:
        self.mode, self._followed = "prompt", prompt_id
        if self._index is not None:
            records = self._index.prompt_history(prompt_id)
            steps = {record["step"] for record in records}
            records += [record for (step, identity), record in self._live.items()
                        if identity == prompt_id and step not in steps]
        else:
            records = [record for record in self._all_records() if str(record.get("prompt_id")) == prompt_id]
        records.sort(key=lambda record: record["step"])
        self._fill(records, lambda record: f"step {record['step']} · {_mean_line(record)}")
        prompt = records[0].get("prompt", "") if records else ""
        self.status.setText(f"{_short(prompt)} at {len(records)} step(s)")

    def back_to_step(self) -> None:
        self.search.blockSignals(True)
        self.search.clear()
        self.search.blockSignals(False)
        self.show_step(self.step_box.currentData())

    def _run_search(self) -> None:
        text = self.search.text().strip()
        if not text:
            self.back_to_step()
            return
        self.mode = "search"
        if self._index is not None:
            from engine.train.follow import record_text

            found = self._index.search(text)
            seen = {(record["step"], str(record.get("prompt_id"))) for record in found}
            found += [record for key, record in self._live.items() if key not in seen
                      and text.casefold() in record_text(record).casefold()]
        else:
            from engine.train.follow import record_text

            found = [record for record in self._all_records() if text.casefold() in record_text(record).casefold()]
        found.sort(key=lambda record: record["step"])
        self._fill(found, lambda record: f"step {record['step']} · {_prompt_item_text(record)}")
        self.status.setText(f"{len(found)} rollout(s) contain “{text}”")

    def _fill(self, records: list[dict], text) -> None:
        selected = self.selected_record()
        self._records = records
        self.list.blockSignals(True)
        self.list.clear()
        for record in records:
            item = QtWidgets.QListWidgetItem(text(record))
            item.setToolTip(str(record.get("prompt", "")))
            self.list.addItem(item)
        row = 0
        if selected is not None and self.mode == "step":  # the same prompt stays selected as steps change
            row = next((index for index, record in enumerate(records)
                        if record.get("prompt_id") == selected.get("prompt_id")), 0)
        self.list.setCurrentRow(row if records else -1)
        self.list.blockSignals(False)
        self._show_selected()
        self._update_buttons()

    def selected_record(self) -> dict | None:
        row = self.list.currentRow()
        return self._records[row] if 0 <= row < len(getattr(self, "_records", [])) else None

    def _update_buttons(self) -> None:
        self.follow_button.setEnabled(self.mode != "prompt" and bool(getattr(self, "_records", [])))
        self.back_button.setVisible(self.mode != "step")

    # the completions on the right

    def _show_selected(self) -> None:
        record = self.selected_record()
        if record is None:
            self.prompt_view.setText("")
            self._set_cards([])
            return
        answer = f"   ·   answer: {record['answer']}" if record.get("answer") is not None else ""
        rejected = record.get("rejected") or {}
        note = ""
        if rejected and not any(completion.get("verdict") for completion in record.get("completions", ())):
            counts = ", ".join(f"{reason} {count}" for reason, count in rejected.items())
            note = (f"\n{sum(rejected.values())} rejected ({counts}): the traces file keeps only accepted replies; "
                    "the rejected ones are shown while this window follows the job")
        self.prompt_view.setText(f"step {record['step']} · prompt: {record.get('prompt', '')}{answer}{note}")
        self._set_cards(self.sorted_completions(record))

    def sorted_completions(self, record: dict) -> list[tuple[int, dict]]:
        """(original index, completion) in the order the sort box asks for."""
        completions = list(enumerate(record.get("completions", ())))
        descending = SORTS[self.sort_box.currentText()]
        if descending is not None:
            def key(pair):
                value = pair[1].get("reward")
                return -math.inf if value is None else value
            completions.sort(key=key, reverse=descending)
        return completions

    def _set_cards(self, completions: list[tuple[int, dict]]) -> None:
        """Fill a card per completion, reusing the cards already made (hidden when there are fewer)."""
        while len(self._card_pool) < len(completions):
            card = CompletionCard()
            self._card_pool.append(card)
            self.cards_layout.addWidget(card, 0, Qt.AlignmentFlag.AlignTop)
        for card, (index, completion) in zip(self._card_pool, completions, strict=False):
            card.show_completion(index, completion)
            card.show()
        for card in self._card_pool[len(completions):]:
            card.hide()
        self.cards = self._card_pool[:len(completions)]

    # following the files

    def _on_poll(self) -> None:
        if self.run is not None and self.isVisible():
            self._refresh()


def _short(text: str, limit: int = 80) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _mean_line(record: dict) -> str:
    rewards = [c.get("reward") for c in record.get("completions", ()) if isinstance(c.get("reward"), int | float)]
    mean = f"mean reward {sum(rewards) / len(rewards):.3g}" if rewards else "no rewards"
    best = max(record.get("completions", ()), key=lambda c: c.get("reward") or -math.inf, default=None)
    answer = f" · best answer {_short(best.get('answer_text') or '', 30)}" if best else ""
    return mean + answer


def _prompt_item_text(record: dict) -> str:
    return f"{_short(record.get('prompt', ''), 60)}\n{_mean_line(record)}"
