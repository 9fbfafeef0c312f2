"""`aha eval`: pass@1 over k samples, cons@k and pass@k of several models, as a resumable run.

An OpenAI-compatible server on loopback scripts the reply of every (model, problem, sample) (the sample is
the request's seed − the run's seed), so every number is known in advance; the same pipeline runs the tiny
GGUF and HF fixtures (shapes, and greedy agreement of the two runtimes); bad specs are one line, exit 2.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from engine.cli import main

SEED = 10
K = 4
# problem → its reference answer, and each model's k final answers ("cut": the thought ran out of budget).
PROBLEMS = {"What is 3+4?": "7", "What is 5+7?": "12", "What is 4*5?": "20", "What is 3*3?": "9"}
REPLIES = {
    "m-a": {"What is 3+4?": ["7", "7", "3", "cut"],      # 2 right; the majority (7) right
            "What is 5+7?": ["5", "12", "12", "5"],      # 2 right; a 2–2 tie, won by the first answer (5): wrong
            "What is 4*5?": ["1", "2", "3", "4"],        # none right
            "What is 3*3?": ["9", "9", "9", "9"]},       # all right
    "m-b": {"What is 3+4?": ["7", "7", "7", "3"],
            "What is 5+7?": ["12", "12", "5", "12"],
            "What is 4*5?": ["20", "1", "1", "20"],      # a tie won by the first answer (20): right
            "What is 3*3?": ["9", "9", "9", "9"]},
}
# Hand-computed: pass@1 = mean over problems of c/k; cons@4 = majority right; pass@k = 1 − C(n−c, k)/C(n, k).
EXPECTED = {"m-a": {"pass@1": (0.5 + 0.5 + 0 + 1) / 4, "cons@k": 0.5, "pass@k": {"1": 0.5, "2": (5 / 6 + 5 / 6 + 0 + 1) / 4,
                                                                                "4": 0.75}},
            "m-b": {"pass@1": (0.75 + 0.75 + 0.5 + 1) / 4, "cons@k": 1.0, "pass@k": {"1": 0.75, "2": (1 + 1 + 5 / 6 + 1) / 4,
                                                                                 "4": 1.0}}}


class _ScriptedEndpoint(BaseHTTPRequestHandler):
    """Replies from REPLIES by (model, prompt, seed − SEED): a thought in `reasoning_content` (m-a) or inline
    (m-b), the answer boxed, usage with the reasoning tokens; "cut" is a thought stopped by max_tokens. Requests
    of m-b past `open_b` wait for `gate`."""

    requests: dict[str, int] = {}
    lock = threading.Lock()
    gate = threading.Event()
    open_b = 10 ** 9

    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        model, prompt, sample = body["model"], body["messages"][-1]["content"], body["seed"] - SEED
        with self.lock:
            seen = type(self).requests[model] = type(self).requests.get(model, 0) + 1
        if model == "m-b" and seen > type(self).open_b:
            type(self).gate.wait(30)
        reply = REPLIES[model][_problem(prompt)][sample]
        if reply == "cut":
            message, finish = {"content": "", "reasoning_content": "Let me think. " * 20}, "length"
            usage = {"completion_tokens": 50, "completion_tokens_details": {"reasoning_tokens": 50}}
        else:
            thought, answer = f"I work out {_problem(prompt)}", f"The answer is \\boxed{{{reply}}}."
            message = ({"content": answer, "reasoning_content": thought} if model == "m-a"
                       else {"content": f"<think>\n{thought}\n</think>\n\n{answer}"})
            finish, usage = "stop", {"completion_tokens": 30, "completion_tokens_details": {"reasoning_tokens": 20}}
        data = json.dumps({"choices": [{"index": 0, "finish_reason": finish, "message": {"role": "assistant", **message}}],
                           "usage": {"prompt_tokens": 12, **usage}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


def _problem(prompt: str) -> str:
    return next(problem for problem in PROBLEMS if problem in prompt)


@pytest.fixture
def endpoint():
    _ScriptedEndpoint.requests, _ScriptedEndpoint.open_b = {}, 10 ** 9
    _ScriptedEndpoint.gate = threading.Event()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _ScriptedEndpoint)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    _ScriptedEndpoint.gate.set()
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def problems(tmp_path) -> Path:
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps({"prompt": problem, "answer": answer}) + "\n"
                            for problem, answer in PROBLEMS.items()), encoding="utf-8")
    return path


def _args(url: str, problems: Path, out: Path) -> list[str]:
    return ["eval", f"openai:{url}", f"openai:{url}", "--model", "m-a", "--model", "m-b", "--dataset", str(problems),
            "-k", str(K), "--seed", str(SEED), "--concurrency", "1", "--output-dir", str(out)]


def _check_numbers(report: dict) -> None:
    assert report["k"] == K and report["problems"] == 4
    assert report["sampling"] == {"temperature": 0.6, "top_p": 0.95, "max_tokens": 4096, "seed": SEED}
    a, b = report["models"]
    assert (a["label"], b["label"], a["status"], b["status"]) == ("m-a", "m-b", "complete", "complete")
    for entry in (a, b):
        expected = EXPECTED[entry["label"]]
        assert entry["pass@1"] == pytest.approx(expected["pass@1"])
        assert entry["cons@k"] == pytest.approx(expected["cons@k"])
        for n, value in expected["pass@k"].items():
            assert entry["pass@k"][n] == pytest.approx(value), (entry["label"], n)
        assert entry["samples"] == 16 and entry["problems"] == 4
    # The cut thought: wrong, no answer, counted apart; its 50 thinking tokens in the mean.
    assert a["cut_share"] == pytest.approx(1 / 16) and b["cut_share"] == 0
    assert a["thinking_tokens_mean"] == pytest.approx((15 * 20 + 50) / 16)
    assert a["answer_tokens_mean"] == pytest.approx(15 * 10 / 16) and b["answer_tokens_mean"] == pytest.approx(10)
    [comparison] = report["comparisons"]
    assert (comparison["a"], comparison["b"], comparison["problems"]) == (0, 1, 4)
    assert comparison["difference"] == pytest.approx(0.25) and comparison["note"]


def test_scripted_endpoint_exact_metrics_cancel_and_resume(endpoint, problems, tmp_path, capsys):
    # One uninterrupted run, in-process: the numbers, the files and the table.
    full = tmp_path / "full"
    assert main([*_args(endpoint, problems, full), "--json", "--events", "none"]) == 0
    report = json.loads(capsys.readouterr().out)
    _check_numbers(report)
    assert _ScriptedEndpoint.requests == {"m-a": 16, "m-b": 16}
    assert json.loads((full / "eval.json").read_text()) == report
    lines = [json.loads(line) for line in (full / "samples.jsonl").read_text().splitlines()]
    assert len(lines) == 8 and {(line["step"], line["model"]) for line in lines} == {(0, "m-a"), (1, "m-b")}
    assert [line["problem"] for line in lines] == [0, 1, 2, 3] * 2   # each problem's place in the dataset
    tie = next(line for line in lines if line["model"] == "m-a" and line["prompt"].startswith("What is 5+7?"))
    assert tie["answer"] == "12" and tie["majority"] == 0
    assert [item["extracted"] for item in tie["completions"]] == ["5", "12", "12", "5"]
    assert [item["accepted"] for item in tie["completions"]] == [False, True, True, False]
    assert [item["seed"] for item in tie["completions"]] == [SEED, SEED + 1, SEED + 2, SEED + 3]
    cut = next(line for line in lines if line["model"] == "m-a" and line["prompt"].startswith("What is 3+4?"))
    last = cut["completions"][3]
    assert (last["truncated"], last["accepted"], last["extracted"], last["finish_reason"]) == (True, False, None, "length")
    assert (last["thinking_length"], last["length"], last["rewards"]) == (50, 50, {"correct": 0.0})
    assert set(cut["completions"][0]) >= {"text", "thinking", "answer_text", "extracted", "rewards", "reward",
                                          "accepted", "length", "thinking_length", "truncated", "finish_reason", "seed"}
    metrics = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in metrics] == [0, 1]
    assert metrics[1]["pass@1"] == pytest.approx(0.75) and metrics[1]["pass@k/4"] == pytest.approx(1.0)
    assert main([*_args(endpoint, problems, full), "--events", "none"]) == 0  # a finished run: asks nothing
    table = capsys.readouterr().out
    assert _ScriptedEndpoint.requests == {"m-a": 16, "m-b": 16}
    assert "m-a" in table and "50.0%" in table and "+25.0" in table and "m-b vs m-a" in table

    # Other settings into the same directory: refused, one line.
    assert main([*_args(endpoint, problems, full)[:-2], "-k", "2", "--output-dir", str(full), "--events", "none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other settings" in err[0] and "k 4" in err[0]

    # A child process (its run directory the default one) cancelled while m-b's third problem waits: m-a and
    # two problems of m-b are kept.
    _ScriptedEndpoint.requests, _ScriptedEndpoint.open_b = {}, 2 * K
    child = subprocess.Popen([sys.executable, "-m", "engine.cli", *_args(endpoint, problems, full)[:-2], "--events", "jsonl"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    events, b_samples = [], 0
    for text in child.stdout:
        events.append(json.loads(text))
        if events[-1]["type"] == "sample" and events[-1]["step"] == 1:
            b_samples += 1
            if b_samples == 2:
                child.stdin.write("cancel\n")
                child.stdin.flush()
                _ScriptedEndpoint.gate.set()
    assert child.wait(60) == 130, child.stderr.read()
    assert events[0]["type"] == "start" and events[0]["kind"] == "eval" and events[-1]["status"] == "cancelled"
    out = Path(events[0]["run_dir"])
    assert out.name == f"eval-{events[0]['run_id']}" and out.parent.name == "runs"
    progress = [event for event in events if event["type"] == "progress"]
    assert progress[-1]["unit"] == "samples" and progress[-1]["total"] == 32 and progress[-1]["stage"] == "eval"
    assert {"model", "accuracy", "samples_per_s"} <= set(progress[-1])
    sample = next(event for event in events if event["type"] == "sample")
    assert set(sample["completions"][0]) >= {"extracted", "thinking_length"}
    partial = json.loads((out / "eval.json").read_text())
    assert [entry["status"] for entry in partial["models"]] == ["complete", "partial"]
    assert partial["models"][1]["problems"] == 2
    done_lines = len((out / "samples.jsonl").read_text().splitlines())
    assert done_lines == 6

    # `aha runs resume ID` continues it: only the missing (model, problem) pairs are asked, same numbers.
    run_id = events[0]["run_id"]
    _ScriptedEndpoint.requests = {}
    resumed = subprocess.run([sys.executable, "-m", "engine.cli", "runs", "resume", str(run_id), "--events", "jsonl"],
                             capture_output=True, text=True, timeout=60)
    assert resumed.returncode == 0, resumed.stderr
    assert _ScriptedEndpoint.requests == {"m-b": 2 * K}
    done = json.loads(resumed.stdout.splitlines()[-1])
    assert done["type"] == "done" and done["status"] == "complete" and done["result"]["run_id"] == run_id
    _check_numbers(done["result"]["eval"])
    final = json.loads((out / "eval.json").read_text())
    assert [entry["pass@1"] for entry in final["models"]] == [entry["pass@1"] for entry in report["models"]]
    assert len((out / "samples.jsonl").read_text().splitlines()) == 8


def test_gguf_and_hf_fixtures_agree_greedily(checkpoint, gguf_file, tmp_path, capsys):
    """The tiny qwen2 checkpoint and its f32 GGUF through the same evaluation at temperature 0: the
    result's shape, and the same replies from llama.cpp and transformers."""
    folder, gguf = checkpoint("qwen2"), gguf_file("qwen2", "f32")
    out = tmp_path / "run"
    code = main(["eval", f"gguf:{gguf}", f"hf:{folder}", "--dataset", "addition", "--limit", "3", "-k", "2",
                 "--temperature", "0", "--max-tokens", "12", "--device", "cpu", "--output-dir", str(out), "--json",
                 "--events", "none"])  # (float32 on the CPU: CUDA's bfloat16 would part from the f32 GGUF)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    assert [entry["describe"]["kind"] for entry in report["models"]] == ["gguf", "hf"]
    assert report["models"][0]["describe"]["batched"]  # engine.eval.batched decodes the GGUF's samples together
    assert [entry["label"] for entry in report["models"]] == ["qwen2-f32", "qwen2"]
    for entry in report["models"]:
        assert entry["status"] == "complete" and entry["problems"] == 3 and entry["samples"] == 6
        assert 0 <= entry["pass@1"] <= 1 and set(entry["pass@k"]) == {"1", "2"}
        assert entry["thinking_tokens_mean"] + entry["answer_tokens_mean"] > 0
    assert report["comparisons"][0]["problems"] == 3
    lines = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    by_model = {step: {line["prompt"]: line for line in lines if line["step"] == step} for step in (0, 1)}
    assert by_model[0].keys() == by_model[1].keys() and len(by_model[0]) == 3
    for prompt, gguf_line in by_model[0].items():
        hf_line = by_model[1][prompt]
        for ours, theirs in zip(gguf_line["completions"], hf_line["completions"], strict=True):
            assert (ours["thinking"], ours["answer_text"], ours["extracted"]) == (
                theirs["thinking"], theirs["answer_text"], theirs["extracted"]), prompt
        assert gguf_line["completions"][0]["text"] == gguf_line["completions"][1]["text"]  # greedy: k alike
    assert any(line["completions"][0]["text"] for line in by_model[0].values())  # (not only empty replies)


@pytest.mark.parametrize(("argv", "message"), [
    (["eval", "nosuch:model", "--dataset", "addition"], "unknown model"),
    (["eval", "hf:/nowhere/at/all", "--dataset", "addition"], "not a Hugging Face checkpoint folder"),
    (["eval", "openai:http://127.0.0.1:9/v1", "--dataset", "missing.jsonl"], "missing.jsonl"),
    (["eval", "run:1", "--dataset", "addition"], "not a training run"),
    (["eval", "run:99", "--dataset", "addition"], "run 99 does not exist"),
])
def test_bad_input_is_one_line_exit_2(argv, message, tmp_path, capsys, monkeypatch):
    from engine.store import Store

    monkeypatch.chdir(tmp_path)
    with Store() as store:
        store.create_run("generate", {"teacher": {"kind": "openai"}}, status="complete")  # run 1: no training run
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("aha: error:") and message in err[0], err
    with Store() as store:
        assert [run["kind"] for run in store.list_runs()] == ["generate"]  # a refused evaluation is no run


def test_hf_adapter_spec_and_labels(tmp_path):
    from engine.distill.teachers import split_adapter
    from engine.eval.models import ModelSpec, model_labels

    assert split_adapter("a/model+b/adapter") == ("a/model", "b/adapter") and split_adapter("a/model") == ("a/model", None)
    specs = [ModelSpec("hf:x", "hf", "runs/sft/final/model"),
             ModelSpec("hf:y", "hf", "runs/sft/final/model", "runs/grpo/final/adapter"),
             ModelSpec("hf:z", "hf", "runs/sft/final/model", "runs/grpo/checkpoints/step-40/adapter"),
             ModelSpec("gguf:q", "gguf", "models/grpo-Q4_K_M.gguf"), ModelSpec("gguf:q", "gguf", "models/grpo-Q4_K_M.gguf")]
    assert model_labels(specs) == ["sft", "sft+grpo", "sft+grpo@step-40", "grpo-Q4_K_M", "grpo-Q4_K_M #2"]


def test_run_spec_is_the_runs_final_adapter_on_its_base(tmp_path):
    from engine.eval.models import model_label, parse_model
    from engine.store import Store

    base, run_dir = tmp_path / "base", tmp_path / "runs" / "grpo-1"
    (base).mkdir()
    (base / "config.json").write_text("{}")
    (run_dir / "checkpoints" / "step-5" / "adapter").mkdir(parents=True)
    (run_dir / "checkpoints" / "step-5" / "adapter" / "adapter_config.json").write_text("{}")
    with Store() as store:
        run_id = store.create_run("grpo", {"model": str(base)}, dir=run_dir, status="cancelled")
    spec = parse_model(f"run:{run_id}")  # no final/ yet: the latest checkpoint
    assert (spec.kind, spec.target, spec.adapter) == ("hf", str(base), str(run_dir / "checkpoints" / "step-5" / "adapter"))
    (run_dir / "final" / "adapter").mkdir(parents=True)
    (run_dir / "final" / "adapter" / "adapter_config.json").write_text("{}")
    spec = parse_model(f"run:{run_id}")
    assert (spec.adapter, spec.run_id, model_label(spec)) == (str(run_dir / "final" / "adapter"), run_id, f"run:{run_id}")


def test_results_list_the_problems_in_the_datasets_order_whatever_order_they_finish_in():
    """With concurrency, a later problem's samples can finish first: the pane numbers the problems by their
    place in the dataset (the record's `problem`), and a record of an older run (no place) comes after."""
    from engine.eval.results import EvalResults

    results = EvalResults()
    for place, prompt_id in [(2, "c"), (0, "a"), (None, "old"), (1, "b")]:
        record = {"step": 0, "prompt_id": prompt_id, "prompt": prompt_id, "completions": [{"accepted": True}]}
        assert results.add_sample(record if place is None else {**record, "problem": place})
    results.add_sample({"step": 1, "prompt_id": "c", "prompt": "c", "problem": 2, "completions": [{"accepted": False}]})
    assert [problem.prompt_id for problem in results.problem_list()] == ["a", "b", "c", "old"]
    assert results.problems["c"].right_total(1) == (0, 1) and results.problems["c"].right_total(0) == (1, 1)
