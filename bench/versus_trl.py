"""The harness of the aha-vs-TRL benchmarks (grpo_vs_trl.py, sft_vs_trl.py): both sides train the same
char-level model, each in a child process of its own (so peak RSS is its own), alternating for a few
rounds; prints the median step time, the peak RSS and the ratios. A side is a function
(model, steps, out_dir, checkpointing, **options) -> the perf_counter time at the end of each optimizer
step; `options` are the benchmark's own flags (name: (type, default, help)), the same for both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
Side = Callable[..., list[float]]


def main(script: str, description: str, sides: dict[str, Side], *, steps: int, warmup: int,
         settings: Callable[..., str], options: dict[str, tuple[type, object, str]] | None = None) -> None:
    """The benchmark's command line: `--child SIDE` runs one side and prints its step times; without it,
    the char model is built and the sides alternate (TRL first) for --rounds rounds. The first `warmup`
    steps of each run (model loading included) are left out of its median."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="both with gradient checkpointing (TRL's default; aha's is off)")
    for name, (kind, default, text) in (options or {}).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=default, help=f"{text} (default {default})")
    parser.add_argument("--child", choices=sorted(sides))
    parser.add_argument("--model", type=Path)
    args = parser.parse_args()
    chosen = {name: getattr(args, name) for name in options or {}}
    if args.child:
        _child(sides[args.child], args.model, args.steps, args.gradient_checkpointing, chosen)
        return
    with tempfile.TemporaryDirectory() as work:
        model = Path(work) / "char-model"
        subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
                        "from tests.support.char_model import make_char_model; "
                        f"make_char_model(__import__('pathlib').Path({str(model)!r}))"], check=True)
        results: dict[str, list[tuple[float, float]]] = {"trl": [], "aha": []}
        for _ in range(args.rounds):
            for which in results:
                command = [sys.executable, script, "--child", which, "--model", str(model), "--steps", str(args.steps),
                           *(part for name, value in chosen.items() for part in (f"--{name.replace('_', '-')}", str(value)))]
                results[which].append(_measure(command, which, warmup, args.gradient_checkpointing))
    summary = {}
    for which, rows in results.items():
        step, rss = statistics.median(row[0] for row in rows), max(row[1] for row in rows)
        summary[which] = (step, rss)
        print(f"{which:4s} step {step * 1000:7.1f} ms (runs: {', '.join(f'{row[0] * 1000:.1f}' for row in rows)})   "
              f"peak RSS {rss:6.0f} MB")
    print(f"ratio aha/TRL: step time {summary['aha'][0] / summary['trl'][0]:.2f}x, "
          f"peak memory {summary['aha'][1] / summary['trl'][1]:.2f}x ({settings(**chosen)}, gradient checkpointing "
          f"{'on' if args.gradient_checkpointing else 'off'}, CPU, 2 threads)")


def step_marks():
    """(marks, on_event, callback): aha's `on_event` and TRL's TrainerCallback both append the time at the
    end of each optimizer step to `marks`, the list a side returns."""
    from transformers import TrainerCallback

    marks: list[float] = []

    class Marks(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            marks.append(time.perf_counter())

    def on_event(event: dict) -> None:
        if event["type"] == "metrics":
            marks.append(time.perf_counter())

    return marks, on_event, Marks()


def _child(side: Side, model: Path, steps: int, checkpointing: bool, options: dict) -> None:
    import torch

    torch.set_num_threads(2)
    torch.set_flush_denormal(True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        marks = side(model, steps, Path(out), checkpointing, **options)
    print(json.dumps({"step_s": [b - a for a, b in zip([start, *marks], marks, strict=False)]}))


def _measure(command: list[str], which: str, warmup: int, checkpointing: bool) -> tuple[float, float]:
    """(median step seconds after the warm-up, peak RSS MB) of one child run."""
    process = subprocess.Popen([*command, *(["--gradient-checkpointing"] if checkpointing else [])],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise SystemExit(f"{which} run failed (status {status}); run it alone with --child {which} to see why")
    step_s = json.loads(output.strip().splitlines()[-1])["step_s"]
    return statistics.median(step_s[warmup:]), usage.ru_maxrss / 1024
