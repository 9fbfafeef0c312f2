"""Benchmark: HF → GGUF f16 of random bf16 Qwen2 checkpoints, Aha vs llama.cpp's converter, at two sizes:
0.3B (20 layers of 1024, a 32k vocabulary) and DeepSeek-R1-Distill-Qwen-1.5B's shape (1.78B parameters,
3.4 GB; its 151,936 × 1,536 embedding is the largest tensor).

Both run as child processes on the same checkpoint, alternating for --rounds rounds (default 6 at 0.3B,
2 at 1.5B), so each gets a fresh memory count; Aha's child refuses torch, transformers and peft (as the
base install lacks them) and fails if the export imports them. Prints per size the median wall time and
the peak RSS of each and the ratios Aha / llama.cpp. The 1.5B checkpoint (3.4 GB, and as much for the
output) is removed afterwards unless --keep. Not a test: run `make bench`.
"""

from __future__ import annotations

import argparse
import os
import shutil
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
folder = make_checkpoint(Path({folder!r}), TinySpec("qwen2", tied=False, **(dict(heads=16, kv_heads=2, ffn=2816) | dict({shape}))))
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
# DeepSeek-R1-Distill-Qwen-1.5B's shape: 1.78B parameters (1.54B + the 151,936 × 1,536 lm_head, untied).
R1_1_5B_SHAPE = "hidden=1536, layers=28, heads=12, kv_heads=2, ffn=8960, vocab_pad_to=151936"
SIZES = {"0.3b": (EXPORT_SHAPE, 6), "1.5b": (R1_1_5B_SHAPE, 2)}  # name → (TinySpec keywords, rounds)

# The export as the base install runs it: torch, transformers and peft cannot be imported.
NO_TORCH = """
import sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers", "peft"):
            raise ImportError(name + " is not installed (bench/export.py refuses it)")
sys.meta_path.insert(0, Refuse())
sys.path.insert(0, {root!r})
from engine.cli import main
sys.exit(main(sys.argv[1:]))
"""


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


def compare(source: Path, out: Path, rounds: int) -> dict[str, list[tuple[float, float]]]:
    """(wall s, peak RSS MB) of each round of Aha's export (without torch) and llama.cpp's converter."""
    commands = {
        "aha": [sys.executable, "-c", NO_TORCH.format(root=str(ROOT)), "export", str(source), "-o", str(out),
                "--type", "f16", "--force", "--events", "none"],
        "llama.cpp": [sys.executable, str(ROOT / "tests" / "support" / "reference_converter.py"), "qwen2",
                      str(source), "--outfile", str(out), "--outtype", "f16"],
    }
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for _ in range(rounds):
        for name, command in commands.items():
            results[name].append(run(command))
    out.unlink(missing_ok=True)
    out.with_suffix(".Modelfile").unlink(missing_ok=True)  # written beside Aha's GGUF
    return results


def report(size: str, source: Path, rounds: int, results: dict[str, list[tuple[float, float]]]) -> str:
    params = sum(os.path.getsize(p) for p in source.glob("*.safetensors")) / 2 / 1e6
    print(f"{size}: {params:.0f}M parameters, {sum(p.stat().st_size for p in source.iterdir()) / 1e6:.0f} MB; "
          f"median of {rounds} alternating rounds")
    for name, rows in results.items():
        wall = statistics.median(r[0] for r in rows)
        rss = max(r[1] for r in rows)
        print(f"  {name:10s} wall {wall:6.2f} s   peak RSS {rss:7.0f} MB   (runs: {', '.join(f'{r[0]:.2f}' for r in rows)})")
    wall = statistics.median(r[0] for r in results["aha"]) / statistics.median(r[0] for r in results["llama.cpp"])
    rss = max(r[1] for r in results["aha"]) / max(r[1] for r in results["llama.cpp"])
    line = f"{size}: ratio aha/llama.cpp: wall {wall:.2f}x, peak RSS {rss:.2f}x"
    print("  " + line)
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--rounds", type=int, help="rounds at every size (default: 6 at 0.3b, 2 at 1.5b)")
    parser.add_argument("--work", type=Path, default=ROOT / ".cache" / "bench")
    parser.add_argument("--keep", action="store_true", help="keep the 1.5B checkpoint for the next run")
    args = parser.parse_args()
    lines = []
    for size in args.sizes:
        shape, rounds = SIZES[size]
        rounds = args.rounds or rounds
        folder = args.work / ("qwen2-0.3b" if size == "0.3b" else "qwen2-r1-1.5b-shape")
        source = build_checkpoint(folder, shape)
        try:
            lines.append(report(size, source, rounds, compare(source, args.work / "out.gguf", rounds)))
        finally:
            if size != "0.3b" and not args.keep:
                shutil.rmtree(folder, ignore_errors=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
