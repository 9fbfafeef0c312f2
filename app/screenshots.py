"""`make screenshots`: PNGs of each pane, light and dark, into docs/screenshots/, from real runs of the real window.

Nothing in the pictures is staged. Tiny models (about 1.5 million parameters, built like the test
fixtures: a development checkout is needed) are first taught, by a short fine-tune on this machine, to
answer the demo questions: "tiny-thinker" (Qwen2, f16) writes a long thought and a Markdown/LaTeX answer
for the train question; "tiny-brief" (Llama, q8_0) a short thought and a short answer, and it also
answers "Is 1001 prime?" and ends "Why is the sky blue?" inside its thought (end of sequence before
</think>). Our own exporter writes them to GGUF in a throwaway folder, next to three untrained
random-weight tiny models that only the Models pane lists.

Then, for each theme, the real window runs on a fresh data directory, on the X server of $DISPLAY when
there is one (`make screenshots` starts Xvfb with xvfb-run when it is installed), else on Qt's offscreen
platform: the questions are typed into the composer and sent, llama.cpp really generates the replies
(greedy sampling, so the text is the taught one, which is checked), the train chat is renamed through its
Rename dialog (its first question is too long a title for the picture) and its thought is opened; Compare
really runs both models on one prompt (in a 1400 px wide window; the others are 1280 × 800). Every number
shown (time to first token, thinking and answer tokens and seconds, tok/s, context use) is the engine's
own measurement of that run: those of a tiny model on a CPU, hence fast, and different from one run (and
one theme) to the next.

Three more pictures show the window's hard cases: a 200-character title with Settings open (the window
must keep its width, which is checked), the "Deleted · Undo" toast after deleting a chat, and the reply
that ended inside its thought. A check that fails is printed after all pictures are written, and the
exit status is 1.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GREEDY = "Greedy (0 · 1.0)"

QUESTION = "A train leaves at 14:35 and arrives at 17:10. How long is the trip, in minutes?"
THINKING = (
    "The trip runs from 14:35 to 17:10.\n"
    "From 14:35 to 15:00 is 25 minutes.\n"
    "From 15:00 to 17:00 is 2 hours, so 120 minutes.\n"
    "From 17:00 to 17:10 is 10 minutes.\n"
    "Total: 25 + 120 + 10 = 155 minutes.\n"
    "Wait, let me double-check: 17:10 − 14:35 = 2:35 = 155 minutes.\n")
ANSWER = (
    "The trip takes **2 hours 35 minutes**:\n\n"
    "| leg | minutes |\n|---|---|\n| 14:35 → 15:00 | 25 |\n| 15:00 → 17:00 | 120 |\n| 17:00 → 17:10 | 10 |\n\n"
    "$$25 + 120 + 10 = 155$$\n\nSo the answer is $\\boxed{155}$ minutes.")
BRIEF_THINKING = "14:35 to 17:10 is 2 h 35 min, and 2·60 + 35 = 155.\n"
BRIEF_ANSWER = "**155 minutes** (2 h 35 min), so the answer is $\\boxed{155}$."
TITLE = "Train trip duration"  # the first question is too long a title for the picture: renamed, as a user would
PRIME_QUESTION = "Is 1001 prime?"
PRIME_THINKING = "1001 = 7 · 143, and 143 = 11 · 13.\nSo 1001 = 7 · 11 · 13 has other divisors.\n"
PRIME_ANSWER = "**No.** $1001 = 7 \\cdot 11 \\cdot 13$, so 1001 is not prime."
SKY_QUESTION = "Why is the sky blue?"
SKY_THINKING = ("Sunlight mixes every colour.\nAir scatters short wavelengths far more than long ones.\n"
                "Blue is short, so blue light reaches the eye from all over the sky.\n")  # then EOS, no </think>
LONG_TITLE = ("Plan a three-day rail trip from Zurich to Milan for two adults on a tight budget: the cheapest "
              "tickets, one museum a day, vegetarian places near each station, and what to do if the last "
              "train is late.")  # 200 characters

# name, architecture, GGUF type, lessons (question, thought, answer; None: the reply ends inside its thought)
TAUGHT = (("tiny-thinker-qwen2-f16", "qwen2", "f16", ((QUESTION, THINKING, ANSWER),)),
          ("tiny-brief-llama-q8_0", "llama", "q8_0",
           ((QUESTION, BRIEF_THINKING, BRIEF_ANSWER), (PRIME_QUESTION, PRIME_THINKING, PRIME_ANSWER),
            (SKY_QUESTION, SKY_THINKING, None))))
RANDOM = (("qwen2", "q8_0"), ("llama", "q4_k_m"), ("qwen3", "f16"))


def build_models(work: Path) -> dict[str, Path]:
    """Teach the tiny models their replies and export them (and the random ones) to GGUF in work/models."""
    sys.path.insert(0, str(ROOT))
    import torch

    from engine.export.pipeline import export
    from tests.support.scripted_model import reply_text, train_scripted
    from tests.tiny_models import make_checkpoint

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is as fast, and far faster on a busy CPU
    models = {}
    try:
        for name, arch, kind, lessons in TAUGHT:
            started = time.monotonic()
            base = make_checkpoint(work / "checkpoints" / arch, arch)
            taught = train_scripted(base, work / "checkpoints" / name, steps=3000, lr=3e-3, settle_steps=50,
                                    lessons=[(q, t if a is None else reply_text(t, a)) for q, t, a in lessons])
            models[name] = export(taught, work / "models" / f"{name}.gguf", kind)["gguf"]
            print(f"taught {name} in {time.monotonic() - started:.0f} s", flush=True)
    finally:
        torch.set_num_threads(threads)  # one OpenMP thread would also slow llama.cpp's generation down
    for arch, kind in RANDOM:  # the untrained checkpoints (the taught models' bases): random replies
        base = work / "checkpoints" / arch
        if not (base / "model.safetensors").exists():
            make_checkpoint(base, arch)
        name = f"tiny-random-{arch}-{kind}"
        models[name] = export(base, work / "models" / f"{name}.gguf", kind)["gguf"]
    return models


def settle(app) -> None:
    """Let queued events, layouts and repaints run."""
    for _ in range(30):
        app.processEvents()


def wait_until(app, done, what: str, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"screenshots: {what} did not finish in {timeout_s:.0f} s")
        app.processEvents()
        time.sleep(0.01)
    settle(app)


def check(reply, thought: str, answer: str, where: str) -> None:
    """The generation must be the taught one (greedy decoding), or the picture would mislead."""
    if reply.think.text() != thought or reply.answer_text.strip() != answer:
        raise RuntimeError(f"screenshots: the {where} reply is not the taught one:\n"
                           f"{reply.think.text()!r}\n{reply.answer_text!r}")


def ask(app, pane, model: Path, question: str) -> None:
    """A new chat with this model: type the question, send it, wait for the reply to be written."""
    pane.new_conversation()
    pane.set_model(str(model))
    pane.composer.setPlainText(question)
    pane.send()
    wait_until(app, lambda: not pane.session.busy and pane.streaming is None, f"the chat reply to {question!r}")


def open_chat(app, pane, conversation_id: int) -> None:
    """Open a chat from the conversation list, as a click on it does."""
    from app.qt import Qt

    items = pane.conversations.list
    item = next(items.item(row) for row in range(items.count())
                if items.item(row).data(Qt.ItemDataRole.UserRole)[0] == conversation_id)
    items.itemClicked.emit(item)
    settle(app)


def rename(app, pane, title: str) -> None:
    """Rename the open chat through its Rename… dialog (answered with `title`), then open it again."""
    from app.qt import QtWidgets

    conversation_id = pane.conversation_id
    ask_text = QtWidgets.QInputDialog.getText
    QtWidgets.QInputDialog.getText = lambda *args, **kwargs: (title, True)
    try:
        pane.conversations.rename(conversation_id)
    finally:
        QtWidgets.QInputDialog.getText = ask_text
    open_chat(app, pane, conversation_id)


def last_reply(pane):
    from app.chat.messages import AssistantMessageWidget

    layout = pane.message_layout
    replies = [layout.itemAt(i).widget() for i in range(layout.count())
               if isinstance(layout.itemAt(i).widget(), AssistantMessageWidget)]
    return replies[-1]


def shoot(out_dir: Path, theme_name: str, work: Path, models: dict[str, Path], problems: list[str]) -> list[Path]:
    """Every picture in one theme; what a picture shows wrongly (a check that failed) goes into `problems`."""
    from app import theme
    from app.main import MainWindow
    from app.qt import QtWidgets
    from engine.models import Library

    home = work / f"home-{theme_name}"
    os.environ["AHA_HOME"] = str(home)
    os.environ["AHA_THEME"] = theme_name
    Library().add(work / "models")
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    theme.apply(app)
    window = MainWindow()
    window.resize(1280, 800)
    window.show()
    written = []
    thinker, brief = models["tiny-thinker-qwen2-f16"], models["tiny-brief-llama-q8_0"]

    def grab(name: str) -> None:
        if app.focusWidget() is not None:
            app.focusWidget().clearFocus()  # no text cursor blinking in the picture
        settle(app)
        path = out_dir / f"{name}-{theme_name}.png"
        window.grab().save(str(path))
        written.append(path)

    window.show_pane("chat")
    chat = window.chat
    chat.settings.preset.setCurrentText(GREEDY)
    ask(app, chat, brief, PRIME_QUESTION)
    check(last_reply(chat), PRIME_THINKING, PRIME_ANSWER, "chat (1001)")
    prime = chat.conversation_id
    ask(app, chat, brief, SKY_QUESTION)
    check(last_reply(chat), SKY_THINKING, "", "chat (sky, ended inside its thought)")
    sky = chat.conversation_id
    ask(app, chat, thinker, QUESTION)
    check(last_reply(chat), THINKING, ANSWER, "chat")
    rename(app, chat, TITLE)
    window.resize(1280, 800)
    chat.splitter.setSizes([240, 760, 300])  # the pane's own default sizes, which the long title had squeezed
    last_reply(chat).think.header.click()  # open the trace, as a reader would: it is the point of the app
    grab("chat")
    chat.settings_button.setChecked(True)
    grab("chat-settings")
    chat.settings_button.setChecked(False)

    rename(app, chat, LONG_TITLE)  # a 200-character title, then Settings: the title elides, the window keeps its width
    width = window.width()
    chat.settings_button.setChecked(True)
    grab("long-title-settings")
    if window.width() != width:
        problems.append(f"{theme_name}: opening Settings with a {len(LONG_TITLE)}-character title widened the "
                        f"window from {width} to {window.width()} px")
    chat.settings_button.setChecked(False)
    rename(app, chat, TITLE)
    window.resize(1280, 800)
    chat.splitter.setSizes([240, 760, 300])

    open_chat(app, chat, sky)  # the reply that ended inside its thought, as the chat shows it when opened again
    grab("thought-unfinished")
    chat.delete_conversation(prime)  # what the list's Delete does: a toast offers Undo for a few seconds
    grab("undo-toast")
    if not chat.toast.isVisible():
        problems.append(f"{theme_name}: the Undo toast was gone before its picture was taken")
    chat.toast.button.click()
    settle(app)
    if prime not in [conversation.id for conversation in window.store.list_conversations()]:
        problems.append(f"{theme_name}: Undo in the toast did not bring the deleted chat back")
    window.resize(1280, 800)

    window.show_pane("compare")
    window.resize(1400, 800)  # two replies side by side: at 1280 px a stats line wraps inside "tok/s"
    compare = window.compare
    compare.refresh_models()
    for side, model in (("A", thinker), ("B", brief)):
        compare.sides[side].model.setCurrentIndex(compare.sides[side].model.findData(str(model)))
        compare.sides[side].sampling.setCurrentText(GREEDY)
    compare.prompt.setPlainText(QUESTION)
    compare.run_button.click()
    wait_until(app, lambda: compare.job is not None and not compare.job.is_running(), "the comparison")
    check(compare.sides["A"].reply, THINKING, ANSWER, "compare A")
    check(compare.sides["B"].reply, BRIEF_THINKING, BRIEF_ANSWER, "compare B")
    for side in compare.sides.values():
        side.reply.think.header.click()
    grab("compare")

    window.show_pane("models")
    window.resize(1280, 800)
    window.models.refresh(select=str(thinker))
    wait_until(app, lambda: not window.models.is_busy(), "the models table", 30)
    window.models.details.tabs.setCurrentIndex(1)  # Metadata: the R1 template's fullwidth bars need a CJK font
    grab("models")
    window.close()
    return written


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    out_dir = Path(args[0] if args else ROOT / "docs" / "screenshots")
    out_dir.mkdir(parents=True, exist_ok=True)
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # no display: Qt's offscreen platform
    started = time.monotonic()
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="aha-screenshots-") as work:
        models = build_models(Path(work))
        print(f"models ready after {time.monotonic() - started:.0f} s", flush=True)
        written = [path for theme_name in ("light", "dark")
                   for path in shoot(out_dir, theme_name, Path(work), models, problems)]
    for path in written:
        print(path)
    from app.qt import QtGui

    print(f"screenshots: {time.monotonic() - started:.0f} s on Qt's {QtGui.QGuiApplication.platformName()} platform",
          flush=True)
    for problem in problems:
        print(f"screenshots: wrong in the picture: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
