"""Measure hard (straight-through) vs soft Gumbel-Sigmoid forward on the default recipe; picks hiap's default.

    python benchmarks/gate_mode.py [--seeds 0 1] [--epochs 6] [--target 0.5]

Runs `hiap train` in-process on the built-in data for each gate mode and seed, and writes
benchmarks/results/gate_mode.json (every run) and benchmarks/results/gate_mode.md (table).
"""

from __future__ import annotations

import argparse
import json
import statistics

from common import environment, train_run, write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--target", default="0.5")
    args = parser.parse_args()
    runs = []
    for seed in args.seeds:
        for mode in ("hard", "soft"):
            s = train_run(gate_mode=mode, seed=seed, epochs=args.epochs, target_macs=args.target)
            keys = ("val_acc", "dense_val_acc", "pruned_gmacs", "target_gmacs", "target_error", "wall_seconds")
            runs.append({"gate_mode": mode, "seed": seed} | {k: s[k] for k in keys})
            print(json.dumps(runs[-1]), flush=True)
    env = environment(f"hiap train defaults, --epochs {args.epochs} --target-macs {args.target}")
    lines = [
        "| mode | seed | val acc | dense val acc | pruned GMACs | target error | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['gate_mode']} | {r['seed']} | {r['val_acc']:.4f} | {r['dense_val_acc']:.4f} | "
            f"{r['pruned_gmacs']:.5f} | {r['target_error']:+.2%} | {r['wall_seconds']:.0f} |"
        )
    for mode in ("hard", "soft"):
        accs = [r["val_acc"] for r in runs if r["gate_mode"] == mode]
        errs = [abs(r["target_error"]) for r in runs if r["gate_mode"] == mode]
        lines.append(
            f"\n{mode}: mean val acc {statistics.mean(accs):.4f}, mean |target error| {statistics.mean(errs):.2%}"
        )
    write_results("gate_mode", "Gate forward mode: hard (straight-through) vs soft", env, runs, lines)


if __name__ == "__main__":
    main()
