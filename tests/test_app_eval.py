"""The Eval pane: a finished eval run written by hand in the runner's file shapes (eval.json, samples.jsonl) shows
its side-by-side table, one thinking-length line per model and the drill-down's marks and majority; Run builds
the `aha eval …` argv and a scripted child's events (start, progress, sample, metrics, done) update the view as
they come; the window's Runs pane opens an eval run in the Eval pane and evaluates a GRPO run (in a real store,
made as `aha grpo` makes it) against its base in one click."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from app import workers
from app.eval.view import EvalPane
from app.qt import Qt
from app.workers import JobStatus
from engine.store import Store
from tests.test_eval import SEED, endpoint, problems  # noqa: F401 - the scripted endpoint and its problems

K = 4
LABELS = ("base", "grpo", "grpo-q4")
SPECS = ("hf:/models/base", "run:7", "gguf:/models/grpo-q4.gguf")
# problem → (reference, per model: the k samples' extracted answers; None: no answer)
PROBLEMS = {
    "p0": ("12+30=", "42", (("42", "41", None, "40"), ("42", "42", "42", "41"), ("42", "42", "41", "41"))),
    "p1": ("7+8=", "15", (("15", "15", "15", "15"), ("15", "15", "15", "15"), ("15", "15", "15", "16"))),
    "p2": ("33+44=", "77", (("70", "71", "77", "70"), ("77", "77", "70", "77"), ("70", "77", "70", "77"))),
    "p3": ("9+9=", "18", ((None, None, "19", "17"), ("18", "19", "18", "18"), ("18", "18", "19", "19"))),
}
# the majorities by hand (largest group; p2 model 2 and p3 model 2 are ties, won by the first sample's group)
MAJORITY = {("p0", 0): 0, ("p0", 1): 0, ("p0", 2): 0, ("p1", 0): 0, ("p1", 1): 0, ("p1", 2): 0,
            ("p2", 0): 0, ("p2", 1): 0, ("p2", 2): 0, ("p3", 0): 2, ("p3", 1): 0, ("p3", 2): 0}
PASS1 = (0.375, 0.8125, 0.5625)     # right samples / 16
# thinking lengths 20, 30 (samples #1, #2) and 40, 50 (#3, #4): two buckets of 8 samples, accuracies by hand
BUCKETS = (((0, 40, 8, 0.375), (40, 90, 8, 0.375)), ((0, 40, 8, 0.875), (40, 90, 8, 0.75)),
           ((0, 40, 8, 0.875), (40, 90, 8, 0.25)))


def completion(extracted: str | None, reference: str, index: int) -> dict:
    right = extracted == reference
    thinking = 20 + 10 * index
    return {"text": f"<think>\nadding… sample {index}\n</think>\n\\boxed{{{extracted}}}",
            "thinking": f"adding… sample {index}", "answer_text": f"\\boxed{{{extracted}}}" if extracted else "",
            "extracted": extracted, "rewards": {"correct": 1.0 if right else 0.0}, "reward": 1.0 if right else 0.0,
            "accepted": right, "length": thinking + 6, "thinking_length": thinking,
            "truncated": extracted is None, "finish_reason": "length" if extracted is None else "stop", "seed": index}


def sample_records() -> list[dict]:
    return [{"step": model, "model": LABELS[model], "prompt_id": prompt_id, "prompt": prompt, "answer": reference,
             "majority": MAJORITY[(prompt_id, model)],
             "completions": [completion(answer, reference, index) for index, answer in enumerate(answers[model])]}
            for model in range(len(LABELS)) for prompt_id, (prompt, reference, answers) in PROBLEMS.items()]


def eval_summary() -> dict:
    models = []
    for index, label in enumerate(LABELS):
        models.append({"index": index, "label": label, "spec": SPECS[index], "describe": f"{label} model",
                       "problems": 4, "samples": 16, "pass@1": PASS1[index], "pass@1_stderr": 0.1,
                       "cons@k": (0.5, 1.0, 0.75)[index], "pass@k": {"1": PASS1[index], "2": 0.8, "4": 1.0},
                       "thinking_tokens_mean": 35.0, "answer_tokens_mean": 6.0,
                       "cut_share": (0.1875, 0.0, 0.0)[index], "no_answer_share": (0.1875, 0.0, 0.0)[index],
                       "by_thinking_length": [{"low": low, "high": high, "samples": n, "accuracy": accuracy}
                                              for low, high, n, accuracy in BUCKETS[index]],
                       "samples_per_s": 12.5, "seconds": 1.3, "status": "complete"})
    comparisons = [{"a": 0, "b": 1, "problems": 4, "difference": 0.4375, "ci95": [0.1, 0.77], "p_value": 0.0625,
                    "significant": False, "note": "within noise (+43.8 points, p = 0.06, 4 problems)"},
                   {"a": 0, "b": 2, "problems": 4, "difference": 0.1875, "ci95": [-0.1, 0.4], "p_value": 0.25,
                    "significant": False, "note": "within noise (+18.8 points, p = 0.25, 4 problems)"}]
    return {"dataset": "addition", "k": K, "sampling": {"temperature": 0.6, "top_p": 0.95, "max_tokens": 256,
                                                        "seed": 0},
            "problems": 4, "models": models, "comparisons": comparisons}


def write_eval_dir(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "samples.jsonl").write_text("".join(json.dumps(record) + "\n" for record in sample_records()))
    (folder / "eval.json").write_text(json.dumps(eval_summary()))
    (folder / "metrics.jsonl").write_text("".join(
        json.dumps({"step": model["index"], "pass@1": model["pass@1"]}) + "\n" for model in eval_summary()["models"]))
    return folder


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("AHA_HOME", str(tmp_path / "home"))
    store = Store()
    yield store
    for job in workers.running_jobs():
        job.terminate(kill=True)
        job.process.waitForFinished(10_000)
    store.close()


def table_texts(pane: EvalPane) -> list[list[str]]:
    proxy = pane.table.model()
    return [[proxy.index(row, column).data() for column in range(proxy.columnCount())]
            for row in range(proxy.rowCount())]


def test_a_finished_eval_run_shows_its_table_plot_and_drilldown(qtbot, home, tmp_path):
    folder = write_eval_dir(tmp_path / "eval-1")
    run_id = home.create_run("eval", {"models": list(SPECS), "dataset": "addition"}, dir=folder, status="complete")
    pane = EvalPane(home)
    qtbot.addWidget(pane)
    pane.resize(1100, 800)
    pane.show()
    pane.open_run(home.get_run(run_id))

    header = [pane.table.model().headerData(c, Qt.Orientation.Horizontal) for c in range(pane.table.model().columnCount())]
    assert header == ["Model", "pass@1", "cons@4", "pass@4", "Thinking", "Answer", "Cut", "vs first"]
    assert table_texts(pane) == [
        ["base", "37.5%", "50.0%", "100.0%", "35", "6", "18.8%", ""],
        ["grpo", "81.2%", "100.0%", "100.0%", "35", "6", "0.0%", "+43.8 pts (noise)"],
        ["grpo-q4", "56.2%", "75.0%", "100.0%", "35", "6", "0.0%", "+18.8 pts (noise)"]]
    assert "grpo vs base: within noise (+43.8 points, p = 0.06, 4 problems)" in pane.notes.text()
    assert "4 problems" in pane.summary_line.text() and "k = 4" in pane.summary_line.text()
    assert pane.models() == list(SPECS) and pane.dataset() == "addition" and pane.k_spin.value() == K

    assert pane.plot.legend_names() == list(LABELS)               # one line per model, its buckets' accuracies
    assert list(pane.plot.curves[1].yData) == [0.875, 0.75] and list(pane.plot.curves[0].xData) == [20.0, 65.0]

    drill = pane.drilldown
    assert [row[3:] for row in drill.problem_texts()] == [["1/4", "3/4", "2/4"], ["4/4", "4/4", "3/4"],
                                                          ["1/4", "3/4", "2/4"], ["0/4", "3/4", "2/4"]]
    drill.select_problem("p3")
    drill.set_model(0)
    assert [card.header.text().split(" ")[0] for card in drill.cards] == ["✗", "✗", "✗", "✗"]
    assert [card.majority for card in drill.cards] == [False, False, True, False]
    assert "Majority answer: 19" in drill.majority_view.text() and "wrong" in drill.majority_view.text()
    assert drill.cards[0].extracted.text() == "Extracted answer: none (scored wrong)"
    assert "thought cut by the budget" in drill.cards[0].header.text()
    drill.set_model(1)
    assert [card.header.text().split(" ")[0] for card in drill.cards] == ["✓", "✗", "✓", "✓"]
    assert drill.cards[0].majority and drill.cards[0].extracted.text() == "Extracted answer: 18"
    assert drill.majority_view.text().startswith("Majority answer: 18 (3 of 4 samples")
    drill.cards[0].think.header.click()
    assert drill.cards[0].think.body.toPlainText() == "adding… sample 0"
    drill.only_disagreeing.setChecked(True)                        # p1: all right for two, 3/4 for one: kept
    assert len(drill.problem_texts()) == 4
    drill.search.setText("33+")
    assert [row[1] for row in drill.problem_texts()] == ["33+44="]


def event_fields(record: dict) -> dict:
    """A samples.jsonl record as the runner's `sample` event carries it: without the label and the majority
    (the pane learns the label from the progress event after it, the majority from the file)."""
    return {key: value for key, value in record.items() if key not in ("model", "majority")}


SCRIPTED_CHILD = r"""
import json, sys, time, pathlib
script = json.loads(pathlib.Path(sys.argv[1]).read_text())
for step in script:
    if "write" in step:
        pathlib.Path(step["write"]).write_text(step["text"])
    else:
        print(json.dumps(step), flush=True)
        time.sleep(0.05)
sys.exit(0)
"""


def test_run_builds_the_eval_argv_and_its_events_update_the_view(qtbot, home, tmp_path, monkeypatch):
    run_dir = tmp_path / "eval-run"
    run_dir.mkdir()
    records = sample_records()
    summary = eval_summary()
    first = {**summary, "models": summary["models"][:1], "comparisons": []}
    script = [{"v": 1, "type": "start", "kind": "eval", "pid": 1, "stages": ["eval"], "run_id": 5,
               "run_dir": str(run_dir)},
              *({"v": 1, "type": "sample", **event_fields(record)} for record in records[:4]),
              {"v": 1, "type": "progress", "stage": "eval", "stage_index": 0, "stage_count": 1, "done": 8,
               "total": 48, "unit": "samples", "elapsed_s": 1.0, "eta_s": 5.0, "model": "base", "accuracy": 0.5,
               "samples_per_s": 8.0},
              {"write": str(run_dir / "samples.jsonl"), "text": "".join(json.dumps(r) + "\n" for r in records[:4])},
              {"write": str(run_dir / "eval.json"), "text": json.dumps(first)},
              {"v": 1, "type": "metrics", "step": 0, "pass@1": PASS1[0]},
              {"v": 1, "type": "progress", "stage": "eval", "stage_index": 0, "stage_count": 1, "done": 20,
               "total": 48, "unit": "samples", "elapsed_s": 2.0, "eta_s": 3.0, "model": "grpo", "accuracy": 0.75,
               "samples_per_s": 10.0},
              *({"v": 1, "type": "sample", **event_fields(record)} for record in records[4:]),
              {"write": str(run_dir / "samples.jsonl"), "text": "".join(json.dumps(r) + "\n" for r in records)},
              {"write": str(run_dir / "eval.json"), "text": json.dumps(summary)},
              {"v": 1, "type": "done", "status": "complete",
               "result": {"status": "complete", "run_id": 5, "run_dir": str(run_dir), "eval": summary}}]
    (tmp_path / "script.json").write_text(json.dumps(script))
    (tmp_path / "child.py").write_text(SCRIPTED_CHILD)
    monkeypatch.setattr(workers, "aha_argv", lambda args: [sys.executable, str(tmp_path / "child.py"),
                                                           str(tmp_path / "script.json"), *args, "--events", "jsonl"])
    pane = EvalPane(home)
    qtbot.addWidget(pane)
    pane.show()
    assert not pane.run_button.isEnabled()                        # no model yet
    pane.set_models(["gguf:/m/base.gguf", "run:7"])
    pane.endpoint_edit.setText("http://127.0.0.1:9/v1")
    pane.endpoint_model_edit.setText("tiny")
    pane.endpoint_button.click()
    pane.set_dataset("addition")
    pane.k_spin.setValue(4)
    pane.tokens_spin.setValue(256)
    pane.limit_spin.setValue(4)
    expected = ["eval", "gguf:/m/base.gguf", "run:7", "openai:http://127.0.0.1:9/v1", "--dataset", "addition",
                "-k", "4", "--max-tokens", "256", "--temperature", "0.6", "--top-p", "0.95", "--limit", "4",
                "--model", "tiny"]
    assert pane.eval_args() == expected
    assert pane.command_line.text().startswith("aha eval gguf:/m/base.gguf run:7")

    seen = []

    def on_event(event):          # connected after the pane's own slot: what the pane shows after each event
        pane.show_results()       # as its redraw timer does (at most every 400 ms)
        seen.append((event["type"], pane.detail.full_text(), [row[:2] for row in table_texts(pane)]))

    started = []
    pane.run_started.connect(started.append)
    job = pane.start()
    assert job.argv[3:] == [*expected, "--events", "jsonl"] and started == [job]
    assert pane.stop_button.isVisible() and not pane.k_spin.isEnabled()
    job.event.connect(on_event)
    outcomes = []
    job.finished.connect(outcomes.append)
    qtbot.waitUntil(lambda: bool(outcomes), timeout=20_000)
    assert outcomes[0].status == JobStatus.COMPLETE

    progress = [detail for kind, detail, _ in seen if kind == "progress"]
    assert progress[0].startswith("base · 8/48 samples") and "pass@1 so far 50.0%" in progress[0]
    assert "8.0 samples/s" in progress[0]
    rows = [rows for kind, _, rows in seen if kind in ("progress", "metrics")]
    assert rows == [[["base (running)", "50.0%"]],                  # the running pass@1 of the progress event
                    [["base", "37.5%"]],                            # eval.json's, once the model is done
                    [["base", "37.5%"], ["grpo (running)", "75.0%"]]]
    assert progress[1].startswith("grpo · 20/48 samples")
    assert pane.run_id == 5 and pane.run_button.isVisible() and pane.k_spin.isEnabled()
    assert [row[:2] for row in table_texts(pane)] == [["base", "37.5%"], ["grpo", "81.2%"], ["grpo-q4", "56.2%"]]
    assert len(pane.drilldown.problem_texts()) == 4 and pane.plot.legend_names() == list(LABELS)
    assert "complete" in pane.detail.full_text()


def test_live_rows_show_the_running_model(qtbot, home):
    pane = EvalPane(home)
    qtbot.addWidget(pane)
    for record in sample_records()[:4]:
        pane.results.add_sample(record)
    pane.live = {"base": {"pass@1": 0.5, "label": "base"}, "grpo": {"pass@1": 0.25, "label": "grpo"}}
    pane.show_results()
    assert [row[:2] for row in table_texts(pane)] == [["base (running)", "50.0%"], ["grpo (running)", "25.0%"]]


@pytest.fixture
def grpo_home(tmp_path, monkeypatch):
    """A data directory whose store holds a complete GRPO run on addition, made as `aha grpo` makes it (Run.create
    with its GRPOConfig, a metrics line, the status); its training is other tests' business, so the checkpoint
    folder it names is never read."""
    from engine.train.grpo import GRPOConfig
    from engine.train.runs import Run

    home = tmp_path / "home"
    monkeypatch.setenv("AHA_HOME", str(home))
    student = tmp_path / "tiny-qwen2"
    student.mkdir()
    run = Run.create("grpo", GRPOConfig(model=str(student), dataset="addition", max_steps=1))
    run.log_metrics(1, {"reward": 0.5})
    run.set_status("complete")
    return {"home": home, "student": student}


def test_the_window_evaluates_a_grpo_run_against_its_base_and_opens_eval_runs(qtbot, grpo_home, tmp_path,
                                                                              monkeypatch):
    from app.main import MainWindow

    monkeypatch.setenv("AHA_HOME", str(grpo_home["home"]))
    argvs = []
    monkeypatch.setattr(workers, "aha_argv", lambda args: argvs.append(args) or [sys.executable, "-c", "pass"])
    window = MainWindow()
    qtbot.addWidget(window)
    window.show()
    grpo = next(run for run in window.store.list_runs() if run["kind"] == "grpo")
    assert grpo["status"] == "complete"
    eval_dir = write_eval_dir(tmp_path / "eval-2")
    eval_id = window.store.create_run("eval", {"models": list(SPECS), "dataset": "addition"}, dir=eval_dir,
                                      status="complete")
    assert window.sidebar.item(6).text() == "Eval" and list(window.panes)[6] == "eval"   # Ctrl+7

    runs = window.runs
    window.show_pane("runs")
    runs.refresh()
    qtbot.waitUntil(lambda: runs.model.find(grpo["id"]) is not None and runs.model.find(eval_id) is not None)
    runs.select_run(grpo["id"])
    qtbot.waitUntil(lambda: runs.evaluate_action.isEnabled())
    assert runs.buttons["Evaluate base vs this run"].text() == "Evaluate"
    runs.evaluate_action.trigger()
    assert window.stack.currentWidget() is window.eval_pane
    pane = window.eval_pane
    assert pane.models() == [f"hf:{grpo_home['student']}", f"run:{grpo['id']}"] and pane.dataset() == "addition"
    assert argvs and argvs[-1][:6] == ["eval", f"hf:{grpo_home['student']}", f"run:{grpo['id']}", "--dataset",
                                       "addition", "-k"]
    qtbot.waitUntil(lambda: not pane.is_busy(), timeout=10_000)     # the stand-in child ends at once

    runs.select_run(eval_id)
    qtbot.waitUntil(lambda: not runs.evaluate_action.isEnabled() and runs.selected_row().id == eval_id)
    window.show_pane("runs")
    runs.open_selected()                                            # Open (Return, double-click) on an eval row
    assert window.stack.currentWidget() is pane and pane.run_id == eval_id
    assert [row[0] for row in table_texts(pane)] == list(LABELS)
    window.close()


def test_a_real_aha_eval_child_against_a_scripted_endpoint(qtbot, home, endpoint, problems):  # noqa: F811
    """The pane runs the real `aha eval` on two endpoint models whose replies tests/test_eval.py scripts per
    sample, so the table's numbers are known: m-a pass@1 50%, cons@4 50%; m-b 75%, 100%."""
    pane = EvalPane(home)
    qtbot.addWidget(pane)
    pane.show()
    for name in ("m-a", "m-b"):
        pane.endpoint_edit.setText(endpoint)
        pane.endpoint_model_edit.setText(name)
        pane.endpoint_button.click()
    pane.set_dataset(str(problems))
    pane.k_spin.setValue(4)
    pane.seed_spin.setValue(SEED)                  # the endpoint reads the sample from the request's seed
    assert pane.eval_args()[-6:] == ["--seed", str(SEED), "--model", "m-a", "--model", "m-b"]
    job = pane.start()
    outcomes = []
    job.finished.connect(outcomes.append)
    qtbot.waitUntil(lambda: bool(outcomes), timeout=60_000)
    assert outcomes[0].status == JobStatus.COMPLETE, outcomes[0]
    assert [row[:4] for row in table_texts(pane)] == [["m-a", "50.0%", "50.0%", "75.0%"],
                                                      ["m-b", "75.0%", "100.0%", "100.0%"]]
    assert pane.notes.text().startswith("m-b vs m-a: ")
    assert [row[3:] for row in pane.drilldown.problem_texts()] == [["2/4", "3/4"], ["2/4", "3/4"], ["0/4", "2/4"],
                                                                   ["4/4", "4/4"]]
    pane.drilldown.select_problem(pane.results.problem_list()[0].prompt_id)   # 3+4, the dataset's first
    assert [card.majority for card in pane.drilldown.cards] == [True, False, False, False]   # 7, 7, 3, cut
    assert "thought cut by the budget" in pane.drilldown.cards[3].header.text()
    assert pane.run_id is not None and home.get_run(pane.run_id)["kind"] == "eval"
