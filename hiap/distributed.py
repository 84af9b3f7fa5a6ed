"""torchrun support: process-group setup from the environment, rank-0-only outputs, and cross-rank checks."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from hiap.base.errors import HiapError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env() -> DistInfo:
    """What torchrun set (RANK, WORLD_SIZE, LOCAL_RANK); a plain process is rank 0 of 1."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise HiapError("RANK / WORLD_SIZE / LOCAL_RANK must be integers (set by torchrun).") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise HiapError(
            f"RANK={rank} / WORLD_SIZE={world} / LOCAL_RANK={local} are inconsistent: launch with torchrun."
        )
    if world > 1 and not (os.environ.get("MASTER_ADDR") and os.environ.get("MASTER_PORT")):
        raise HiapError("WORLD_SIZE > 1 but MASTER_ADDR / MASTER_PORT are not set: launch with torchrun.")
    return DistInfo(rank, world, local)


def init(info: DistInfo, device: torch.device) -> None:
    """NCCL between GPUs, gloo between CPU processes; idempotent."""
    if not info.enabled or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL binds each process to its own GPU
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world)


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_ranks_true(info: DistInfo, flag: bool, device: torch.device) -> bool:
    """True only if `flag` holds on every rank (so every rank takes the same branch and none waits forever)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item() == 1.0)


def sum_across(info: DistInfo, values: list[float], device: torch.device) -> list[float]:
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return [float(v) for v in t.tolist()]


def max_spread(info: DistInfo, tensors: list[torch.Tensor]) -> float:
    """Largest difference of these tensors between any rank and rank 0 (0.0 when they are identical)."""
    if not info.enabled:
        return 0.0
    flat = torch.cat([t.detach().float().flatten().cpu() for t in tensors])
    device = tensors[0].device if tensors[0].device.type == "cuda" else torch.device("cpu")
    flat = flat.to(device)
    ref = flat.clone()
    dist.broadcast(ref, src=0)
    diff = (flat - ref).abs().max().reshape(1)
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return float(diff.item())
