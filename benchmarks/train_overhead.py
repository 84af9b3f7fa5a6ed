"""Training overhead of HiAP gates: step time and peak memory of gated training vs plain timm training.

    python benchmarks/train_overhead.py [--rounds 5] [--steps 4]

For each model (the built-in ViT at batch 128, DeiT-Tiny and DeiT-Small shapes at 224 px, random weights, batch
16 and 8), the trainer's own step runs in three modes on the same batches: plain (`--dense`: the timm model,
cross-entropy, AdamW), gated (HiAP gates and MAC penalty, no distillation) and gated + KD (the default recipe,
which also runs the frozen dense teacher). Step times alternate mode by mode within one process; peak memory is
the peak resident set of a separate process per mode (CPU: torch allocations are not visible to tracemalloc).
Writes benchmarks/results/train_overhead.json / .md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import environment, write_results
from rich.console import Console

from hiap.config import TrainConfig
from hiap.train import Trainer

MODELS = [("hiap_vit_fmnist", 128), ("deit_tiny_patch16_224", 16), ("deit_small_patch16_224", 8)]
MODES = {"plain": {"dense": True, "kd": False}, "gated": {"kd": False}, "gated+kd": {"kd": True}}


def make_trainer(model: str, batch: int, mode: str, out: Path, **extra: Any) -> Trainer:
    """A set-up trainer for one mode (`extra`: more TrainConfig fields, e.g. device and amp)."""
    pretrained = "auto" if model == "hiap_vit_fmnist" else "none"
    cfg = TrainConfig(model=model, pretrained=pretrained, batch_size=batch, epochs=1, train_images=batch * 50,
                      out=str(out), **MODES[mode], **extra)  # fmt: skip
    trainer = Trainer(cfg, Console(quiet=True))
    trainer.setup()
    trainer.vit.train()
    if trainer.gated is not None:
        trainer.gated.train()
    return trainer


def _vm(field: str) -> int:
    """kB from /proc/self/status. VmHWM is this process image's peak; getrusage's ru_maxrss is not usable here
    because Linux carries it across execve, so a child would report its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(model: str, batch: int, mode: str, steps: int, out: str) -> None:
    """One mode in a fresh process: resident memory after setup, and the peak over `steps` training steps (kB)."""
    trainer = make_trainer(model, batch, mode, Path(out))
    x, y = next(trainer.data.train_batches(0, batch, 0))
    base = _vm("VmRSS")
    for _ in range(steps):
        trainer._train_step(x, y)
    print(json.dumps({"rss_after_setup_kb": base, "peak_rss_kb": _vm("VmHWM")}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        model, batch, mode, steps, out = args.child
        child(model, int(batch), mode, int(steps), out)
        return
    import tempfile

    runs: list[dict] = []
    table = [
        "| model | batch | mode | step ms (median) | ratio to plain | peak RSS MB | ratio to plain | "
        "training memory MB (peak - after setup) | ratio to plain |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for model, batch in MODELS:
            memory = {}  # first, while this process is small (the children are separate processes anyway)
            for m in MODES:
                cmd = [sys.executable, __file__, "--child", model, str(batch), m, str(args.steps),
                       str(Path(tmp) / f"mem-{model}-{m}")]  # fmt: skip
                done = subprocess.run(cmd, capture_output=True, text=True, check=True)
                memory[m] = json.loads(done.stdout.strip().splitlines()[-1])
                runs.append({"model": model, "batch": batch, "mode": m, **memory[m]})
            torch.manual_seed(0)
            trainers = {m: make_trainer(model, batch, m, Path(tmp) / f"{model}-{m}") for m in MODES}
            x, y = next(trainers["plain"].data.train_batches(0, batch, 0))
            for t in trainers.values():
                t._train_step(x, y)  # warm-up
            times: dict[str, list[float]] = {m: [] for m in MODES}
            for r in range(args.rounds):  # alternate modes so machine drift hits all alike
                for m, t in trainers.items():
                    t0 = time.perf_counter()
                    for _ in range(args.steps):
                        t._train_step(x, y)
                    ms = (time.perf_counter() - t0) / args.steps * 1e3
                    times[m].append(ms)
                    runs.append({"model": model, "batch": batch, "mode": m, "round": r, "step_ms": ms})
            del trainers
            base_ms = statistics.median(times["plain"])
            base_mb = memory["plain"]["peak_rss_kb"] / 1024
            base_train = (memory["plain"]["peak_rss_kb"] - memory["plain"]["rss_after_setup_kb"]) / 1024
            for m in MODES:
                ms, mb = statistics.median(times[m]), memory[m]["peak_rss_kb"] / 1024
                train_mb = (memory[m]["peak_rss_kb"] - memory[m]["rss_after_setup_kb"]) / 1024
                table.append(f"| {model} | {batch} | {m} | {ms:.1f} | {ms / base_ms:.2f} | {mb:.0f} | "
                             f"{mb / base_mb:.2f} | {train_mb:.0f} | {train_mb / base_train:.2f} |")  # fmt: skip
    env = environment(
        f"trainer steps on the built-in data (resized for 224-px models), {args.rounds} rounds x {args.steps} steps "
        "per mode, alternating; peak RSS of one process per mode; random weights except the built-in model"
    )
    write_results("train_overhead", "Training overhead of the gates (CPU)", env, runs, table)


if __name__ == "__main__":
    main()
