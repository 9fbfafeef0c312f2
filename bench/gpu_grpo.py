"""Benchmark: `aha grpo` steps on an NVIDIA GPU for a random-weight model of DeepSeek-R1-Distill-Qwen-1.5B's shape.

QLoRA (4-bit NF4 base, LoRA r=16 on all linear layers; `--no-4bit` for a bf16 base), 8 generations of 512
tokens for one prompt per step (a random model rarely samples EOS, so every completion runs to the limit).
Prints per-step generation and training time, generation tokens/s and peak VRAM; Unsloth reports 5–7 GB
for 1.5B GRPO. The R1 tokenizer and chat template come from the test fixtures; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# DeepSeek-R1-Distill-Qwen-1.5B's config.json (Qwen2ForCausalLM).
R1_DISTILL_1_5B = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                       num_key_value_heads=2, vocab_size=151936, max_position_embeddings=131072, rope_theta=10000.0,
                       tie_word_embeddings=False, rms_norm_eps=1e-6)
SMALL = dict(R1_DISTILL_1_5B, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=1024)  # --small: a smoke test of this script on a CPU


def build_checkpoint(folder: Path, shape: dict) -> Path:
    """Random bf16 weights of the shape, the fixtures' R1 tokenizer (ids beyond it decode to nothing)."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from tests.tiny_models import save_tokenizer

    if (folder / "config.json").exists():
        return folder
    ids = save_tokenizer(folder, ascii_only=True)
    config = Qwen2Config(bos_token_id=ids["bos"], eos_token_id=ids["eos"], **shape)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="GRPO steps (the first one warms up)")
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--max-completion-length", type=int, default=512)
    parser.add_argument("--no-4bit", dest="four_bit", action="store_false", help="LoRA on a bf16 base instead")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--gradient-accumulation-steps", type=int, default=1, help="micro-batches per update")
    parser.add_argument("--compare-generate", type=int, metavar="TOKENS", default=0,
                        help="also time our sampler against model.generate for 8 × TOKENS on the bf16 base")
    parser.add_argument("--small", action="store_true", help="a tiny shape, to try the script on a CPU")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "aha-gpu-bench")
    args = parser.parse_args()
    os.environ.setdefault("AHA_HOME", str(args.work / "home"))
    if args.small:
        os.environ["AHA_ALLOW_CPU_4BIT"] = "1"

    import torch

    from engine.grpo import GRPOConfig, train

    folder = build_checkpoint(args.work / ("small" if args.small else "r1-distill-qwen-1.5b-shape"),
                              SMALL if args.small else R1_DISTILL_1_5B)
    dataset = args.work / "prompts.jsonl"
    dataset.write_text("".join(json.dumps({"prompt": f"What is {a} + {b}? Please reason step by step, and put "
                                                     "your final answer within \\boxed{}.", "answer": str(a + b)}) + "\n"
                               for a, b in ((12, 35), (48, 17), (101, 99), (7, 5), (333, 444), (20, 22))))
    steps = []
    on_cuda = torch.cuda.is_available()
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    config = GRPOConfig(model=str(folder), dataset=str(dataset), load_in_4bit=args.four_bit, lora_r=16, lora_alpha=32,
                        prompts_per_step=1, num_generations=args.generations,
                        max_completion_length=args.max_completion_length, temperature=0.6, top_p=0.95,
                        rewards=("accuracy", "format", "repetition"), learning_rate=1e-5, max_steps=args.steps,
                        save_steps=10_000, gradient_checkpointing=args.gradient_checkpointing,
                        gradient_accumulation_steps=args.gradient_accumulation_steps,
                        output_dir=str(args.work / f"run-{time.time():.0f}"))
    started = time.perf_counter()
    result = train(config, on_event=lambda event: steps.append(event) if event["type"] == "metrics" else None)
    total = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() / 2**30 if on_cuda else float("nan")
    reserved = torch.cuda.max_memory_reserved() / 2**30 if on_cuda else float("nan")
    device = torch.cuda.get_device_name() if on_cuda else "cpu"
    print(f"{device}; torch {torch.__version__}; {'QLoRA (NF4)' if args.four_bit else 'LoRA (bf16)'}, "
          f"{args.generations} × {args.max_completion_length} tokens, gradient checkpointing "
          f"{'on' if args.gradient_checkpointing else 'off'}, {args.gradient_accumulation_steps} micro-batches; "
          f"status {result['status']} in {total:.1f} s with loading")
    for event in steps:
        print(f"  step {event['step']}: generation {event['generation_s']:.2f} s "
              f"({event['tokens_per_s']:.0f} tokens/s, mean length {event['completions/mean_length']:.0f}), "
              f"training {event['training_s']:.2f} s")
    timed = steps[1:] or steps
    step_s = statistics.median(event["generation_s"] + event["training_s"] for event in timed)
    tokens = statistics.median(event["tokens_per_s"] for event in timed)
    print(f"median step {step_s:.2f} s, generation {tokens:.0f} tokens/s, peak VRAM allocated {peak:.2f} GiB "
          f"(reserved {reserved:.2f} GiB)")
    if args.compare_generate:
        compare_generate(folder, args.compare_generate)


def compare_generate(folder: Path, tokens: int, rows: int = 8) -> None:
    """Our KV-cache loop against model.generate on the same bf16 model, prompts and token budget."""
    import torch

    from engine.sampling import encode_prompts, left_pad, sample
    from engine.train import TrainConfig, load_model, resolve_device

    model, tokenizer = load_model(TrainConfig(model=str(folder)), resolve_device("auto"), trainable=False)
    ids, _, _ = encode_prompts(tokenizer, ["What is 12 + 35?"] * rows)
    prompt_ids, prompt_mask = left_pad(ids, tokenizer.pad_token_id, model.device)
    timings: dict[str, list[float]] = {"loop": [], "generate": []}
    for _ in range(2):
        for name in timings:
            torch.cuda.synchronize() if torch.cuda.is_available() else None
            started = time.perf_counter()
            if name == "loop":
                sample(model, ids, max_new_tokens=tokens, eos_ids=[-1], pad_id=tokenizer.pad_token_id, temperature=0.6)
            else:
                model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, max_new_tokens=tokens,
                               min_new_tokens=tokens, do_sample=True, temperature=0.6, top_k=0,
                               pad_token_id=tokenizer.pad_token_id)
            torch.cuda.synchronize() if torch.cuda.is_available() else None
            timings[name].append(time.perf_counter() - started)
    loop, generate = min(timings["loop"]), min(timings["generate"])
    print(f"sampler vs generate, {rows} × {tokens} tokens, bf16 base: loop {loop:.2f} s "
          f"({loop / tokens * 1000:.1f} ms/token), generate {generate:.2f} s ({generate / tokens * 1000:.1f} ms/token)")


if __name__ == "__main__":
    main()
