"""Export cost: time, file size and the effect of onnxsim for DeiT-Tiny and DeiT-Small shapes at several plan sizes.

    python benchmarks/export_cost.py [--levels 1.0 0.8 0.65 0.5]

Random weights (so onnxsim drops some all-zero bias constants: `zero_params_dropped`; counts are checked on
the exporter's own file, as `hiap export` does); learned-like plans (common.learned_like_plan; level 1.0 is the
dense model) exported the way `hiap export` does (compact build, TorchScript ONNX exporter at opset 17, then
onnxsim), timed per stage, with the parity of the simplified file against the compact PyTorch model.
Writes benchmarks/results/export_cost.json / .md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import environment, learned_like_plan, write_results

from hiap.cost import structure_macs, structure_params
from hiap.export.compact import build_compact, padded_structure
from hiap.export.onnx_io import onnx_cost, ort_run, simplify_onnx, torch2onnx
from hiap.gated import describe_vit
from hiap.models import create_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=float, nargs="+", default=[1.0, 0.8, 0.65, 0.5])
    args = parser.parse_args()
    rows = []
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        for shape in ("deit_tiny_patch16_224", "deit_small_patch16_224"):
            torch.manual_seed(0)
            vit = create_model(shape).eval()
            geom = describe_vit(vit)
            for level in args.levels:
                plan = (
                    geom.dense_structure() if level >= 1 else learned_like_plan(geom, 0, level * geom.dense_macs / 1e9)
                )
                emitted = padded_structure(plan, geom.head_dim, 8)
                path = Path(tmp) / f"{shape}-{level}.onnx"
                t0 = time.perf_counter()
                compact = build_compact(vit, plan, align=8)
                t1 = time.perf_counter()
                torch2onnx(compact, (3, 224, 224), path)
                t2 = time.perf_counter()
                raw_bytes = path.stat().st_size
                raw_macs, raw_params = onnx_cost(path)
                nodes = simplify_onnx(path)
                t3 = time.perf_counter()
                with torch.no_grad():
                    ref = compact(torch.from_numpy(x)).numpy()
                macs, params = onnx_cost(path)
                plan_macs, plan_params = structure_macs(geom, emitted), structure_params(geom, emitted)
                rows.append({
                    "shape": shape, "level": level, "plan_gmacs": plan_macs / 1e9, "onnx_gmacs": macs / 1e9,
                    "params": params, "counts_match": raw_macs == macs == plan_macs and raw_params == plan_params,
                    "zero_params_dropped": raw_params - params, "build_s": t1 - t0, "onnx_export_s": t2 - t1,
                    "simplify_s": t3 - t2, "total_s": t3 - t0, "bytes_before_simplify": raw_bytes,
                    "bytes_after_simplify": path.stat().st_size, "nodes_before": nodes[0], "nodes_after": nodes[1],
                    "max_abs_diff": float(np.abs(ort_run(path, x) - ref).max()),
                })  # fmt: skip
    table = [
        "| shape | plan (of dense MACs) | GMACs | params | counts = plan | build s | ONNX s | onnxsim s | total s | "
        "MB | nodes before -> after onnxsim | max abs diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [r["shape"], f"{r['level']:.2f}", f"{r['onnx_gmacs']:.3f}", f"{r['params']:,}", str(r["counts_match"]),
                 f"{r['build_s']:.2f}", f"{r['onnx_export_s']:.2f}", f"{r['simplify_s']:.2f}", f"{r['total_s']:.2f}",
                 f"{r['bytes_after_simplify'] / 1e6:.1f}", f"{r['nodes_before']} -> {r['nodes_after']}",
                 f"{r['max_abs_diff']:.1e}"]  # fmt: skip
        table.append("| " + " | ".join(cells) + " |")
    env = environment("random weights, learned-like plans, align 8, opset 17, batch 1, onnxsim on; one export each")
    write_results("export_cost", "Export cost: time, size, simplification (CPU)", env, rows, table)


if __name__ == "__main__":
    main()
