"""Every CPU benchmark in one command: reduced settings by default (~30 min on 2 cores), --full for the published ones.

    python benchmarks/run_all.py [--full] [--only peers realisation ...]

Reduced runs write to benchmarks/results/quick/ (ignored by git), so they never overwrite the committed results;
they check that every script runs end to end and give first numbers, not the published ones (fewer seeds, epochs,
rounds). --full runs each script with its own defaults into benchmarks/results/ (about 2.5 hours here, most of it
the peer comparison). The GPU benchmark (gpu.py) needs a CUDA device and is not part of this run. Writes
<results>/run_all.md: the command, wall time and exit status of each script.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent

# name: arguments of the reduced run (the full run passes none: each script's defaults are the published settings).
QUICK: dict[str, list[str]] = {
    "budget_precision": ["--targets", "0.3", "0.5", "0.6", "0.7", "0.9", "--epochs", "3"],
    "gate_mode": ["--seeds", "0", "--epochs", "3"],
    "peers": ["--seeds", "0", "--epochs", "2", "--rounds", "5", "--iters", "20"],
    "realisation": ["--rounds", "2", "--iters", "2"],
    "train_overhead": ["--rounds", "2", "--steps", "2"],
    "layout": ["--rounds", "3", "--iters", "5"],
    "export_cost": [],
    "export_deit_small": ["--rounds", "3", "--iters", "5"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the committed results' settings (hours, not minutes)")
    parser.add_argument("--only", nargs="+", choices=sorted(QUICK), help="run only these benchmarks")
    args = parser.parse_args()
    results = HERE / "results" if args.full else HERE / "results" / "quick"
    results.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HIAP_BENCH_RESULTS": str(results), "HF_HUB_OFFLINE": "1"}
    rows, start, failed = [], time.perf_counter(), 0
    for name in args.only or QUICK:
        cmd = [sys.executable, str(HERE / f"{name}.py"), *([] if args.full else QUICK[name])]
        if name == "peers" and importlib.util.find_spec("torch_pruning") is None:
            print("== peers: SKIPPED, Torch-Pruning is not installed: pip install -e '.[bench]'", flush=True)
            rows.append("| peers | skipped: needs `pip install -e '.[bench]'` (Torch-Pruning) | - | - |")
            continue
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, cwd=HERE, env=env).returncode
        seconds = time.perf_counter() - t0
        failed += rc != 0
        rows.append(f"| {name} | `{' '.join(['python', f'benchmarks/{name}.py', *cmd[2:]])}` | {seconds / 60:.1f} "
                    f"| {rc} |")  # fmt: skip
        print(f"== {name}: exit {rc}, {seconds / 60:.1f} min", flush=True)
    total = (time.perf_counter() - start) / 60
    mode = "full (published settings)" if args.full else "reduced (default)"
    lines = [f"# run_all: {mode}", "", f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores; total {total:.1f} min.",
             "", "| benchmark | command | minutes | exit |", "|---|---|---|---|", *rows]  # fmt: skip
    (results / "run_all.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
