"""Benchmark: HF → GGUF f16 of a ~0.3B-parameter random Qwen2 checkpoint, Aha vs llama.cpp's converter.

Both run as child processes on the same checkpoint, alternating for --rounds rounds (default 6), so each
gets a fresh memory count; prints the number of rounds, the median wall time and the peak RSS of each and
the ratios Aha / llama.cpp. Not a test: run `make bench`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


BUILD = """
import sys
from pathlib import Path
sys.path.insert(0, {root!r})
from tests.tiny_models import TinySpec, make_checkpoint
folder = make_checkpoint(Path({folder!r}), TinySpec("qwen2", tied=False, heads=16, kv_heads=2, ffn=2816, {shape}))
if {mute_special!r}:  # zero logits for the added tokens: greedy never picks them over the ~N(0, σ) others
    import json, torch
    from safetensors.torch import load_file, save_file
    weights = load_file(folder / "model.safetensors")
    added = json.loads((folder / "tokenizer.json").read_text())["added_tokens"]
    weights["lm_head.weight"][[t["id"] for t in added]] = 0
    save_file(weights, folder / "model.safetensors", metadata={{"format": "pt"}})
"""
# ~0.29B parameters in DeepSeek-R1-Distill-Qwen's layout, with a 32k vocabulary (mostly [PAD] ids).
EXPORT_SHAPE = "hidden=1024, layers=20, vocab_pad_to=32768"


def build_checkpoint(folder: Path, shape: str = EXPORT_SHAPE, mute_special: bool = False) -> Path:
    """A random-weight bf16 Qwen2 checkpoint of the given TinySpec shape (keyword arguments as text).

    Built in a child process: a forked child's peak RSS counts the parent's pages, so this
    process stays small and imports no torch."""
    if not (folder / "model.safetensors").exists():
        subprocess.run([sys.executable, "-c", BUILD.format(root=str(ROOT), folder=str(folder), shape=shape, mute_special=mute_special)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return folder


def run(command: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one child process."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"failed: {' '.join(command)}")
    return wall, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--work", type=Path, default=ROOT / ".cache" / "bench")
    args = parser.parse_args()
    source = build_checkpoint(args.work / "qwen2-0.3b")
    params = sum(os.path.getsize(p) for p in source.glob("*.safetensors")) / 2 / 1e6
    out = args.work / "out.gguf"
    commands = {
        "aha": [sys.executable, "-m", "engine.cli", "export", str(source), "-o", str(out), "--type", "f16",
                "--force", "--events", "none"],
        "llama.cpp": [sys.executable, str(ROOT / "tests" / "support" / "reference_converter.py"), "qwen2",
                      str(source), "--outfile", str(out), "--outtype", "f16"],
    }
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for _ in range(args.rounds):
        for name, command in commands.items():
            results[name].append(run(command))
    print(f"checkpoint: {params:.0f}M parameters, {sum(p.stat().st_size for p in source.iterdir()) / 1e6:.0f} MB; "
          f"median of {args.rounds} alternating rounds")
    for name, rows in results.items():
        wall = statistics.median(r[0] for r in rows)
        rss = max(r[1] for r in rows)
        print(f"{name:10s} wall {wall:6.2f} s   peak RSS {rss:7.0f} MB   (runs: {', '.join(f'{r[0]:.2f}' for r in rows)})")
    aha_wall = statistics.median(r[0] for r in results["aha"])
    ref_wall = statistics.median(r[0] for r in results["llama.cpp"])
    aha_rss = max(r[1] for r in results["aha"])
    ref_rss = max(r[1] for r in results["llama.cpp"])
    print(f"ratio aha/llama.cpp: wall {aha_wall / ref_wall:.2f}x, peak RSS {aha_rss / ref_rss:.2f}x")
    out.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
