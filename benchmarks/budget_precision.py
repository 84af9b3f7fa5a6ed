"""Target vs achieved hard MACs of the default recipe at several targets (no threshold search afterwards).

    python benchmarks/budget_precision.py [--targets 0.3 0.4 0.5 0.6 0.7 0.9] [--seed 0] [--epochs 6]

Writes benchmarks/results/budget_precision.json (every run) and benchmarks/results/budget_precision.md.
"""

from __future__ import annotations

import argparse
import json

from common import environment, train_run, write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", nargs="+", default=["0.3", "0.4", "0.5", "0.6", "0.7", "0.9"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=6, help="training epochs per target (6: the default recipe)")
    args = parser.parse_args()
    env = environment(f"hiap train defaults (built-in model and data, {args.epochs} epochs), seed {args.seed}")
    runs = []
    for target in args.targets:
        s = train_run(target_macs=target, seed=args.seed, epochs=args.epochs)
        runs.append(
            {k: s[k] for k in ("target_gmacs", "pruned_gmacs", "target_error", "val_acc", "dense_val_acc",
                               "pruned_params", "dense_params", "kept_heads", "kept_ffn", "kept_neurons",
                               "wall_seconds")}
            | {"target": target}
        )  # fmt: skip
        print(json.dumps(runs[-1]), flush=True)
    lines = [
        "| target | target MMACs | achieved MMACs | error | val acc (dense) | heads | FFN blocks | neurons |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['target']} | {r['target_gmacs'] * 1e3:.3f} | {r['pruned_gmacs'] * 1e3:.3f} | "
            f"{r['target_error']:+.2%} | {r['val_acc']:.4f} ({r['dense_val_acc']:.4f}) | {sum(r['kept_heads'])} | "
            f"{sum(r['kept_ffn'])} | {sum(r['kept_neurons'])} |"
        )
    write_results("budget_precision", "Budget precision: target vs achieved hard MACs", env, runs, lines)


if __name__ == "__main__":
    main()
