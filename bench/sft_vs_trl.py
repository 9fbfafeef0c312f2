"""Benchmark: SFT steps on reasoning traces, `aha distill sft` vs TRL's SFTTrainer, same model, data and settings.

The char-level Qwen2 of the distillation test (random weights, full fine-tuning), the built-in 3-digit
addition task's teacher traces (prompt → `<think>` one line per column `</think>` answer) as a
prompt/completion dataset, loss on the completion only, batch 64, lr 2e-3 constant, AdamW, no gradient
checkpointing (--gradient-checkpointing turns it on in both, TRL's default), CPU. Each run is a child
process (so peak RSS is its own), the two alternate, and the first steps of each run are warm-up.
Prints median step time, peak RSS and the ratios, and next to them the tokens each side fed the model per
step over the timed steps, without and with padding (counted the same way in both: the ids every
nn.Embedding looks up), so that equal work is visible.
TRL is needed only here, in its own environment: `sh bench/trl_venv.sh`, then run this with
.cache/bench-venv/bin/python (as `make bench` does).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from versus_trl import Marks, embedded_tokens, main, step_marks  # noqa: E402  (bench/ is the script's folder, on sys.path)

BATCH, ROWS, WARMUP = 64, 64 * 40, 4


def traces(path: Path) -> list[dict]:
    """The task's rows as `aha distill generate` writes them, plus the same rows as prompt/completion."""
    from engine.train.data import TaskSource

    source = TaskSource("addition", seed=0)
    rows = [source.row(index) for index in range(ROWS)]
    with open(path, "w", encoding="utf-8") as stream:
        for row in rows:
            thinking, _, answer = row["completion"].removeprefix("<think>\n").partition("</think>\n")
            stream.write(json.dumps({"prompt": row["prompt"], "thinking": thinking, "answer": answer}) + "\n")
    return rows


def counters(model: Path):
    from engine.train.core import load_tokenizer

    return embedded_tokens(load_tokenizer(model).pad_token_id)


def run_aha(model: Path, steps: int, out: Path, checkpointing: bool) -> Marks:
    from engine.distill.traces import TraceSFTConfig, train_sft_on_traces

    marks, on_event, _ = step_marks(counted=counters(model))
    traces(out / "traces.jsonl")
    config = TraceSFTConfig(model=str(model), traces=str(out / "traces.jsonl"), use_peft=False, learning_rate=2e-3,
                            lr_scheduler_type="constant", per_device_train_batch_size=BATCH, max_steps=steps,
                            save_steps=10_000, max_length=256, seed=0, device="cpu",
                            gradient_checkpointing=checkpointing, output_dir=str(out / "run"))
    train_sft_on_traces(config, on_event=on_event)
    return marks


def run_trl(model: Path, steps: int, out: Path, checkpointing: bool) -> Marks:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from engine.distill.traces import trace_completion
    from engine.train.core import load_tokenizer

    marks, _, callback = step_marks(counted=counters(model))

    rows = traces(out / "traces.jsonl")
    # The completion exactly as aha builds it (trace_completion); the char model's template renders just
    # the user's text, so plain prompt strings give the same token sequences.
    records = []
    for row in rows:
        thinking, _, answer = row["completion"].removeprefix("<think>\n").partition("</think>\n")
        records.append({"prompt": row["prompt"], "completion": trace_completion(thinking, answer)})
    args = SFTConfig(output_dir=str(out / "trl"), per_device_train_batch_size=BATCH, max_steps=steps,
                     learning_rate=2e-3, lr_scheduler_type="constant", use_cpu=True, bf16=False, report_to="none",
                     logging_steps=1, save_strategy="no", seed=0, max_length=256, completion_only_loss=True,
                     gradient_checkpointing=checkpointing, dataloader_num_workers=0)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(model, attn_implementation="eager"), args=args,
                         train_dataset=Dataset.from_list(records), processing_class=load_tokenizer(model),
                         callbacks=[callback])
    trainer.train()
    return marks


if __name__ == "__main__":
    main(__file__, __doc__, {"aha": run_aha, "trl": run_trl}, steps=20, warmup=WARMUP,
         settings=lambda: f"batch {BATCH} traces, full fine-tuning")
