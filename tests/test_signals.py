"""Learning-signal warnings (engine.train.signals): each rule on made-up histories at and around its threshold,
each key once, the advice names the setting; the incremental file reader (engine.train.follow) with a
half-written line, a rewrite and a missing file; and a tiny real `aha grpo` whose reward never fires warns in
its events and run.log."""

from __future__ import annotations

import json
import math
import os

import pytest

from engine import cli
from engine.train import signals
from engine.train.follow import JsonlFollower, SampleIndex, eta, read_jsonl
from engine.train.signals import SignalWatch, learning_warnings


def steps(count: int, **metrics) -> list[dict]:
    return [{"step": step, **metrics} for step in range(1, count + 1)]


def keys(history, samples=(), config=None) -> list[str]:
    return [warning.key for warning in learning_warnings(history, samples, config)]


def test_clipped_completions_warn_after_several_steps_and_name_the_settings():
    assert keys(steps(signals.CLIPPED_STEPS - 1, **{"completions/clipped_ratio": 0.97})) == []
    assert keys(steps(5, **{"completions/clipped_ratio": 0.5})) == []  # half is not "most"
    [warning] = learning_warnings(steps(8, **{"completions/clipped_ratio": 0.97}), config={
        "max_completion_length": 256, "temperature": 0.7})
    assert (warning.key, warning.step) == ("clipped", signals.CLIPPED_STEPS)  # once, at the step it became true
    assert "97% of completions hit max_completion_length (now 256)" in warning.message
    assert "raise max_completion_length or lower temperature (now 0.7)" in warning.message


def test_clipped_steps_must_be_consecutive():
    history = steps(6, **{"completions/clipped_ratio": 0.9})
    history[1]["completions/clipped_ratio"] = history[4]["completions/clipped_ratio"] = 0.1
    assert keys(history) == []


def test_zero_std_groups_say_whether_the_task_is_too_hard_or_too_easy():
    count = signals.ZERO_STD_STEPS
    assert keys(steps(count - 1, frac_reward_zero_std=1.0)) == []
    assert keys(steps(count, frac_reward_zero_std=0.5)) == []
    [hard] = learning_warnings(steps(count, frac_reward_zero_std=1.0, accuracy=0.0), config={"num_generations": 4})
    assert hard.key == "zero-std" and "too hard" in hard.message and "raise num_generations (now 4)" in hard.message
    [easy] = [w for w in learning_warnings(steps(count, frac_reward_zero_std=0.95, accuracy=1.0)) if w.key == "zero-std"]
    assert "too easy" in easy.message and "95% of groups" in easy.message
    [plain] = learning_warnings(steps(count, frac_reward_zero_std=1.0))
    assert "too hard or too easy" in plain.message


def completion(**rewards) -> dict:
    return {"text": "x", "rewards": rewards, "reward": sum(value or 0 for value in rewards.values())}


def test_a_reward_that_never_varies_is_found_from_the_samples():
    history = steps(3, reward=0.5)
    samples = [{"step": step, "completions": [completion(accuracy=0.0, format=1.0), completion(accuracy=0.0, format=0.0),
                                              completion(accuracy=0.0, format=1.0)]}
               for step in (1, 2, 3)]
    [warning] = learning_warnings(history, samples)
    assert (warning.key, warning.step) == ("constant-reward/accuracy", 3)
    assert "reward accuracy gave 0 to every completion so far (3 steps)" in warning.message
    assert "re.DOTALL" in warning.message
    # 1 for every completion: met by all (a learned format), not a regex that never matches
    samples = [{"step": step, "completions": [completion(format=1.0), completion(format=1.0)]} for step in (1, 2, 3)]
    [warning] = learning_warnings(history, samples)
    assert warning.key == "constant-reward/format" and "already learned" in warning.message
    assert "re.DOTALL" not in warning.message
    # None for every completion: its own wording
    samples = [{"step": step, "completions": [completion(length=None), completion(length=None)]} for step in (1, 2, 3)]
    [warning] = learning_warnings(history, samples)
    assert warning.key == "constant-reward/length" and "returned None" in warning.message
    # one completion that differs, at any step, and the reward is fine
    samples[1]["completions"][0]["rewards"]["length"] = 0.2
    assert keys(history, samples) == []


def test_without_samples_a_reward_mean_that_never_moves_warns():
    history = steps(3, **{"rewards/format/mean": 0.0, "rewards/accuracy/mean": 0.25})
    history[2]["rewards/accuracy/mean"] = 0.5
    assert keys(history) == ["constant-reward/format"]
    assert keys(steps(3, **{"rewards/format/mean": float("nan")})) == ["constant-reward/format"]  # None each step
    assert keys(steps(2, **{"rewards/format/mean": 0.0})) == []


def test_exploding_kl_and_grad_norm():
    calm = [{"step": step, "kl": 0.01 + 0.001 * step, "grad_norm": 0.5} for step in range(1, 8)]
    assert keys(calm) == []
    history = [*calm, {"step": 8, "kl": 0.5, "grad_norm": 40.0}]
    found = {warning.key: warning for warning in learning_warnings(history, config={"learning_rate": 1e-5, "beta": 0.04})}
    assert set(found) == {"kl", "grad_norm"} and found["kl"].step == 8
    assert "lower learning_rate (now 1e-05) or raise beta (now 0.04)" in found["kl"].message
    assert "80× its median" in found["grad_norm"].message
    # a tiny KL that grows (from 0.0001 to 0.002) is not exploding, nor is anything over a history of zeros
    assert keys([{"step": step, "kl": 0.0001} for step in range(1, 7)] + [{"step": 7, "kl": 0.002}]) == []
    assert keys([{"step": step, "grad_norm": 0.0} for step in range(1, 7)] + [{"step": 7, "grad_norm": 3.0}]) == []
    # a NaN gradient (logged as None) warns at once
    assert keys([{"step": 1, "grad_norm": None}]) == ["grad_norm"]


def test_reward_falling_after_a_peak():
    window = signals.REWARD_WINDOW
    rising = [step / (3 * window) for step in range(3 * window)]                  # 0 → 1
    falling = [*rising, *[1 - step / window for step in range(1, 2 * window)]]  # back down to −1
    assert keys([{"step": step + 1, "reward": value} for step, value in enumerate(rising)]) == []
    [warning] = learning_warnings([{"step": step + 1, "reward": value} for step, value in enumerate(falling)])
    assert warning.key == "reward-falling" and "fell from its peak" in warning.message
    # noise around a flat reward is no fall
    flat = [0.5 + (0.01 if step % 2 else -0.01) for step in range(4 * window)]
    assert keys([{"step": step + 1, "reward": value} for step, value in enumerate(flat)]) == []


def test_each_key_is_emitted_once_and_update_returns_only_new_warnings():
    watch = SignalWatch()
    seen = []
    for step in range(1, 20):
        seen.append([w.key for w in watch.update(step, {"completions/clipped_ratio": 1.0, "frac_reward_zero_std": 1.0})])
    assert [step for step, found in enumerate(seen, 1) if found] == [signals.CLIPPED_STEPS, signals.ZERO_STD_STEPS]
    assert [w.key for w in watch.warnings] == ["clipped", "zero-std"]


# engine.train.follow ------------------------------------------------------------------------------

def test_follower_reads_appended_lines_and_waits_for_a_half_written_one(tmp_path):
    path = tmp_path / "metrics.jsonl"
    follower = JsonlFollower(path)
    assert follower.read().records == []  # not there yet
    path.write_text('{"step": 1}\n{"step": 2}\n{"st')
    assert [r["step"] for r in follower.read().records] == [1, 2]
    assert follower.read().records == []
    with open(path, "a") as stream:
        stream.write('ep": 3}\nnot json\n[1, 2]\n{"step": 4}\n')
    batch = follower.read()
    assert [r["step"] for r in batch.records] == [3, 4] and not batch.restarted


def test_follower_starts_over_when_a_resume_rewrites_the_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": step}) + "\n" for step in range(1, 6)))
    follower = JsonlFollower(path)
    assert len(follower.read().records) == 5
    # what Run.truncate_logs does: the kept lines, atomically replaced (a new file), then new steps appended,
    # so that the file is longer than before
    replacement = tmp_path / "metrics.tmp"
    replacement.write_text("".join(json.dumps({"step": step, "pad": "x" * 20}) + "\n" for step in range(1, 4)))
    os.replace(replacement, path)
    batch = follower.read()
    assert batch.restarted and [r["step"] for r in batch.records] == [1, 2, 3]
    path.write_text('{"step": 1}\n')  # truncated in place
    batch = follower.read()
    assert batch.restarted and [r["step"] for r in batch.records] == [1]
    path.unlink()
    assert follower.read().restarted
    assert read_jsonl(tmp_path / "missing.jsonl") == []


def sample_line(step: int, prompt_id: str, text: str) -> str:
    record = {"step": step, "prompt_id": prompt_id, "prompt": f"{prompt_id}=", "answer": "7",
              "completions": [{"text": text, "rewards": {"accuracy": 1.0}, "reward": 1.0}]}
    return json.dumps(record, ensure_ascii=False) + "\n"


def test_sample_index_finds_steps_prompts_and_text_and_follows_the_file(tmp_path):
    path = tmp_path / "samples.jsonl"
    index = SampleIndex(path)
    assert not index.refresh() and index.steps() == []
    path.write_text(sample_line(1, "a", "Über 3+4 is 7") + sample_line(1, "b", "six") + sample_line(2, "a", "seven")
                    + sample_line(3, "b", "quoted \"x\"\nnext")[:30])
    index.refresh()
    assert index.steps() == [1, 2] and len(index) == 3
    assert [record["prompt_id"] for record in index.records(1)] == ["a", "b"]
    assert [record["step"] for record in index.prompt_history("a")] == [1, 2]
    assert [r["completions"][0]["text"] for r in index.search("SEVEN")] == ["seven"]
    assert [r["step"] for r in index.search("über")] == [1]  # not ASCII: parsed, then compared
    with open(path, "a") as stream:  # the half-written line completed
        stream.write(sample_line(3, "b", 'quoted "x"\nnext')[30:])
    index.refresh()
    assert index.steps() == [1, 2, 3] and [r["step"] for r in index.search('"x"\nnext')] == [3]
    replacement = tmp_path / "samples.tmp"  # a resume's truncation
    replacement.write_text(sample_line(1, "a", "again"))
    os.replace(replacement, path)
    assert index.refresh() and index.steps() == [1] and index.records(1)[0]["completions"][0]["text"] == "again"


def test_eta_splits_generation_from_training():
    history = [{"step": step, "generation_s": 3.0, "training_s": 1.0, "time": 100.0 + 4 * step} for step in range(1, 5)]
    left = eta(history, 10)
    assert (left.total, left.per_step, left.generation, left.training) == (24.0, 4.0, 18.0, 6.0)
    wall = eta([{"step": 1, "time": 10.0}, {"step": 3, "time": 14.0}], 5)
    assert (wall.total, wall.generation) == (4.0, None)
    assert eta(history, 4) is None and eta([], 10) is None and eta(history, None) is None


# The trainer emits them ---------------------------------------------------------------------------

NEVER = """
def never(prompts, completions, **columns):
    return [0.0 for completion in completions]
"""


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    from tests.support.char_model import make_char_model

    folder = tmp_path_factory.mktemp("signals")
    (folder / "never.py").write_text(NEVER)
    return folder, make_char_model(folder / "student")


def test_a_grpo_run_whose_reward_never_fires_logs_a_warning_once(student, tmp_path, capsys):
    from tests.test_cli_training import TINY_GRPO

    folder, model = student
    run = tmp_path / "run"
    code = cli.main(["grpo", "--model", str(model), *TINY_GRPO, "--rewards", f"{folder / 'never.py'}:never",
                     "--max-steps", str(signals.CONSTANT_STEPS + 1), "--output-dir", str(run), "--events", "jsonl"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    events = [json.loads(line) for line in captured.out.splitlines()]
    warnings = [event["message"] for event in events if event["type"] == "log" and event["level"] == "warning"
                and "reward never" in event["message"]]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"reward never gave 0 to every completion so far ({signals.CONSTANT_STEPS} steps)")
    assert f"warning: {warnings[0]}" in (run / "run.log").read_text()
    # the dashboard's computation over the files finds the same
    found = learning_warnings(read_jsonl(run / "metrics.jsonl"), read_jsonl(run / "samples.jsonl"))
    assert "constant-reward/never" in [warning.key for warning in found]
    assert all(math.isfinite(record["reward"]) for record in read_jsonl(run / "metrics.jsonl"))


def test_a_resumed_grpo_run_does_not_warn_again_about_what_it_warned_before(tmp_path):
    """The trainer's watch replays the kept steps of a resumed run (engine.train.grpo._signal_watch)."""
    from types import SimpleNamespace

    from engine.train.grpo import GRPOConfig, _signal_watch

    lines = steps(signals.CLIPPED_STEPS, **{"completions/clipped_ratio": 0.99})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    trainer = SimpleNamespace(step=len(lines), run=SimpleNamespace(dir=tmp_path))
    watch = _signal_watch(GRPOConfig(model="m", dataset="addition"), trainer)
    assert [warning.key for warning in watch.warnings] == ["clipped"]
    assert watch.update(len(lines) + 1, {"completions/clipped_ratio": 0.99}) == []
    fresh = _signal_watch(GRPOConfig(model="m", dataset="addition"), SimpleNamespace(step=0, run=trainer.run))
    assert fresh.warnings == []
