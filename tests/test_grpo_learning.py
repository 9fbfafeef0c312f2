"""The DeepSeek-R1 recipe in miniature (issue 5's learning test): a random-init char-level
Qwen2 (~0.86M parameters) learns 3-digit addition from a programmatic teacher by SFT until held-out greedy
accuracy passes 30%, then 100 GRPO steps with LoRA must raise held-out accuracy on 500 problems by ≥ 15
points; then `aha eval` (pass@1 over 4 samples at temperature 0.6) must put the trained model ahead of its base.
The suite runs seed 0; bench/learning.py runs the same stages (this module's functions) over seeds and reports
the times."""

import json
from pathlib import Path

import pytest
import torch

from engine.cli import main
from engine.train.core import load_tokenizer
from engine.train.data import TaskSource
from engine.train.grpo import GRPOConfig, train
from engine.train.sampling import greedy_accuracy
from engine.train.sft import SFTConfig, train_sft
from tests.support.char_model import make_char_model

SEED = 0
SFT_TARGET, GRPO_STEPS, HELDOUT, MIN_GAIN = 0.30, 100, 500, 0.15


def load(folder, adapter=None):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    return model.eval(), load_tokenizer(folder)


def sft_stage(work: Path, seed: int) -> dict:
    """A random-init char model, then full SFT on the addition task's teacher completions until held-out-200
    greedy accuracy reaches SFT_TARGET (checked every 10 steps)."""
    base = make_char_model(work / "char", seed=seed)
    return train_sft(SFTConfig(model=str(base), dataset="addition", use_peft=False, learning_rate=2e-3,
                               lr_scheduler_type="constant", per_device_train_batch_size=64, max_steps=1000,
                               eval_steps=10, eval_samples=200, stop_at_accuracy=SFT_TARGET, max_completion_length=40,
                               seed=seed, save_steps=10_000, output_dir=str(work / "sft")))


def grpo_stage(model: str, work: Path, seed: int) -> dict:
    """GRPO_STEPS steps with LoRA r=16 on the SFT model: 16 prompts × 8 generations, accuracy + 0.2·format."""
    return train(GRPOConfig(model=model, dataset="addition", use_peft=True, lora_r=16, lora_alpha=32,
                            lora_target_modules=("all-linear",), learning_rate=1e-3, lr_scheduler_type="constant",
                            prompts_per_step=16, num_generations=8, temperature=0.7, max_completion_length=40,
                            rewards=("accuracy", "format"), reward_weights=(1.0, 0.2), beta=0.0, num_iterations=1,
                            loss_type="grpo", max_steps=GRPO_STEPS, seed=seed, save_steps=GRPO_STEPS,
                            output_dir=str(work / "grpo")))


def heldout_accuracy(model: str, adapter: str | None = None) -> float:
    """Greedy accuracy on the HELDOUT held-out problems (the same for every seed)."""
    loaded, tokenizer = load(model, adapter)
    accuracy, _ = greedy_accuracy(loaded, tokenizer, TaskSource("addition").heldout(HELDOUT), max_new_tokens=40)
    return accuracy


@pytest.mark.slow
def test_sft_then_grpo_raises_heldout_accuracy(tmp_path, capsys):
    torch.set_flush_denormal(True)
    sft = sft_stage(tmp_path, SEED)
    assert sft["status"] == "complete" and sft["eval_accuracy"] >= SFT_TARGET, sft
    before = heldout_accuracy(sft["model"])
    grpo = grpo_stage(sft["model"], tmp_path, SEED)
    assert grpo["status"] == "complete" and grpo["step"] == GRPO_STEPS
    after = heldout_accuracy(sft["model"], grpo["adapter"])
    with capsys.disabled():
        print(f"\n[learning] seed {SEED}: SFT {sft['step']} steps (held-out-200 {sft['eval_accuracy']:.1%}); "
              f"held-out-{HELDOUT} greedy accuracy {before:.1%} → {after:.1%} after {GRPO_STEPS} GRPO steps")
    assert after - before >= MIN_GAIN, (before, after)

    # The same two models through `aha eval`: pass@1 over k = 4 samples, the trained model ahead of its base.
    capsys.readouterr()
    assert main(["eval", f"hf:{sft['model']}", f"hf:{sft['model']}+{grpo['adapter']}", "--dataset", "addition",
                 "-k", "4", "--limit", "100", "--max-tokens", "64", "--output-dir", str(tmp_path / "eval"), "--json",
                 "--events", "none"]) == 0
    report = json.loads(capsys.readouterr().out)
    base, trained = report["models"]
    [comparison] = report["comparisons"]
    with capsys.disabled():
        print(f"[learning] aha eval, 100 problems × 4 samples: pass@1 {base['pass@1']:.1%} → {trained['pass@1']:.1%}, "
              f"cons@4 {base['cons@k']:.1%} → {trained['cons@k']:.1%} ({comparison['note']})")
    assert (base["status"], trained["status"], base["samples"]) == ("complete", "complete", 400)
    assert trained["pass@1"] > base["pass@1"] and comparison["difference"] > 0, (base, trained)
