"""Real speedup against MAC reduction: DeiT-Tiny/Small shapes, several plan sizes, ONNX Runtime and PyTorch eager.

    python benchmarks/realisation.py [--rounds 5] [--iters 4] [--levels 0.8 0.65 0.5]

Random weights (latency does not depend on them). For each shape, plans shaped like learned ones (heads removed,
uneven value widths; see common.learned_like_plan) at each MAC level are exported with --align 1 and --align 8.
Every model of one (shape, batch, runtime) group is timed in one process, alternating model by model, at batch 1
and batch 8: ONNX Runtime CPU (2 intra-op threads, full graph optimisation; hiap bench's runner and harness) and
PyTorch eager (the compact module, no_grad). realisation = measured speedup / MAC reduction. Writes
benchmarks/results/realisation.json / .md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from common import environment, learned_like_plan, onnx_latency, write_results

from hiap.cost import structure_macs
from hiap.export.compact import build_compact, padded_structure
from hiap.export.onnx_io import simplify_onnx, torch2onnx
from hiap.gated import describe_vit
from hiap.models import create_model

SHAPES = ["deit_tiny_patch16_224", "deit_small_patch16_224"]


def torch_ms(model: torch.nn.Module, x: torch.Tensor, iters: int) -> float:
    with torch.no_grad():
        t0 = time.perf_counter()
        for _ in range(iters):
            model(x)
    return (time.perf_counter() - t0) / iters * 1e3


def torch_medians(models: dict[str, tuple[torch.nn.Module, float]], x: torch.Tensor, rounds: int,
                  iters: int) -> dict[str, float]:  # fmt: skip
    """Torch eager's median over rounds of the mean ms per call of every model, alternating model by model (no
    product runner runs torch modules, so this loop is the script's own)."""
    times: dict[str, list[float]] = {n: [] for n in models}
    for module, _ in models.values():  # warm-up
        torch_ms(module, x, 1)
    for _ in range(rounds):
        for name, (module, _) in models.items():
            times[name].append(torch_ms(module, x, iters))
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=4)
    parser.add_argument("--levels", type=float, nargs="+", default=[0.8, 0.65, 0.5])
    args = parser.parse_args()
    torch.set_num_threads(2)
    summary = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape in SHAPES:
            torch.manual_seed(0)
            vit = create_model(shape).eval()
            geom = describe_vit(vit)
            models = {"dense": (build_compact(vit, geom.dense_structure(), 1), geom.dense_macs)}
            for level in args.levels:
                plan = learned_like_plan(geom, 0, level * geom.dense_macs / 1e9)
                for align in (1, 8):
                    macs = structure_macs(geom, padded_structure(plan, geom.head_dim, align))
                    models[f"{level:.2f} align {align}"] = (build_compact(vit, plan, align), macs)
            paths = {}
            for i, (name, (module, _)) in enumerate(models.items()):
                paths[name] = Path(tmp) / f"{shape}-{i}.onnx"
                torch2onnx(module, (3, 224, 224), paths[name], dynamic_batch=True)
                simplify_onnx(paths[name])
            for batch in (1, 8):
                x = torch.from_numpy(np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32))
                measured = {
                    "onnxruntime": {k: v.p50 for k, v in onnx_latency(paths, args.rounds, args.iters, batch).items()},
                    "torch eager": torch_medians(models, x, args.rounds, args.iters),
                }
                for runtime, ms_of in measured.items():
                    dense_ms = ms_of["dense"]
                    for name, (_, macs) in models.items():
                        if name == "dense":
                            continue
                        ms = ms_of[name]
                        mac_ratio = geom.dense_macs / macs
                        summary.append({"shape": shape, "batch": batch, "runtime": runtime, "model": name,
                                        "gmacs": macs / 1e9, "dense_gmacs": geom.dense_macs / 1e9,
                                        "dense_ms": dense_ms, "ms": ms, "speedup": dense_ms / ms,
                                        "mac_ratio": mac_ratio, "realisation": dense_ms / ms / mac_ratio})  # fmt: skip
    table = ["| shape | batch | runtime | plan | GMACs | dense ms | pruned ms | speedup | MAC ratio | realisation |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for s in summary:
        table.append(f"| {s['shape'].split('_')[0] + '-' + s['shape'].split('_')[1]} | {s['batch']} | {s['runtime']} "
                     f"| {s['model']} | {s['gmacs']:.3f} | {s['dense_ms']:.1f} | {s['ms']:.1f} | {s['speedup']:.3f} "
                     f"| {s['mac_ratio']:.3f} | {s['realisation']:.3f} |")  # fmt: skip
    env = environment(
        f"random weights, learned-like plans at {args.levels} of dense MACs, ORT {ort.__version__} CPU (2 intra-op "
        f"threads) and torch eager (2 threads), {args.rounds} rounds x {args.iters} calls, alternating; ORT: p50 of "
        "every call (hiap bench's runner and harness), torch: median of the rounds' means"
    )
    write_results("realisation", "Real speedup vs MAC reduction (CPU)", env, summary, table)


if __name__ == "__main__":
    main()
