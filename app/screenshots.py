"""`make screenshots`: PNGs of each pane, light and dark, into docs/screenshots/, from real runs of the real window.

Nothing in the pictures is staged. Tiny models (about 1.5 million parameters, built like the test
fixtures: a development checkout is needed) are first taught, by a short fine-tune on this machine, to
answer the demo questions: "tiny-thinker" (Qwen2, f16) writes a long thought and a Markdown/LaTeX answer
for the train question; "tiny-brief" (Llama, q8_0) a short thought and a short answer, and it also
answers "Is 1001 prime?" and ends "Why is the sky blue?" inside its thought (end of sequence before
</think>). Our own exporter writes them to GGUF in a throwaway folder, next to three untrained
random-weight tiny models that only the Models pane lists. The last picture of the chat part shows the Models
pane serving them (`aha serve` started by its Serve toggle), after a client asked tiny-thinker the train
question over real HTTP, once streamed.

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
that ended inside its thought. Two show the thinking budget: the train question asked again with a budget of
the tokens of its thought's first four lines, its thought (cut there, ending in the budget's sentence) opened
over the answer (the thinker is also taught to answer after that sentence, which is given, not learned; both
are checked); then Settings with that budget, its message and the thinking switch, disabled with the reason
(the tiny models have the R1 template, which always thinks); then that chat with its thinking removed and
the bar that offers Undo; and Compare with the thinker on both sides, that budget against 1024 tokens.

The Train, Runs and Export pictures come from real training on this machine: in each theme's window, two
GRPO runs of the tiny Qwen2 checkpoint (random weights, the R1 template) on the built-in addition task are
started from the Train form (the CPU smoke-test preset, longer: 6 and 12 steps, 4 completions of 16 tokens),
and run as `aha grpo` children. The Train pictures show the form of the second with its dataset preview
and the rendered first prompt, then (scrolled down) a reward check sampled from the model; "Show command"
in both. The Runs pictures
show the table with both runs, the dashboard of the 12-step run (its learning-signal warnings too: an
untrained model clips every completion and earns no reward, which the dashboard says), its rollouts at
the last step and the two runs compared; the Export picture, that run's adapter merged into an f32 GGUF and
checked against the HF model.

The Eval pictures come from a real `aha eval` of four GGUFs, started from the Eval pane: the tiny Qwen2
checkpoint is taught six short word problems twice, "careful" (a thought of several lines, one answer
wrong) and "hasty" (a thought of one to three lines, three answers wrong), exported to f16 (the careful one to q8_0
too, the quantization question); the untrained checkpoint is the baseline. Four samples per problem at
temperature 0.6 through llama.cpp, scored by the verifier: the pane shows the side-by-side table, the
accuracy-by-thinking-length curve, then a problem's samples in the drill-down.

The pipeline pictures come from a real `aha pipeline run r1-mini` (the file as shipped, no `--set`: its seven
stages, 3 minutes on 2 idle cores, 6½ on busy ones), run once as a child process on a fresh data directory;
then each theme's window opens on that directory: the Runs pane with the pipeline run selected (the chain of
its seven stage cards, all complete, which is checked, over its overview), then a click on the reasoning-RL
card, whose GRPO dashboard opens below the chain.
`AHA_SCREENSHOTS=train` (or `chat`, `serve`, `eval`, `demo`, `pipeline`) takes only those pictures; `serve` is
the two Models pictures alone (they are also the chat part's last).

A check that fails is printed after all pictures are written, and the
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

BUDGET_LINES = 4  # the thinking budget picture's budget: the tokens of the thought's first 4 lines


def budget_given() -> str:
    """What the thinker has in its context when the budget ends its thought after BUDGET_LINES lines."""
    from engine.chat.reasoning import budget_text

    return "".join(THINKING.splitlines(keepends=True)[:BUDGET_LINES]) + budget_text()


# name, architecture, GGUF type, lessons (question, thought, answer; None: the reply ends inside its thought;
# a fourth item: the thought is given, not learned, the answer follows it)
TAUGHT = (("tiny-thinker-qwen2-f16", "qwen2", "f16", ((QUESTION, THINKING, ANSWER),
                                                      (QUESTION, budget_given, ANSWER, "given"))),
          ("tiny-brief-llama-q8_0", "llama", "q8_0",
           ((QUESTION, BRIEF_THINKING, BRIEF_ANSWER), (PRIME_QUESTION, PRIME_THINKING, PRIME_ANSWER),
            (SKY_QUESTION, SKY_THINKING, None))))
RANDOM = (("qwen2", "q8_0"), ("llama", "q4_k_m"), ("qwen3", "f16"))

# The Eval pictures' problems (prompt, reference answer) and what each taught model writes for them:
# (thought lines, boxed answer). "careful" gets #5 wrong (it forgets the eaten apples), "hasty" #3, #5, #6.
EVAL_PROBLEMS = (
    ("What is 17 + 25?", "42"),
    ("What is 9 times 8?", "72"),
    ("A box holds 12 eggs. How many eggs are in 5 boxes?", "60"),
    ("What is 100 - 37?", "63"),
    ("Tom has 3 bags of 7 apples and eats 4. How many are left?", "17"),
    ("What is 15% of 80?", "12"),
)
CAREFUL = (
    (("17 + 25: add the tens first.", "10 + 20 = 30.", "Then the ones: 7 + 5 = 12.", "30 + 12 = 42.",
      "Check: 42 - 25 = 17. Right."), "42"),
    (("9 times 8 is 9 added 8 times.", "9 * 8 = 10 * 8 - 8.", "10 * 8 = 80, and 80 - 8 = 72.",
      "Check: 72 / 9 = 8."), "72"),
    (("One box holds 12 eggs.", "5 boxes hold 5 * 12 eggs.", "5 * 10 = 50 and 5 * 2 = 10.", "50 + 10 = 60.",
      "So 60 eggs."), "60"),
    (("100 - 37: take away 30 first.", "100 - 30 = 70.", "Then take away 7: 70 - 7 = 63.",
      "Check: 63 + 37 = 100."), "63"),
    (("3 bags of 7 apples.", "3 * 7 = 21 apples.", "So Tom has 21 apples."), "21"),
    (("15% of 80 means 15/100 * 80.", "10% of 80 is 8.", "5% of 80 is 4.", "8 + 4 = 12."), "12"),
)
HASTY = ((("17 + 25 = 42.",), "42"), (("9 * 8: 9 * 10 = 90, minus 18.", "72."), "72"),
         (("12 * 5 = 50.",), "50"), (("100 - 37: 100 - 40 = 60.", "Plus 3: 63.", "Done."), "63"),
         (("3 * 7 = 21.", "21 apples."), "21"), (("15 of 80 is 15.",), "15"))
EVAL_K = 4


def lesson(question: str, thought, answer: str | None, given: str = "") -> tuple[str, ...]:
    """A TAUGHT lesson as train_scripted takes it: (question, reply), or (question, answer, thought) when the
    thought is given (a callable then makes it)."""
    from tests.support.scripted_model import reply_text

    if given:
        return (question, answer, thought())
    return (question, thought if answer is None else reply_text(thought, answer))


def build_models(work: Path) -> dict[str, Path]:
    """Teach the tiny models their replies and export them (and the random ones) to GGUF in work/models."""
    sys.path.insert(0, str(ROOT))
    import torch

    from engine.export.pipeline import export
    from tests.support.scripted_model import train_scripted
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
                                    lessons=[lesson(*taught_lesson) for taught_lesson in lessons])
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


def build_eval_models(work: Path) -> tuple[list[Path], Path]:
    """The Eval pictures' GGUFs (baseline, careful f16, careful q8_0, hasty f16) in work/eval-models, and the
    problems' JSONL (a `prompt` column: the problems are asked as written)."""
    import json

    sys.path.insert(0, str(ROOT))
    import torch

    from engine.export.pipeline import export
    from tests.support.scripted_model import reply_text, train_scripted
    from tests.tiny_models import make_checkpoint

    folder = work / "eval-models"
    base = make_checkpoint(work / "checkpoints" / "eval-qwen2", "qwen2")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    models = [export(base, folder / "tiny-untrained-f16.gguf", "f16")["gguf"]]
    try:
        for name, replies in (("careful", CAREFUL), ("hasty", HASTY)):
            started = time.monotonic()
            lessons = [(question, reply_text("".join(line + "\n" for line in lines), f"The answer is \\boxed{{{answer}}}."))
                       for (question, _), (lines, answer) in zip(EVAL_PROBLEMS, replies, strict=True)]
            taught = train_scripted(base, work / "checkpoints" / f"eval-{name}", steps=3000, lr=3e-3,
                                    settle_steps=100, lessons=lessons)
            models.append(export(taught, folder / f"tiny-{name}-f16.gguf", "f16")["gguf"])
            if name == "careful":
                models.append(export(taught, folder / f"tiny-{name}-q8_0.gguf", "q8_0")["gguf"])
            print(f"taught the {name} eval model in {time.monotonic() - started:.0f} s", flush=True)
    finally:
        torch.set_num_threads(threads)
    data = work / "eval-problems.jsonl"
    data.write_text("".join(json.dumps({"prompt": question, "answer": answer}) + "\n"
                            for question, answer in EVAL_PROBLEMS), encoding="utf-8")
    return [Path(model) for model in models], data


def shoot_eval(app, window, grab, models: list[Path], data: Path, problems: list[str], theme_name: str) -> None:
    """Eval: the four models run from the pane (table and curve), then the drill-down of problem 3."""
    from app.workers import JobStatus

    pane = window.eval_pane
    window.show_pane("eval")
    window.resize(1280, 800)
    pane.set_models([f"gguf:{model}" for model in models])
    pane.set_dataset(str(data))
    pane.k_spin.setValue(EVAL_K)
    pane.tokens_spin.setValue(256)
    pane.temperature_spin.setValue(0.6)
    job = pane.start()
    if job is None:
        raise RuntimeError(f"screenshots: the Eval pane did not start: {pane.detail.full_text()}")
    outcomes = []
    job.finished.connect(outcomes.append)
    wait_until(app, lambda: bool(outcomes), "the evaluation", 600)
    if outcomes[0].status != JobStatus.COMPLETE:
        raise RuntimeError(f"screenshots: the evaluation did not complete: {outcomes[0]}")
    settle(app)
    pane.tabs.setCurrentWidget(pane.plot)
    if len(pane.results_model.rows()) != len(models):
        problems.append(f"{theme_name}: the Eval table has {len(pane.results_model.rows())} rows, not {len(models)}")
    if len(pane.plot.curves) < 2:
        problems.append(f"{theme_name}: the thinking-length plot draws {len(pane.plot.curves)} lines")
    time.sleep(0.3)
    grab("eval")
    pane.tabs.setCurrentWidget(pane.drilldown)
    prompt_ids = list(pane.results.problems)
    if len(prompt_ids) != len(EVAL_PROBLEMS):
        problems.append(f"{theme_name}: the drill-down lists {len(prompt_ids)} problems, not {len(EVAL_PROBLEMS)}")
    else:
        eggs = next(problem.prompt_id for problem in pane.results.problems.values() if "eggs" in problem.prompt)
        pane.drilldown.select_problem(eggs)            # the eggs: careful right, hasty wrong
        pane.drilldown.set_model(1)
        settle(app)
        for card in pane.drilldown.cards[:2]:
            card.think.header.click()
        if not pane.drilldown.cards or not any(card.majority for card in pane.drilldown.cards):
            problems.append(f"{theme_name}: the drill-down marks no majority sample")
    grab("eval-problems")


def shoot_demo(out_dir: Path, work: Path, problems: list[str]) -> list[Path]:
    """The demo from the first-run screen (the real DEFAULT recipe, about 2 minutes on 2 cores), in the light
    theme only: the dashboard mid-GRPO, the before/after table in the Eval pane, the chat with the model."""
    from app.demo import DemoFlow

    app, window, grab, written = open_window(work / "home-demo", "light", out_dir)  # a first run: nothing there

    DemoFlow.FLAGS = ()
    flow, runs = window.demo, window.runs
    table_lines: list[str] = []
    flow.stage_finished.connect(lambda line: table_lines.append(line) if line.startswith("[5/7]") else None)
    window.empty.demo_button.click()

    def grpo_halfway() -> bool:
        row = runs.selected_row()
        reward = runs.dashboard.plots.get("Reward")
        return (flow.stage == "grpo" and row is not None and row.id == flow.stage_runs.get("grpo")
                and reward is not None and reward.points("reward") >= 45)

    wait_until(app, grpo_halfway, "the demo's GRPO stage, half way", 600)
    time.sleep(0.6)  # the dashboard redraws at most every 0.5 s
    grab("demo-dashboard")
    wait_until(app, lambda: bool(table_lines), "the demo's evaluation of GRPO", 300)
    if len(window.eval_pane.results_model.rows()) != 2:
        problems.append(f"demo: the Eval table has {len(window.eval_pane.results_model.rows())} rows, not 2")
    grab("demo-eval")
    wait_until(app, lambda: window.chat_stack.currentWidget() is window.chat and flow.result is not None
               and not window.chat.session.busy and window.chat.streaming is None, "the demo's chat", 300)
    last_reply(window.chat).think.header.click()  # the trace open: the column lines the model learned
    grab("demo-chat")
    window.close()
    return written


def open_window(home: Path, theme_name: str, out_dir: Path):
    """The real window on the data directory `home` in `theme_name`, 1280 × 800, and a `grab(name)` that saves
    it as <name>-<theme>.png in out_dir (focus cleared, events settled) into the returned `written` list."""
    from app import theme
    from app.main import MainWindow
    from app.qt import QtWidgets

    os.environ["AHA_HOME"] = str(home)
    os.environ["AHA_THEME"] = theme_name
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    theme.apply(app)
    window = MainWindow()
    window.resize(1280, 800)
    window.show()
    written: list[Path] = []

    def grab(name: str) -> None:
        if app.focusWidget() is not None:
            app.focusWidget().clearFocus()
        settle(app)
        path = out_dir / f"{name}-{theme_name}.png"
        window.grab().save(str(path))
        written.append(path)

    return app, window, grab, written


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


def shoot(out_dir: Path, theme_name: str, work: Path, models: dict[str, Path], problems: list[str],
          parts: set[str], eval_models: tuple[list[Path], Path] | None = None) -> list[Path]:
    """Every picture in one theme; what a picture shows wrongly (a check that failed) goes into `problems`."""
    from app import theme
    from app.main import MainWindow
    from app.qt import QtWidgets
    from engine.models import Library

    home = work / f"home-{theme_name}"
    os.environ["AHA_HOME"] = str(home)
    os.environ["AHA_THEME"] = theme_name
    if models:
        Library().add(work / "models")
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    theme.apply(app)
    window = MainWindow()
    window.resize(1280, 800)
    window.show()
    written = []

    def grab(name: str, widget=None) -> None:
        if app.focusWidget() is not None:
            app.focusWidget().clearFocus()  # no text cursor blinking in the picture
        settle(app)
        path = out_dir / f"{name}-{theme_name}.png"
        (widget or window).grab().save(str(path))
        written.append(path)

    if "train" in parts:
        shoot_training(app, window, grab, work, problems, theme_name)
    if "eval" in parts and eval_models is not None:
        shoot_eval(app, window, grab, *eval_models, problems, theme_name)
    if "chat" not in parts:
        if "serve" in parts:
            shoot_models(app, window, grab, models["tiny-thinker-qwen2-f16"], problems, theme_name)
        window.close()
        return written
    thinker, brief = models["tiny-thinker-qwen2-f16"], models["tiny-brief-llama-q8_0"]
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

    budget = shoot_budget(app, chat, grab, thinker, work, problems, theme_name)
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
    for side, side_budget in (("A", budget), ("B", 1024)):  # same model, two thinking budgets
        compare.sides[side].model.setCurrentIndex(compare.sides[side].model.findData(str(thinker)))
        compare.sides[side].budget_on.setChecked(True)
        compare.sides[side].budget.setValue(side_budget)
    compare.run_button.click()
    wait_until(app, lambda: compare.job is not None and not compare.job.is_running(), "the budget comparison")
    check(compare.sides["A"].reply, budget_given().split("\n</think>")[0] + "\n", ANSWER, "compare A (budget)")
    check(compare.sides["B"].reply, THINKING, ANSWER, "compare B (budget 1024)")
    for side in compare.sides.values():
        side.reply.think.header.click()
    grab("compare-budget")

    shoot_models(app, window, grab, thinker, problems, theme_name)
    window.close()
    return written


def shoot_models(app, window, grab, thinker: Path, problems: list[str], theme_name: str) -> None:
    """Models: the library with tiny-thinker's metadata, then serving it (shoot_serving)."""
    window.show_pane("models")
    window.resize(1280, 800)
    window.models.refresh(select=str(thinker))
    wait_until(app, lambda: not window.models.is_busy(), "the models table", 30)
    window.models.details.tabs.setCurrentIndex(1)  # Metadata: the R1 template's fullwidth bars need a CJK font
    grab("models")
    shoot_serving(app, window, grab, thinker.stem, problems, theme_name)


def _http(url: str, body: dict | None = None) -> bytes:
    import json
    import urllib.request

    request = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return response.read()


def shoot_serving(app, window, grab, model_name: str, problems: list[str], theme_name: str) -> None:
    """Models, serving: the Serve toggle starts `aha serve` on a free port; a client lists the models and asks
    `model_name` the train question twice over real HTTP (once streamed), greedy; the log shows the three."""
    import json
    import socket

    from app.models.serve import ServeState
    from engine.request_log import DEFAULT_PORT

    panel = window.models.serve
    with socket.socket() as probe:               # the default port, as a user sees it, unless it is taken here
        port = DEFAULT_PORT if probe.connect_ex(("127.0.0.1", DEFAULT_PORT)) != 0 else 0
    if port == 0:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
    panel.port.setValue(port)
    panel.toggle.click()
    wait_until(app, lambda: panel.state != ServeState.STARTING, "the server", 120)
    if panel.state != ServeState.SERVING:
        problems.append(f"{theme_name}: Serve did not start: {panel.message.text()}")
        return
    models = [item["id"] for item in json.loads(_http(f"{panel.url}/models"))["data"]]
    model = next((name for name in models if model_name in name), None)
    if model is None:
        problems.append(f"{theme_name}: the server does not list {model_name}: {', '.join(models)}")
        model = models[0]
    question = {"model": model, "temperature": 0, "messages": [{"role": "user", "content": QUESTION}]}
    reply = json.loads(_http(f"{panel.url}/chat/completions", question))
    _http(f"{panel.url}/chat/completions", {**question, "stream": True})   # server-sent events, read to the end
    wait_until(app, lambda: len(panel.records()) == 3, "the request log", 30)
    if (reply["choices"][0]["message"].get("reasoning_content") or "").strip() != THINKING.strip():
        problems.append(f"{theme_name}: the served reply's reasoning_content is not the taught thought")
    if not all(record.reasoning_tokens for record in panel.records()[:2]):
        problems.append(f"{theme_name}: the request log shows no thinking tokens for the chat requests")
    grab("models-serving")
    panel.toggle.click()
    wait_until(app, lambda: panel.state == ServeState.OFF, "the server to stop", 30)


BUDGET_TITLE = "Train trip, thinking budget"


def shoot_budget(app, chat, grab, thinker: Path, work: Path, problems: list[str], theme_name: str) -> int:
    """The train question again with a thinking budget of the tokens of the thought's first BUDGET_LINES lines
    (the thinker was taught to answer after the budget's text there): the budget-ended thought, open, then
    Settings showing the budget and the (disabled) thinking switch; then the chat with its thinking removed and
    the bar that offers Undo (taken). Returns the budget."""
    from transformers import AutoTokenizer

    from engine.chat.reasoning import DEFAULT_BUDGET_MESSAGE

    tokenizer = AutoTokenizer.from_pretrained(work / "checkpoints" / thinker.stem)
    budget = len(tokenizer("".join(THINKING.splitlines(keepends=True)[:BUDGET_LINES]),
                           add_special_tokens=False).input_ids)
    settings = chat.settings
    settings.budget_on.setChecked(True)
    settings.budget.setValue(budget)
    ask(app, chat, thinker, QUESTION)
    reply = last_reply(chat)
    header = f"Ended by the thinking budget ({budget} tokens)"
    if not reply.think.header.text().startswith(header) or not reply.think.text().endswith(DEFAULT_BUDGET_MESSAGE + "\n"):
        problems.append(f"{theme_name}: the budget of {budget} tokens did not end the thought: "
                        f"{reply.think.header.text()!r}")
    check(reply, budget_given().split("\n</think>")[0] + "\n", ANSWER, "chat (thinking budget)")
    rename(app, chat, BUDGET_TITLE)
    chat.splitter.setSizes([240, 760, 300])
    last_reply(chat).think.header.click()
    grab("thought-budget")
    chat.settings_button.setChecked(True)
    wait_until(app, lambda: settings.switch is not None, "the thinking switch", 30)
    grab("chat-budget-settings")
    if settings.thinking.isEnabled() or not settings.thinking_note.text():
        problems.append(f"{theme_name}: the thinking switch of an R1-template model is not shown disabled with "
                        "its reason")
    chat.settings_button.setChecked(False)
    settings.budget_on.setChecked(False)
    chat.remove_thinking(chat.conversation_id)  # what the Chat menu's "Remove thinking…" does: a bar offers Undo
    settle(app)
    grab("thinking-removed")
    if not chat.thinking_bar.isVisible() or last_reply(chat).think.text():
        problems.append(f"{theme_name}: removing the thinking left the thought or showed no Undo bar")
    chat.thinking_bar_button.click()
    settle(app)
    if not last_reply(chat).think.text():
        problems.append(f"{theme_name}: Undo did not bring the removed thinking back")
    chat.window().statusBar().clearMessage()  # its "Restored the thinking…" is not what the next pictures show
    return budget


TRAIN_STEPS = 12  # the CPU smoke-test preset, longer: enough points for a curve, about half a minute on a CPU
SECOND_STEPS = 6  # the compare picture's second run
SMOKE = "CPU smoke test"
LENGTH = "completions/mean_length"


def build_checkpoint(work: Path) -> Path:
    """The tiny Qwen2 HF checkpoint (the R1 template, random weights) that the Train pictures fine-tune."""
    sys.path.insert(0, str(ROOT))
    from tests.tiny_models import make_checkpoint

    folder = work / "checkpoints" / "qwen2"
    if not (folder / "model.safetensors").exists():
        make_checkpoint(folder, "qwen2")
    return folder


def run_grpo(app, window, base: Path, steps: int, temperature: float):
    """Fill the Train form (the smoke-test preset on CPU, `steps` steps), Start it, wait for the run to end."""
    from app.workers import JobStatus

    train = window.train
    window.show_pane("train")
    train.set_kind("grpo")
    train.model.set_model(str(base))
    train.apply_preset(SMOKE)
    values = {**train.values(), "device": "cpu", "max_steps": steps, "save_steps": steps, "num_generations": 4,
              "max_completion_length": 16, "seed": 3, "temperature": temperature}
    train.set_values(values)
    job = train.start()
    if job is None:
        raise RuntimeError(f"screenshots: the Train pane did not start the run: {train.status.text()}")
    outcomes = []
    job.finished.connect(outcomes.append)
    wait_until(app, lambda: bool(outcomes), f"the {steps}-step GRPO run", 600)
    if outcomes[0].status != JobStatus.COMPLETE:
        raise RuntimeError(f"screenshots: the GRPO run did not complete: {outcomes[0]}")
    return job


def shoot_training(app, window, grab, work: Path, problems: list[str], theme_name: str) -> None:
    """Train (filled, dataset preview, reward check, command), Runs (dashboard, rollouts, compare), Export."""
    from app.qt import QtCore, QtWidgets

    base = build_checkpoint(work)
    train, runs, export = window.train, window.runs, window.export
    window.resize(1280, 800)

    # a short run first (its curves are the compare picture's second line), then the one the pictures show
    first = run_grpo(app, window, base, SECOND_STEPS, temperature=0.7)
    run_grpo_job = run_grpo(app, window, base, TRAIN_STEPS, temperature=1.0)
    window.show_pane("train")
    train.dataset.request_preview()
    wait_until(app, train.idle, "the dataset preview", 120)
    train.check_rewards()
    wait_until(app, train.idle, "the reward check", 300)
    train.show_command()
    if train.dataset.preview is None or not train.dataset.rendered.toPlainText():
        problems.append(f"{theme_name}: the Train pane shows no dataset preview or rendered prompt")
    if train.rewards.results.rowCount() == 0:
        problems.append(f"{theme_name}: the reward check shows no results")
    if not train.command_line.text().startswith("aha grpo"):
        problems.append(f"{theme_name}: Show command shows {train.command_line.text()!r}")
    grab("train")  # model, dataset preview, the rendered first prompt
    left = train.rewards.parentWidget()
    while not isinstance(left, QtWidgets.QScrollArea):
        left = left.parentWidget()
    left.ensureWidgetVisible(train.rewards.results)  # the reward check's table, below model and dataset
    grab("train-rewards")
    left.verticalScrollBar().setValue(0)

    window.show_pane("runs")
    runs.select_run(run_grpo_job.run_id)
    dashboard, rollouts = runs.dashboard, runs.rollouts
    wait_until(app, lambda: runs.selected_row() is not None and runs.selected_row().id == run_grpo_job.run_id
               and runs.selected_row().status == "complete", "the run's row", 30)
    wait_until(app, lambda: "Reward" in dashboard.plots and dashboard.plots["Reward"].points("reward") == TRAIN_STEPS,
               "the dashboard's curves", 30)
    runs.tabs.setCurrentWidget(dashboard)
    runs.splitter.setSizes([120, 600])  # two rows need no more: the curves get the room, as a user drags it
    time.sleep(0.3)
    grab("runs-dashboard")
    if runs.model.rowCount() < 2:
        problems.append(f"{theme_name}: the Runs table has {runs.model.rowCount()} rows, not the two runs")

    runs.tabs.setCurrentWidget(rollouts)
    wait_until(app, lambda: rollouts.steps() == list(range(1, TRAIN_STEPS + 1)), "the rollouts", 30)
    rollouts.show_step(TRAIN_STEPS)
    window.resize(1600, 800)  # four 300 px completions side by side, next to the prompt list
    rollouts.list.setCurrentRow(0)
    settle(app)
    for card in rollouts.cards:
        card.think.header.click()  # the traces open, as a reader would
    settle(app)
    if len(rollouts.cards) != 4:
        problems.append(f"{theme_name}: the rollout browser shows {len(rollouts.cards)} completions, not 4")
    grab("runs-rollouts")
    window.resize(1280, 800)
    runs.tabs.setCurrentWidget(dashboard)

    selection = runs.table.selectionModel()  # both runs selected, as Ctrl+click does, then Compare
    for job in (first, run_grpo_job):
        index = runs._proxy_index(job.run_id)
        selection.select(index, QtCore.QItemSelectionModel.SelectionFlag.Select
                         | QtCore.QItemSelectionModel.SelectionFlag.Rows)
    settle(app)
    runs.compare_selected()
    comparison = runs.comparison
    if comparison is None:
        problems.append(f"{theme_name}: Compare opened nothing: {runs.status.text()}")
    else:
        comparison.resize(1100, 700)
        comparison.metric_box.setCurrentText(LENGTH)  # the runs differ in temperature: their lengths differ
        settle(app)
        time.sleep(0.3)
        settle(app)
        grab("runs-compare", comparison)
        if len(comparison.legend_names()) != 2:
            problems.append(f"{theme_name}: the comparison overlays {comparison.legend_names()}")
        comparison.close()
    runs.select_run(run_grpo_job.run_id)
    settle(app)

    runs.export_selected()  # Export… on the run: its adapter on its base
    wait_until(app, lambda: export.source is not None, "the export source", 60)
    export.type_combo.setCurrentIndex(export.type_combo.findData("f32"))
    export.check_box.setChecked(True)
    job = export.start_export()
    if job is None:
        raise RuntimeError(f"screenshots: the Export pane did not start: {export.outcome_line.text()}")
    outcomes = []
    job.finished.connect(outcomes.append)
    wait_until(app, lambda: bool(outcomes), "the export", 300)
    if export.check_list.count() == 0 or export.check_list.item(0).text() != "Check passed":
        problems.append(f"{theme_name}: the export check did not pass: {export.check_lines()}")
    grab("export")


PIPELINE = "r1-mini"  # assets/pipelines/r1-mini.toml, the README's pipeline, as written (no --set)
PIPELINE_STAGE = "reasoning_rl"  # the card clicked: the GRPO stage, whose dashboard has the reward curves


def run_pipeline(work: Path) -> tuple[Path, int]:
    """`aha pipeline run r1-mini --events jsonl` as a child process on a fresh data directory (work/home-pipeline),
    its folder work/pipeline; returns (the data directory, the pipeline's run id)."""
    import json
    import subprocess

    home, events = work / "home-pipeline", work / "pipeline-events.jsonl"
    started = time.monotonic()
    with events.open("w", encoding="utf-8") as out, (work / "pipeline-stderr.txt").open("w+", encoding="utf-8") as err:
        done = subprocess.run([sys.executable, "-m", "engine.cli", "pipeline", "run", PIPELINE, "--out",
                               str(work / "pipeline"), "--events", "jsonl"], cwd=ROOT, stdout=out, stderr=err,
                              env={**os.environ, "AHA_HOME": str(home)}, timeout=1800)
        err.seek(0)
        tail = err.read()[-2000:]
    if done.returncode != 0:
        raise RuntimeError(f"screenshots: `aha pipeline run {PIPELINE}` exited with status {done.returncode}:\n{tail}")
    with events.open(encoding="utf-8") as lines:
        start = json.loads(lines.readline())
    print(f"ran the pipeline {PIPELINE} (run {start['run_id']}) in {time.monotonic() - started:.0f} s", flush=True)
    return home, int(start["run_id"])


def click(app, widget) -> None:
    """A left click in the middle of `widget`, as the mouse gives it (press, then release)."""
    from app.qt import Qt, QtCore, QtGui

    inside = QtCore.QPointF(widget.width() / 2, widget.height() / 2)
    screen = QtCore.QPointF(widget.mapToGlobal(inside.toPoint()))
    for kind, buttons in ((QtCore.QEvent.Type.MouseButtonPress, Qt.MouseButton.LeftButton),
                          (QtCore.QEvent.Type.MouseButtonRelease, Qt.MouseButton.NoButton)):
        app.sendEvent(widget, QtGui.QMouseEvent(kind, inside, screen, Qt.MouseButton.LeftButton, buttons,
                                                Qt.KeyboardModifier.NoModifier))
    settle(app)


def shoot_pipeline(out_dir: Path, theme_name: str, home: Path, run_id: int, problems: list[str]) -> list[Path]:
    """Runs, a pipeline: the window on the pipeline's data directory, its run selected (the chain of its seven
    stage cards over the overview), then a click on the reasoning-RL card (its dashboard below the chain)."""

    app, window, grab, written = open_window(home, theme_name, out_dir)

    runs = window.runs
    window.show_pane("runs")
    runs.select_run(run_id)
    wait_until(app, lambda: runs.selected_row() is not None and runs.selected_row().id == run_id
               and runs.chain.isVisible() and runs.chain.chain is not None and runs.chain.chain.run_id == run_id,
               "the pipeline's chain", 30)
    runs.splitter.setSizes([140, 600])  # four of the eight rows: the chain and the stage's curves get the room
    runs.select_run(run_id)  # again: the shorter table scrolls back to its row
    settle(app)
    chain = runs.chain.chain
    statuses = [stage.status for stage in chain.stages]
    if len(runs.chain.cards) != 7 or statuses != ["complete"] * 7:
        problems.append(f"{theme_name}: the pipeline's chain shows {len(runs.chain.cards)} cards, {statuses}")
    if chain.status != "complete":
        problems.append(f"{theme_name}: the pipeline run is {chain.status}, not complete")
    grab("runs-pipeline")

    card = next((card for card in runs.chain.cards if card.stage.name == PIPELINE_STAGE), None)
    if card is None:
        problems.append(f"{theme_name}: the chain has no {PIPELINE_STAGE} card")
        window.close()
        return written
    stage_run = card.stage.run_id
    click(app, card)
    dashboard = runs.dashboard
    wait_until(app, lambda: runs.selected_row() is not None and runs.selected_row().id == stage_run
               and "Reward" in dashboard.plots
               and dashboard.plots["Reward"].points("reward") == runs.selected_row().summary.max_steps,
               "the stage's dashboard", 30)
    time.sleep(0.6)  # the dashboard redraws at most every 0.5 s
    if not runs.chain.isVisible() or runs.below.currentWidget() is not runs.tabs:
        problems.append(f"{theme_name}: the stage's dashboard does not show under the chain")
    grab("runs-pipeline-stage")
    window.close()
    return written


PARTS = ("chat", "serve", "train", "eval", "demo", "pipeline")


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    out_dir = Path(args[0] if args else ROOT / "docs" / "screenshots")
    out_dir.mkdir(parents=True, exist_ok=True)
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # no display: Qt's offscreen platform
    started = time.monotonic()
    problems: list[str] = []
    parts = set((os.environ.get("AHA_SCREENSHOTS") or ",".join(PARTS)).split(","))  # e.g. train: only those
    if not parts <= set(PARTS):
        print(f"screenshots: AHA_SCREENSHOTS={os.environ['AHA_SCREENSHOTS']!r}: use {', '.join(PARTS)} or a "
              "list of them (chat,eval)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="aha-screenshots-") as work:
        models = build_models(Path(work)) if parts & {"chat", "serve"} else {}
        eval_models = build_eval_models(Path(work)) if "eval" in parts else None
        print(f"models ready after {time.monotonic() - started:.0f} s", flush=True)
        themes = ("light", "dark") if parts - {"demo", "pipeline"} else ()
        written = [path for theme_name in themes
                   for path in shoot(out_dir, theme_name, Path(work), models, problems, parts, eval_models)]
        if "pipeline" in parts:
            home, run_id = run_pipeline(Path(work))
            for theme_name in ("light", "dark"):
                written += shoot_pipeline(out_dir, theme_name, home, run_id, problems)
        if "demo" in parts:
            written += shoot_demo(out_dir, Path(work), problems)
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
