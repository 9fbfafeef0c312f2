"""`aha runs list|show|resume|rm` as a child process on its own data directory: the table and the JSON, a run
found by id or by directory, resume handed to the command of the run's kind (grpo, distill sft|kd, a trace
generation's own command from its folder), the refusals (running, complete, not resumable, rm off a terminal
without --yes), and a tiny GRPO run killed with SIGKILL that `aha runs` shows crashed and resumes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from engine import cli
from engine.store import Store
from tests.support import platforms

REPO = Path(__file__).resolve().parents[1]
# A tiny GRPO run: 2 prompts × 2 completions of ≤ 8 tokens, LoRA r=4, a checkpoint every step.
TINY_GRPO = ["--dataset", "addition", "--prompts-per-step", "2", "--num-generations", "2",
             "--max-completion-length", "8", "--lora-r", "4", "--lora-alpha", "8", "--seed", "3", "--save-steps", "1"]


def aha(*args: str, cwd: Path = REPO, timeout: float = 120) -> subprocess.CompletedProcess:
    """`aha ARGS` in a child (stdin not a terminal), on the test's AHA_HOME."""
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], cwd=cwd, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    [line] = result.stderr.splitlines()
    assert line.startswith("aha: error: ")
    return line[len("aha: error: "):]


def run_directory(folder: Path, store_id: int, kind: str = "grpo", steps: tuple[int, ...] = ()) -> Path:
    """A run directory as engine.train.runs writes it: run.json, config.json, metrics.jsonl, checkpoints/step-N."""
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"kind": kind, "store_id": store_id}))
    (folder / "config.json").write_text("{}")
    (folder / "metrics.jsonl").write_text("".join(json.dumps({"step": step, "time": 1.0, "loss": 1 / step}) + "\n"
                                                  for step in steps))
    for step in steps:
        (folder / "checkpoints" / f"step-{step}").mkdir(parents=True)
        (folder / "checkpoints" / f"step-{step}" / "weights.bin").write_bytes(b"\0" * 250_000)
    return folder


@pytest.fixture
def runs(tmp_path):
    """A store with four runs: a GRPO run with a directory and 2 of 10 steps, a complete SFT run, a trace
    generation and an export."""
    with Store() as store:
        grpo = store.create_run("grpo", {"model": str(tmp_path / "char"), "dataset": "addition", "max_steps": 10},
                                status="cancelled")
        directory = run_directory(tmp_path / "runs" / f"grpo-{grpo}", grpo, steps=(1, 2))
        store.set_run_dir(grpo, directory)
        store.add_metrics(grpo, 2, {"loss": 0.5})
        store.add_artifact("checkpoint", directory / "checkpoints" / "step-2", run_id=grpo, meta={"step": 2})
        store.add_artifact("checkpoint", directory / "checkpoints" / "step-0", run_id=grpo, meta={"step": 0})
        sft = store.create_run("distill-sft", {"model": "student", "traces": str(tmp_path / "traces.jsonl"),
                                               "dataset": "addition", "max_steps": 4}, status="complete")
        generate = store.create_run("distill-generate", {"teacher": {"kind": "openai", "name": "r1"},
                                                         "output": str(tmp_path / "t.jsonl")},
                                    dir=tmp_path, status="cancelled")
        export = store.create_run("export", {}, status="error")
    return {"grpo": grpo, "sft": sft, "generate": generate, "export": export, "grpo_dir": directory}


def test_list_shows_a_table_newest_first_and_json_with_filters(runs):
    result = aha("runs", "list")
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["ID", "KIND", "STATUS", "MODEL", "DATASET", "STEPS", "AGE", "DIRECTORY"]
    assert [row.split()[:3] for row in rows] == [[str(runs["export"]), "export", "error"],
                                                 [str(runs["generate"]), "distill-generate", "cancelled"],
                                                 [str(runs["sft"]), "distill-sft", "complete"],
                                                 [str(runs["grpo"]), "grpo", "cancelled"]]
    assert re.fullmatch(rf"{runs['grpo']}\s+grpo\s+cancelled\s+char\s+addition\s+2/10\s+\d+s\s+{runs['grpo_dir']}",
                        rows[-1]), rows[-1]
    assert "traces.jsonl" in rows[2] and "openai:r1" in rows[1]
    listed = json.loads(aha("runs", "list", "--json").stdout)
    assert [run["id"] for run in listed] == [runs["export"], runs["generate"], runs["sft"], runs["grpo"]]
    grpo = listed[-1]
    assert (grpo["kind"], grpo["status"], grpo["step"], grpo["max_steps"], grpo["dir"]) == (
        "grpo", "cancelled", 2, 10, str(runs["grpo_dir"]))
    assert {"model", "dataset", "created_at", "updated_at", "pid", "heartbeat_at", "config"} <= set(grpo)
    assert [run["id"] for run in json.loads(aha("runs", "list", "--kind", "grpo", "--json").stdout)] == [runs["grpo"]]
    assert [run["id"] for run in json.loads(aha("runs", "list", "--status", "cancelled", "--json").stdout)] == [
        runs["generate"], runs["grpo"]]


def test_list_of_an_empty_store():
    result = aha("runs", "list")
    assert (result.returncode, result.stdout) == (0, "no runs\n")
    assert aha("runs", "list", "--json").stdout == "[]\n"


def test_show_by_id_or_directory_as_text_and_json(runs):
    by_id = aha("runs", "show", str(runs["grpo"]))
    assert by_id.returncode == 0, by_id.stderr
    lines = dict(re.match(r"(\S+(?: \S+)?)\s{2,}(.*)", line).groups() for line in by_id.stdout.splitlines()
                 if line.strip() and not line.startswith(" "))
    assert lines["run"] == f"{runs['grpo']} · grpo · cancelled"
    assert (lines["steps"], lines["dataset"]) == ("2/10", "addition")
    assert lines["checkpoint"] == str(runs["grpo_dir"] / "checkpoints" / "step-2")
    assert lines["last metrics"] == "step 2 · loss 0.5"
    assert lines["artifacts"] == f"checkpoint: {runs['grpo_dir'] / 'checkpoints' / 'step-2'}"
    assert "(1 more recorded, since removed)" in by_id.stdout
    assert lines["directory"] == str(runs["grpo_dir"])
    by_directory = aha("runs", "show", str(runs["grpo_dir"])).stdout

    def without_ages(text: str) -> list[str]:
        return [line for line in text.splitlines() if not line.startswith("created")]

    assert without_ages(by_directory) == without_ages(by_id.stdout)
    info = json.loads(aha("runs", "show", str(runs["grpo"]), "--json").stdout)
    assert (info["id"], info["last_metrics"]["step"], info["checkpoint"], len(info["artifacts"])) == (
        runs["grpo"], 2, str(runs["grpo_dir"] / "checkpoints" / "step-2"), 1)


def test_unknown_runs_are_one_line_errors(runs, tmp_path):
    assert one_line_error(aha("runs", "show", "999")) == "run 999 does not exist; list runs with `aha runs list`"
    assert one_line_error(aha("runs", "show", str(tmp_path / "elsewhere"))).startswith(
        f"no run in the store has the directory {tmp_path / 'elsewhere'}")
    assert "does not exist" in one_line_error(aha("runs", "resume", "999"))
    assert "does not exist" in one_line_error(aha("runs", "rm", "999", "--yes"))


def test_resume_hands_the_run_to_the_command_of_its_kind(runs, tmp_path):
    """Each kind's own command answers, here with its one-line error about a directory that is not a run's:
    the proof the argv went to `grpo --resume` or `distill kd --resume`."""
    with Store() as store:
        missing = store.create_run("grpo", {"max_steps": 3}, dir=tmp_path / "gone", status="crashed")
        kd = store.create_run("distill-kd", {"max_steps": 3}, dir=tmp_path / "gone-kd", status="error")
    assert one_line_error(aha("runs", "resume", str(missing))).startswith(
        f"{tmp_path / 'gone'} is not a run directory (no run.json/config.json)")
    assert one_line_error(aha("runs", "resume", str(kd), "--max-steps", "5")).startswith(
        f"{tmp_path / 'gone-kd'} is not a run directory")
    events = [json.loads(line) for line in aha("runs", "resume", str(missing), "--events", "jsonl").stdout.splitlines()]
    assert events[-1]["type"] == "error" and "is not a run directory" in events[-1]["message"]


def test_resume_refuses_what_cannot_be_resumed(runs):
    assert one_line_error(aha("runs", "resume", str(runs["sft"]))) == (
        f"run {runs['sft']} is complete; nothing to resume (--max-steps N trains it further)")
    assert one_line_error(aha("runs", "resume", str(runs["export"]))) == (
        f"run {runs['export']} (export) cannot be resumed; run `aha export` again")
    assert one_line_error(aha("runs", "resume", str(runs["generate"]))).startswith(
        f"run {runs['generate']} did not record its command; run the same `aha distill generate` with -o ")
    with Store() as store:
        store.claim_run(runs["grpo"])  # this test's process: alive, with a fresh heartbeat
    assert one_line_error(aha("runs", "resume", str(runs["grpo"]))) == (
        f"run {runs['grpo']} is running (process {os.getpid()}); cancel it or wait for it before resuming it")


def test_rm_asks_off_a_terminal_for_yes_refuses_a_running_run_and_deletes(runs, tmp_path):
    grpo, directory = runs["grpo"], runs["grpo_dir"]
    assert one_line_error(aha("runs", "rm", str(grpo))) == (
        "stdin is not a terminal, so there is no one to confirm the deletion; pass --yes")
    assert directory.is_dir()
    with Store() as store:
        store.claim_run(grpo)
    assert "is running" in one_line_error(aha("runs", "rm", str(grpo), "--yes"))
    with Store() as store:
        store.update_run_status(grpo, "cancelled")
    result = aha("runs", "rm", str(grpo), "--yes")
    assert (result.returncode, result.stdout) == (0, f"deleted run {grpo} and {directory}\n"), result.stderr
    assert not directory.exists()
    # A trace generation's directory is the output's folder: only its record goes.
    assert aha("runs", "rm", str(runs["generate"]), "--yes").stdout == f"deleted run {runs['generate']}\n"
    assert tmp_path.is_dir()
    assert [run["id"] for run in json.loads(aha("runs", "list", "--json").stdout)] == [runs["export"], runs["sft"]]


@platforms.pseudo_terminal
def test_rm_on_a_terminal_asks_with_the_size(runs):
    """On a terminal: "Delete run N (DIR, 0.5 MB)? [y/N]"; Enter keeps it, y deletes it."""
    import pty

    def answer(reply: bytes) -> tuple[int, str]:
        master, slave = pty.openpty()
        child = subprocess.Popen([sys.executable, "-m", "engine.cli", "runs", "rm", str(runs["grpo"])], cwd=REPO,
                                 stdin=slave, stdout=slave, stderr=slave)
        os.close(slave)
        seen = b""
        while b"[y/N]" not in seen:
            seen += os.read(master, 1024)
        os.write(master, reply)
        try:
            while chunk := os.read(master, 1024):
                seen += chunk
        except OSError:  # EIO: the child closed the terminal
            pass
        os.close(master)
        return child.wait(timeout=60), seen.decode().replace("\r\n", "\n")

    code, shown = answer(b"\n")
    assert f"Delete run {runs['grpo']} ({runs['grpo_dir']}, 0.5 MB)? [y/N] " in shown
    assert code == 0 and f"kept run {runs['grpo']}" in shown and runs["grpo_dir"].is_dir()
    code, shown = answer(b"y\n")
    assert code == 0 and f"deleted run {runs['grpo']}" in shown and not runs["grpo_dir"].exists()


class _AddingTeacher(BaseHTTPRequestHandler):
    """An OpenAI-style endpoint that sums "a+b=" with a one-line thought."""

    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        a, b = map(int, re.fullmatch(r"(\d+)\+(\d+)=", body["messages"][-1]["content"]).groups())
        payload = json.dumps({"choices": [{"index": 0, "finish_reason": "stop", "message": {
            "role": "assistant", "content": f"\\boxed{{{a + b}}}", "reasoning_content": f"{a} plus {b}"}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args) -> None:
        pass


def test_resume_of_a_trace_generation_calls_its_command_again_from_its_folder(tmp_path, monkeypatch):
    """The recorded argv (a relative output, --force) is called again from the folder it was started in,
    without --force: it finds the prompts done and skips them."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _AddingTeacher)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    try:
        assert cli.main(["distill", "generate", "--teacher", f"openai:http://127.0.0.1:{httpd.server_address[1]}/v1",
                         "--model", "adder", "--dataset", "addition", "--limit", "2", "-k", "1", "-o", "traces.jsonl",
                         "--force", "--events", "none"]) == 0
        with Store() as store:
            [run] = store.list_runs()
            assert run["config"]["command"] == {"argv": run["config"]["command"]["argv"], "cwd": str(work)}
            store.update_run_status(run["id"], "crashed")  # as if killed before its end
        result = aha("runs", "resume", str(run["id"]), "--events", "jsonl", cwd=tmp_path)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert any(event["type"] == "log" and event["message"] == "resuming traces.jsonl: 2 of 2 prompts done already"
               for event in events), events
    assert (events[-1]["type"], events[-1]["status"], events[-1]["result"]["skipped"], events[-1]["result"]["prompts_done"]) == (
        "done", "complete", 2, 0)
    assert len((work / "traces.jsonl").read_text().splitlines()) == 2


@platforms.posix_signals
def test_a_killed_grpo_run_is_listed_crashed_and_resumes(tmp_path):
    """`aha grpo` killed with SIGKILL after its first checkpoint: `aha runs list` shows it crashed (its pid is
    gone), `aha runs resume ID --max-steps 2` continues it from step 1 to a complete step 2."""
    from tests.support.char_model import make_char_model

    model = make_char_model(tmp_path / "char")
    run_dir = tmp_path / "run"
    child = subprocess.Popen([sys.executable, "-m", "engine.cli", "grpo", "--model", str(model), *TINY_GRPO,
                              "--max-steps", "50", "--output-dir", str(run_dir), "--events", "jsonl"],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in child.stdout:
            event = json.loads(line)
            if event["type"] == "artifact" and event.get("kind") == "checkpoint":
                child.send_signal(signal.SIGKILL)
                break
    finally:
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    [run] = json.loads(aha("runs", "list", "--json").stdout)
    assert (run["kind"], run["status"], run["pid"], run["dir"], run["step"]) == (
        "grpo", "crashed", child.pid, str(run_dir.resolve()), 1)
    result = aha("runs", "resume", str(run["id"]), "--max-steps", "2", "--events", "jsonl")
    assert result.returncode == 0, result.stderr
    done = json.loads(result.stdout.splitlines()[-1])
    assert (done["type"], done["status"], done["result"]["step"]) == ("done", "complete", 2)
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    [after] = json.loads(aha("runs", "list", "--json").stdout)
    assert (after["id"], after["status"], after["step"]) == (run["id"], "complete", 2)
    assert one_line_error(aha("runs", "resume", str(run["id"]))).startswith(f"run {run['id']} is complete")
