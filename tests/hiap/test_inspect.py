"""`hiap inspect`: the report's structure and counts are those of the cost model and of the checkpoint's gates."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hiap.base.errors import HiapError
from hiap.checkpoint import CHECKPOINT_NAME, Checkpoint, save_checkpoint
from hiap.cost import BlockStructure, Structure, block_macs, structure_macs, structure_params
from hiap.gated import Floors, GatedViT, describe_vit
from hiap.inspect import inspect_target, structure_report
from hiap.models import create_model

TINY = "hiap_vit_fmnist_tiny"  # 28x28, patch 7: 16 patches + class token; 4 blocks of 4 heads x 16; FFN 256
N, D, L, H, DH, K = 17, 64, 4, 4, 16, 256


def _block_macs(heads: int, values: int, neurons: int) -> int:
    """The cost model written out (hiap/cost.py docstring): q/k columns and Q K^T per head, V column + proj row
    and attn @ V per value dim, fc1 row + fc2 column per neuron."""
    return heads * (2 * N * D * DH + N * N * DH) + values * (2 * N * D + N * N) + neurons * 2 * N * D


FIXED = 16 * D * 49 + D * 10  # patch embedding (16 patches, 7x7x1 kernels) and the classifier


def test_dense_report_of_a_model_name() -> None:
    report = inspect_target(TINY)
    real = create_model(TINY)
    assert report["target"] == report["model"] == TINY
    assert report["input_size"] == [1, 28, 28]
    assert (report["num_tokens"], report["num_heads"], report["head_dim"], report["hidden"]) == (N, H, DH, K)
    assert report["dense_params"] == report["params"] == sum(p.numel() for p in real.parameters())
    dense = FIXED + L * _block_macs(H, H * DH, K)
    assert report["gmacs"] == report["dense_gmacs"] == pytest.approx(dense / 1e9, rel=1e-12)
    assert report["blocks"][0] == {"block": 0, "heads": [0, 1, 2, 3], "qk_widths": [16] * 4, "value_widths": [16] * 4,
                                   "ffn": True, "neurons": K, "gmacs": _block_macs(H, H * DH, K) / 1e9}  # fmt: skip


def test_pruned_report_counts_equal_the_cost_model() -> None:
    vit = create_model(TINY, meta=True)
    geom = describe_vit(vit)
    structure = Structure(blocks=(
        BlockStructure(heads=(0, 2), value_dims=((0, 1, 2), tuple(range(16))), ffn=True, neurons=tuple(range(0, K, 4))),
        BlockStructure(heads=(), value_dims=(), ffn=True, neurons=(5,)),
        BlockStructure(heads=(3,), value_dims=((7,),), ffn=False, neurons=()),
        BlockStructure(heads=(1,), value_dims=((4, 5),), ffn=True, neurons=tuple(range(256))),
    ))  # fmt: skip
    report = structure_report(TINY, "plan", vit, structure)
    assert [b["heads"] for b in report["blocks"]] == [[0, 2], [], [3], [1]]
    assert [b["value_widths"] for b in report["blocks"]] == [[3, 16], [], [1], [2]]
    assert [b["ffn"] for b in report["blocks"]] == [True, True, False, True]
    assert [b["neurons"] for b in report["blocks"]] == [64, 1, 0, 256]
    expected = [_block_macs(2, 19, 64), _block_macs(0, 0, 1), _block_macs(1, 1, 0), _block_macs(1, 2, 256)]
    assert [b["gmacs"] * 1e9 for b in report["blocks"]] == pytest.approx(expected, rel=1e-12)
    assert [b["gmacs"] for b in report["blocks"]] == [block_macs(geom, b) / 1e9 for b in structure.blocks]
    assert report["gmacs"] == structure_macs(geom, structure) / 1e9 == pytest.approx((FIXED + sum(expected)) / 1e9)
    assert report["params"] == structure_params(geom, structure) < report["dense_params"]
    assert report["target"] == "plan"


def _run_with_gates(folder: Path, gated: GatedViT | None, floors: dict | None) -> Path:
    vit = create_model(TINY, num_classes=10)
    state = {"model": TINY, "num_classes": 10, "model_kwargs": {}, "floors": floors}
    gates = {k: v.detach() for k, v in gated.gates.as_dict().items()} if gated is not None else {}
    path = folder / CHECKPOINT_NAME
    ckpt = Checkpoint(model=vit.state_dict(), gates=gates, optimizer=None, rng={}, config={}, state=state)
    save_checkpoint(path, ckpt)
    return path


def test_checkpoint_report_is_the_hard_structure_of_its_gates_with_its_floors(tmp_path: Path) -> None:
    gated = GatedViT(create_model(TINY, meta=True), floors=Floors(k_min=2, min_value_frac=0.25, min_neuron_frac=0.1))
    with torch.no_grad():
        g = gated.gates
        g.head[0] = torch.tensor([-1.0, -0.5, -2.0, -3.0])  # all closed: the floor of 2 keeps the highest, 1 and 0
        g.head[1] = torch.tensor([-1.0, -1.0, 2.0, 2.0])
        g.value[1, 2, :12] = -1.0  # 4 of 16 left: exactly the 25 % floor
        g.value[1, 3, :] = -1.0  # nothing left: the floor keeps 4 (topk of equal logits)
        g.ffn[2] = -1.0  # FFN of block 2 removed, whatever its neurons say
        g.neuron[3, :200] = -1.0  # 56 neurons left
    path = _run_with_gates(tmp_path, gated, {"k_min": 2, "min_value_frac": 0.25, "min_neuron_frac": 0.1})
    report = inspect_target(str(tmp_path))  # a run directory
    assert report["target"] == str(tmp_path) and report == inspect_target(str(path)) | {"target": str(tmp_path)}
    assert [b["heads"] for b in report["blocks"]] == [[0, 1], [2, 3], [0, 1, 2, 3], [0, 1, 2, 3]]
    assert [b["value_widths"] for b in report["blocks"]] == [[16, 16], [4, 4], [16] * 4, [16] * 4]
    assert [b["ffn"] for b in report["blocks"]] == [True, True, False, True]
    assert [b["neurons"] for b in report["blocks"]] == [256, 256, 0, 56]
    geom, structure = gated.geometry, gated.hard_structure()
    assert report["gmacs"] == structure_macs(geom, structure) / 1e9 and report["params"] == structure_params(
        geom, structure)  # fmt: skip
    assert report["gmacs"] * 1e9 == pytest.approx(gated.hard_macs(), abs=0.5)


def test_checkpoint_without_gates_is_reported_dense(tmp_path: Path) -> None:
    _run_with_gates(tmp_path, None, None)
    report = inspect_target(str(tmp_path / CHECKPOINT_NAME))
    assert report["gmacs"] == report["dense_gmacs"] and report["params"] == report["dense_params"]


def test_gates_of_another_geometry_and_bad_targets_are_one_line_errors(tmp_path: Path) -> None:
    other = GatedViT(create_model(TINY, meta=True, model_kwargs={"depth": 2}))
    path = _run_with_gates(tmp_path, other, None)
    with pytest.raises(HiapError) as err:
        inspect_target(str(path))
    assert str(err.value).startswith(f"Checkpoint '{path}' gates do not fit model '{TINY}' (")
    assert "\n" not in str(err.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(
        HiapError, match=f"'{empty}' is a folder without {CHECKPOINT_NAME} or plan.json: pass a run directory"
    ):
        inspect_target(str(empty))
