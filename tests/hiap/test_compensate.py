"""Compensation: a removed unit's mean output folded into the next bias keeps the layer's mean output on the
calibration images exactly, and the pruner folds the start's means once the search has fixed the structure."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import timm
import torch
from tiny_config import tiny_config
from torch import nn

import hiap.api as hp
from hiap.base.errors import HiapError
from hiap.compensate import CALIBRATION_IMAGES, fold_structure, unit_stats
from hiap.train import Trainer


def tiny_vit(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", num_classes=3, img_size=32, patch_size=8, depth=2,
                             embed_dim=64, num_heads=2).eval()  # fmt: skip


def images(n: int = 4, seed: int = 1) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(8, 3, 32, 32, generator=gen) for _ in range(n)]


def mean_output(model: nn.Module, layer: nn.Linear, batches: list[torch.Tensor], keep: torch.Tensor) -> torch.Tensor:
    """The layer's mean output over every token when its inputs outside `keep` are zeroed (removed)."""
    outs: list[torch.Tensor] = []

    def zero_removed(_: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor]:
        return (args[0] * keep.to(args[0].dtype),)

    def record(_: nn.Module, __: object, out: torch.Tensor) -> None:
        outs.append(out.reshape(-1, out.shape[-1]))

    handles = [layer.register_forward_pre_hook(zero_removed), layer.register_forward_hook(record)]
    with torch.no_grad():
        for x in batches:
            model(x)
    for h in handles:
        h.remove()
    return torch.cat(outs).mean(0)


@pytest.mark.parametrize("layer", ["fc2", "proj"])
def test_folded_means_keep_the_layers_mean_output_on_the_calibration_images(layer: str) -> None:
    vit, batches = tiny_vit(), images()
    blk = vit.blocks[0]  # block 0 alone loses units, so its layers see the same inputs with and without the cut
    linear = blk.mlp.fc2 if layer == "fc2" else blk.attn.proj
    width = linear.in_features
    keep = (torch.arange(width) % 3 != 0).float()  # a third removed
    dense = mean_output(vit, linear, batches, torch.ones(width))
    cut = mean_output(vit, linear, batches, keep)
    assert (cut - dense).abs().max() > 1e-3  # the cut moves the mean: there is something to compensate

    stats = unit_stats(vit, vit, batches)
    assert stats.images == 32
    neuron_kept = torch.ones(2, blk.mlp.fc1.out_features)
    value_kept = torch.ones(2, blk.attn.proj.in_features)
    (neuron_kept if layer == "fc2" else value_kept)[0] = keep
    other = blk.attn.proj if layer == "fc2" else blk.mlp.fc2
    other_bias = other.bias.detach().clone()
    fold_structure(vit, stats, neuron_kept, value_kept, torch.ones(2))
    folded = mean_output(vit, linear, batches, keep)
    torch.testing.assert_close(folded, dense, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(other.bias, other_bias)  # nothing removed there: nothing folded


def test_a_removed_ffn_block_folds_nothing() -> None:
    vit, batches = tiny_vit(), images(1)
    stats = unit_stats(vit, vit, batches)
    before = vit.blocks[1].mlp.fc2.bias.detach().clone()
    neuron_kept = torch.zeros(2, vit.blocks[0].mlp.fc1.out_features)
    fold_structure(vit, stats, neuron_kept, torch.ones(2, 64), torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(vit.blocks[1].mlp.fc2.bias, before)
    assert not torch.equal(vit.blocks[0].mlp.fc2.bias, before)


def test_the_pruner_folds_the_starts_means_when_the_search_ends() -> None:
    model, batches = tiny_vit(), images()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    stats = unit_stats(model, model, batches)
    steps = 40
    pruner = hp.Pruner(model, steps, budget=0.4, options=hp.PruneOptions(gate_lr=1.0, compensate=True),
                       calibration=batches)  # fmt: skip
    opt = torch.optim.AdamW([{"params": list(pruner.weight_parameters())}, *pruner.param_groups()], lr=1e-3)
    for step in range(pruner.search_steps):
        x = batches[step % len(batches)]
        loss = pruner.penalty(model(x).logsumexp(-1).mean())
        opt.zero_grad()
        loss.backward()
        opt.step()
        pruner.step(opt)
    assert not pruner.searching
    final = pruner.gated.hard_masks()
    for i in range(2):
        fc2, proj = f"blocks.{i}.mlp.fc2.bias", f"blocks.{i}.attn.proj.bias"
        removed_n = final.neuron[i] == 0
        removed_v = (final.head[i].unsqueeze(-1) * final.value[i]).reshape(-1) == 0
        want_fc2 = start[fc2] + start[f"blocks.{i}.mlp.fc2.weight"][:, removed_n] @ stats.neuron_mean[i][removed_n]
        want_proj = start[proj] + start[f"blocks.{i}.attn.proj.weight"][:, removed_v] @ stats.value_mean[i][removed_v]
        if bool(final.ffn[i]):
            torch.testing.assert_close(model.state_dict()[fc2], want_fc2)
        torch.testing.assert_close(model.state_dict()[proj], want_proj)
    assert (final.neuron == 0).any() and (final.value == 0).any()  # the search removed units of both kinds


def test_compensate_and_calibration_come_together() -> None:
    with pytest.raises(HiapError, match="need calibration="):
        hp.Pruner(tiny_vit(), 40, budget=0.5, options=hp.PruneOptions(compensate=True))
    with pytest.raises(HiapError, match="only with compensate=True or importance="):
        hp.Pruner(tiny_vit(), 40, budget=0.5, calibration=images(1))
    with pytest.raises(HiapError, match="calibration batches were empty"):
        hp.Pruner(tiny_vit(), 40, budget=0.5, options=hp.PruneOptions(gate_lr=1.0, compensate=True), calibration=[])


def test_hiap_train_calibrates_on_its_own_training_images(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "run", train_images=2048, batch_size=64, target_tolerance=0.01, compensate=True)
    trainer = Trainer(cfg)
    trainer.setup()
    stats = trainer.pruner._unit_stats
    assert stats is not None and stats.images == CALIBRATION_IMAGES
    start = copy.deepcopy(trainer.teacher)  # the plain start
    first = [x for _, (x, _) in zip(range(16), trainer.data.train_batches(0, 64, cfg.seed), strict=False)]
    again = unit_stats(start, start, first)  # epoch 0's first 1,024 training images
    torch.testing.assert_close(stats.neuron_mean, again.neuron_mean)
    torch.testing.assert_close(stats.value_var, again.value_var)


def test_variance_importance_orders_the_micro_gates_by_the_variance_each_unit_adds() -> None:
    model, batches = tiny_vit(), images()
    stats = unit_stats(model, model, batches)
    pruner = hp.Pruner(model, 40, budget=0.5, calibration=batches,
                       options=hp.PruneOptions(gate_lr=1.0, importance="variance"))  # fmt: skip
    for i, blk in enumerate(pruner.vit.blocks):
        neuron = stats.neuron_var[i] * blk.mlp.fc2.weight.detach().pow(2).sum(0)
        value = stats.value_var[i] * blk.attn.proj.weight.detach().pow(2).sum(0)
        for logits, want in ((pruner.gates.neuron[i], neuron), (pruner.gates.value[i].reshape(-1), value)):
            # the logits rank the units as their output variance does (ties only where clipped at +-2)
            order = want.argsort()
            assert (logits.detach()[order].diff() >= -1e-6).all()
            assert logits.detach()[want.argmax()] == logits.max() and logits.detach()[want.argmin()] == logits.min()
    l1 = hp.Pruner(tiny_vit(), 40, budget=0.5, options=hp.PruneOptions(gate_lr=1.0))
    assert not torch.equal(l1.gates.neuron.argsort(-1), pruner.gates.neuron.argsort(-1))  # another order than l1's
    with pytest.raises(HiapError, match="importance='variance' need calibration="):
        hp.Pruner(tiny_vit(), 40, budget=0.5, options=hp.PruneOptions(gate_lr=1.0, importance="variance"))
    with pytest.raises(HiapError, match="'importance' must be 'l1' or 'variance'"):
        hp.PruneOptions(importance="taylor").validate()
