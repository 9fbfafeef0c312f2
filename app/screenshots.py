"""`make screenshots`: PNGs of each pane, light and dark, into docs/screenshots/.

Runs the real window offscreen on a throwaway data directory holding tiny random-weight GGUF models
(built like the test fixtures: a development checkout is needed) and one demo conversation whose
reasoning and answer were written for the picture; every widget is the app's own.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

QUESTION = "A train leaves at 14:35 and arrives at 17:10. How long is the trip, in minutes?"
THINKING = (
    "The trip runs from 14:35 to 17:10.\n"
    "From 14:35 to 15:00 is 25 minutes.\n"
    "From 15:00 to 17:00 is 2 hours, so 120 minutes.\n"
    "From 17:00 to 17:10 is 10 minutes.\n"
    "Total: 25 + 120 + 10 = 155 minutes.\n"
    "Wait, let me double-check by subtracting directly: 17:10 − 14:35. 17:10 is 16:70, and 16:70 − 14:35 = "
    "2:35, which is 2·60 + 35 = 155 minutes. Both ways agree.\n")
ANSWER = (
    "The trip takes **2 hours 35 minutes**:\n\n"
    "| leg | minutes |\n|---|---|\n| 14:35 → 15:00 | 25 |\n| 15:00 → 17:00 | 120 |\n| 17:00 → 17:10 | 10 |\n\n"
    "$$25 + 120 + 10 = 155$$\n\nSo the answer is $\\boxed{155}$ minutes.")
STATS = {"prompt_tokens": 31, "prompt_s": 0.041, "ttft_s": 0.052, "thinking_tokens": 148, "thinking_s": 3.9,
         "answer_tokens": 74, "answer_s": 1.9, "time_to_first_answer_token_s": 4.0, "tokens_per_s": 38.2,
         "context_used": 253, "context_size": 4096, "stop_reason": "eos", "thinking_unfinished": False}


def build_demo(home: Path) -> list[Path]:
    """Tiny GGUF models and one conversation in a fresh data directory."""
    sys.path.insert(0, str(ROOT))
    from engine.export import export
    from engine.models import Library
    from engine.store import Store
    from tests.tiny_models import make_checkpoint

    models = []
    for arch, kind in (("qwen2", "q8_0"), ("llama", "q4_k_m"), ("qwen3", "f16")):
        checkpoint = make_checkpoint(home / "checkpoints" / arch, arch)
        models.append(export(checkpoint, home / "models" / f"tiny-r1-{arch}-{kind}.gguf", kind)["gguf"])
    Library().add(home / "models")
    with Store() as store:
        conversation = store.create_conversation("Train trip duration", settings={"model": str(models[0])})
        user = store.add_message(conversation.id, None, "user", QUESTION)
        store.add_message(conversation.id, user.id, "assistant", ANSWER, thinking=THINKING, stats=STATS,
                          model=models[0].name, sampling={"temperature": 0.6, "top_p": 0.95})
        store.create_conversation("Is 1001 prime?")
    return models


def shoot(out_dir: Path, theme_name: str, models: list[Path]) -> list[Path]:
    from app import theme
    from app.main import MainWindow
    from app.qt import QtWidgets

    os.environ["AHA_THEME"] = theme_name
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    theme.apply(app)
    window = MainWindow()
    window.resize(1280, 800)
    window.show()
    written = []

    def grab(name: str) -> None:
        for _ in range(30):
            app.processEvents()
        path = out_dir / f"{name}-{theme_name}.png"
        window.grab().save(str(path))
        written.append(path)

    window.show_pane("chat")
    demo = next(c for c in window.store.list_conversations() if c.title == "Train trip duration")
    window.chat.open_conversation(demo.id)
    from app.message_view import AssistantMessageWidget

    for reply in window.chat.messages.findChildren(AssistantMessageWidget):
        reply.think.set_expanded(True)  # show the trace: the point of the app
    grab("chat")
    window.chat.settings_button.setChecked(True)
    grab("chat-settings")
    window.chat.settings_button.setChecked(False)
    if hasattr(window, "compare"):
        window.show_pane("compare")
        show_compare(window.compare)
        grab("compare")
    if hasattr(window, "models"):
        window.show_pane("models")
        window.models.refresh(select=str(models[0]))
        import time

        for _ in range(100):
            app.processEvents()
            time.sleep(0.02)
            if not window.models.is_busy():
                break
        grab("models")
    window.close()
    return written


def show_compare(pane) -> None:
    """Fill the compare pane with the demo reasoning, as two sampling settings of one model."""
    from engine.chat import ChatEvent

    pane.prompt.setPlainText(QUESTION)
    pane.sides["B"].sampling.setCurrentText("Greedy (0 · 1.0)")
    short = "From 14:35 to 17:10: 2 h 35 min = 155 minutes.\n"
    for name, thinking, stats in (("A", THINKING, STATS),
                                  ("B", short, {**STATS, "thinking_tokens": 21, "thinking_s": 0.6})):
        pane.sides[name].new_reply()
        for kind, text in (("thinking", thinking), ("answer", ANSWER)):
            pane._on_event((name, ChatEvent(kind, text).kind, text))
        pane._on_event((name, "done", stats))
    pane._on_end("")


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    out_dir = Path(args[0] if args else ROOT / "docs" / "screenshots")
    out_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    with tempfile.TemporaryDirectory(prefix="aha-screenshots-") as home:
        os.environ["AHA_HOME"] = home
        models = build_demo(Path(home))
        written = [path for theme_name in ("light", "dark") for path in shoot(out_dir, theme_name, models)]
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
