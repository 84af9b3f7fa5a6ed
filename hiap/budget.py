"""Compute budget: the floor-implied minimum, the schedule check, and the controller that steers to the target
(the target itself is parsed with the rest of the config, hiap.config.parse_target)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from hiap.base.errors import HiapError
from hiap.cost import Geometry
from hiap.gated import Floors


def min_reachable_macs(geom: Geometry, floors: Floors, ffn_blocks_removable: bool = True,
                       qk_removable: bool = False) -> int:  # fmt: skip
    """The cheapest network the floors allow: k_min heads with their minimum value (and, where gated, q/k) dims,
    and every FFN removed (or, when FFN blocks cannot be removed, each at its minimum neurons)."""
    heads = floors.heads(geom.num_heads)
    qk = floors.qk_dims(geom.head_dim) if qk_removable else geom.head_dim
    per_block = heads * qk * geom.qk_unit_macs + heads * floors.value_dims(geom.head_dim) * geom.value_unit_macs
    if not ffn_blocks_removable:
        per_block += floors.neurons(geom.hidden) * geom.neuron_unit_macs
    return geom.fixed_macs + geom.depth * per_block


def format_macs(macs: float) -> str:
    """'4.599 GMACs' or '10.30 MMACs': enough digits for ViTs of any size."""
    return f"{macs / 1e9:.3f} GMACs" if macs >= 1e8 else f"{macs / 1e6:.2f} MMACs"


def check_target(geom: Geometry, floors: Floors, target_macs: int, ffn_blocks_removable: bool = True,
                 qk_removable: bool = False) -> None:  # fmt: skip
    dense, low = geom.dense_macs, min_reachable_macs(geom, floors, ffn_blocks_removable, qk_removable)
    if target_macs > dense:
        raise HiapError(
            f"Target {format_macs(target_macs)} exceeds the dense model ({format_macs(dense)}): "
            "give a fraction below 1 or a smaller count."
        )
    if target_macs == dense:  # a search that removes nothing would still rewind the weights at its end
        raise HiapError(
            f"Target {format_macs(target_macs)} is the whole dense model: nothing to prune. Give a fraction below 1, "
            "or train without a pruner."
        )
    if target_macs < low:
        raise HiapError(
            f"Target {format_macs(target_macs)} ({target_macs / dense:.1%} of dense) is below the smallest "
            f"network the floors allow: {format_macs(low)} ({low / dense:.1%}). Raise --target-macs to at least "
            f"{low / dense:.3f} or lower k_min / min_value_frac / min_neuron_frac"
            + ("." if ffn_blocks_removable else " (or let FFN blocks be removed: ffn_block_gates: true).")
        )


def min_search_steps(gate_init: float, gate_lr: float, ramp: float) -> int:
    """Fewest steps in which the budget ramp can reach any target: under Adam a gate logit moves about gate_lr per
    step whatever its gradient, so closing a gate (logit from gate_init to below 0, the export rule) takes
    gate_init / gate_lr steps, and the controller asks for the target by the end of the ramp."""
    return math.ceil(max(gate_init, 0.0) / gate_lr / ramp)


def check_schedule(total_steps: int, steps_per_epoch: int | None, gate_init: float, gate_lr: float,
                   ramp: float) -> None:  # fmt: skip
    """Refuse a run too short to reach its target before it starts (it would end with the structure unchanged);
    with `steps_per_epoch` the message speaks of epochs, as the CLI's user sets them."""
    need = min_search_steps(gate_init, gate_lr, ramp)
    if total_steps >= need:
        return
    if not steps_per_epoch:
        raise HiapError(
            f"total_steps={total_steps} is too few to reach the target: gate logits start at {gate_init:g} and move "
            f"about gate_lr={gate_lr:g} per step, so closing a gate within the budget ramp (the first {ramp:.0%} of "
            f"the run) needs at least {need} steps. Give total_steps >= {need} (or a higher gate_lr)."
        )
    epochs = math.ceil(need / steps_per_epoch)
    raise HiapError(
        f"The schedule has {total_steps} steps ({total_steps // steps_per_epoch} epochs x {steps_per_epoch}), too few "
        f"to reach the target: gate logits start at {gate_init:g} and move about gate_lr={gate_lr:g} per step, so "
        f"closing a gate takes {math.ceil(gate_init / gate_lr)} steps within the budget ramp (the first {ramp:.0%} "
        f"of the run), at least {need} steps in all. Raise --epochs to {epochs} or more (or --batch-size lower, "
        "--gate-lr higher)."
    )


@dataclass
class BudgetController:
    """Steers the common penalty strength so that the exported (hard) network lands on the target.

    Three parts, each for a measured reason (see docs/budget.md):
    - a reference that moves from the starting cost to the target along a cubic over the first `ramp` of the
      run (gradual pruning). Gate logits under Adam move at about gate_lr per step whatever the penalty
      strength, so a controller asked to jump straight to the target winds up and collapses the network;
    - a PI law on the error e = measured - reference (fractions of dense MACs): scale = integral + kp * e,
      integral += gain * e, both clamped to +-max_scale (anti-windup). The scale is signed: below the
      reference the penalty becomes a reward for MACs and gates reopen;
    - the measurement blends the expected cost (smooth, what the penalty differentiates) into the hard cost of
      the export rule after the ramp, so that at the end the controller regulates exactly the number the user
      is promised.
    It multiplies lambda_macro and lambda_micro alike, keeping their ratio.
    """

    target_fraction: float
    gain: float = 0.5
    kp: float = 30.0
    ramp: float = 0.4
    settle: float = 0.3
    max_scale: float = 200.0
    integral: float = 0.0
    last_error: float = 0.0
    start_fraction: float | None = None

    def reference(self, progress: float) -> float:
        start = 1.0 if self.start_fraction is None else self.start_fraction
        r = min(max(progress, 0.0) / self.ramp, 1.0) if self.ramp > 0 else 1.0
        return start + (self.target_fraction - start) * (1.0 - (1.0 - r) ** 3)

    def macro_freeze_progress(self) -> float:
        """Macro gates (heads, FFN blocks) stop learning a quarter into the hold phase after the ramp."""
        return self.ramp + 0.25 * (1.0 - self.ramp)

    def macro_frozen(self, progress: float, hard_fraction: float) -> bool:
        """Frozen after the freeze point while the hard cost is within 10 % of the target; a network that has
        collapsed below (or stayed far above) the target keeps its macro gates learning so it can recover."""
        near = abs(hard_fraction - self.target_fraction) <= 0.10 * self.target_fraction
        return progress >= self.macro_freeze_progress() and near

    def micro_lr_factor(self, progress: float) -> float:
        """Micro gates learn at full rate until the last `settle` of the run, then their lr decays (cosine) to 0,
        so the exported structure settles instead of ending on a random step of gate jitter."""
        start = 1.0 - self.settle
        if progress <= start:
            return 1.0
        frac = min((progress - start) / max(self.settle, 1e-9), 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * frac))

    def hard_weight(self, progress: float) -> float:
        """0 until the macro gates freeze, then rising linearly to 1 over the next quarter of the hold phase."""
        start = self.macro_freeze_progress()
        return min(max((progress - start) / (0.25 * (1.0 - self.ramp) + 1e-9), 0.0), 1.0)

    def update(self, expected_fraction: float, hard_fraction: float, progress: float) -> float:
        if self.start_fraction is None:
            self.start_fraction = expected_fraction
        w = self.hard_weight(progress)
        measured = (1.0 - w) * expected_fraction + w * hard_fraction
        self.last_error = measured - self.reference(progress)
        self.integral = _clamp(self.integral + self.gain * self.last_error, self.max_scale)
        return self.scale

    @property
    def scale(self) -> float:
        return _clamp(self.integral + self.kp * self.last_error, self.max_scale)

    def state(self) -> dict[str, float | None]:
        return {"integral": self.integral, "last_error": self.last_error, "start_fraction": self.start_fraction}

    def load_state(self, state: dict[str, float | None]) -> None:
        self.integral = float(state["integral"] or 0.0)
        self.last_error = float(state["last_error"] or 0.0)
        self.start_fraction = state.get("start_fraction")


def _clamp(value: float, bound: float) -> float:
    return min(max(value, -bound), bound)
