import pytest
from vit_zoo import make_vit

from hiap.base.errors import HiapError
from hiap.budget import BudgetController, check_target, min_reachable_macs
from hiap.config import parse_target
from hiap.gated import Floors, describe_vit


@pytest.mark.parametrize(
    "text, fraction, macs",
    [
        ("0.5", 0.5, None),
        ("1", 1.0, None),
        (".3", 0.3, None),
        ("3.1G", None, 3_100_000_000),
        ("450M", None, 450_000_000),
        ("12k", None, 12_000),
        ("2e9", None, 2_000_000_000),
    ],
)
def test_parse_target(text: str, fraction: float | None, macs: int | None) -> None:
    t = parse_target(text)
    assert (t.fraction, t.macs) == (fraction, macs)


@pytest.mark.parametrize("text", ["", "half", "-0.5", "0", "1.5", "3.1T", "50%"])
def test_parse_target_rejects_bad_values(text: str) -> None:
    with pytest.raises(HiapError, match="target-macs"):
        parse_target(text)


def test_fraction_resolves_against_dense() -> None:
    assert parse_target("0.5").resolve(1000) == 500
    assert parse_target("3.1G").resolve(10) == 3_100_000_000


def test_min_reachable_is_k_min_heads_with_min_value_dims_and_no_ffn() -> None:
    geom = describe_vit(make_vit("plain"))  # 3 heads of 16, 2 blocks
    floors = Floors(k_min=1, min_value_frac=0.25)
    expected = geom.fixed_macs + geom.depth * (geom.head_unit_macs + 4 * geom.value_unit_macs)
    assert min_reachable_macs(geom, floors) == expected


def test_min_reachable_with_ffn_blocks_kept_counts_each_at_its_neuron_floor() -> None:
    geom = describe_vit(make_vit("plain"))
    floors = Floors(k_min=1, min_value_frac=0.25, min_neuron_frac=0.1)
    neurons = -(-geom.hidden // 10)  # ceil(0.1 * hidden)
    expected = min_reachable_macs(geom, floors) + geom.depth * neurons * geom.neuron_unit_macs
    assert min_reachable_macs(geom, floors, ffn_blocks_removable=False) == expected
    with pytest.raises(HiapError, match="ffn_block_gates: true"):
        check_target(geom, floors, expected - 1, ffn_blocks_removable=False)


def test_impossible_target_is_refused_with_the_smallest_reachable_value() -> None:
    geom = describe_vit(make_vit("plain"))
    floors = Floors()
    low = min_reachable_macs(geom, floors)
    check_target(geom, floors, low)  # exactly reachable: accepted
    with pytest.raises(HiapError) as err:
        check_target(geom, floors, low - 1)
    assert f"{low / geom.dense_macs:.3f}" in str(err.value)
    with pytest.raises(HiapError, match="exceeds the dense model"):
        check_target(geom, floors, geom.dense_macs + 1)


def test_reference_moves_from_the_start_to_the_target_along_a_cubic() -> None:
    c = BudgetController(target_fraction=0.5, ramp=0.4)
    c.update(0.9, 1.0, 0.0)  # the first measurement fixes the start
    assert c.reference(0.0) == pytest.approx(0.9)
    assert c.reference(0.2) == pytest.approx(0.9 - 0.4 * (1 - 0.5**3))
    assert c.reference(0.4) == pytest.approx(0.5)
    assert c.reference(1.0) == pytest.approx(0.5)


def test_controller_raises_strength_above_the_reference_and_turns_negative_below() -> None:
    c = BudgetController(target_fraction=0.5, gain=0.5, kp=0.0, ramp=0.0, start_fraction=1.0)
    for _ in range(10):
        c.update(0.8, 0.8, 0.0)
    assert c.scale == pytest.approx(10 * 0.5 * 0.3)
    for _ in range(40):
        c.update(0.3, 0.3, 0.0)
    assert c.scale < 0  # two-sided: below target it rewards MACs so gates reopen
    for _ in range(10_000):
        c.update(1.0, 1.0, 0.0)
    assert c.scale == c.max_scale  # anti-windup clamp


def test_measurement_moves_from_expected_to_hard_cost_after_the_macro_freeze() -> None:
    c = BudgetController(target_fraction=0.5, ramp=0.4, kp=0.0, start_fraction=0.5)
    freeze = c.macro_freeze_progress()
    assert freeze == pytest.approx(0.55)
    assert c.hard_weight(0.3) == 0.0 and c.hard_weight(freeze) == 0.0 and c.hard_weight(0.7) == pytest.approx(1.0)
    c.update(expected_fraction=0.5, hard_fraction=0.6, progress=0.2)
    assert c.last_error == pytest.approx(0.0)
    c.update(expected_fraction=0.5, hard_fraction=0.6, progress=0.9)
    assert c.last_error == pytest.approx(0.1)
    d = BudgetController(target_fraction=0.5)
    d.load_state(c.state())
    assert (d.integral, d.last_error, d.start_fraction) == (c.integral, c.last_error, c.start_fraction)


def test_macro_freeze_only_near_the_target_and_micro_lr_settles() -> None:
    c = BudgetController(target_fraction=0.5, ramp=0.4, settle=0.3)
    assert not c.macro_frozen(0.5, 0.5)  # before the freeze point
    assert c.macro_frozen(0.6, 0.52)  # within 10 % of the target
    assert not c.macro_frozen(0.6, 0.2)  # collapsed: macro gates keep learning to recover
    assert c.micro_lr_factor(0.5) == 1.0
    assert c.micro_lr_factor(0.85) == pytest.approx(0.5)
    assert c.micro_lr_factor(1.0) == pytest.approx(0.0)
