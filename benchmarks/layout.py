"""Which layout should a block with uneven per-head value widths have? Measured on ONNX Runtime CPU, batch 1.

    python benchmarks/layout.py [--rounds 10] [--iters 20] [--seed 0]

A DeiT-Small (random weights) gets a plan shaped like a learned one: in every block some heads removed and each
kept head with its own value width (16..64 of 64), FFN neurons trimmed so the exact plan is near 3.1 GMACs. The
same plan is exported in these layouts and timed side by side, alternating in one process:
- pad every head of a block to its widest width rounded up to --align 1, 8, 16 (hiap's layout; 8 is the default);
- pad to the full head width 64 (uniform Q/K/V head size: what TensorRT's fused attention needs);
- group heads by exact width (no padding: one attention per distinct width, outputs concatenated);
- the dense model, for reference.
Writes benchmarks/results/layout.json / .md.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from common import environment, learned_like_plan, onnx_latency, write_results
from torch import nn

from hiap.cost import BlockStructure, Structure, structure_macs
from hiap.export.compact import build_compact, padded_structure
from hiap.export.onnx_io import onnx_cost, ort_run, simplify_onnx, torch2onnx
from hiap.gated import describe_vit
from hiap.models import create_model


class GroupedAttention(nn.Module):
    """Exact widths: one qkv projection (q, k full width; v of each head's own width), heads grouped by width."""

    def __init__(self, src: nn.Module, block: BlockStructure) -> None:
        super().__init__()
        big_h, dh = src.num_heads, src.head_dim
        order = sorted(range(len(block.heads)), key=lambda i: len(block.value_dims[i]))
        heads = [block.heads[i] for i in order]
        dims = [block.value_dims[i] for i in order]
        self.groups: list[tuple[int, int]] = []  # (heads in group, width)
        for d in dims:
            if self.groups and self.groups[-1][1] == len(d):
                self.groups[-1] = (self.groups[-1][0] + 1, len(d))
            else:
                self.groups.append((1, len(d)))
        rows_q = [h * dh + j for h in heads for j in range(dh)]
        rows_k = [big_h * dh + r for r in rows_q]
        rows_v = [2 * big_h * dh + h * dh + j for h, d in zip(heads, dims, strict=True) for j in d]
        rows = rows_q + rows_k + rows_v
        self.nh, self.dh, self.vw = len(heads), dh, len(rows_v)
        self.qkv = nn.Linear(src.qkv.in_features, len(rows), bias=src.qkv.bias is not None)
        self.proj = nn.Linear(len(rows_v), src.proj.out_features, bias=src.proj.bias is not None)
        with torch.no_grad():
            self.qkv.weight.copy_(src.qkv.weight[rows])
            if src.qkv.bias is not None:
                self.qkv.bias.copy_(src.qkv.bias[rows])
            self.proj.weight.copy_(src.proj.weight[:, [r - 2 * big_h * dh for r in rows_v]])
            if src.proj.bias is not None:
                self.proj.bias.copy_(src.proj.bias)
        self.scale = dh**-0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).split([self.nh * self.dh, self.nh * self.dh, self.vw], dim=-1)
        q = q.reshape(b, n, self.nh, self.dh).transpose(1, 2)
        k = k.reshape(b, n, self.nh, self.dh).transpose(1, 2)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        outs, h0, v0 = [], 0, 0
        for count, width in self.groups:
            vg = v[..., v0 : v0 + count * width].reshape(b, n, count, width).transpose(1, 2)
            outs.append((attn[:, h0 : h0 + count] @ vg).transpose(1, 2).reshape(b, n, count * width))
            h0, v0 = h0 + count, v0 + count * width
        return self.proj(torch.cat(outs, dim=-1))


def grouped_model(vit: nn.Module, structure: Structure) -> nn.Module:
    compact = build_compact(vit, structure, align=1)
    for blk, src, plan in zip(compact.blocks, vit.blocks, structure.blocks, strict=True):
        if blk.attn is not None:
            blk.attn = GroupedAttention(src.attn, plan)
    return compact


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(0)
    vit = create_model("deit_small_patch16_224").eval()
    geom = describe_vit(vit)
    structure = learned_like_plan(geom, args.seed, 3.1)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    layouts: dict[str, tuple[nn.Module, float]] = {"dense": (build_compact(vit, geom.dense_structure(), 1),
                                                             geom.dense_macs)}  # fmt: skip
    for align in (1, 8, 16, geom.head_dim):
        label = f"pad align {align}" + (" (uniform = head dim)" if align == geom.head_dim else "")
        layouts[label] = (build_compact(vit, structure, align), structure_macs(geom, padded_structure(structure,
                                                                                geom.head_dim, align)))  # fmt: skip
    layouts["grouped by width (exact)"] = (grouped_model(vit, structure), structure_macs(geom, structure))
    rows, paths = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, (model, macs)) in enumerate(layouts.items()):
            path = Path(tmp) / f"m{i}.onnx"
            torch2onnx(model, (3, 224, 224), path)
            nodes = simplify_onnx(path)
            with torch.no_grad():
                ref = model(torch.from_numpy(x)).numpy()
            onnx_macs, params = onnx_cost(path)
            diff = float(np.abs(ort_run(path, x) - ref).max())
            rows[name] = {"layout": name, "plan_gmacs": macs / 1e9, "onnx_gmacs": onnx_macs / 1e9, "params": params,
                          "nodes": nodes[1], "max_abs_diff_vs_torch": diff}  # fmt: skip
            paths[name] = path
        latency = onnx_latency(paths, args.rounds, args.iters)  # alternating, so drift hits every layout alike
    dense_ms = latency["dense"].p50
    table = ["| layout | GMACs (ONNX) | ONNX nodes | p50 ms | p90 ms | speedup | MAC ratio | "
             "realisation |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, row in rows.items():
        row |= {"p50_ms": latency[name].p50, "p90_ms": latency[name].p90, "latency": latency[name].to_dict()}
        row["speedup"] = dense_ms / row["p50_ms"]
        row["mac_ratio"] = geom.dense_macs / 1e9 / row["onnx_gmacs"]
        row["realisation"] = row["speedup"] / row["mac_ratio"]
        table.append(f"| {name} | {row['onnx_gmacs']:.3f} | {row['nodes']} | {row['p50_ms']:.2f} | "
                     f"{row['p90_ms']:.2f} | {row['speedup']:.3f} | {row['mac_ratio']:.3f} | "
                     f"{row['realisation']:.3f} |")  # fmt: skip
    env = environment(
        f"DeiT-Small random weights, learned-like plan (seed {args.seed}, uneven value widths), ORT CPU batch 1, "
        f"intra-op 2 threads, onnxruntime {ort.__version__}, {args.rounds} rounds x {args.iters} calls "
        "alternating, every call timed (hiap bench's runner and harness)"
    )
    write_results("layout", "Value-width layouts: padding vs grouping (ORT CPU)", env, list(rows.values()), table)


if __name__ == "__main__":
    main()
