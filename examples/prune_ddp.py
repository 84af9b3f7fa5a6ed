"""The pruning loop under torchrun (DistributedDataParallel, gloo here so it runs on CPUs) with bf16 autocast.

    torchrun --nproc_per_node 2 examples/prune_ddp.py --out ddp/

Wrap with the Pruner before DistributedDataParallel, so the gate logits are parameters DDP averages; every rank
draws the same gate noise, so every rank keeps the same structure. After the search the gates stay in the graph
with a zero gradient, so the DDP wrapper needs no rebuilding.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import timm
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import hiap.api as hp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--gate-lr", type=float, default=0.05)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # the same start on every rank (DDP also broadcasts rank 0's weights)
    model = timm.create_model("vit_tiny_patch16_224", num_classes=4, img_size=32, patch_size=8, depth=2,
                              embed_dim=64, num_heads=2)  # fmt: skip
    pruner = hp.Pruner(model, args.steps, budget=0.5, options=hp.PruneOptions(gate_lr=args.gate_lr),
                       model_name="vit_tiny_patch16_224")  # fmt: skip
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.AdamW([{"params": list(pruner.weight_parameters()), "lr": 1e-3}, *pruner.param_groups()])
    data = torch.Generator().manual_seed(1 + rank)  # each rank its own batches
    for _ in range(args.steps):
        x, y = torch.randn(8, 3, 32, 32, generator=data), torch.randint(0, 4, (8,), generator=data)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = ddp(x)
        loss = pruner.penalty(torch.nn.functional.cross_entropy(logits.float(), y))  # the budget terms in fp32
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        pruner.step(optimizer)

    gates = torch.cat([p.detach().flatten() for p in pruner.gates.parameters()])
    spread = gates.clone()
    dist.all_reduce(spread, op=dist.ReduceOp.MAX)
    dist.all_reduce(gates, op=dist.ReduceOp.MIN)
    if rank == 0:
        report = hp.export(pruner, args.out, preprocessing={"mean": (0.0,) * 3, "std": (1.0,) * 3})
        summary = {"world": world, "gate_spread": float((spread - gates).abs().max()), "gmacs": report["gmacs"],
                   "dense_gmacs": report["dense_gmacs"], "parity": report["parity"]["passed"]}  # fmt: skip
        (args.out / "ddp_summary.json").write_text(json.dumps(summary))
        print(json.dumps(summary))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
