"""The peers' compensation (benchmarks/peers.py): the cut layer's kept columns are found in the dense one, and the
removed neurons' means folded into fc2's bias keep its mean output on the calibration images."""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
peers = pytest.importorskip("peers")


class Images:
    """The one method compensate_cut reads of a dataset: seeded training batches."""

    def train_batches(self, epoch: int, batch: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(seed * 1000 + epoch)
        for _ in range(3):
            yield torch.randn(batch, 3, 32, 32, generator=gen), torch.zeros(batch, dtype=torch.long)


def cut_ffn(model: nn.Module, block: int, keep: torch.Tensor) -> nn.Module:
    """Block `block`'s FFN neurons outside `keep` cut out, as Torch-Pruning does (kept rows and columns in order)."""
    cut = copy.deepcopy(model)
    mlp = cut.blocks[block].mlp
    fc1, fc2 = nn.Linear(mlp.fc1.in_features, len(keep)), nn.Linear(len(keep), mlp.fc2.out_features)
    with torch.no_grad():
        fc1.weight.copy_(mlp.fc1.weight[keep]), fc1.bias.copy_(mlp.fc1.bias[keep])
        fc2.weight.copy_(mlp.fc2.weight[:, keep]), fc2.bias.copy_(mlp.fc2.bias)
    mlp.fc1, mlp.fc2 = fc1, fc2
    return cut.eval()


def fc2_mean(model: nn.Module, batches: list[torch.Tensor]) -> torch.Tensor:
    outs: list[torch.Tensor] = []
    handle = model.blocks[0].mlp.fc2.register_forward_hook(lambda _m, _i, o: outs.append(o.reshape(-1, o.shape[-1])))
    with torch.no_grad():
        for x in batches:
            model(x)
    handle.remove()
    return torch.cat(outs).mean(0)


def test_a_cut_ffn_keeps_its_mean_output_with_the_removed_means_folded_in() -> None:
    torch.manual_seed(0)
    dense = timm.create_model("vit_tiny_patch16_224", num_classes=3, img_size=32, patch_size=8, depth=2,
                              embed_dim=64, num_heads=2).eval()  # fmt: skip
    keep = torch.arange(0, 256, 2)  # every other neuron of block 0
    mask = peers.kept_columns(dense.blocks[0].mlp.fc2.weight.detach(), cut_ffn(dense, 0, keep).blocks[0].mlp.fc2.weight)
    assert mask.nonzero().flatten().tolist() == keep.tolist()

    batches = [x for _, (x, _) in zip(range(8), Images().train_batches(0, 128, 0), strict=False)]
    cut = cut_ffn(dense, 0, keep)
    assert (fc2_mean(cut, batches) - fc2_mean(dense, batches)).abs().max() > 1e-3
    peers.compensate_cut(dense, cut, Images(), seed=0)
    torch.testing.assert_close(fc2_mean(cut, batches), fc2_mean(dense, batches), atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(cut.blocks[1].mlp.fc2.bias, dense.blocks[1].mlp.fc2.bias)  # nothing cut there
