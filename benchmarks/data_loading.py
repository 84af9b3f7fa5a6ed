"""Share of a training step spent waiting for data: an ImageFolder of small images from disk vs decoded in memory.

    python benchmarks/data_loading.py --data ROOT [--steps 60] [--workers 0 2]

ROOT is an ImageFolder root with train/ and val/ (e.g. the CIFAR-10 archive unpacked, or benchmarks/cifar10.py's
cache/test). For each way of loading (files decoded per access; `data_cache: on`, decoded once into memory, with the
per-image PIL transform; in memory with the batched tensor crop+flip that hiap uses there) and each DataLoader worker
count, it times `--steps` gated training steps of the CIFAR-10 CPU setting's model (batch 128,
KD, the default augmentation for 32x32: random crop padded by 4 and flip), splitting each step's wall time into the
wait for the next batch and the step itself. Also records the one-off cost of building the data (decoding into
memory). Writes results/data_loading.json / .md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from cifar10 import SETTINGS
from common import environment, write_results
from rich.console import Console

from hiap.config import TrainConfig
from hiap.train import Trainer


def measure(root: Path, cache: str, workers: int, steps: int, batched: bool) -> dict[str, float | int | str]:
    spec = SETTINGS["cpu"]
    cfg = TrainConfig(model=spec["model"], model_kwargs=spec["model_kwargs"], data=str(root), pretrained="none",
                      workers=workers, data_cache=cache, epochs=6, out="/tmp/hiap-data-loading")  # fmt: skip
    trainer = Trainer(cfg, Console(quiet=True))
    t0 = time.perf_counter()
    trainer.setup()
    setup_s = time.perf_counter() - t0
    if not batched:  # the per-image PIL transform (what the in-memory path did before the batched one)
        trainer.data.batched = None
    trainer.gated.train()
    waits, computes = [], []
    batches = iter(trainer.data.train_batches(0, cfg.batch_size, cfg.seed))
    for i in range(steps + 5):  # the first 5 steps warm up (workers starting, allocator)
        t0 = time.perf_counter()
        x, y = next(batches)
        t1 = time.perf_counter()
        trainer._train_step(x, y)
        t2 = time.perf_counter()
        if i >= 5:
            waits.append(t1 - t0)
            computes.append(t2 - t1)
    wait, step = sum(waits), sum(waits) + sum(computes)
    data = trainer.data
    loading = "files" if not data.cached else "in memory, batched crop+flip" if data.batched else "in memory, PIL"
    return {"loading": loading, "workers": workers, "steps": steps,
            "setup_s": setup_s, "wait_ms_median": 1e3 * statistics.median(waits),
            "step_ms_mean": 1e3 * step / steps, "wait_share": wait / step,
            "images_per_s": steps * cfg.batch_size / step}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args()
    runs = []
    for cache, batched in (("off", False), ("on", False), ("on", True)):
        for workers in args.workers if not batched else [0]:  # batched augmentation does not use workers
            run = measure(args.data, cache, workers, args.steps, batched)
            print(run, flush=True)
            runs.append(run)
    table = ["| loading | workers | data setup s | wait per step ms (median) | step ms (mean) | wait share "
             "| images/s |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in runs:
        table.append(f"| {r['loading']} | {r['workers']} | {r['setup_s']:.1f} | {r['wait_ms_median']:.2f} | "
                     f"{r['step_ms_mean']:.1f} | {r['wait_share']:.1%} | {r['images_per_s']:.0f} |")  # fmt: skip
    env = environment(f"CIFAR-10 ImageFolder ({args.data}), CPU-setting model {SETTINGS['cpu']['model_kwargs']}, "
                      f"gated step with KD, batch 128, {args.steps} timed steps after 5 warm-up")  # fmt: skip
    env["torch_threads"] = torch.get_num_threads()
    write_results("data_loading", "Data loading share of a training step (ImageFolder of 32x32 images)", env, runs,
                  table)  # fmt: skip


if __name__ == "__main__":
    main()
