"""Dense training throughput on this CPU (images/s) per ViT geometry, batch size, precision and compilation: the
table that bounds the size of a CIFAR-10 setting that can be trained to its plateau here.

    python benchmarks/throughput.py [--geometries p8-d128 p4-d128 ...] [--batches 128 256] [--steps 8]

Each step is a whole dense training step of the plateau benchmark's recipe: a batch of in-memory uint8 images through
the batched padded crop + flip (hiap.data.crop_flip) and normalisation, forward, label-smoothed cross-entropy,
backward and AdamW. Configurations run one after another with nothing else running, each appended to
`results/throughput.jsonl` as it finishes (a rerun skips it); the table reads best as ratios. `torch.compile` is
timed after its compilation (warm-up seconds, compilation included, are recorded apart).
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import nullcontext
from typing import Any

import torch
from common import environment, load_runs, results_dir

from hiap.data import crop_flip
from hiap.models import create_model

GEOMETRIES: dict[str, dict[str, Any]] = {
    "p8-d128": {"img_size": 32, "patch_size": 8, "depth": 6, "embed_dim": 128, "num_heads": 4},
    "p8-d192": {"img_size": 32, "patch_size": 8, "depth": 6, "embed_dim": 192, "num_heads": 3},
    "p4-d128": {"img_size": 32, "patch_size": 4, "depth": 6, "embed_dim": 128, "num_heads": 4},
    "p4-d192": {"img_size": 32, "patch_size": 4, "depth": 6, "embed_dim": 192, "num_heads": 3},  # the paper's
}
MODEL = "vit_tiny_patch16_224"


def macs_per_image(model: torch.nn.Module) -> int:
    """Forward multiply-accumulates of one 32x32 image, counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.zeros(1, 3, 32, 32))
    model.train()
    return counter.get_total_flops() // 2


def time_config(geometry: str, batch: int, precision: str, compiled: bool, steps: int) -> dict[str, Any]:
    """Images/s of `steps` dense training steps after warm-up (and after compilation when `compiled`)."""
    torch.manual_seed(0)
    model = create_model(MODEL, num_classes=10, model_kwargs=GEOMETRIES[geometry]).train()
    macs = macs_per_image(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    images = torch.randint(0, 256, (4 * batch, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (4 * batch,))
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    gen = torch.Generator().manual_seed(0)
    forward = torch.compile(model) if compiled else model
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()

    def step(i: int) -> None:
        idx = torch.arange(i % 4 * batch, (i % 4 + 1) * batch)
        x = (crop_flip(images[idx], 4, 0.5, gen).float().div_(255.0) - mean) / std
        with cast:
            logits = forward(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels[idx], label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t0 = time.perf_counter()
    for i in range(3):  # warm-up (and compilation)
        step(i)
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    seconds = (time.perf_counter() - t0) / steps
    return {"geometry": geometry, "model_kwargs": GEOMETRIES[geometry], "batch": batch, "precision": precision,
            "compiled": compiled, "macs_per_image": macs, "step_ms": 1e3 * seconds, "images_per_s": batch / seconds,
            "warmup_s": warm_s, "epoch_s_45k": 45_000 / (batch / seconds)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--geometries", nargs="+", default=list(GEOMETRIES), choices=list(GEOMETRIES))
    parser.add_argument("--batches", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--variants", nargs="+", default=["fp32", "bf16", "fp32-compiled"],
                        choices=["fp32", "bf16", "fp32-compiled", "bf16-compiled"])  # fmt: skip
    args = parser.parse_args()
    out = results_dir()
    runs_path = out / "throughput.jsonl"
    rows = load_runs(runs_path)
    for geometry in args.geometries:
        for batch in args.batches:
            for variant in args.variants:
                precision, _, compiled = variant.partition("-")
                key = (geometry, batch, precision, bool(compiled))
                if any((r["geometry"], r["batch"], r["precision"], r["compiled"]) == key for r in rows):
                    continue  # measured in an earlier invocation (appended as it finished)
                row = time_config(geometry, batch, precision, bool(compiled), args.steps)
                rows.append(row)
                with open(runs_path, "a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
    env = environment(f"dense training step, batched crop+flip, AdamW, {args.steps} timed steps after 3 warm-up")
    (out / "throughput.json").write_text(json.dumps({"environment": env, "runs": rows}, indent=1) + "\n")
    lines = ["# Dense training throughput (images/s) on this CPU", "",
             f"{env['recipe']}; {env['machine']}, {env['cpu']['model']} ({' '.join(env['cpu']['flags'])}), "
             f"{env['threads']} threads, torch {env['torch']}, hiap {env['hiap']}, {env['date']}.", "",
             "| geometry | MACs/image (M) | batch | precision | compiled | step ms | images/s | s per 45k epoch |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['geometry']} | {r['macs_per_image'] / 1e6:.1f} | {r['batch']} | {r['precision']} | "
                     f"{'yes' if r['compiled'] else 'no'} | {r['step_ms']:.0f} | {r['images_per_s']:.0f} | "
                     f"{r['epoch_s_45k']:.0f} |")  # fmt: skip
    (out / "throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
