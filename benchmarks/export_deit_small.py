"""Export a DeiT-Small (random weights) pruned to about 3.1 GMACs; time it, check parity and counts, and measure
ONNX Runtime CPU latency at batch 1, dense vs pruned, alternating in one process (hiap bench's harness).

    python benchmarks/export_deit_small.py [--align 8] [--rounds 10] [--iters 20]

The plan keeps every head, trims value dims to 48 of 64 and FFN neurons to a uniform width chosen to land near
3.1 GMACs (a plan shaped like the paper's operating point, not a trained one). Writes
benchmarks/results/export_deit_small.json / .md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from common import environment, onnx_latency, write_results

from hiap.cost import BlockStructure, Structure, structure_macs, structure_params
from hiap.export.compact import build_compact, padded_structure
from hiap.export.onnx_io import onnx_cost, ort_run, simplify_onnx, torch2onnx
from hiap.gated import describe_vit
from hiap.models import create_model


def plan_near(geom, target_gmacs: float) -> Structure:
    heads = tuple(range(geom.num_heads))
    dims = tuple(tuple(range(48)) for _ in heads)
    for k in range(geom.hidden, 0, -8):
        block = BlockStructure(heads=heads, value_dims=dims, ffn=True, neurons=tuple(range(k)))
        s = Structure(blocks=(block,) * geom.depth)
        if structure_macs(geom, s) / 1e9 <= target_gmacs:
            return s
    raise SystemExit("no plan reaches the target")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--align", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args()
    torch.manual_seed(0)
    vit = create_model("deit_small_patch16_224").eval()
    geom = describe_vit(vit)
    structure = plan_near(geom, 3.1)
    emitted = padded_structure(structure, geom.head_dim, args.align)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        dense_path, pruned_path = Path(tmp) / "dense.onnx", Path(tmp) / "pruned.onnx"
        t0 = time.perf_counter()
        compact = build_compact(vit, structure, align=args.align)
        torch2onnx(compact, (3, 224, 224), pruned_path)
        export_s = time.perf_counter() - t0
        nodes = simplify_onnx(pruned_path)
        export_simplify_s = time.perf_counter() - t0
        torch2onnx(build_compact(vit, geom.dense_structure(), align=1), (3, 224, 224), dense_path)
        simplify_onnx(dense_path)  # both models go through the same pipeline, or the comparison is unfair
        with torch.no_grad():
            ref = compact(torch.from_numpy(x)).numpy()
        max_abs = float(np.abs(ort_run(pruned_path, x) - ref).max())
        onnx_macs, onnx_params = onnx_cost(pruned_path)
        latency = onnx_latency({"dense": dense_path, "pruned": pruned_path}, args.rounds, args.iters)
    dense_ms, pruned_ms = latency["dense"].p50, latency["pruned"].p50
    mac_ratio = geom.dense_macs / structure_macs(geom, emitted)
    result = {
        "plan_gmacs": structure_macs(geom, emitted) / 1e9,
        "dense_gmacs": geom.dense_macs / 1e9,
        "onnx_gmacs": onnx_macs / 1e9,
        "plan_params": structure_params(geom, emitted),
        "onnx_params": onnx_params,
        "export_seconds_no_simplify": export_s,
        "export_seconds_with_simplify": export_simplify_s,
        "nodes_before_simplify": nodes[0],
        "nodes_after_simplify": nodes[1],
        "max_abs_diff": max_abs,
        "dense_ms_p50": dense_ms,
        "pruned_ms_p50": pruned_ms,
        "speedup": dense_ms / pruned_ms,
        "mac_reduction": mac_ratio,
        "realisation": (dense_ms / pruned_ms) / mac_ratio,
    }
    env = environment(
        f"DeiT-Small random weights, plan near 3.1 GMACs, align {args.align}, ORT CPU batch 1, intra-op 2 threads, "
        f"onnxruntime {ort.__version__}, {args.rounds} rounds x {args.iters} calls alternating, p50 of every call "
        "(hiap bench's runner and harness)"
    )
    lines = ["| quantity | value |", "|---|---|"] + [f"| {k} | {v:.4g} |" for k, v in result.items()]
    rows = [{"model": k} | v.to_dict() for k, v in latency.items()] + [result]
    write_results("export_deit_small", "DeiT-Small export: counts, parity and ORT latency", env, rows, lines)


if __name__ == "__main__":
    main()
