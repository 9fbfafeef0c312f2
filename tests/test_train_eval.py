"""Held-out evaluation during training with k samples per prompt (num_generations_eval, eval_temperature): the
shared sampler reproduces the per-sample scores of a seeded draw exactly; `aha grpo` and `aha distill sft`-style
SFT runs log eval/pass@1, eval/cons@k, eval/pass@k, eval/format and eval/seconds, in range and equal to the same
evaluation of the saved final model; stop_at_accuracy reads pass@1; the settings round-trip through config.toml
and a resume, are fixed on a resume, sit in the Train form's Logging group, and their bad values are one line.
All on the tiny char model (tests/support/char_model.py), whose random completions give varied answers."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path

import pytest
import torch

from engine.distill.kd import KDConfig
from engine.distill.traces import TraceSFTConfig
from engine.errors import AhaError
from engine.train.config import describe_settings
from engine.train.data import TaskSource
from engine.train.grpo import GRPOConfig, train
from engine.train.sampling import (
    EVAL_TOP_P,
    decode,
    encode_prompts,
    eos_token_ids,
    heldout_metrics,
    pad_token_id,
    sample,
    sample_heldout,
    sampled_accuracy,
)
from engine.train.sft import SFTConfig, train_sft
from tests.support.char_model import make_char_model

K, SEED, TOKENS, PROMPTS = 4, 5, 8, 4
EVAL_METRICS = ("eval/accuracy", "eval/pass@1", "eval/cons@k", "eval/pass@k", "eval/format", "eval/seconds")


@pytest.fixture(scope="module")
def char(tmp_path_factory):
    """The char model, its tokenizer, and a held-out file whose answers some of its seeded samples hit:
    {"folder", "model", "tokenizer", "rows" (the file's), "texts" (the direct draw, K per row), "file"}."""
    from transformers import AutoModelForCausalLM

    from engine.train.answers import extract_final_answer
    from engine.train.core import load_tokenizer

    folder = make_char_model(tmp_path_factory.mktemp("eval") / "char")
    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder), load_tokenizer(folder)
    rows = TaskSource("addition", SEED).heldout(PROMPTS)
    # The draw sample_heldout makes, written out by hand: K consecutive samples per prompt, one batch, one
    # generator seeded SEED, temperature 0.6 and top-p 0.95.
    ids, _, _ = encode_prompts(tokenizer, [row["prompt"] for row in rows])
    eos = eos_token_ids(tokenizer, model)
    rollout = sample(model, [ids[index] for index in range(PROMPTS) for _ in range(K)], max_new_tokens=TOKENS,
                     eos_ids=eos, pad_id=pad_token_id(tokenizer), temperature=0.6, top_p=EVAL_TOP_P,
                     generator=torch.Generator().manual_seed(SEED))
    texts = decode(tokenizer, rollout.completion_ids, rollout.mask, eos)
    # Each row's answer: the first answer its samples give (so pass@1 > 0 by construction), else the sum.
    heldout = []
    for index, row in enumerate(rows):
        answers = [extract_final_answer(text) for text in texts[index * K:(index + 1) * K]]
        given = next((answer for answer in answers if answer is not None), None)
        heldout.append({"prompt": row["prompt"], "answer": given if given is not None else row["answer"]})
    file = folder.parent / "heldout.jsonl"
    file.write_text("".join(json.dumps(row) + "\n" for row in heldout))
    return {"folder": folder, "model": model, "tokenizer": tokenizer, "rows": heldout, "texts": texts, "file": file}


def test_sampled_accuracy_is_the_mean_of_the_per_sample_scores_of_a_seeded_draw(char):
    """pass@1 = the mean of the accuracy reward over the K samples of each row (the hand-made draw of the
    fixture), cons@k the majority vote's, pass@k the share of rows with a correct sample."""
    from engine.eval.metrics import cons_at_k
    from engine.train.answers import extract_final_answer
    from engine.train.rewards import accuracy_reward

    rows, texts = char["rows"], char["texts"]
    scores = accuracy_reward([""] * len(texts), texts, answer=[row["answer"] for row in rows for _ in range(K)])
    per_row = [scores[index * K:(index + 1) * K] for index in range(PROMPTS)]
    answers = [[extract_final_answer(text) for text in texts[index * K:(index + 1) * K]] for index in range(PROMPTS)]
    accuracy, metrics = sampled_accuracy(char["model"], char["tokenizer"], rows, K, max_new_tokens=TOKENS, seed=SEED)
    assert accuracy == metrics["pass@1"] == pytest.approx(sum(scores) / len(scores), abs=1e-12)
    assert 0 < accuracy < 1, per_row  # the answers were chosen so that some samples hit them, not all
    assert metrics["pass@k"] == pytest.approx(sum(max(row) for row in per_row) / PROMPTS, abs=1e-12)
    assert metrics["cons@k"] == pytest.approx(
        sum(cons_at_k(answers[index], [bool(score) for score in per_row[index]]) for index in range(PROMPTS)) / PROMPTS,
        abs=1e-12)
    assert metrics["pass@1"] <= metrics["pass@k"] and 0 <= metrics["format"] <= 1 and metrics["seconds"] > 0
    # Two prompts per batch (other draws): still K samples per row, pass@1 still the mean of their scores.
    smaller = sample_heldout(char["model"], char["tokenizer"], rows, K, max_new_tokens=TOKENS, temperature=0.6,
                             top_p=EVAL_TOP_P, seed=SEED, batch_size=2 * K)
    assert [len(row) for row in smaller.correct] == [K] * PROMPTS
    assert heldout_metrics(smaller)["pass@1"] == pytest.approx(sum(map(sum, smaller.correct)) / (PROMPTS * K),
                                                               abs=1e-12)


def recomputed(run_config, final: Path, rows: list[dict]) -> dict[str, float]:
    """The held-out evaluation of the run's saved final model, with the run's settings."""
    from engine.train.core import load_model

    model, tokenizer = load_model(dataclasses.replace(run_config, model=str(final), use_peft=False),
                                  torch.device("cpu"), trainable=False)
    samples = sample_heldout(model, tokenizer, rows, run_config.num_generations_eval,
                             max_new_tokens=run_config.max_completion_length, temperature=run_config.eval_temperature,
                             top_p=EVAL_TOP_P, seed=run_config.seed)
    metrics = heldout_metrics(samples)
    every = [flag for row in samples.correct for flag in row]
    assert metrics["pass@1"] == pytest.approx(sum(every) / len(every), abs=1e-12)  # the mean of the per-sample scores
    return metrics


def check_logged(record: dict, expected: dict[str, float]) -> None:
    assert set(EVAL_METRICS) <= set(record), set(EVAL_METRICS) - set(record)
    assert all(0 <= record[name] <= 1 for name in EVAL_METRICS if name != "eval/seconds")
    assert record["eval/accuracy"] == record["eval/pass@1"] <= record["eval/pass@k"]
    assert record["eval/seconds"] > 0
    for name in ("pass@1", "cons@k", "pass@k", "format"):
        assert record[f"eval/{name}"] == pytest.approx(expected[name], abs=1e-12), name


def test_grpo_logs_pass_at_1_over_k_samples_and_keeps_the_settings_on_resume(char, tmp_path):
    run_dir = tmp_path / "grpo"
    config = GRPOConfig(model=str(char["folder"]), dataset="addition", eval_dataset=str(char["file"]),
                        rewards=("accuracy", "format"), prompts_per_step=2, num_generations=2, max_completion_length=TOKENS,
                        max_steps=1, eval_steps=1, eval_samples=PROMPTS, num_generations_eval=K, seed=SEED,
                        use_peft=False, learning_rate=1e-4, save_steps=1, output_dir=str(run_dir))
    result = train(config)
    saved = tomllib.loads((run_dir / "config.toml").read_text())
    assert saved["num_generations_eval"] == K and saved["eval_temperature"] == 0.6
    with pytest.raises(AhaError, match="^--resume continues a run with its saved settings; num_generations_eval "
                                       "cannot change"):
        train(resume=run_dir, overrides={"num_generations_eval": 8})
    result = train(resume=run_dir, overrides={"max_steps": 2})  # the saved k, at the resumed step too
    assert result["status"] == "complete" and result["step"] == 2
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2]
    check_logged(lines[-1], recomputed(config, Path(result["model"]), char["rows"]))
    assert all(set(EVAL_METRICS) <= set(line) for line in lines)


def test_sft_logs_pass_at_1_and_stop_at_accuracy_reads_it(char, tmp_path):
    """stop_at_accuracy 0: the first evaluation (step 1 of 3) stops the run; its pass@1 is the result's."""
    config = SFTConfig(model=str(char["folder"]), dataset="addition", eval_dataset=str(char["file"]), use_peft=False,
                       learning_rate=1e-4, per_device_train_batch_size=4, max_length=64, max_steps=3, eval_steps=1,
                       eval_samples=PROMPTS, num_generations_eval=K, max_completion_length=TOKENS, seed=SEED,
                       stop_at_accuracy=0.0, output_dir=str(tmp_path / "sft"))
    result = train_sft(config)
    assert result["status"] == "complete" and result["step"] == 1
    lines = [json.loads(line) for line in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    check_logged(lines[-1], recomputed(config, Path(result["model"]), char["rows"]))
    assert result["eval_accuracy"] == lines[-1]["eval/pass@1"]
    log = (tmp_path / "sft" / "run.log").read_text()
    assert f"held-out pass@1 (k={K})" in log and "reached stop_at_accuracy" in log


@pytest.mark.parametrize("cls", [GRPOConfig, SFTConfig, TraceSFTConfig, KDConfig])
def test_the_settings_sit_in_the_logging_group_with_trl_names_and_bad_values_are_one_line(cls):
    infos = {info.name: info for info in describe_settings(cls)}
    names = [info.name for info in describe_settings(cls) if info.group == "Logging"]
    assert names[names.index("eval_steps"):][:3] == ["eval_steps", "num_generations_eval", "eval_temperature"]
    assert infos["num_generations_eval"].default == 1 and infos["eval_temperature"].default == 0.6
    assert "eval/pass@1" in infos["num_generations_eval"].help and "0.95" in infos["eval_temperature"].help
    base = {GRPOConfig: dict(dataset="addition"), SFTConfig: dict(dataset="addition"),
            TraceSFTConfig: dict(dataset="addition"), KDConfig: dict(dataset="addition", teacher="t")}[cls]
    cls(model="m", **base, num_generations_eval=K).validate()
    for bad, message in ((dict(num_generations_eval=0), "^num_generations_eval must be at least 1 \\(1: greedy\\), got 0$"),
                         (dict(eval_temperature=-1.0), "^eval_temperature must be 0 or more, got -1.0$"),
                         (dict(num_generations_eval=K, eval_temperature=0.0), "^eval_temperature 0 is greedy: the 4 ")):
        with pytest.raises(AhaError, match=message):
            cls(model="m", **base, **bad).validate()


def test_the_train_form_shows_them_under_logging(qtbot):
    from app.train.form import SettingsForm

    form = SettingsForm(describe_settings(GRPOConfig))
    qtbot.addWidget(form)
    editor = form.sections["Logging"].findChild(object, "setting_num_generations_eval")
    assert editor is not None and "TRL's num_generations_eval" in editor.toolTip()
    assert form.sections["Logging"].findChild(object, "setting_eval_temperature").text() == "0.6"
