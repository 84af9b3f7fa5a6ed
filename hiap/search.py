"""What a run prunes: the gate search of a budgeted run (gates, budget controller, temperature, penalty, trace) and
the plain run's stand-in with the same interface, so the trainer's loop has one path for both."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hiap.budget import BudgetController, check_schedule, check_target
from hiap.config import Target, TrainConfig
from hiap.cost import ExpectedCost, Geometry, Structure, structure_macs
from hiap.errors import HiapError
from hiap.gated import Floors, GatedViT
from hiap.latency import LatencyCost, format_ms
from hiap.loss import allocation_loss, feasibility_loss, mac_penalty, polarization_loss

if TYPE_CHECKING:
    from hiap.train import Schedule

# The checkpoint keeps a controller state for every run; a plain run's is that of a controller never updated.
IDLE_CONTROLLER = {"integral": 0.0, "last_error": 0.0, "start_fraction": None}


def gate_histogram(gates: nn.Module, bins: int = 10) -> dict[str, list[int]]:
    """Counts of keep probabilities sigmoid(logit) in `bins` equal bins of [0, 1], per gate kind (for hiap report:
    how the gates polarise towards 0 and 1 as the temperature falls)."""
    out = {}
    with torch.no_grad():
        for kind, logits in gates.as_dict().items():
            p = torch.sigmoid(logits.detach().float().flatten().cpu())
            out[kind] = torch.histc(p, bins=bins, min=0.0, max=1.0).long().tolist()
    return out


@dataclass
class Budget:
    """What a budgeted run's penalty and controller count: analytical MACs, or the latency a device's measured
    table predicts (ms). `dense` and `target` are in that unit; the controller works in fractions of dense."""

    dense: float
    target: float
    latency: LatencyCost | None = None

    @property
    def kind(self) -> str:
        return "macs" if self.latency is None else "latency"

    def expected(self, gated: GatedViT) -> ExpectedCost:
        if self.latency is None:
            return gated.expected_cost()
        p = gated.keep_probabilities()
        return self.latency.expected(p["head"], p["ffn"], p["value"], p["neuron"])

    def hard(self, gated: GatedViT) -> torch.Tensor:
        """The exported network's cost as a tensor on the gates' device (no host read-back)."""
        return gated.hard_cost() if self.latency is None else self.latency.masks_ms(gated.hard_masks())

    def of(self, geometry: Geometry, structure: Structure) -> float:
        if self.latency is None:
            return float(structure_macs(geometry, structure))
        return self.latency.structure_ms(structure)

    def record(self) -> dict[str, Any]:
        """What a run's checkpoint and summary say of its budget."""
        if self.latency is None:
            return {"kind": "macs", "dense_macs": self.dense, "target_macs": self.target}
        table = self.latency.table
        return {"kind": "latency", "dense_ms": self.dense, "target_ms": self.target, "batch": self.latency.batch,
                "table": {"path": table.path, "digest": table.digest, "device": table.device,
                          "runtime": table.runtime, "precision": table.precision, "align": table.align}}  # fmt: skip


def make_budget(cfg: TrainConfig, target: Target, geometry: Geometry, floors: Floors, lut: Path | None) -> Budget:
    """The run's budget, checked against what the floors can reach before anything trains; a latency target is
    priced by the table at `lut`."""
    if not cfg.target_latency_ms:
        macs = target.resolve(geometry.dense_macs)
        check_target(geometry, floors, macs, ffn_blocks_removable=cfg.ffn_block_gates)
        return Budget(float(geometry.dense_macs), float(macs))
    from hiap.lut import read_lut

    cost = LatencyCost(read_lut(lut or Path(cfg.lut)), geometry, cfg.model, cfg.latency_batch)
    want, dense = cfg.target_latency_ms, cost.dense
    if want >= dense:
        raise HiapError(f"Target {format_ms(want)} is not below the dense model's predicted {format_ms(dense)} on "
                        f"{cost.table.device}: give a smaller --target-latency-ms.")  # fmt: skip
    low = cost.min_reachable_ms(floors, cfg.ffn_block_gates)
    if want < low:
        raise HiapError(
            f"Target {format_ms(want)} is below the fastest network the floors allow on {cost.table.device}: "
            f"{format_ms(low)} ({low / dense:.1%} of dense). Raise --target-latency-ms to at least {low:.4g} or "
            "lower k_min / min_value_frac / min_neuron_frac"
            + ("." if cfg.ffn_block_gates else " (or let FFN blocks be removed: ffn_block_gates: true).")
        )
    return Budget(dense, want, cost)


class PlainRun:
    """A dense run: no gates, nothing searched, the model's own forward; every figure is the dense one."""

    gated: GatedViT | None = None
    landing_shift = 0.0

    def __init__(self, vit: nn.Module, geometry: Geometry) -> None:
        self.vit, self.geometry = vit, geometry
        self.target_macs = geometry.dense_macs
        self.budget = Budget(float(geometry.dense_macs), float(geometry.dense_macs))

    @property
    def core(self) -> nn.Module:
        return self.vit

    def searching(self, step: int) -> bool:
        return False

    def gate_groups(self, gate_lr: float) -> list[dict[str, Any]]:
        return []

    def set_gate_lr(self, groups: list[dict[str, Any]], step: int) -> None:
        pass

    def train_masks(self, step: int, tau: float) -> tuple[Any, ...]:
        return ()

    def eval_masks(self, open_gates: bool) -> tuple[Any, ...]:
        return ()

    def penalty(self, step: int) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        return [], {}

    def measured(self) -> dict[str, torch.Tensor]:
        return {}

    def observe(self, parts: dict[str, float], step: int, tau: float) -> None:
        pass

    def structure(self) -> Structure:
        return self.geometry.dense_structure()

    def hard_macs(self) -> int:
        return self.geometry.dense_macs

    def expected_macs(self) -> float:
        return float(self.geometry.dense_macs)

    def penalty_scale(self) -> float | None:
        return None

    def gate_parameters(self) -> list[torch.Tensor]:
        return []

    def gate_tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def epoch_fields(self) -> dict[str, Any]:
        return {}

    def floors_state(self) -> dict[str, Any] | None:
        return None

    def state(self) -> dict[str, Any]:
        return dict(IDLE_CONTROLLER)

    def load_state(self, controller: dict[str, Any], gates: dict[str, torch.Tensor]) -> None:
        pass


class GateSearch:
    """A budgeted run: the gated model, the controller that steers the MAC penalty to the target, the temperature
    schedule, and the trace of expected/hard cost that hiap report draws. Built after the model is on its device."""

    def __init__(self, vit: nn.Module, geometry: Geometry, cfg: TrainConfig, target: Target,
                 schedule: Schedule, device: torch.device, lut: Path | None = None) -> None:  # fmt: skip
        self.cfg, self.geometry, self.schedule = cfg, geometry, schedule
        floors = Floors(cfg.k_min, cfg.min_value_frac, cfg.min_neuron_frac)
        self.budget = make_budget(cfg, target, geometry, floors, lut)
        self.gated = GatedViT(vit, floors=floors, gate_init=cfg.gate_init).to(device)
        if not cfg.ffn_block_gates:
            # Fixed open: keep probability 1 - 5e-5, so a sample drops a block about once in 20,000 steps and the
            # expected cost counts every FFN as kept; no gradient, so the optimizer never moves them and the export
            # rule always keeps them.
            with torch.no_grad():
                self.gated.gates.ffn.fill_(10.0)
            self.gated.gates.ffn.requires_grad_(False)
        if cfg.gate_init_importance:  # a resumed run then loads its own logits over these
            self.gated.init_from_importance(cfg.gate_init_importance)
        # The budget ramp and the freezes run over the first search_steps, as the temperature does.
        gain = cfg.controller_gain or (2.0 if self.budget.kind == "latency" else 0.5)
        self.controller = BudgetController(self.budget.target / self.budget.dense, gain=gain)
        # A search over a share of the run moves its gates proportionally faster (see TrainConfig.search_fraction),
        # so what the schedule check asks of the run does not depend on that share.
        self.gate_lr = cfg.gate_lr * schedule.total_steps / schedule.search_steps
        check_schedule(schedule.total_steps, schedule.steps_per_epoch, cfg.gate_init, cfg.gate_lr, self.controller.ramp)
        self.final_masks: Any = None  # the exported structure's masks once the search has ended
        self.landing_shift = 0.0  # what land() added to the micro logits when the search ended
        self.landed = False
        self.trace: list[list[float]] = []  # [step, tau, expected, hard, reference] (fractions of dense)
        # Hard cost of the current gates (fraction of dense), refreshed after every optimizer step.
        self.hard_fraction = self._fraction(float(self.budget.hard(self.gated)))

    @property
    def target_macs(self) -> int | None:
        """The MAC target of a MAC budget; a latency budget has none (its figures are the pruned MACs)."""
        return round(self.budget.target) if self.budget.kind == "macs" else None

    @property
    def core(self) -> nn.Module:
        return self.gated

    def progress(self, step: int) -> float:
        """How far the structure search is at `step` (0..1): the clock of the controller's phases."""
        return min(step / self.schedule.search_steps, 1.0)

    def searching(self, step: int) -> bool:
        return step < self.schedule.search_steps

    def gate_groups(self, gate_lr: float) -> list[dict[str, Any]]:
        """AdamW groups of the gate logits: own lr, no decay; macro gates (heads, FFN blocks) apart from micro
        gates, because they freeze once the budget ramp is over (see BudgetController)."""
        gates = self.gated.gates
        return [
            {"params": [gates.head, gates.ffn], "lr": gate_lr, "weight_decay": 0.0, "base_lr": None, "gates": "macro"},
            {"params": [gates.value, gates.neuron], "lr": gate_lr, "weight_decay": 0.0, "base_lr": None,
             "gates": "micro"},
        ]  # fmt: skip

    def set_gate_lr(self, groups: list[dict[str, Any]], step: int) -> None:
        """Gate logits keep a constant lr (the controller must still move them at the end) until the macro freeze
        and the micro settle; after the search both stand still."""
        searching, progress = self.searching(step), self.progress(step)
        macro_frozen = not searching or self.controller.macro_frozen(progress, self.hard_fraction)
        micro = self.controller.micro_lr_factor(progress) if searching else 0.0
        for g in groups:
            if g.get("gates") == "macro":
                g["lr"] = 0.0 if macro_frozen else self.gate_lr
            elif g.get("gates") == "micro":
                g["lr"] = self.gate_lr * micro

    def train_masks(self, step: int, tau: float) -> tuple[Any, ...]:
        """Sampled gate masks at temperature tau while searching (noise keyed by step, so a resumed run draws the
        same); after the search, exactly the network that will be exported."""
        if self.searching(step):
            gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + step)
            return (self.gated.sample_masks(tau, gen, hard=self.cfg.gate_mode == "hard"),)
        if self.final_masks is None:
            self.land()
            self.final_masks = self.gated.hard_masks()
        return (self.final_masks,)

    @torch.no_grad()
    def land(self) -> float:
        """A search that ends before the run: fill each block's kept heads to the value width the export emits
        (`value_align`; GatedViT.fill_value_widths), and shift every micro-gate logit (value dims, neurons) by one
        constant so the filled network lands on the target; return the shift. Runs once (a resumed run keeps it).

        The controller lands a whole-run search on its own; a short one leaves it too few steps for the last few
        percent (0.2 of the MACs, search in the first 30 % of 6 epochs: 3.9 % under the target). The shift keeps
        the gates' own ranking of value dims and neurons and every macro decision; the cost grows with it, so
        bisection finds it. Without the fill the exported graph pads narrower heads with zero columns that count
        in its MACs (0.5 of dense landed as 0.539 exported at align 8)."""
        if self.landed:
            return self.landing_shift
        target = self.budget.target / self.budget.dense
        gates, align = self.gated.gates, self.cfg.value_align
        base = [gates.value.detach().clone(), gates.neuron.detach().clone()]

        def error(shift: float) -> float:
            gates.value.copy_(base[0] + shift)
            gates.neuron.copy_(base[1] + shift)
            if align:
                self.gated.fill_value_widths(align)
            return self._fraction(float(self.budget.hard(self.gated))) - target

        shift = 0.0
        if abs(error(0.0)) > 0.5 * self.cfg.target_tolerance * target:
            lo, hi = -40.0, 40.0  # logits move about gate_lr per step: far beyond any reached in a run
            for _ in range(50):
                mid = 0.5 * (lo + hi)
                lo, hi = (lo, mid) if error(mid) > 0 else (mid, hi)
            # No shift unless it lands closer (the macro gates may leave the micro ones nothing to reach it with).
            shift = min((0.0, lo, hi), key=lambda c: (round(abs(error(c)), 12), abs(c)))
        error(shift)
        self.landing_shift, self.landed = shift, True
        return shift

    def eval_masks(self, open_gates: bool) -> tuple[Any, ...]:
        return (self.gated.open_masks() if open_gates else self.gated.hard_masks(),)

    def freeze(self) -> None:
        """The search is over: no gate logit takes a gradient again."""
        self.gated.gates.requires_grad_(False)

    def penalty(self, step: int) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """The terms added to the task loss while searching: the MAC penalty at the controller's scale, the soft
        floors and (after the ramp) polarization; and their logged parts."""
        if not self.searching(step):
            return [], {}
        cfg = self.cfg
        cost = self.budget.expected(self.gated)
        penalty, parts = mac_penalty(cost, self.budget.dense, cfg.lambda_macro, cfg.lambda_micro,
                                     self.controller.scale)  # fmt: skip
        feas = feasibility_loss(self.gated)
        polar_weight = cfg.polarization * self.controller.hard_weight(self.progress(step))
        polar = polarization_loss(self.gated)
        parts.update(polarization=polar.detach(), feasibility=feas.detach())
        terms = [penalty, feas, polar_weight * polar]
        if cfg.even_allocation:
            spread = allocation_loss(self.gated)
            terms.append(cfg.even_allocation * spread)
            parts["allocation"] = spread.detach()
        return terms, parts

    def measured(self) -> dict[str, torch.Tensor]:
        """Expected and hard cost after the optimizer step, as tensors for the step's single read-back."""
        with torch.no_grad():
            return {"expected_cost": self.budget.expected(self.gated).total, "hard_cost": self.budget.hard(self.gated)}

    def observe(self, parts: dict[str, float], step: int, tau: float) -> None:
        """Feed the step's measured cost to the controller (while searching) and keep a few trace points; `parts`
        trades the raw costs for fractions of dense and the penalty scale this step used."""
        dense = self.budget.dense
        parts["penalty_scale"] = self.controller.scale
        expected = parts.pop("expected_cost") / dense
        hard = self.hard_fraction = self._fraction(parts.pop("hard_cost"))
        if self.searching(step):
            self.controller.update(expected, hard, self.progress(step + 1))
        parts.update(expected_frac=expected, hard_frac=hard)
        if step % self.schedule.trace_every == 0:  # a few points per epoch for hiap report's curves
            ref = self.controller.reference(self.progress(step + 1))
            self.trace.append([step, round(tau, 5), expected, hard, ref])

    def _fraction(self, hard_cost: float) -> float:
        """A hard cost as a fraction of dense; MACs are whole numbers (a float32 sum read back is not)."""
        return (round(hard_cost) if self.budget.kind == "macs" else hard_cost) / self.budget.dense

    def structure(self) -> Structure:
        return self.gated.hard_structure()

    def hard_macs(self) -> int:
        return self.gated.hard_macs()

    def expected_macs(self) -> float:
        return float(self.gated.expected_cost().total.detach())

    def penalty_scale(self) -> float | None:
        return self.controller.scale

    def gate_parameters(self) -> list[torch.Tensor]:
        return list(self.gated.gates.parameters())

    def gate_tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self.gated.gates.as_dict().items()}

    def epoch_fields(self) -> dict[str, Any]:
        """The gate histogram and the epoch's trace points (the trace starts afresh for the next epoch)."""
        trace, self.trace = self.trace, []
        return {"gate_histogram": gate_histogram(self.gated.gates), "trace": trace}

    def floors_state(self) -> dict[str, Any] | None:
        return vars(self.gated.floors)

    def state(self) -> dict[str, Any]:
        return {**self.controller.state(), "landing_shift": self.landing_shift, "landed": self.landed}

    def load_state(self, controller: dict[str, Any], gates: dict[str, torch.Tensor]) -> None:
        self.gated.gates.load_state_dict(gates)
        self.controller.load_state(controller)
        self.landing_shift = float(controller.get("landing_shift") or 0.0)
        self.landed = bool(controller.get("landed", False))
