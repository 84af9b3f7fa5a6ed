"""A search that ends before the run: its faster gates, the landing shift, the rewind to the starting weights, and
the built-in data's search split that such recipes are chosen on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_config import tiny_config

from hiap.base.builtin_data import load_builtin_arrays
from hiap.base.errors import HiapError
from hiap.config import TrainConfig
from hiap.data import SEARCH_PER_CLASS, BuiltinData
from hiap.train import Trainer

FMNIST = ((1, 28, 28), (0.2860,), (0.3530,))


def _tiny(tmp_path: Path, **overrides: object) -> TrainConfig:
    return tiny_config(tmp_path / "r", **overrides)


def test_search_split_validates_on_images_carved_from_the_training_set() -> None:
    shipped, carved = BuiltinData(*FMNIST, augment=False), BuiltinData(*FMNIST, augment=False, split="search")
    assert (carved.num_train, carved.num_val) == (shipped.num_train - 10 * SEARCH_PER_CLASS, 10 * SEARCH_PER_CLASS)
    assert np.bincount(carved.y_val.numpy()).tolist() == [SEARCH_PER_CLASS] * 10
    train = {bytes(x) for x in load_builtin_arrays()["x_train"]}
    val = [bytes(x) for x in carved.x_val.numpy()]
    assert all(v in train for v in val)  # carved from the training images ...
    assert not set(val) & {bytes(x) for x in carved.x_train.numpy()}  # ... and no longer trained on
    assert not set(val) & {bytes(x) for x in shipped.x_val.numpy()}  # never the reported split
    with pytest.raises(HiapError, match="Unknown built-in split 'test'"):
        BuiltinData(*FMNIST, split="test")


def test_a_short_search_moves_its_gates_faster_by_the_same_factor(tmp_path: Path) -> None:
    trainer = Trainer(_tiny(tmp_path, search_fraction=0.25, gate_lr=0.5))
    trainer.setup()
    gate_lrs = [g["lr"] for g in trainer.optimizer.param_groups if g.get("hiap")]
    assert trainer.pruner.search_steps == 8 and gate_lrs == [pytest.approx(2.0)] * 2


def test_landing_shifts_the_micro_logits_onto_the_target_and_keeps_their_order(tmp_path: Path) -> None:
    trainer = Trainer(_tiny(tmp_path, target_macs="0.5", target_tolerance=0.01, value_align=0))
    trainer.setup()
    search, gates = trainer.pruner, trainer.gated.gates
    with torch.no_grad():  # a search that ended far above its target (every unit kept), with uneven logits
        gates.value.copy_(torch.randn(gates.value.shape, generator=torch.Generator().manual_seed(0)) + 3)
        gates.neuron.copy_(torch.randn(gates.neuron.shape, generator=torch.Generator().manual_seed(1)) + 3)
    before = {k: v.detach().clone() for k, v in gates.as_dict().items()}
    assert search.hard_macs() / trainer.dense_macs > 0.9
    shift = search.land()
    landed = search.hard_macs() / search.target_macs - 1
    assert shift < 0 and abs(landed) < 0.005, (shift, landed)
    after = gates.as_dict()
    assert torch.equal(after["head"], before["head"]) and torch.equal(after["ffn"], before["ffn"])
    for kind in ("value", "neuron"):
        assert torch.allclose(after[kind] - before[kind], torch.full_like(before[kind], shift))
    landed_logits = {k: v.detach().clone() for k, v in gates.as_dict().items()}
    assert search.land() == shift  # landed: a second call (a resumed run) changes nothing
    assert all(torch.equal(v, landed_logits[k]) for k, v in gates.as_dict().items())


def test_landing_fills_every_kept_head_to_the_width_the_export_emits(tmp_path: Path) -> None:
    """With value_align 8 (head dim 16 here) each block's kept heads end with one width, 8 or 16, made of each
    head's best value dims by logit; the exported layout then adds no zero padding, and it is that network (the
    exported MACs) that lands on the target."""
    from hiap.cost import structure_macs
    from hiap.export.compact import padded_structure

    trainer = Trainer(_tiny(tmp_path, target_macs="0.5", target_tolerance=0.01, value_align=8))
    trainer.setup()
    search, gates, geom = trainer.pruner, trainer.gated.gates, trainer.geometry
    with torch.no_grad():
        gates.value.copy_(torch.randn(gates.value.shape, generator=torch.Generator().manual_seed(0)))
        gates.neuron.copy_(torch.randn(gates.neuron.shape, generator=torch.Generator().manual_seed(1)) + 3)
    order = gates.value.detach().argsort(dim=-1, descending=True)
    search.land()
    structure = trainer.gated.hard_structure()
    for i, block in enumerate(structure.blocks):
        widths = {len(v) for v in block.value_dims}
        assert len(widths) == 1 and widths <= {8, 16}, (i, widths)
        for h, dims in zip(block.heads, block.value_dims, strict=True):
            assert set(dims) == set(order[i, h, : len(dims)].tolist())  # the head's best dims by logit
    exported = structure_macs(geom, padded_structure(structure, geom.head_dim, 8))
    assert exported == structure_macs(geom, structure)
    assert abs(exported / search.target_macs - 1) < 0.01


def test_adapt_from_start_rewinds_the_weights_when_the_search_ends(tmp_path: Path) -> None:
    """Search in the first half of 2 epochs; at its end the weights are the starting weights again, their AdamW
    state is gone and their lr restarts at the base lr; the gated run's weights are kept with adapt_from gated."""
    seen: dict[str, object] = {}
    for adapt, kd in (("start", True), ("start-no-teacher", False), ("gated", True)):
        trainer = Trainer(_tiny(tmp_path / adapt, search_fraction=0.5, adapt_from=adapt.split("-")[0], kd=kd))
        trainer.setup()
        start = {k: v.clone() for k, v in trainer.vit.state_dict().items() if "hiap_gates" not in k}
        original = trainer._set_lr

        def at_search_end(trainer: Trainer = trainer, original=original, adapt: str = adapt, start=start) -> None:
            original()
            if trainer.step == trainer.pruner.search_steps:
                state = trainer.vit.state_dict()
                seen[adapt] = {
                    "rewound": all(torch.equal(state[k], v) for k, v in start.items()),
                    "adam_state": sum(p in trainer.optimizer.state for p in trainer.pruner.weight_parameters()),
                    "lr": trainer.optimizer.param_groups[0]["lr"],
                }

        trainer._set_lr = at_search_end  # type: ignore[method-assign]
        trainer.setup = lambda: None  # type: ignore[method-assign]  # already set up above
        trainer.run()
        assert trainer.step == 32
    assert seen["start"] == {"rewound": True, "adam_state": 0, "lr": pytest.approx(5e-4)}
    assert seen["start-no-teacher"] == seen["start"]  # from its own copy of the starting weights
    assert seen["gated"]["rewound"] is False and seen["gated"]["adam_state"] > 0  # type: ignore[index]
    assert seen["gated"]["lr"] < 4e-4  # type: ignore[index]  # the whole run's cosine goes on


def test_adapt_from_and_value_align_are_checked() -> None:
    with pytest.raises(HiapError, match="'adapt_from' must be 'gated' or 'start'"):
        TrainConfig(adapt_from="dense").validate()
    with pytest.raises(HiapError, match="'value_align' must be >= 0"):
        TrainConfig(value_align=-8).validate()


def test_qk_gates_prune_q_k_widths_fill_them_and_land_on_the_target(tmp_path: Path) -> None:
    """With qk_gates each kept head's q/k dims are gated too: a tight target removes some, the landing fills each
    block's kept heads to one exported q/k width (align 8 of 16), and that network lands on the target."""
    from hiap.cost import structure_macs
    from hiap.export.compact import padded_structure

    cfg = _tiny(tmp_path, target_macs="0.25", target_tolerance=0.01, qk_gates=True, search_fraction=0.5)
    trainer = Trainer(cfg)
    trainer.run()
    geom, structure = trainer.geometry, trainer.gated.hard_structure()
    assert trainer.gated.qk_gated
    pruned = [b for b in structure.blocks if b.qk_dims is not None]
    assert pruned, "a target of 0.25 left every q/k dim"
    for block in pruned:
        assert len({len(q) for q in block.qk_dims}) == 1  # one q/k width per block: no zero padding at export
    exported = structure_macs(geom, padded_structure(structure, geom.head_dim, 8))
    assert exported == structure_macs(geom, structure)
    assert abs(exported / trainer.pruner.target_macs - 1) < 0.01
    import json

    summary = json.loads((Path(cfg.out) / "summary.json").read_text())
    kept = [None if b.qk_dims is None else [len(q) for q in b.qk_dims] for b in structure.blocks]
    assert summary["kept_qk_dims"] == kept


def test_qk_gates_stay_open_under_qk_norm_and_a_state_keeps_its_setting() -> None:
    import copy

    from vit_zoo import make_vit

    from hiap.config import PruneOptions
    from hiap.pruner import Pruner

    pruner = Pruner(make_vit("qk_norm"), total_steps=1000, budget=0.5, options=PruneOptions(qk_gates=True))
    assert not pruner.gated.qk_gated and not pruner.gates.qk.requires_grad
    assert all(len(g["params"]) == 2 for g in pruner.param_groups())  # no q/k logits among the learned ones
    vit = make_vit("plain")
    plain = Pruner(copy.deepcopy(vit), total_steps=1000, budget=0.5, options=PruneOptions(qk_gates=True))
    assert plain.gated.qk_gated and any(p is plain.gates.qk for g in plain.param_groups() for p in g["params"])
    closed = Pruner(vit, total_steps=1000, budget=0.5, options=PruneOptions(qk_gates=False))
    with pytest.raises(HiapError, match="qk_gates True, this pruner's is False"):
        closed.load_state_dict(plain.state_dict())


def test_after_the_search_the_fixed_structure_is_costed_once() -> None:
    from vit_zoo import make_vit

    from hiap.pruner import Pruner

    pruner = Pruner(make_vit("plain"), total_steps=200, budget=0.5)
    calls = []
    expected = pruner.budget.expected
    pruner.budget.expected = lambda gated: calls.append(pruner.step_count) or expected(gated)  # type: ignore[method-assign]
    optimizer = torch.optim.AdamW([{"params": list(pruner.weight_parameters())}, *pruner.param_groups()])
    reports = [pruner.step(optimizer) for _ in range(200)]
    first_fixed = pruner.search_steps  # the first step that starts with the search over
    assert calls == list(range(first_fixed + 1))  # every search step, then once
    after = [(r.expected_fraction, r.hard_fraction) for r in reports[first_fixed:]]
    assert all(a == after[0] for a in after) and not reports[-1].searching
