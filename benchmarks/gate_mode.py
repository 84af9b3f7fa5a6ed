"""Measure hard (straight-through) vs soft Gumbel-Sigmoid forward on the default recipe; picks hiap's default.

    python benchmarks/gate_mode.py [--seeds 0 1] [--epochs 6] [--target 0.5]

Runs `hiap train` in-process on the built-in data for each gate mode and seed, and writes
benchmarks/results/gate_mode.json (every run) and benchmarks/results/gate_mode.md (table).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console

from hiap import __version__
from hiap.config import TrainConfig
from hiap.train import Trainer

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--target", default="0.5")
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for mode in ("hard", "soft"):
                cfg = TrainConfig(
                    gate_mode=mode, seed=seed, epochs=args.epochs, target_macs=args.target, out=f"{tmp}/{mode}-{seed}"
                )
                t0 = time.perf_counter()
                summary = Trainer(cfg, Console(quiet=True)).run()
                runs.append(
                    {
                        "gate_mode": mode,
                        "seed": seed,
                        "val_acc": summary["val_acc"],
                        "dense_val_acc": summary["dense_val_acc"],
                        "pruned_gmacs": summary["pruned_gmacs"],
                        "target_gmacs": summary["target_gmacs"],
                        "target_error": summary["target_error"],
                        "seconds": time.perf_counter() - t0,
                    }
                )
                print(json.dumps(runs[-1]))
    env = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "hiap": __version__,
        "recipe": f"hiap train defaults, --epochs {args.epochs} --target-macs {args.target}",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gate_mode.json").write_text(json.dumps({"environment": env, "runs": runs}, indent=2) + "\n")
    lines = [
        "# Gate forward mode: hard (straight-through) vs soft",
        "",
        f"{env['recipe']}; {env['machine']}, {env['threads']} threads, torch {env['torch']}, {env['date']}.",
        "",
        "| mode | seed | val acc | dense val acc | pruned GMACs | target error | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['gate_mode']} | {r['seed']} | {r['val_acc']:.4f} | {r['dense_val_acc']:.4f} | "
            f"{r['pruned_gmacs']:.5f} | {r['target_error']:+.2%} | {r['seconds']:.0f} |"
        )
    for mode in ("hard", "soft"):
        accs = [r["val_acc"] for r in runs if r["gate_mode"] == mode]
        errs = [abs(r["target_error"]) for r in runs if r["gate_mode"] == mode]
        lines.append(
            f"\n{mode}: mean val acc {statistics.mean(accs):.4f}, mean |target error| {statistics.mean(errs):.2%}"
        )
    (RESULTS / "gate_mode.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
