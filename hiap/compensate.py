"""Compensation for removed units: each FFN neuron's and value dim's mean output on calibration images, folded
into the bias of the layer that reads it when the unit is removed, so the kept network's output keeps its mean."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hiap.base.errors import HiapError

# The training images the start's unit statistics are measured on (hiap train, and the benchmarks' peers).
CALIBRATION_IMAGES = 1024


def calibration_batches(
    data: Any, batch_size: int, seed: int, device: torch.device | str = "cpu"
) -> Iterator[torch.Tensor]:
    """The first CALIBRATION_IMAGES of epoch 0's training order of `data` (a hiap Dataset, augmented as trained),
    in batches of at most `batch_size`: a function of the seed alone, so a resumed run measures the same statistics
    on the same start."""
    batch = min(batch_size, CALIBRATION_IMAGES)
    for i, (x, _) in enumerate(data.train_batches(0, batch, seed)):
        if i * batch >= CALIBRATION_IMAGES:
            return
        yield x.to(device)


@dataclass(frozen=True)
class UnitStats:
    """Per block, over every token of every calibration image: the mean and variance of each FFN hidden neuron
    (fc2's input) and of each value dim's attention output (proj's input, head-major as timm lays it out)."""

    neuron_mean: torch.Tensor  # [L, K]
    neuron_var: torch.Tensor  # [L, K]
    value_mean: torch.Tensor  # [L, H * Dh]
    value_var: torch.Tensor  # [L, H * Dh]
    images: int


@torch.no_grad()
def unit_stats(model: nn.Module, vit: nn.Module, batches: Iterable[torch.Tensor]) -> UnitStats:
    """Run `batches` through `model` (in eval, no gradient) and read the inputs of every block's fc2 and proj.

    `vit` is the timm ViT inside `model` (itself, or its backbone), with plain timm blocks: the statistics are
    those of the network as it is now, so call this before the pruner wraps it."""
    # (block, 'neuron' | 'value') -> [sum, sum of squares, tokens] of the layer's input features
    sums: dict[tuple[int, str], list[Any]] = {}

    def recorder(key: tuple[int, str]) -> Any:
        def record(_: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            acc = sums.setdefault(key, [0.0, 0.0, 0])
            acc[0], acc[1], acc[2] = acc[0] + x.sum(0), acc[1] + (x * x).sum(0), acc[2] + x.shape[0]

        return record

    handles = []
    for i, blk in enumerate(vit.blocks):
        handles.append(blk.mlp.fc2.register_forward_pre_hook(recorder((i, "neuron"))))
        handles.append(blk.attn.proj.register_forward_pre_hook(recorder((i, "value"))))
    was_training = model.training
    model.eval()
    images = 0
    try:
        for x in batches:
            model(x)
            images += len(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if images == 0:
        raise HiapError("Compensation needs calibration images: the calibration batches were empty.")

    def moments(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
        per_block = [sums[(i, kind)] for i in range(len(vit.blocks))]
        mean = torch.stack([s / n for s, _, n in per_block])
        var = torch.stack([q / n for _, q, n in per_block]) - mean**2
        return mean.cpu(), var.clamp_min(0).cpu()

    (neuron_mean, neuron_var), (value_mean, value_var) = moments("neuron"), moments("value")
    return UnitStats(neuron_mean, neuron_var, value_mean, value_var, images)


@torch.no_grad()
def fold_removed(
    linear: nn.Linear, removed: torch.Tensor, mean: torch.Tensor, weight: torch.Tensor | None = None
) -> None:
    """Add to `linear`'s bias what its removed input columns contributed on average: W[:, removed] @ mean[removed].

    `removed` is a boolean mask over the uncut layer's inputs and `weight` that layer's weight (default: `linear`'s
    own, where removed columns are masked rather than cut out). A linear without a bias gets none (nothing to fold
    into), and is left unchanged: compensation is only claimed where a bias carries it."""
    if linear.bias is None or not bool(removed.any()):
        return
    w = (linear.weight if weight is None else weight).detach().to(linear.bias.device)
    cols = removed.to(device=w.device, dtype=torch.bool)
    linear.bias += (w[:, cols].float() @ mean.to(w.device)[cols].float()).to(linear.bias.dtype)


def fold_structure(vit: nn.Module, stats: UnitStats, neuron_kept: torch.Tensor, value_kept: torch.Tensor,
                   ffn_kept: torch.Tensor) -> None:  # fmt: skip
    """Fold every removed neuron of a kept FFN into its fc2's bias and every removed value dim (a closed head's
    included) into its block's proj bias. A removed FFN block leaves nothing to fold into: its mean is lost.

    `neuron_kept` [L, K], `value_kept` [L, H, Dh] or [L, H * Dh], `ffn_kept` [L]: 1 kept, 0 removed."""
    if stats.neuron_mean.shape[0] != len(vit.blocks):
        raise HiapError(
            f"Calibration statistics of {stats.neuron_mean.shape[0]} blocks for a ViT of {len(vit.blocks)}."
        )
    for i, blk in enumerate(vit.blocks):
        if bool(ffn_kept[i]):
            fold_removed(blk.mlp.fc2, neuron_kept[i].reshape(-1) == 0, stats.neuron_mean[i])
        fold_removed(blk.attn.proj, value_kept[i].reshape(-1) == 0, stats.value_mean[i])
