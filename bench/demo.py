"""`aha demo` timed as a user meets it: each run a cold `aha demo` process (imports included), seeds × repeats,
the wall time of each stage, the GRPO gain in points of held-out pass@1 and the GGUF's greedy agreement with
the HF model. Prints one line per run, then per seed the median wall time against the issue's 2 minutes.

No peer: no other tool runs the R1 recipe end to end; this is the source of the README's demo numbers. Run it
on a quiet machine (nothing else using the cores): on a busy one it measures the other work.

    .venv/bin/python bench/demo.py --seeds 0 1 2 --repeats 3
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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOAL_S = 120.0


def one_run(seed: int, work: Path) -> dict:
    """One cold `aha demo --seed S` in its own data directory; its demo.json and wall time."""
    out = work / f"seed-{seed}"
    env = {**os.environ, "AHA_HOME": str(work / "home"), "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    completed = subprocess.run([sys.executable, "-m", "engine.cli", "demo", "--seed", str(seed), "--out", str(out),
                                "--events", "none"], env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if completed.returncode != 0:
        raise SystemExit(f"aha demo --seed {seed} failed ({completed.returncode}): {completed.stderr.strip()[-800:]}")
    result = json.loads((out / "demo.json").read_text(encoding="utf-8"))
    return {"wall": wall, "result": result}


def describe(seed: int, run: dict) -> str:
    result = run["result"]
    stages = " ".join(f"{stage['name']} {stage['seconds']:.0f}" for stage in result["stages"])
    table = result["table"]
    agreement = result["agreement"] or {}
    return (f"seed {seed}: {run['wall']:6.1f} s wall | {stages} | pass@1 {table['cold_start']['pass@1']:.1%} → "
            f"{table['grpo']['pass@1']:.1%} ({result['gain_points']:+.1f} points) | GGUF agreement "
            f"{agreement.get('same')}/{agreement.get('problems')}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--repeats", type=int, default=1, help="runs per seed (the median is reported)")
    args = parser.parse_args(argv)
    print(f"aha demo, cold processes, {os.cpu_count()} CPU cores, seeds {args.seeds} × {args.repeats}", flush=True)
    medians = {}
    for seed in args.seeds:
        walls = []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory(prefix="aha-bench-demo-") as work:
                run = one_run(seed, Path(work))
            walls.append(run["wall"])
            print(describe(seed, run), flush=True)
        medians[seed] = statistics.median(walls)
    for seed, median in medians.items():
        print(f"seed {seed}: median {median:.1f} s over {args.repeats} run(s) = {median / GOAL_S:.2f}× the "
              f"{GOAL_S:.0f} s goal")
    return 0


if __name__ == "__main__":
    sys.exit(main())
