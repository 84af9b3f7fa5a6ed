"""The Pruner in a user's own loop is never silently wrong: the structure after the search depends on nothing but the
search (LR schedulers, weight decay, a missing optimizer), gate groups left out of the optimizer are refused, the
landing reaches extreme budgets and reports whether it met the target, a spent pruner and bad calls are one-line
errors, and torch.compile does not recompile per search step."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import timm
import torch
from torch import nn

import hiap.api as hp
from hiap.base.errors import HiapError

STEPS = 60


def tiny_vit(seed: int = 0, depth: int = 2, heads: int = 2) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", num_classes=3, img_size=32, patch_size=8, depth=depth,
                             embed_dim=64, num_heads=heads)  # fmt: skip


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(step)
    x = torch.randn(8, 3, 32, 32, generator=gen)
    return x, (x.mean((1, 2, 3)) > 0).long() + (x[:, 0].mean((1, 2)) > 0).long()


def run(model: nn.Module, pruner: hp.Pruner, optimizer: torch.optim.Optimizer, steps: range,
        after: Callable[[], None] = lambda: None, pass_optimizer: bool = True) -> list[hp.StepReport]:  # fmt: skip
    reports = []
    for step in steps:
        x, y = batch(step)
        loss = pruner.penalty(nn.functional.cross_entropy(model(x), y))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        reports.append(pruner.step(optimizer if pass_optimizer else None))
        after()
    return reports


def setup(target: float = 0.5, steps: int = STEPS, **options: object) -> tuple[nn.Module, hp.Pruner, torch.optim.AdamW]:
    model = tiny_vit()
    pruner = hp.Pruner(model, steps, budget=target, options=hp.PruneOptions(gate_lr=1.0, **options))
    optimizer = torch.optim.AdamW([{"params": list(pruner.weight_parameters())}, *pruner.param_groups()], lr=1e-3)
    return model, pruner, optimizer


def warmup_cosine(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: (i + 1) / 6 if i < 6 else 0.5 * (1 + math.cos(math.pi * i / STEPS))
    )


def timm_cosine(optimizer: torch.optim.Optimizer) -> object:
    from timm.scheduler import CosineLRScheduler

    sched = CosineLRScheduler(optimizer, t_initial=STEPS, warmup_t=6, warmup_lr_init=1e-5, t_in_epochs=False)
    counter = iter(range(1, 10**6))

    class Updates:  # timm's schedulers step on update counts
        def step(self) -> None:
            sched.step_update(next(counter))

    return Updates()


@pytest.mark.parametrize(
    "make_schedule",
    [
        warmup_cosine,
        lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[1e-3] + [1.0] * 2, total_steps=STEPS),
        timm_cosine,
    ],
    ids=["LambdaLR", "OneCycleLR", "timm-cosine"],
)
def test_an_lr_scheduler_on_the_whole_optimizer_does_not_move_the_structure_after_the_search(make_schedule) -> None:
    model, pruner, optimizer = setup()
    schedule = make_schedule(optimizer)
    reports = run(model, pruner, optimizer, range(STEPS), after=schedule.step)
    ended = next(r for r in reports if r.search_ended)
    landed = ended.hard_fraction
    assert ended.target_met and abs(landed - 0.5) <= 0.01  # landed on the target at the search's end ...
    after = {r.hard_fraction for r in reports[reports.index(ended) :]}
    assert after == {landed}  # ... and every later step reports that same network
    assert pruner.hard_macs() / pruner.budget.dense == pytest.approx(landed, abs=1e-12)
    assert pruner.target_met is True


def test_step_without_the_optimizer_is_refused_during_and_after_the_search() -> None:
    model, pruner, optimizer = setup()
    with pytest.raises(HiapError, match=r"takes the torch optimizer .* got NoneType"):
        run(model, pruner, optimizer, range(1), pass_optimizer=False)
    assert pruner.step_count == 0  # refused before anything moved
    with pytest.raises(HiapError, match="got list"):
        pruner.step(optimizer.param_groups)  # type: ignore[arg-type]
    with pytest.raises(HiapError, match="got NoneType"):
        pruner.skip_step(None)  # type: ignore[arg-type]
    run(model, pruner, optimizer, range(pruner.search_steps))
    fixed = pruner.structure()
    with pytest.raises(HiapError, match="got NoneType"):
        run(model, pruner, optimizer, range(pruner.search_steps, pruner.search_steps + 1), pass_optimizer=False)
    run(model, pruner, optimizer, range(pruner.search_steps, STEPS))
    assert pruner.structure() == fixed and pruner.target_met


def _weights_only(model: nn.Module, pruner: hp.Pruner) -> torch.optim.Optimizer:
    return torch.optim.AdamW(pruner.weight_parameters(), lr=1e-3)


def _everything(model: nn.Module, pruner: hp.Pruner) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=1e-3)


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ("weights only", "does not hold the pruner's gate logits"),
        ("model.parameters()", "in a weight group"),
        ("built before wrapping", "does not hold the pruner's gate logits"),
    ],
)
def test_an_optimizer_without_the_gate_groups_is_refused_at_the_first_step(form: str, message: str) -> None:
    model = tiny_vit()
    early = torch.optim.AdamW(model.parameters(), lr=1e-3)
    pruner = hp.Pruner(model, STEPS, budget=0.5, options=hp.PruneOptions(gate_lr=1.0))
    optimizer = {"weights only": _weights_only(model, pruner), "model.parameters()": _everything(model, pruner),
                 "built before wrapping": early}[form]  # fmt: skip
    with pytest.raises(HiapError, match=message):
        run(model, pruner, optimizer, range(1))


def test_an_extreme_budget_lands_by_closing_heads_and_blocks_too() -> None:
    # 0.15 of a 4-block ViT's MACs (its floors reach 0.069): with the widths at their floors the search's own macro
    # decisions stayed 13 % above it; the landing closes heads and FFN blocks too, in the order of their logits.
    model = tiny_vit(depth=4, heads=4)
    pruner = hp.Pruner(model, 200, budget=0.15, options=hp.PruneOptions(gate_lr=1.0))
    optimizer = torch.optim.AdamW([{"params": list(pruner.weight_parameters()), "lr": 1e-3}, *pruner.param_groups()])
    gen = torch.Generator().manual_seed(0)
    reports = []
    for _ in range(pruner.search_steps):
        x = torch.randn(16, 3, 32, 32, generator=gen)
        loss = pruner.penalty(nn.functional.cross_entropy(model(x), (x.mean((1, 2, 3)) > 0).long()))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        reports.append(pruner.step(optimizer))
    assert reports[-1].search_ended and all(r.target_met is None for r in reports[:-1])
    assert reports[-1].target_met is True and abs(reports[-1].hard_fraction - 0.15) <= 0.0015
    assert pruner.hard_macs() / pruner.budget.dense == pytest.approx(reports[-1].hard_fraction, abs=1e-12)


def test_a_tight_mac_budget_keeps_every_ffn_block_and_narrows_it_where_the_floors_reach() -> None:
    from hiap.budget import min_reachable_macs
    from hiap.pruner import NARROW_HEADROOM, NARROW_NEURON_FRAC

    def rule(budget: float, **options: object) -> tuple[bool, float]:
        pruner = hp.Pruner(tiny_vit(), STEPS, budget=budget, options=hp.PruneOptions(gate_lr=1.0, **options))
        return pruner.ffn_blocks_removable, pruner.floors.min_neuron_frac

    assert rule(0.5) == (True, 0.1)  # at or above narrow_ffn_below (0.25): blocks may go, the default floor
    assert rule(0.2) == (False, NARROW_NEURON_FRAC)
    assert rule(0.2, narrow_ffn_below=0.0) == (True, 0.1)
    assert rule(0.2, ffn_block_gates=False) == (False, 0.1)  # the user's choice and floor stand
    model, pruner, optimizer = setup(0.2)
    floor = min_reachable_macs(pruner.geometry, pruner.floors, False, True) / pruner.budget.dense
    assert NARROW_HEADROOM * floor <= 0.2 < NARROW_HEADROOM * floor * 1.2
    reports = run(model, pruner, optimizer, range(pruner.search_steps))
    assert reports[-1].search_ended and reports[-1].target_met is True
    kept = pruner.gated.hard_structure().blocks
    hidden = pruner.geometry.hidden
    assert all(b.ffn for b in kept)  # every block kept, some narrowed below what the default 10 % floor allows
    assert min(len(b.neurons) for b in kept) < 0.1 * hidden
    # just above the kept network's floor with its headroom, only removing blocks reaches the budget
    assert rule(round(NARROW_HEADROOM * floor, 3) - 0.002) == (True, 0.1)


def test_a_target_of_the_whole_model_is_refused() -> None:
    with pytest.raises(HiapError, match="nothing to prune"):
        hp.Pruner(tiny_vit(), STEPS, budget=1)


def test_a_spent_pruner_and_bad_calls_are_one_line_errors() -> None:
    with pytest.raises(HiapError, match=r"Unknown option 'gate_rl'.*Did you mean 'gate_lr'"):
        hp.PruneOptions(gate_rl=1.0)
    with pytest.raises(HiapError, match="'gate_lr' must be a float"):
        hp.Pruner(tiny_vit(), STEPS, options=hp.PruneOptions(gate_lr="fast"))  # type: ignore[arg-type]
    model, pruner, optimizer = setup()
    with pytest.raises(HiapError, match="takes the task loss as a tensor"):
        pruner.penalty("abc")  # type: ignore[arg-type]
    run(model, pruner, optimizer, range(STEPS))
    hp.materialize(pruner)
    for call in (lambda: hp.materialize(pruner), lambda: pruner.step(optimizer), lambda: pruner.penalty(),
                 lambda: hp.export(pruner, "unused", preprocessing=hp.data_config(model))):  # fmt: skip
        with pytest.raises(HiapError, match="spent"):
            call()


def test_torch_compile_of_the_wrapped_model_does_not_recompile_per_search_step() -> None:
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model, pruner, optimizer = setup(search_fraction=0.5)
    compiled = torch.compile(model, backend="eager")  # the guards are dynamo's, whatever the backend
    for step in range(4):
        x, y = batch(step)
        loss = pruner.penalty(nn.functional.cross_entropy(compiled(x), y))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        pruner.step(optimizer)
        if step == 0:
            graphs = counters["stats"]["unique_graphs"]
    assert pruner.searching and graphs > 0
    assert counters["stats"]["unique_graphs"] == graphs  # the later steps reused the first step's graphs
