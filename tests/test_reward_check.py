"""`aha rewards check`: typed and sampled completions scored with each reward, the think/answer split, and a
custom reward whose regex lacks re.DOTALL (unsloth #1761) flagged as never firing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.errors import AhaError
from engine.train.data import TaskSource
from engine.train.reward_check import CheckSettings, check_rewards, read_completions, verdicts

REPO = Path(__file__).resolve().parents[1]
# The example reward of unsloth #1761: `.` does not cross the newlines of a thought without re.DOTALL, so
# the pattern never matches a real completion and the reward is always 0.
NO_DOTALL = '''import re

def think_format(prompts, completions, **columns):
    pattern = r"^.*?</think>.*$"
    return [1.0 if re.match(pattern, text) else 0.0 for text in completions]


def think_format_dotall(prompts, completions, **columns):
    pattern = r"^.*?</think>.*$"
    return [1.0 if re.match(pattern, text, re.DOTALL) else 0.0 for text in completions]
'''
COMPLETIONS = ["Let me add.\n2+1=3\n</think>\n1603", "hmm\n</think>\n1600", "no thought at all"]


@pytest.fixture
def reward_file(tmp_path) -> Path:
    path = tmp_path / "my_rewards.py"
    path.write_text(NO_DOTALL)
    return path


def test_a_regex_without_dotall_never_fires_and_is_flagged(reward_file):
    settings = CheckSettings(rewards=("accuracy", f"{reward_file}:think_format", f"{reward_file}:think_format_dotall"),
                             reward_weights=(1.0, 0.5, 0.5), dataset="addition", prefilled=True)
    report = check_rewards(settings, [{"completion": text, "prompt": "1602+1=", "answer": "1603"} for text in COMPLETIONS])
    states = {name: verdict["state"] for name, verdict in report["verdicts"].items()}
    assert states == {"accuracy": "ok", "think_format": "never_fired", "think_format_dotall": "ok"}
    assert "re.DOTALL" in report["verdicts"]["think_format"]["message"]
    first = report["completions"][0]
    assert first["rewards"] == {"accuracy": 1.0, "think_format": 0.0, "think_format_dotall": 1.0}
    assert first["total"] == 1.5
    assert (first["thinking"], first["answer_text"].strip()) == ("Let me add.\n2+1=3\n", "1603")
    assert [item["rewards"]["think_format_dotall"] for item in report["completions"]] == [1.0, 1.0, 0.0]
    assert report["warnings"] == [report["verdicts"]["think_format"]["message"]]


def test_verdicts():
    found = verdicts({"zero": [0.0, None, 0.0], "same": [0.5, 0.5], "ok": [1.0, 0.0], "one": [1.0],
                      "broken": [None, None]}, {"broken": "ValueError: no answer"})
    assert {name: item["state"] for name, item in found.items()} == {
        "zero": "never_fired", "same": "constant", "ok": "ok", "one": "ok", "broken": "error"}
    assert "gave 0.5 to every completion" in found["same"]["message"]
    assert "ValueError: no answer" in found["broken"]["message"]


def test_a_reward_that_fails_everywhere_does_not_hide_the_others():
    report = check_rewards(CheckSettings(rewards=("accuracy", "format"), prefilled=True),
                           [{"completion": text} for text in COMPLETIONS])  # no dataset: no answers
    assert report["verdicts"]["accuracy"]["state"] == "error"
    assert "answer" in report["errors"]["accuracy"]
    assert [item["rewards"]["format"] for item in report["completions"]] == [1.0, 1.0, 0.0]
    assert all(item["total"] is None for item in report["completions"])


def test_sampled_completions_from_the_tiny_model(checkpoint, reward_file):
    settings = CheckSettings(rewards=("format", f"{reward_file}:think_format", "length"), model=str(checkpoint("qwen2")),
                             dataset="addition", prompts=2, samples=2, max_completion_length=6, device="cpu")
    events = []
    report = check_rewards(settings, on_event=events.append)
    assert len(report["completions"]) == 4
    assert all(0 < item["length"] <= 6 and item["prefilled"] for item in report["completions"])
    first_rows = [TaskSource("addition").row(index)["prompt"] for index in range(2)]
    assert [item["prompt"] for item in report["completions"]] == [first_rows[0]] * 2 + [first_rows[1]] * 2
    assert report["verdicts"]["think_format"]["state"] == "never_fired"
    assert [event["stage"] for event in events if event["type"] == "progress"][:2] == ["load", "load"]


def test_the_command_streams_a_job_and_ends_with_the_report(reward_file, tmp_path):
    lines = tmp_path / "typed.jsonl"
    lines.write_text(json.dumps({"completion": COMPLETIONS[1], "prompt": "1599+1=", "answer": "1600"}) + "\n")
    result = subprocess.run(
        [sys.executable, "-m", "engine.cli", "rewards", "check", "--dataset", "addition", "--rewards", "accuracy",
         f"{reward_file}:think_format", "--completion", COMPLETIONS[0], "--completions", str(lines), "--prefilled",
         "--events", "jsonl"], capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert events[0]["type"] == "start" and events[0]["kind"] == "reward-check"
    assert events[-1]["type"] == "done" and events[-1]["status"] == "complete"
    report = events[-1]["result"]
    assert [item["prompt"] for item in report["completions"]] == [TaskSource("addition").row(0)["prompt"], "1599+1="]
    assert report["completions"][1]["rewards"]["accuracy"] == 1.0
    assert any(event["type"] == "log" and "think_format never fired" in event["message"] for event in events)


def test_bad_input_is_one_line(tmp_path, reward_file):
    with pytest.raises(AhaError, match="give --model"):
        check_rewards(CheckSettings(dataset="addition"))
    with pytest.raises(AhaError, match="has no function 'nope'"):
        check_rewards(CheckSettings(rewards=(f"{reward_file}:nope",)), [{"completion": "x"}])
    with pytest.raises(AhaError, match="2 rewards but 1 weights"):
        check_rewards(CheckSettings(reward_weights=(1.0,)), [{"completion": "x"}])
    with pytest.raises(AhaError, match="not found"):
        read_completions(None, str(tmp_path / "absent.jsonl"))
    result = subprocess.run([sys.executable, "-m", "engine.cli", "rewards", "check", "--rewards", "nope"],
                            capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            timeout=60)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "aha: error: unknown reward 'nope': use one of accuracy, format, length, repetition, language, reward_model, judge or path/to/file.py:function"]
