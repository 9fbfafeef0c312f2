"""The harness of the aha-vs-TRL benchmarks (grpo_vs_trl.py, sft_vs_trl.py): both sides train the same
char-level model, each in a child process of its own (so peak RSS is its own), alternating for a few
rounds; prints the median step time, the peak RSS, the work each side did per step (so equal work is
visible: e.g. the mean completion length, or the tokens fed to the model) and the ratios. A side is a
function (model, steps, out_dir, checkpointing, **options) -> Marks, the record of `step_marks()`;
`options` are the benchmark's own flags (name: (type, default, help)), the same for both sides.

TRL is not a dependency of Aha: these run in a separate environment with TRL that shares .venv's packages,
made once by `sh bench/trl_venv.sh` (.cache/bench-venv); `make bench` runs them with its Python when it exists.
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
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Marks:
    """What a side records: the perf_counter time at the end of each optimizer step, and per step the work
    done (name -> one value a step), from the metrics both trainers log or from counters (`step_marks`)."""

    times: list[float] = field(default_factory=list)
    work: dict[str, list[float]] = field(default_factory=dict)


Side = Callable[..., Marks]


def main(script: str, description: str, sides: dict[str, Side], *, steps: int, warmup: int,
         settings: Callable[..., str], options: dict[str, tuple[type, object, str]] | None = None) -> None:
    """The benchmark's command line: `--child SIDE` runs one side and prints its step times and work; without
    it, the char model is built and the sides alternate (TRL first) for --rounds rounds. The first `warmup`
    steps of each run (model loading included) are left out of its median step time and its mean work."""
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
    if args.steps <= warmup:
        parser.error(f"--steps must be more than the {warmup} warm-up steps")
    with tempfile.TemporaryDirectory() as work:
        model = Path(work) / "char-model"
        subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
                        "from tests.support.char_model import make_char_model; "
                        f"make_char_model(__import__('pathlib').Path({str(model)!r}))"], check=True)
        results: dict[str, list[Run]] = {"trl": [], "aha": []}
        for _ in range(args.rounds):
            for which in results:
                command = [sys.executable, script, "--child", which, "--model", str(model), "--steps", str(args.steps),
                           *(part for name, value in chosen.items() for part in (f"--{name.replace('_', '-')}", str(value)))]
                results[which].append(_measure(command, which, warmup, args.gradient_checkpointing))
    print(f"{settings(**chosen)}, gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}, CPU, "
          f"2 threads; {args.rounds} alternating runs each of {args.steps} steps, the first {warmup} left out")
    summary = {}
    for which, runs in results.items():
        step, rss = statistics.median(run.step_s for run in runs), max(run.rss_mb for run in runs)
        work = {name: statistics.mean(run.work[name] for run in runs) for name in runs[0].work}
        summary[which] = (step, rss)
        print(f"{which:4s} step {step * 1000:7.1f} ms (runs: {', '.join(f'{run.step_s * 1000:.1f}' for run in runs)})   "
              f"peak RSS {rss:6.0f} MB   " + "   ".join(f"{name} {value:.1f}" for name, value in work.items()))
    print(f"ratio aha/TRL: step time {summary['aha'][0] / summary['trl'][0]:.2f}x, "
          f"peak memory {summary['aha'][1] / summary['trl'][1]:.2f}x")


def step_marks(logged: tuple[str, ...] = (), counted: dict[str, Callable[[], float]] | None = None):
    """(marks, on_event, callback): aha's `on_event` and TRL's TrainerCallback both append the time at the end
    of each optimizer step to `marks.times`, the value each trainer logs for each name in `logged` to
    `marks.work[name]`, and for each counter in `counted` (a running total) its growth over the step."""
    from transformers import TrainerCallback

    marks = Marks(work={name: [] for name in (*logged, *(counted or {}))})
    totals = dict.fromkeys(counted or {}, 0.0)

    def step_end() -> None:
        marks.times.append(time.perf_counter())
        for name, counter in (counted or {}).items():
            total = counter()
            marks.work[name].append(total - totals[name])
            totals[name] = total

    def record(values: dict) -> None:
        for name in logged:
            if name in values:
                marks.work[name].append(float(values[name]))

    class Callback(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            step_end()

        def on_log(self, args, state, control, logs=None, **kwargs):
            record(logs or {})

    def on_event(event: dict) -> None:
        if event["type"] == "metrics":
            step_end()
            record(event)

    return marks, on_event, Callback()


def embedded_tokens(pad_id: int) -> dict[str, Callable[[], float]]:
    """Counters for `step_marks`: from now on in this (child) process, the token ids every nn.Embedding looks
    up, "tokens/step" without `pad_id` and "padded tokens/step" all of them. The same count for both sides,
    whatever each trainer logs; it costs one sum per forward pass."""
    import torch

    totals = {"tokens/step": 0, "padded tokens/step": 0}
    forward = torch.nn.Embedding.forward

    def counting(self, input_ids):
        totals["tokens/step"] += int((input_ids != pad_id).sum())
        totals["padded tokens/step"] += input_ids.numel()
        return forward(self, input_ids)

    torch.nn.Embedding.forward = counting
    return {name: (lambda name=name: totals[name]) for name in totals}


def _child(side: Side, model: Path, steps: int, checkpointing: bool, options: dict) -> None:
    import torch

    torch.set_num_threads(2)
    torch.set_flush_denormal(True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        marks = side(model, steps, Path(out), checkpointing, **options)
    for name, values in marks.work.items():
        if len(values) != len(marks.times):
            raise SystemExit(f"{name}: {len(values)} values for {len(marks.times)} steps")
    print(json.dumps({"step_s": [b - a for a, b in zip([start, *marks.times], marks.times, strict=False)],
                      "work": marks.work}))


@dataclass(frozen=True)
class Run:
    step_s: float                # median step seconds after the warm-up
    rss_mb: float                # peak RSS
    work: dict[str, float]       # mean per step after the warm-up


def _measure(command: list[str], which: str, warmup: int, checkpointing: bool) -> Run:
    process = subprocess.Popen([*command, *(["--gradient-checkpointing"] if checkpointing else [])],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise SystemExit(f"{which} run failed (status {status}); run it alone with --child {which} to see why")
    record = json.loads(output.strip().splitlines()[-1])
    return Run(statistics.median(record["step_s"][warmup:]), usage.ru_maxrss / 1024,
               {name: statistics.mean(values[warmup:]) for name, values in record["work"].items()})
