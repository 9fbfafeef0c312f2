"""The DeepSeek-R1 recipe in miniature (issue 5's learning test; FIELD-NOTES §8): a random-init char-level
Qwen2 (~0.86M parameters) learns 3-digit addition from a programmatic teacher by SFT until held-out greedy
accuracy passes 30%, then 100 GRPO steps with LoRA must raise held-out accuracy on 500 problems by ≥ 15
points, the GRPO stage in under 2 minutes on 2 CPU cores. Prints the numbers and the timings."""

import time

import pytest
import torch

from engine.data import TaskSource
from engine.grpo import GRPOConfig, train
from engine.sampling import encode_prompts, greedy_accuracy, left_pad, sample
from engine.sft import SFTConfig, train_sft
from engine.train import load_tokenizer
from tests.support.char_model import make_char_model

SEED = 0


def load(folder, adapter=None):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    return model.eval(), load_tokenizer(folder)


def sampler_versus_generate(model, tokenizer, rows) -> str:
    """Our KV-cache loop and model.generate on the SFT model (which stops at EOS), best of 3 each."""
    ids, _, _ = encode_prompts(tokenizer, [row["prompt"] for row in rows])
    prompt_ids, prompt_mask = left_pad(ids, 0)
    timings = {}
    for name, function in {
        "loop": lambda: sample(model, ids, max_new_tokens=40, eos_ids=[1], pad_id=0, temperature=0.7),
        "generate": lambda: model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, max_new_tokens=40,
                                           do_sample=True, temperature=0.7, top_k=0, eos_token_id=1, pad_token_id=0),
    }.items():
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            function()
            best = min(best, time.perf_counter() - started)
        timings[name] = best
    return (f"{len(rows)} prompts: loop {timings['loop']:.3f} s, generate {timings['generate']:.3f} s "
            f"({timings['generate'] / timings['loop']:.2f}×)")


@pytest.mark.slow
def test_sft_then_grpo_raises_heldout_accuracy(tmp_path, capsys):
    torch.set_flush_denormal(True)
    started = time.perf_counter()
    base = make_char_model(tmp_path / "char", seed=SEED)
    sft = train_sft(SFTConfig(model=str(base), dataset="addition", use_peft=False, learning_rate=2e-3,
                              lr_scheduler_type="constant", per_device_train_batch_size=64, max_steps=1000,
                              eval_steps=10, eval_samples=200, stop_at_accuracy=0.30, max_completion_length=40,
                              seed=SEED, save_steps=10_000, output_dir=str(tmp_path / "sft")))
    sft_s = time.perf_counter() - started
    assert sft["status"] == "complete" and sft["eval_accuracy"] >= 0.30, sft

    heldout = TaskSource("addition").heldout(500)
    model, tokenizer = load(sft["model"])
    before, _ = greedy_accuracy(model, tokenizer, heldout, max_new_tokens=40)
    speed = [sampler_versus_generate(model, tokenizer, heldout[:count]) for count in (128, 8)]

    started = time.perf_counter()
    grpo = train(GRPOConfig(model=sft["model"], dataset="addition", use_peft=True, lora_r=16, lora_alpha=32,
                            lora_target_modules=("all-linear",), learning_rate=1e-3, lr_scheduler_type="constant",
                            prompts_per_step=16, num_generations=8, temperature=0.7, max_completion_length=40,
                            rewards=("accuracy", "format"), reward_weights=(1.0, 0.2), beta=0.0, num_iterations=1,
                            loss_type="grpo", max_steps=100, seed=SEED, save_steps=100,
                            output_dir=str(tmp_path / "grpo")))
    grpo_s = time.perf_counter() - started
    assert grpo["status"] == "complete" and grpo["step"] == 100

    model, tokenizer = load(sft["model"], grpo["adapter"])
    after, _ = greedy_accuracy(model, tokenizer, heldout, max_new_tokens=40)
    with capsys.disabled():
        print(f"\n[learning] SFT {sft['step']} steps in {sft_s:.1f} s (held-out-200 {sft['eval_accuracy']:.1%}); "
              f"held-out-500 greedy accuracy {before:.1%} → {after:.1%} after 100 GRPO steps in {grpo_s:.1f} s "
              f"({torch.get_num_threads()} threads)")
        print(f"[sampling] SFT model, 40 new tokens at temperature 0.7: {speed[0]}; {speed[1]}")
    assert after - before >= 0.15
    assert grpo_s < 120
