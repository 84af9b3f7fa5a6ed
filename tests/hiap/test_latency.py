"""The latency cost model: a table read with one-line errors, hard latency of structures and masks, the expected
latency of the gates (exact at 0/1, differentiable), interpolation, padding, the reachable minimum, and a run that
lands on a latency target."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hiap.base.errors import HiapError
from hiap.base.lut import parse_lut, read_lut
from hiap.config import TrainConfig
from hiap.cost import BlockStructure, Structure
from hiap.gated import Floors, GatedViT, masks_to_structure
from hiap.latency import LatencyCost
from hiap.models import create_model
from hiap.train import Trainer

OVERHEAD, CHAIN, FIXED = 0.01, 2, 0.05


def head_ms(h: float, w: float) -> float:
    return 0.004 * h + 0.0001 * h * w + 0.002


def ffn_ms(k: float) -> float:
    return 0.00005 * k + 0.001


def qk_ms(h: float, q: float) -> float:
    """What a table with a q/k axis adds to head_ms for h heads of q/k width q (0 at the full width, 16)."""
    return 0.0003 * h * (q - 16)


def synthetic_lut(geom, align: int = 8, ffn_step: int = 64, model: str = "hiap_vit_fmnist_tiny",
                  qk: bool = False) -> dict:  # fmt: skip
    """A lut.json body whose branches cost head_ms / ffn_ms exactly (each cell is a chain of CHAIN plus one call);
    with `qk`, a q/k axis on which h heads of q/k width q at full value width cost head_ms(h, 16) + qk_ms(h, q)."""
    heads = list(range(1, geom.num_heads + 1))
    widths = sorted({min(w, geom.head_dim) for w in range(align, geom.head_dim + align, align)})
    ffn = sorted(set(range(ffn_step, geom.hidden, ffn_step)) | {geom.hidden})

    def cell(ms: float) -> dict:
        return {"ms": ms, "p50": ms * 1.01, "p90": ms * 1.1}

    table = {
        "overhead": cell(OVERHEAD),
        "fixed": cell(FIXED),
        "attention": [[cell(OVERHEAD + CHAIN * head_ms(h, w)) for w in widths] for h in heads],
        "ffn": [cell(OVERHEAD + CHAIN * ffn_ms(k)) for k in ffn],
    }
    grid = {"heads": heads, "value_widths": widths, "ffn_widths": ffn}
    if qk:
        dh = geom.head_dim
        table["attention_qk"] = [
            [cell(OVERHEAD + CHAIN * (head_ms(h, dh) + qk_ms(h, q))) for q in widths] for h in heads
        ]
        grid["qk_widths"] = widths
    return {
        "schema": "hiap-lut", "schema_version": 1, "device": "x86-cpu", "runtime": "onnxruntime", "precision": "fp32",
        "threads": {"intra_op_threads": 2}, "model": model, "model_kwargs": {},
        "geometry": {k: getattr(geom, k) for k in ("num_tokens", "dim", "depth", "num_heads", "head_dim", "hidden")},
        "align": align, "chain": CHAIN, "grid": grid, "tables": {"1": table},
    }  # fmt: skip


@pytest.fixture(scope="module")
def tiny() -> GatedViT:
    return GatedViT(create_model("hiap_vit_fmnist_tiny", num_classes=10))


@pytest.fixture(scope="module")
def cost(tiny: GatedViT) -> LatencyCost:
    return LatencyCost(parse_lut(synthetic_lut(tiny.geometry), "synthetic"), tiny.geometry, "hiap_vit_fmnist_tiny")


def _block(h: int, widths: list[int], k: int) -> BlockStructure:
    return BlockStructure(tuple(range(h)), tuple(tuple(range(w)) for w in widths), k > 0, tuple(range(k)))


def test_hard_latency_is_the_table_on_its_grid_and_pads_to_align(cost: LatencyCost, tiny: GatedViT) -> None:
    g = tiny.geometry  # 4 heads of 16, FFN 256, 4 blocks
    dense = FIXED + g.depth * (head_ms(4, 16) + ffn_ms(256))
    assert cost.dense == pytest.approx(dense, rel=1e-12)
    # Widths 3 and 9 are emitted as 16 (the widest, rounded up to align 8); 5 as 8; no FFN costs nothing.
    structure = Structure((_block(2, [3, 9], 128), _block(1, [5], 0), _block(4, [8] * 4, 64), _block(3, [16] * 3, 256)))
    want = FIXED + head_ms(2, 16) + ffn_ms(128) + head_ms(1, 8) + head_ms(4, 8) + ffn_ms(64) + head_ms(3, 16)
    want += ffn_ms(256)
    assert cost.structure_ms(structure) == pytest.approx(want, rel=1e-12)


def test_ffn_width_between_grid_points_is_interpolated_and_held_beyond(cost: LatencyCost) -> None:
    base = [_block(1, [8], 0)] * 3
    # 96 lies between 64 and 128: linear in between (ffn_ms is linear, so exact); 10 is below the grid: held at 64.
    for k, want in ((96, ffn_ms(96)), (10, ffn_ms(64))):
        s = Structure((*base, _block(1, [8], k)))
        assert cost.structure_ms(s) - cost.structure_ms(Structure((*base, _block(1, [8], 0)))) == pytest.approx(want)


def test_masks_and_structures_agree_and_expected_is_exact_at_zero_one(cost: LatencyCost, tiny: GatedViT) -> None:
    gen = torch.Generator().manual_seed(3)
    for _ in range(5):
        with torch.no_grad():
            for logits in tiny.gates.as_dict().values():
                logits.copy_(torch.randn(logits.shape, generator=gen) * 2)
        masks = tiny.hard_masks()
        structure = masks_to_structure(masks)
        assert float(cost.masks_ms(masks)) == pytest.approx(cost.structure_ms(structure), rel=1e-9)
    # Expected latency with 0/1 probabilities, every kept head at one grid width: the hard latency exactly.
    head = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.float32)
    value = torch.zeros(4, 4, 16)
    value[:, :, :8] = 1
    value[3, :, :] = 1
    ffn = torch.tensor([1.0, 0.0, 1.0, 1.0])
    neuron = torch.zeros(4, 256)
    neuron[:, :128] = 1
    exp = cost.expected(head, ffn, value, neuron)
    want = FIXED + head_ms(2, 8) + ffn_ms(128) + head_ms(1, 8) + head_ms(4, 8) + ffn_ms(128) + head_ms(3, 16)
    want += ffn_ms(128)
    assert float(exp.total) == pytest.approx(want, rel=1e-6)
    assert float(exp.macro + exp.micro) == pytest.approx(want - FIXED, rel=1e-6)


@pytest.fixture(scope="module")
def qk_cost(tiny: GatedViT) -> LatencyCost:
    body = synthetic_lut(tiny.geometry, qk=True)
    return LatencyCost(parse_lut(body, "synthetic"), tiny.geometry, "hiap_vit_fmnist_tiny")


def _qk_block(h: int, widths: list[int], k: int, qk: list[int] | None) -> BlockStructure:
    qk_dims = None if qk is None else tuple(tuple(range(q)) for q in qk)
    return BlockStructure(tuple(range(h)), tuple(tuple(range(w)) for w in widths), k > 0, tuple(range(k)), qk_dims)


def test_a_table_with_a_q_k_axis_prices_narrowed_q_k_widths(qk_cost: LatencyCost, cost: LatencyCost,
                                                            tiny: GatedViT) -> None:  # fmt: skip
    """A(h, w) + Q(h, q) - Q(h, head_dim): padded to align like value widths; masks, structures and the expected
    latency at 0/1 agree; a table without the axis prices every q/k width as full."""
    assert qk_cost.prices_qk and not cost.prices_qk
    assert qk_cost.dense == pytest.approx(cost.dense, rel=1e-12)  # full q/k widths: the same network
    # q/k widths 3 and 5 are emitted as 8 (the widest, rounded up to align 8); None keeps the full 16.
    structure = Structure((_qk_block(2, [16, 16], 128, [3, 5]), _qk_block(1, [8], 0, [16]),
                           _qk_block(4, [8] * 4, 64, None), _qk_block(3, [16] * 3, 256, [8, 8, 8])))  # fmt: skip
    want = FIXED + head_ms(2, 16) + qk_ms(2, 8) + ffn_ms(128) + head_ms(1, 8) + head_ms(4, 8) + ffn_ms(64)
    want += head_ms(3, 16) + qk_ms(3, 8) + ffn_ms(256)
    assert qk_cost.structure_ms(structure) == pytest.approx(want, rel=1e-12)
    assert cost.structure_ms(structure) == pytest.approx(want - qk_ms(2, 8) - qk_ms(3, 8), rel=1e-12)
    gated = GatedViT(create_model("hiap_vit_fmnist_tiny", num_classes=10), qk_gates=True)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for logits in gated.gates.as_dict().values():
            logits.copy_(torch.randn(logits.shape, generator=gen) * 2)
    masks = gated.hard_masks()
    assert float(qk_cost.masks_ms(masks)) == pytest.approx(qk_cost.structure_ms(masks_to_structure(masks)), rel=1e-9)
    # Expected latency at 0/1, every kept head at one grid width: exact, the q/k term in the macro part.
    head = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.float32)
    value, qk = torch.ones(4, 4, 16), torch.ones(4, 4, 16)
    qk[0, :, 8:] = 0
    qk[3, :, 8:] = 0
    ffn, neuron = torch.ones(4), torch.ones(4, 256)
    exp = qk_cost.expected(head, ffn, value, neuron, qk)
    want = FIXED + head_ms(2, 16) + qk_ms(2, 8) + head_ms(1, 16) + head_ms(4, 16) + head_ms(3, 16) + qk_ms(3, 8)
    want += 4 * ffn_ms(256)
    assert float(exp.total) == pytest.approx(want, rel=1e-6)
    without = qk_cost.expected(head, ffn, value, neuron)
    assert float(exp.macro - without.macro) == pytest.approx(qk_ms(2, 8) + qk_ms(3, 8), rel=1e-5)
    with pytest.raises(ValueError, match="without a q/k axis"):
        cost.expected(head, ffn, value, neuron, qk)


def test_expected_latency_gives_every_gate_kind_a_gradient(qk_cost: LatencyCost, tiny: GatedViT) -> None:
    p = {k: torch.full_like(v, 0.7).requires_grad_(True) for k, v in tiny.gates.as_dict().items()}
    exp = qk_cost.expected(p["head"], p["ffn"], p["value"], p["neuron"], p["qk"])
    exp.total.backward()
    for kind, t in p.items():
        assert t.grad is not None and float(t.grad.abs().min()) > 0, kind
    # The macro part moves only with heads, FFN gates (kept at all) and q/k widths (as in the MAC cost); value
    # widths only move the micro part.
    q = {k: torch.full_like(v, 0.7).requires_grad_(True) for k, v in tiny.gates.as_dict().items()}
    qk_cost.expected(q["head"], q["ffn"], q["value"], q["neuron"], q["qk"]).macro.backward()
    assert q["value"].grad is None or float(q["value"].grad.abs().max()) == 0
    assert float(q["head"].grad.abs().min()) > 0 and float(q["qk"].grad.abs().min()) > 0


def test_min_reachable_latency_is_the_floors_network(cost: LatencyCost) -> None:
    floors = Floors(k_min=1, min_value_frac=0.25, min_neuron_frac=0.1)  # 1 head of 4 dims (emitted 8), no FFN
    assert cost.min_reachable_ms(floors) == pytest.approx(FIXED + 4 * head_ms(1, 8))
    narrowed = FIXED + 4 * (head_ms(1, 8) + ffn_ms(64))  # 26 neurons: below the grid, held at 64
    assert cost.min_reachable_ms(floors, ffn_blocks_removable=False) == pytest.approx(narrowed)


def _broken(body: dict, path: list, value: object) -> dict:
    body = json.loads(json.dumps(body))
    node = body
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return body


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (["schema"], "other", "not a hiap latency table"),
        (["chain"], KeyError, "missing field 'chain'"),
        (["grid", "ffn_widths"], [64, 128], "must reach the dense widths"),
        (["grid", "heads"], [2, 1, 3, 4], "ascending"),
        (["tables", "1", "ffn", 0, "ms"], -1.0, "positive finite"),
        (["tables", "1", "attention", 1], [], "one cell per value width"),
        (["tables", "x"], {}, "batch sizes"),
        (["geometry", "dim"], "64", "positive integers"),
    ],
)
def test_malformed_tables_are_one_line_errors(tiny: GatedViT, path: list, value: object, message: str) -> None:
    with pytest.raises(HiapError, match=message) as exc:
        parse_lut(_broken(synthetic_lut(tiny.geometry), path, value), "t.json")
    assert "\n" not in str(exc.value)


def test_tables_of_another_geometry_device_precision_or_align_are_refused(tmp_path: Path, tiny: GatedViT) -> None:
    other = GatedViT(create_model("hiap_vit_fmnist", num_classes=10)).geometry
    table = parse_lut(synthetic_lut(other, model="hiap_vit_fmnist"), "big.json")
    with pytest.raises(HiapError, match=r"measured for hiap_vit_fmnist with dim=128, but the model .* has dim=64"):
        LatencyCost(table, tiny.geometry, "hiap_vit_fmnist_tiny")
    small = parse_lut(synthetic_lut(tiny.geometry), "t.json")
    with pytest.raises(HiapError, match="measured on device 'x86-cpu', not 'rpi5'"):
        small.check_use(device="rpi5")
    with pytest.raises(HiapError, match="holds fp32 latencies, but the model is int8"):
        small.check_use(precision="int8")
    with pytest.raises(HiapError, match="--align 8, not 4"):
        small.check_use(align=4)
    with pytest.raises(HiapError, match="no cells at batch 8"):
        LatencyCost(small, tiny.geometry, "hiap_vit_fmnist_tiny", batch=8)
    with pytest.raises(HiapError, match="does not exist"):
        read_lut(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(HiapError, match="not valid JSON"):
        read_lut(tmp_path / "bad.json")


def _latency_run(tmp_path: Path, target_ms: float, **extra: object) -> TrainConfig:
    geom = GatedViT(create_model("hiap_vit_fmnist_tiny", num_classes=10)).geometry
    lut = tmp_path / "lut.json"
    lut.write_text(json.dumps(synthetic_lut(geom)))
    values = dict(model="hiap_vit_fmnist_tiny", pretrained="none", epochs=6, batch_size=64, train_images=3200,
                  target_latency_ms=target_ms, lut=str(lut), kd=False, out=str(tmp_path / "r"))  # fmt: skip
    return TrainConfig(**(values | extra))


def test_a_latency_target_is_landed_and_reported(tmp_path: Path) -> None:
    """The controller of a whole-run search lands the table's latency of the exported network within 1 % of the
    target (this model's value widths are 8 or 16 at align 8: too coarse for a short search's landing shift)."""
    cfg = _latency_run(tmp_path, 0.12, search_fraction=1.0, adapt_from="gated")
    summary = Trainer(cfg).run()
    assert summary["budget"] == "latency"
    assert summary["target_latency_ms"] == 0.12
    assert abs(summary["predicted_latency_ms"] / 0.12 - 1) <= 0.01, summary["predicted_latency_ms"]
    assert summary["target_met"] and abs(summary["target_error"]) <= 0.01
    assert summary["latency_table"]["device"] == "x86-cpu"
    assert (tmp_path / "r" / "lut.json").read_text() == (tmp_path / "lut.json").read_text()  # the run carries it


def test_a_table_measured_elsewhere_is_named_before_training(tmp_path: Path) -> None:
    """A table timed under an emulator or for another device's profile (--allow-mismatch) trains, with a note."""
    cfg = _latency_run(tmp_path, 0.12)
    body = json.loads(Path(cfg.lut).read_text())
    trainer = Trainer(cfg)
    trainer.setup()
    assert not any("not measured on" in n for n in trainer.notes)
    Path(cfg.lut).write_text(json.dumps(body | {"measured_elsewhere": "this aarch64 host is emulated (qemu-user)"}))
    trainer = Trainer(cfg)
    trainer.setup()
    assert any("was not measured on x86-cpu (this aarch64 host is emulated (qemu-user))" in n for n in trainer.notes)


def test_latency_targets_out_of_reach_are_refused_up_front(tmp_path: Path) -> None:
    dense = FIXED + 4 * (head_ms(4, 16) + ffn_ms(256))
    low = FIXED + 4 * head_ms(1, 8)
    with pytest.raises(HiapError, match=f"below the fastest network the floors allow on x86-cpu: {low:.3f} ms"):
        Trainer(_latency_run(tmp_path, 0.05)).setup()
    with pytest.raises(HiapError, match=f"not below the dense model's predicted {dense:.3f} ms"):
        Trainer(_latency_run(tmp_path, 1.0)).setup()
    with pytest.raises(HiapError, match="needs the device's latency table"):
        TrainConfig(target_latency_ms=0.1).validate()


def test_q_k_widths_are_gated_under_a_latency_target_only_where_the_table_prices_them(
    cost: LatencyCost, qk_cost: LatencyCost
) -> None:
    """A table without a q/k axis prices attention at full q/k width, so a latency target on it keeps every q/k dim
    (qk_gates or not); on a table with the axis they are gated as for a MAC budget, and the floors' fastest network
    narrows them."""
    from hiap.config import PruneOptions
    from hiap.pruner import Latency, Pruner

    def pruner(table: LatencyCost, qk_gates: bool = True) -> Pruner:
        vit = create_model("hiap_vit_fmnist_tiny", num_classes=10)
        return Pruner(vit, 1000, Latency(0.6 * table.dense, table.table),
                      model_name="hiap_vit_fmnist_tiny", options=PruneOptions(qk_gates=qk_gates))  # fmt: skip

    old = pruner(cost)
    assert not old.gated.qk_gated and not old.gates.qk.requires_grad
    assert all(b.qk_dims is None for b in old.structure().blocks)
    new = pruner(qk_cost)
    assert new.gated.qk_gated and new.gates.qk.requires_grad
    assert not pruner(qk_cost, qk_gates=False).gated.qk_gated
    floors = Floors(k_min=1, min_value_frac=0.25, min_neuron_frac=0.1, min_qk_frac=0.25)
    assert qk_cost.min_reachable_ms(floors, qk_removable=True) == pytest.approx(
        qk_cost.min_reachable_ms(floors) + 4 * qk_ms(1, 8)
    )


def test_a_latency_target_with_q_k_gates_lands_and_narrows_q_k(tmp_path: Path) -> None:
    """On a table with a q/k axis a latency target is met partly by narrower q/k widths, within 1 % (the
    default short search: its landing closes what this model's half-head q/k steps leave with neurons)."""
    geom = GatedViT(create_model("hiap_vit_fmnist_tiny", num_classes=10)).geometry
    cfg = _latency_run(tmp_path, 0.12)
    Path(cfg.lut).write_text(json.dumps(synthetic_lut(geom, qk=True)))
    summary = Trainer(cfg).run()
    assert abs(summary["predicted_latency_ms"] / 0.12 - 1) <= 0.01, summary["predicted_latency_ms"]
    assert summary["target_met"]
    narrowed = [q for block in summary["kept_qk_dims"] if block is not None for q in block if q < geom.head_dim]
    assert narrowed, summary["kept_qk_dims"]
