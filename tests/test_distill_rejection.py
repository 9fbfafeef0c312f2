"""R1's stage 3 in `aha distill generate`: a run directory as the hf: teacher, the readability filter,
--mix of non-reasoning rows, and seeded hf: samples that do not depend on where a run was resumed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from engine.distill.generate import (
    Readability,
    draw_rows,
    generate_traces,
    mix_rows,
    parse_mix,
    progress_path,
    readability_reason,
    rejected_path,
    repeated_paragraph,
)
from engine.distill.teachers import (
    Sampling,
    TeacherSample,
    make_teacher,
    resolve_hf_target,
)
from engine.errors import AhaError
from tests.support.list_teacher import ListTeacher
from tests.support.scripted_model import QUESTION

PARAGRAPH = "First I add the two numbers together carefully."


def _sample(thinking: str, answer: str = "\\boxed{4}", thinking_tokens: int | None = None) -> TeacherSample:
    usage = {} if thinking_tokens is None else {"thinking_tokens": thinking_tokens}
    return TeacherSample(thinking, answer, f"<think>\n{thinking}\n</think>\n\n{answer}", False, "stop", {}, {}, usage)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# Readability filter -------------------------------------------------------------------------------

def test_repeated_paragraph_normalises_whitespace_and_ignores_short_blocks():
    assert repeated_paragraph(f"{PARAGRAPH}\n\nThen check.\n\n  {PARAGRAPH.replace(' ', '   ')}  ") == PARAGRAPH
    assert repeated_paragraph("Wait.\n\nWait.\n\n" + PARAGRAPH) is None  # under 20 characters
    assert repeated_paragraph(f"{PARAGRAPH}\n{PARAGRAPH}") is None      # one block: no blank line between


def test_readability_reasons():
    rules = Readability(max_thinking_tokens=10)
    assert readability_reason(_sample("short", thinking_tokens=10), QUESTION, rules) is None
    assert readability_reason(_sample("long", thinking_tokens=11), QUESTION, rules) == "too-long"
    assert readability_reason(_sample("no count"), QUESTION, rules) is None  # unknown length: not judged
    twice = _sample(f"{PARAGRAPH}\n\n{PARAGRAPH}")
    assert readability_reason(twice, QUESTION, Readability()) == "repeated-paragraph"
    assert readability_reason(twice, QUESTION, Readability(reject_repeated_paragraphs=False)) is None


def test_mixed_language_reason():
    pytest.importorskip("engine.train.language")
    rules = Readability(min_language_share=0.8, language="en")
    english = _sample("I add two and two, which makes four, so the answer is four.")
    mixed = _sample("我们先把两个数相加，然后检查结果是否正确，所以 the answer is four.")
    assert readability_reason(english, QUESTION, rules) is None
    assert readability_reason(mixed, QUESTION, rules) == "mixed-language"


def test_readability_rejections_go_to_the_rejected_file_and_stats(tmp_path):
    good = "<think>\nTwo and two make four.\n</think>\n\n\\boxed{4}"
    repeated = f"<think>\n{PARAGRAPH}\n\n{PARAGRAPH}\n</think>\n\n\\boxed{{4}}"
    out = tmp_path / "traces.jsonl"
    stats = generate_traces(ListTeacher([good, repeated]), [{"prompt": "2+2?", "answer": "4"}], k=2, out_path=out,
                            readability=Readability())
    assert (stats.kept, stats.rejected) == (1, {"repeated-paragraph": 1})
    assert [record["reason"] for record in _lines(rejected_path(out))] == ["repeated-paragraph"]


# --mix --------------------------------------------------------------------------------------------

def test_parse_mix_and_draw_rows():
    assert parse_mix("C:/data/chat.jsonl:0.5") == (Path("C:/data/chat.jsonl"), 0.5)
    for bad in ("chat.jsonl", "chat.jsonl:-1", "chat.jsonl:lots", ":0.3"):
        with pytest.raises(AhaError, match="FILE:RATIO"):
            parse_mix(bad)
    rows = [{"prompt": str(number)} for number in range(4)]
    drawn = draw_rows(rows, 3, seed=1)
    assert len({row["prompt"] for row in drawn}) == 3 and drawn == draw_rows(rows, 3, seed=1)
    assert sorted(row["prompt"] for row in draw_rows(rows, 9, seed=1)[:4]) == ["0", "1", "2", "3"]


def test_mix_appends_once_and_survives_a_resume(tmp_path):
    from engine.distill.traces import TraceSFTConfig, read_traces

    chat = tmp_path / "chat.jsonl"
    chat.write_text("".join(json.dumps({"prompt": f"Say hi {n}", "answer": f"Hi {n}!"}) + "\n" for n in range(5)),
                    encoding="utf-8")
    good = "<think>\nTwo and two make four.\n</think>\n\n\\boxed{4}"
    rows = [{"prompt": f"{n}+0?", "answer": "4"} for n in range(4)]
    out = tmp_path / "traces.jsonl"
    teacher = ListTeacher([good])
    stats = generate_traces(teacher, rows, k=1, out_path=out, mix=[f"{chat}:0.5"], sampling=Sampling(seed=2))
    records = _lines(out)
    mixed = [record for record in records if record.get("source") == "mix:chat.jsonl"]
    assert stats.kept == 4 and len(mixed) == 2 and len(records) == 6
    assert all(record["thinking"] == "" and record["answer"].startswith("Hi") for record in mixed)
    again = generate_traces(teacher, rows, k=1, out_path=out, mix=[f"{chat}:0.5"], sampling=Sampling(seed=2))
    assert again.skipped == 4 and _lines(out) == records  # nothing appended twice, nothing removed
    assert mix_rows(out, [f"{chat}:0.5"], 2) == 0
    assert any("mix" in record for record in _lines(progress_path(out)))
    assert len(read_traces(TraceSFTConfig(traces=str(out)))) == 6  # 4 traces + 2 mixed rows
    with pytest.raises(AhaError, match="not found"):
        mix_rows(tmp_path / "other.jsonl", [f"{tmp_path / 'missing.jsonl'}:1"], 0)


# hf:RUN_DIR and seeded determinism ----------------------------------------------------------------

def _run_dir(tmp_path: Path, base: Path, with_final: bool, with_checkpoint: bool) -> Path:
    """A run directory as engine.train.runs writes it, with a real LoRA adapter of `base` (random A and B, so
    that sampling from the scripted model varies) as its final adapter and/or its step-2 checkpoint."""
    from tests.tiny_models import make_lora_adapter

    run = tmp_path / "grpo-run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"kind": "grpo", "store_id": None}), encoding="utf-8")
    (run / "config.json").write_text(json.dumps({"model": str(base), "use_peft": True}), encoding="utf-8")
    adapter = make_lora_adapter(base, tmp_path / "adapter")
    if with_final:
        shutil.copytree(adapter, run / "final" / "adapter")
    if with_checkpoint:
        shutil.copytree(adapter, run / "checkpoints" / "step-2" / "adapter")
    return run


def test_hf_run_dir_teacher_and_resume_determinism(scripted_gguf, tiny_dir, tmp_path):
    base = tiny_dir / "scripted"
    run = _run_dir(tmp_path, base, with_final=True, with_checkpoint=True)
    assert resolve_hf_target(str(run)) == (str(base), str(run / "final" / "adapter"), None)
    events = []
    teacher = make_teacher(f"hf:{run}", on_event=events.append)
    assert events == [] and teacher.describe()["adapter"] == str(run / "final" / "adapter")
    prompts = [f"{QUESTION} ({n})" for n in range(6)]
    sampling = Sampling(temperature=2.0, top_p=1.0, max_tokens=6, seed=5)
    try:
        whole = {index: [s.raw for s in samples] for index, samples in teacher.generate(prompts, 2, sampling)}
        first = {index: [s.raw for s in samples] for index, samples in teacher.generate(prompts[:3], 2, sampling)}
        rest = {index + 3: [s.raw for s in samples] for index, samples in teacher.generate(prompts[3:], 2, sampling)}
    finally:
        teacher.close()
    assert whole == {**first, **rest}
    assert len({tuple(raws) for raws in whole.values()}) > 1  # sampled, not one reply for every prompt


def test_a_run_without_final_uses_its_newest_checkpoint_or_says_what_to_do(scripted_gguf, tiny_dir, tmp_path):
    base = tiny_dir / "scripted"
    run = _run_dir(tmp_path, base, with_final=False, with_checkpoint=True)
    folder, adapter, note = resolve_hf_target(str(run))
    assert (folder, adapter) == (str(base), str(run / "checkpoints" / "step-2" / "adapter"))
    assert "newest checkpoint step-2" in note
    empty = tmp_path / "empty"
    empty.mkdir()
    for name in ("run.json", "config.json"):
        (empty / name).write_text(json.dumps({"kind": "grpo", "model": str(base)}), encoding="utf-8")
    with pytest.raises(AhaError, match="no final adapter or model and no checkpoint yet"):
        resolve_hf_target(str(empty))
    assert resolve_hf_target(f"{base}+{run}") == (str(base), str(run), None)  # plain FOLDER+ADAPTER as before
