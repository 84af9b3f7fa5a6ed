"""Prune a timm ViT inside any training loop: HiAP gates added in place, a MAC or latency budget steered by the
controller, and the structure the search lands on (the public API's core; `hiap train` is its first client)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from hiap.base.errors import HiapError, UnsupportedModelError
from hiap.base.lut import LatencyTable
from hiap.budget import BudgetController, check_schedule, check_target, min_reachable_macs
from hiap.compensate import fold_structure, unit_stats
from hiap.config import PruneOptions, parse_target
from hiap.cost import ExpectedCost, Geometry, Structure, structure_macs
from hiap.gated import (
    SUPPORTED,
    BlockMasks,
    Floors,
    GatedBlock,
    GatedViT,
    Masks,
    block_masks,
    describe_vit,
    qk_gateable,
    with_qk_logits,
)
from hiap.gates import TemperatureSchedule
from hiap.latency import LatencyCost, format_ms
from hiap.loss import allocation_loss, feasibility_loss, mac_penalty, polarization_loss

# The attribute under which the gate logits live in the pruned ViT: inside the user's model, so that
# DistributedDataParallel built after wrapping averages their gradients like any weight's.
GATES = "hiap_gates"
STATE_FORMAT = "hiap-pruner"
STATE_VERSION = 1


def gate_histogram(gates: nn.Module, bins: int = 10) -> dict[str, list[int]]:
    """Counts of keep probabilities sigmoid(logit) in `bins` equal bins of [0, 1], per gate kind that learns (for
    hiap report: how the gates polarise towards 0 and 1 as the temperature falls; a kind fixed open is left out)."""
    out = {}
    with torch.no_grad():
        for kind, logits in gates.as_dict().items():
            if not logits.requires_grad:
                continue
            p = torch.sigmoid(logits.detach().float().flatten().cpu())
            out[kind] = torch.histc(p, bins=bins, min=0.0, max=1.0).long().tolist()
    return out


@dataclass(frozen=True)
class Latency:
    """A latency budget: `ms` per batch of `batch` images on the device whose `hiap profile` table `lut` is (its
    lut.json path or a LatencyTable); the search prices every structure with that table."""

    ms: float
    lut: str | Path | LatencyTable
    batch: int = 1


@dataclass
class Budget:
    """What the penalty and the controller count: analytical MACs, or the latency a device's measured table
    predicts (ms). `dense` and `target` are in that unit; the controller works in fractions of dense."""

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
        return self.latency.expected(p["head"], p["ffn"], p["value"], p["neuron"], p["qk"] if gated.qk_gated else None)

    def hard(self, gated: GatedViT) -> torch.Tensor:
        """The exported network's cost as a tensor on the gates' device (no host read-back)."""
        return gated.hard_cost() if self.latency is None else self.latency.masks_ms(gated.hard_masks())

    def of(self, geometry: Geometry, structure: Structure) -> float:
        if self.latency is None:
            return float(structure_macs(geometry, structure))
        return self.latency.structure_ms(structure)

    def record(self) -> dict[str, Any]:
        """What a checkpoint and a run's summary say of the budget."""
        if self.latency is None:
            return {"kind": "macs", "dense_macs": self.dense, "target_macs": self.target}
        table = self.latency.table
        return {"kind": "latency", "dense_ms": self.dense, "target_ms": self.target, "batch": self.latency.batch,
                "table": {"path": table.path, "digest": table.digest, "device": table.device,
                          "runtime": table.runtime, "precision": table.precision, "align": table.align}}  # fmt: skip


def mac_budget(geometry: Geometry, floors: Floors, target: float | int | str, ffn_removable: bool,
               qk_removable: bool = False) -> Budget:  # fmt: skip
    """A MAC budget: a fraction of dense (0.5), an absolute count (3.1e9) or its text ('3.1G'), checked against
    what the floors can reach."""
    if isinstance(target, bool) or not isinstance(target, (int, float, str)):
        raise HiapError(
            f"budget must be a MAC fraction (0.5), a count (3.1e9), its text ('3.1G') or a Latency(ms, lut), got "
            f"{target!r}."
        )
    if isinstance(target, float) and not math.isfinite(target):
        raise HiapError(f"budget must be a finite number, got {target}.")
    macs = parse_target(str(target)).resolve(geometry.dense_macs)
    check_target(geometry, floors, macs, ffn_blocks_removable=ffn_removable, qk_removable=qk_removable)
    return Budget(float(geometry.dense_macs), float(macs))


def latency_budget(geometry: Geometry, floors: Floors, table: LatencyTable, model: str, batch: int, want: float,
                   ffn_removable: bool, qk_removable: bool = False) -> Budget:  # fmt: skip
    """A latency budget priced by a device's table, checked against the dense model and the floors (q/k widths
    count as removable only where the table prices them)."""
    cost = LatencyCost(table, geometry, model, batch)
    dense = cost.dense
    if isinstance(want, bool) or not isinstance(want, (int, float)) or not want > 0:
        raise HiapError(f"A latency target must be a number of ms > 0, got {want!r}.")
    if want >= dense:
        raise HiapError(f"Target {format_ms(want)} is not below the dense model's predicted {format_ms(dense)} on "
                        f"{cost.table.device}: give a smaller --target-latency-ms.")  # fmt: skip
    low = cost.min_reachable_ms(floors, ffn_removable, qk_removable and cost.prices_qk)
    if want < low:
        raise HiapError(
            f"Target {format_ms(want)} is below the fastest network the floors allow on {cost.table.device}: "
            f"{format_ms(low)} ({low / dense:.1%} of dense). Raise --target-latency-ms to at least {low:.4g} or "
            "lower k_min / min_value_frac / min_neuron_frac"
            + ("." if ffn_removable else " (or let FFN blocks be removed: ffn_block_gates: true).")
        )
    return Budget(dense, float(want), cost)


# The neuron floor of FFN blocks kept whole at a tight budget: the default 10 % bounds the plateau setting's network
# at 0.107 of the MACs, above its 0.1 and 0.05 budgets; at 2 % the kept-FFN network reaches 0.055.
NARROW_NEURON_FRAC = 0.02
# Headroom the narrowed network's floor must leave under the budget: a search ending on its floors lands imprecisely
# (the plateau setting's 0.062 target landed at 0.063 with its floor at 0.055).
NARROW_HEADROOM = 1.15


def ffn_rule(geometry: Geometry, floors: Floors, opts: PruneOptions, budget: Budget,
             qk_removable: bool) -> tuple[bool, Floors]:  # fmt: skip
    """Whether FFN blocks may be removed whole, and the floors of the search: a MAC budget under
    `opts.narrow_ffn_below` keeps every block and lets it narrow to NARROW_NEURON_FRAC, where that reaches it."""
    if not opts.ffn_block_gates:
        return False, floors
    if budget.kind != "macs" or budget.target >= opts.narrow_ffn_below * budget.dense:
        return True, floors
    narrow = replace(floors, min_neuron_frac=min(floors.min_neuron_frac, NARROW_NEURON_FRAC))
    if NARROW_HEADROOM * min_reachable_macs(geometry, narrow, False, qk_removable) > budget.target:
        return True, floors  # only removing whole blocks reaches this budget
    return False, narrow


def check_gate_groups(optimizer: torch.optim.Optimizer, gates: nn.Module) -> None:
    """The optimizer holds every gate logit that learns, in the groups Pruner.param_groups() made (their lrs follow
    the search's phases; in a weight group they would take the weights' lr, schedule and weight decay)."""
    build = ("build it after wrapping as AdamW([{'params': list(pruner.weight_parameters())}, "
             "*pruner.param_groups()])")  # fmt: skip
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    learning = [p for p in gates.parameters() if p.requires_grad]
    if any(id(p) not in group_of for p in learning):
        raise HiapError("The optimizer does not hold the pruner's gate logits, so the search cannot move them (the "
                        f"structure would be the initial magnitude order, not a learned one): {build}.")  # fmt: skip
    if any(group_of[id(p)].get("hiap") not in ("macro", "micro") for p in learning):
        raise HiapError("The gate logits are in a weight group of the optimizer (AdamW(model.parameters())?), where "
                        f"they take the weights' lr and weight decay: {build}.")  # fmt: skip


def find_backbone(model: nn.Module) -> tuple[str, VisionTransformer]:
    """The timm VisionTransformer to prune: `model` itself or its one ViT submodule, with its dotted name."""
    if isinstance(model, VisionTransformer):
        return "", model
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(f"Expected a torch nn.Module, got {type(model).__name__}. {SUPPORTED}.")
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, VisionTransformer)]
    if not found:
        raise UnsupportedModelError(f"{type(model).__name__} holds no timm VisionTransformer. {SUPPORTED}.")
    if len(found) > 1:
        names = ", ".join(n for n, _ in found)
        raise UnsupportedModelError(f"{type(model).__name__} holds {len(found)} ViTs ({names}): pass the one to prune.")
    return found[0]


@dataclass(frozen=True)
class StepReport:
    """What one Pruner.step measured and did (fractions of the dense cost, in the budget's unit)."""

    step: int  # steps done, this one included
    tau: float  # the temperature this step's masks were sampled at
    expected_fraction: float
    hard_fraction: float  # the network the export rule would emit now
    penalty_scale: float  # the controller's scale this step's penalty used
    searching: bool  # the search goes on at the next step
    search_ended: bool  # this step was the search's last: the structure is fixed (and rewound, adapt_from start)
    logged: dict[str, float] = field(default_factory=dict)  # the caller's `log` tensors, read back with these
    # Once the search has ended: the fixed structure lies within target_tolerance of the target (in the budget's
    # unit, before the export's padding); None while searching.
    target_met: bool | None = None


def landing_grid(value_align: int, ends_early: bool) -> int:
    """The value-width grid a search's landing fills kept heads to: `value_align` when the search ends before the
    run (`ends_early`), none (0) for a whole-run search, whose gates close on their own."""
    return value_align if ends_early else 0


class Pruner:
    """HiAP gates on a timm ViT inside the caller's own training loop.

    Wrap before DistributedDataParallel and before building the optimizer; per step: add `penalty()` to the loss,
    call `step(optimizer)` after `optimizer.step()`. The search runs over the first `search_fraction` of
    `total_steps`; then the structure is fixed (landed on the target) and, with adapt_from 'start', the weights
    go back to those the model had when wrapped, their optimizer state dropped. Every constructor check runs
    before the model is touched: a refused model is left as it was.
    """

    def __init__(
        self,
        model: nn.Module,
        total_steps: int,
        budget: float | int | str | Latency = 0.5,
        *,
        options: PruneOptions | None = None,
        model_name: str | None = None,
        steps_per_epoch: int | None = None,
        trace_every: int | None = None,
        calibration: Iterable[torch.Tensor] | None = None,
    ) -> None:
        opts = options if options is not None else PruneOptions()
        opts.validate()
        if opts.needs_calibration() != (calibration is not None):
            raise HiapError(
                "compensate=True and importance='variance' need calibration= (a few batches of training images, as "
                "the model takes them)."
                if opts.needs_calibration()
                else "calibration= is read only with compensate=True or importance='variance': set one or drop it."
            )
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise HiapError(
                f"total_steps must be a positive int (optimizer steps of the whole run), got {total_steps!r}."
            )
        path, vit = find_backbone(model)
        if hasattr(vit, GATES):
            raise HiapError("This model already carries hiap gates: wrap it once (or load its pruner state).")
        geometry = describe_vit(vit)  # refuses unsupported blocks before anything changes
        floors = Floors(opts.k_min, opts.min_value_frac, opts.min_neuron_frac, opts.min_qk_frac)
        self.model_name = model_name or str(getattr(vit, "pretrained_cfg", {}).get("architecture") or "")
        # q/k widths are gated on a model without qk-norm (GatedViT) for a MAC budget, or a latency budget whose
        # table has a q/k axis (older tables price attention at full q/k width only).
        qk_gates = opts.qk_gates and qk_gateable(geometry)
        self.budget = self._budget(geometry, floors, opts, budget, qk_gates)
        # Whether the search may remove whole FFN blocks, and the floors it searches under (narrowed at tight budgets).
        self.ffn_blocks_removable, floors = ffn_rule(geometry, floors, opts, self.budget, qk_gates)
        qk_gates = qk_gates and (self.budget.latency is None or self.budget.latency.prices_qk)
        gain = opts.controller_gain or (2.0 if self.budget.kind == "latency" else 0.5)
        self.controller = BudgetController(self.budget.target / self.budget.dense, gain=gain)
        check_schedule(total_steps, steps_per_epoch, opts.gate_init, opts.gate_lr, self.controller.ramp)

        self.options, self.geometry, self.backbone_path = opts, geometry, path
        self.total_steps = total_steps
        self.search_steps = max(1, round(opts.search_fraction * total_steps))
        self.trace_every = trace_every or max(1, total_steps // 120)
        # A search over a share of the run moves its gates proportionally faster (TrainConfig.search_fraction).
        self.gate_lr = opts.gate_lr * total_steps / self.search_steps
        self.temperature = TemperatureSchedule(opts.tau_start, opts.tau_end, self.search_steps)
        # The weights the structure restarts from when the search ends (adapt_from 'start'), on the host.
        self._start = (
            {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            if opts.adapt_from == "start" and self.search_steps < total_steps
            else None
        )
        # A resumed run must restart from the same weights: the state records which (load_state_dict checks).
        self._start_digest = _digest(self._start) if self._start is not None else None
        self.model = model
        # The start's output statistics of every unit: the means fold into the next bias when the search removes
        # the unit (compensate), the variances order the micro gates (importance 'variance').
        self._unit_stats = unit_stats(model, vit, calibration) if calibration is not None else None
        device = next(vit.parameters()).device
        self.gated = GatedViT(vit, floors=floors, gate_init=opts.gate_init, qk_gates=qk_gates).to(device)
        if not self.ffn_blocks_removable:
            # Fixed open: keep probability 1 - 5e-5, so a sample drops a block about once in 20,000 steps and the
            # expected cost counts every FFN as kept; no gradient, so the optimizer never moves them.
            self.gated.fix_open("ffn")
        # The l1 order was chosen for MAC budgets (with q/k gates); under a latency target the micro gates start
        # alike: there the controller steers a table's steps, and started in l1 order it landed 1.6 % off a 1 %
        # tolerance on the tiny model (tests/hiap/test_latency.py).
        if opts.gate_init_importance and self.budget.kind == "macs":
            variance = self._unit_stats if opts.importance == "variance" else None
            self.gated.init_from_importance(opts.gate_init_importance, variance)
        vit.add_module(GATES, self.gated.gates)
        for i in range(len(vit.blocks)):
            vit.blocks[i] = GatedBlock(vit.blocks[i], i, self)

        self.step_count = 0
        self.landing_shift = 0.0  # what land() added to the neuron logits (all micro logits and then them alone)
        self.landed = False
        self.trace: list[list[float]] = []  # [step, tau, expected, hard, reference] (fractions of dense)
        self.penalty_parts: dict[str, torch.Tensor] = {}  # the last penalty()'s terms, detached, for logging
        self._final: Masks | None = None  # the fixed structure's masks once the search has ended
        # The fixed structure's expected and hard cost, measured once after the search (its gates stand still).
        self._fixed_costs: dict[str, torch.Tensor] | None = None
        # The gate logits as the search left them: copied back over whatever an optimizer, an LR scheduler or
        # weight decay did to them afterwards, so the structure after the search depends on nothing but the search.
        self._fixed_logits: dict[str, torch.Tensor] | None = None
        self._optimizers: dict[int, Any] = {}  # id -> hook handle of every optimizer step() was given
        self.spent = False  # materialize() made the model compact: the gates are gone
        self._open = False
        self._forward_masks: tuple[Masks, list[bool], bool] | None = None
        self._eval_masks: tuple[tuple[Any, ...], tuple[Masks, list[bool], bool]] | None = None
        self.hard_fraction = self._fraction(float(self.budget.hard(self.gated)))

    def _budget(self, geometry: Geometry, floors: Floors, opts: PruneOptions, budget: Any, qk_gates: bool) -> Budget:
        """The one budget value: a MAC fraction, count or text, or a Latency on a device's table."""
        if not isinstance(budget, Latency):
            return mac_budget(geometry, floors, budget, opts.ffn_block_gates, qk_gates)
        from hiap.base.lut import read_lut

        if not isinstance(budget.lut, (str, Path, LatencyTable)):
            raise HiapError("A latency budget needs the device's table: Latency(ms, lut='lut.json') (hiap profile's).")
        table = budget.lut if isinstance(budget.lut, LatencyTable) else read_lut(Path(budget.lut))
        if not self.model_name:
            raise HiapError("A latency target needs the model's timm name (model_name=) to check the table is its.")
        return latency_budget(geometry, floors, table, self.model_name, budget.batch, budget.ms, opts.ffn_block_gates,
                              qk_gates)  # fmt: skip

    # --- what the caller reads -----------------------------------------------------------------------------
    @property
    def gates(self) -> nn.Module:
        return self.gated.gates

    @property
    def vit(self) -> nn.Module:
        return self.gated.vit

    @property
    def floors(self) -> Floors:
        return self.gated.floors

    @property
    def penalty_scale(self) -> float:
        """The controller's current scale of the MAC or latency penalty (signed: below the reference it rewards)."""
        return self.controller.scale

    @property
    def searching(self) -> bool:
        return self.step_count < self.search_steps

    @property
    def rewinds(self) -> bool:
        """The search ends before the run and the weights then go back to the start (adapt_from 'start')."""
        return self._start is not None

    @property
    def landing_align(self) -> int:
        """The value-width grid the search's landing filled the kept heads to and counted the budget on (0: none,
        as a whole-run search or value_align 0): an export or materialize pads to an align that divides it or is a
        multiple of it (hiap.export.compact.check_landing_grid)."""
        return landing_grid(self.options.value_align, self.search_steps < self.total_steps)

    @property
    def tau(self) -> float:
        """The temperature of the current step's gate samples."""
        return self.temperature(self.step_count)

    @property
    def target_macs(self) -> int | None:
        """The MAC target of a MAC budget; a latency budget has none."""
        return round(self.budget.target) if self.budget.kind == "macs" else None

    def progress(self, step: int | None = None) -> float:
        """How far the search is at `step` (0..1): the clock of the controller's phases."""
        return min((self.step_count if step is None else step) / self.search_steps, 1.0)

    def structure(self) -> Structure:
        """The structure the export rule keeps now (the fixed one once the search has ended)."""
        self._check_live()
        self._pin()
        return self.gated.hard_structure()

    def hard_macs(self) -> int:
        """MACs of the structure the export rule keeps now (the fixed one once the search has ended)."""
        self._check_live()
        self._pin()
        return self.gated.hard_macs()

    def expected_macs(self) -> float:
        self._check_live()
        self._pin()
        return float(self.gated.expected_cost().total.detach())

    @property
    def target_error(self) -> float | None:
        """(fixed structure's cost - target) / target in the budget's unit once the search has ended, else None."""
        if self.searching or self.spent:
            return None
        self._pin()
        return (float(self.budget.hard(self.gated)) - self.budget.target) / self.budget.target

    @property
    def target_met(self) -> bool | None:
        """The fixed structure lies within target_tolerance of the target; None while the search runs."""
        error = self.target_error
        return None if error is None else abs(error) <= self.options.target_tolerance

    def param_groups(self) -> list[dict[str, Any]]:
        """The gate logits as optimizer groups with their own lr and no weight decay: macro gates (heads, FFN
        blocks) apart from micro gates (q/k dims, value dims, neurons), since their lrs follow the controller's
        phases. `step(optimizer)` sets their lr from then on."""
        gates = self.gated.gates
        groups = [
            {"params": [gates.head, gates.ffn], "lr": self.gate_lr, "weight_decay": 0.0, "hiap": "macro"},
            {"params": self.gated.micro_logits(), "lr": self.gate_lr, "weight_decay": 0.0, "hiap": "micro"},
        ]
        self._set_gate_lrs(groups)
        return groups

    def weight_parameters(self) -> Iterator[nn.Parameter]:
        """The model's parameters that are not gate logits (what the caller's own weight groups take)."""
        gates = {id(p) for p in self.gated.gates.parameters()}
        return (p for p in self.model.parameters() if id(p) not in gates)

    @contextmanager
    def open_gates(self) -> Iterator[None]:
        """Every gate open inside the block: the model computes as the unpruned network (a dense baseline)."""
        self._open, self._forward_masks = True, None
        try:
            yield
        finally:
            self._open, self._forward_masks = False, None

    # --- inside the loop -----------------------------------------------------------------------------------
    # Outside any torch.compile graph: the masks depend on the step, the temperature and the noise generator, Python
    # values a compiled graph would guard on and recompile for at every search step; as the graph's inputs they
    # cost one graph break per block instead.
    @torch.compiler.disable
    def block_masks(self, index: int, training: bool) -> BlockMasks:
        """The masks of block `index` in this forward; block 0 decides them for the whole forward."""
        if index == 0 or self._forward_masks is None:
            self._forward_masks = self._masks(training)
        masks, attends, _ = self._forward_masks
        return block_masks(masks, index, self.gated.qk_gated, attends[index])

    def _masks(self, training: bool) -> tuple[Masks, list[bool], bool]:
        depth = self.geometry.depth
        if self._open:
            return self.gated.open_masks(), [True] * depth, training
        if training and self.searching:
            # Noise keyed by (seed, step): every forward of a step (gradient accumulation) and every rank draws
            # the same sample, and a resumed run draws what the uninterrupted one did.
            gen = torch.Generator().manual_seed(self.options.seed * 1_000_003 + self.step_count)
            return self.gated.sample_masks(self.tau, gen, hard=self.options.gate_mode == "hard"), [True] * depth, True
        masks = self._final if self._final is not None else self.gated.hard_masks()
        if training:
            # The fixed structure, tied to the logits by a zero so they still take a (zero) gradient: DDP built
            # while they searched keeps finding a gradient for every parameter it was given.
            g = self.gated.gates
            masks = Masks(head=masks.head + 0.0 * g.head, value=masks.value + 0.0 * g.value,
                          ffn=masks.ffn + 0.0 * g.ffn, neuron=masks.neuron + 0.0 * g.neuron,
                          qk=masks.qk + 0.0 * g.qk)  # fmt: skip
            return masks, [True] * depth, True
        # In eval a block with every head closed contributes nothing, as the exported network does. Kept until a
        # gate logit changes (their version counters), so validation decides the masks once, not once per batch.
        key = (self._final is not None, *(p._version for p in self.gated.gates.parameters()))
        if self._eval_masks is None or self._eval_masks[0] != key:
            self._eval_masks = (key, (masks, masks.head.any(-1).tolist(), False))
        return self._eval_masks[1]

    def penalty(self, loss: torch.Tensor | None = None) -> torch.Tensor:
        """The budget terms while searching (the MAC or latency penalty at the controller's scale, the soft floors,
        polarization and the allocation prior where set), in fp32 whatever autocast is on; 0 after the search.
        Given the task `loss`, that loss with the terms added one by one."""
        self._check_live()
        if loss is not None and not isinstance(loss, torch.Tensor):
            raise HiapError(f"penalty() takes the task loss as a tensor (or nothing), got {type(loss).__name__}.")
        terms = self._terms()
        if loss is None:
            total = torch.zeros((), device=self.gated.gates.head.device)
            for term in terms:
                total = total + term
            return total
        for term in terms:
            loss = loss + term
        return loss

    def _terms(self) -> list[torch.Tensor]:
        self.penalty_parts = {}
        if not self.searching:
            return []
        opts = self.options
        device_type = self.gated.gates.head.device.type
        with torch.autocast(device_type, enabled=False):
            cost = self.budget.expected(self.gated)
            penalty, parts = mac_penalty(cost, self.budget.dense, opts.lambda_macro, opts.lambda_micro,
                                         self.controller.scale)  # fmt: skip
            feas = feasibility_loss(self.gated)
            polar_weight = opts.polarization * self.controller.hard_weight(self.progress())
            polar = polarization_loss(self.gated)
            parts.update(polarization=polar.detach(), feasibility=feas.detach())
            terms = [penalty, feas, polar_weight * polar]
            if opts.even_allocation:
                spread = allocation_loss(self.gated)
                terms.append(opts.even_allocation * spread)
                parts["allocation"] = spread.detach()
        self.penalty_parts = parts
        return terms

    def step(self, optimizer: torch.optim.Optimizer, log: Mapping[str, torch.Tensor] | None = None) -> StepReport:
        """After `optimizer.step()`: feed the measured cost to the controller, keep the trace, set the gate lrs of
        `optimizer` for the next step, and end the search on its last step. The `log` tensors are read back in
        the same single host synchronisation as the pruner's own figures (StepReport.logged)."""
        self._check_live()
        self._attach(optimizer)
        self._pin()
        measured = self._fixed_costs
        if measured is None:
            with torch.no_grad():
                measured = {
                    "expected_cost": self.budget.expected(self.gated).total,
                    "hard_cost": self.budget.hard(self.gated),
                }
            if not self.searching:
                self._fixed_costs = measured
        tensors = {**(log or {}), **measured}
        values = dict(zip(tensors, torch.stack([v.detach().reshape(()).double() for v in tensors.values()]).tolist(),
                          strict=True))  # fmt: skip
        scale = self.controller.scale
        expected = values.pop("expected_cost") / self.budget.dense
        hard = self.hard_fraction = self._fraction(values.pop("hard_cost"))
        step, tau = self.step_count, self.tau
        if self.searching:
            self.controller.update(expected, hard, self.progress(step + 1))
        if step % self.trace_every == 0:  # a few points per epoch for hiap report's curves
            self.trace.append([step, round(tau, 5), expected, hard, self.controller.reference(self.progress(step + 1))])
        ended = self._advance(optimizer)
        if ended:  # the landing moved the structure: report the one that is now fixed
            hard = self.hard_fraction = self._fraction(float(self.budget.hard(self.gated)))
        return StepReport(step=self.step_count, tau=tau, expected_fraction=expected, hard_fraction=hard,
                          penalty_scale=scale, searching=self.searching, search_ended=ended, logged=values,
                          target_met=self.target_met)  # fmt: skip

    def skip_step(self, optimizer: torch.optim.Optimizer) -> None:
        """A step whose update was dropped (a non-finite loss): the schedules move on, the controller does not."""
        self._check_live()
        self._attach(optimizer)
        self._advance(optimizer)
        self._pin()

    def _attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Check, once per optimizer, that it holds the gate groups of param_groups(); from then on the pruner sets
        their lrs just before each of its steps, so an LR scheduler on the same optimizer cannot move them."""
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise HiapError(f"step() takes the torch optimizer that holds pruner.param_groups(), as "
                            f"pruner.step(optimizer), got {type(optimizer).__name__}: the pruner sets the gate lrs "
                            "in it.")  # fmt: skip
        if id(optimizer) in self._optimizers:
            return
        if self.searching:
            check_gate_groups(optimizer, self.gated.gates)
        self._optimizers[id(optimizer)] = optimizer.register_step_pre_hook(
            lambda opt, args, kwargs: self._set_gate_lrs(opt.param_groups)
        )

    @torch.no_grad()
    def _pin(self) -> None:
        """After the search the gate logits are those it ended with, whatever moved them since."""
        if self._fixed_logits is None:
            return
        # Copied unconditionally: comparing first would read back to the host every step (a GPU sync).
        for kind, logits in self.gated.gates.as_dict().items():
            logits.copy_(self._fixed_logits[kind])

    def _check_live(self) -> None:
        if self.spent:
            raise HiapError("This pruner is spent: materialize() made its model compact and removed the gates. Use "
                            "the returned plan (save_pruned, apply_plan); export before materialize().")  # fmt: skip

    def _advance(self, optimizer: torch.optim.Optimizer | None) -> bool:
        self.step_count += 1
        self._forward_masks = None
        ended = self.step_count == self.search_steps
        if ended:
            self._end_search(optimizer)
        if optimizer is not None:
            self._set_gate_lrs(optimizer.param_groups)
        return ended

    def _set_gate_lrs(self, groups: list[dict[str, Any]]) -> None:
        """Gate logits keep a constant lr (the controller must still move them at the end) until the macro freeze
        and the micro settle; after the search both stand still."""
        searching, progress = self.searching, self.progress()
        macro_frozen = not searching or self.controller.macro_frozen(progress, self.hard_fraction)
        micro = self.controller.micro_lr_factor(progress) if searching else 0.0
        for g in groups:
            if g.get("hiap") == "macro":
                g["lr"] = 0.0 if macro_frozen else self.gate_lr
            elif g.get("hiap") == "micro":
                g["lr"] = self.gate_lr * micro

    def _end_search(self, optimizer: torch.optim.Optimizer | None) -> None:
        """Land on the target, fix the structure, (adapt_from 'start') rewind the weights and (compensate) fold the
        removed units' mean output into the biases that read them."""
        if self.search_steps < self.total_steps:
            self.land()
        self._final = self.gated.hard_masks()
        self._fixed_logits = {k: v.detach().clone() for k, v in self.gated.gates.as_dict().items()}
        if self._start is not None:
            self.rewind(optimizer)
        if self.options.compensate:
            m, stats = self._final, self._unit_stats
            assert stats is not None  # the constructor refuses compensate without calibration
            fold_structure(self.vit, stats, m.neuron, m.head.unsqueeze(-1) * m.value, m.ffn)

    @torch.no_grad()
    def rewind(self, optimizer: torch.optim.Optimizer | None) -> None:
        """The weights go back to those the model had when wrapped (pruned units are masked by the fixed structure,
        so the kept ones are what a one-shot prune would copy) and their optimizer state is dropped."""
        if self._start is None:
            raise HiapError("This pruner keeps no starting weights (adapt_from 'gated' or a whole-run search).")
        prefix = f"{self.backbone_path}.{GATES}." if self.backbone_path else f"{GATES}."
        current = {k: v for k, v in self.model.state_dict().items() if k.startswith(prefix)}
        self.model.load_state_dict({**self._start, **current})
        if optimizer is not None:
            gate_ids = {id(p) for p in self.gated.gates.parameters()}
            for group in optimizer.param_groups:
                for p in group["params"]:
                    if id(p) not in gate_ids:
                        optimizer.state.pop(p, None)

    @torch.no_grad()
    def land(self) -> float:
        """Fill each block's kept heads to the value (and gated q/k) width the export emits (`value_align`;
        GatedViT.fill_value_widths), and shift every micro-gate logit (q/k and value dims, neurons) by one constant
        so the filled network lands on the target, then, if it is still off, the neuron logits alone by a second
        one; return the total shift of the neurons. Runs once (a resumed run keeps it).

        The controller lands a whole-run search on its own; a short one leaves it too few steps for the last few
        percent (0.2 of the MACs, search in the first 30 % of 6 epochs: 3.9 % under the target). The shift keeps
        the gates' own ranking of value dims and neurons and every macro decision; the cost grows with it, so
        bisection finds it. Without the fill the exported graph pads narrower heads with zero columns that count
        in its MACs (0.5 of dense landed as 0.539 exported at align 8). Filled widths move in steps of `align`
        dims per head in every head of a block, which on small heads is a coarse step (head_dim 16 at align 8:
        half a head; the tiny model landed 1.06 % off at 0.7): neurons, one at a time, close what is left."""
        if self.landed:
            return self.landing_shift
        micro = self.gated.micro_logits()
        shift = self._shift_to_target(micro)
        neuron_shift = self._shift_to_target([self.gated.gates.neuron])
        if self._landing_error() > self.options.target_tolerance:
            # Still above the target with every width at its floor: the search kept too many heads or FFN blocks
            # (a budget of 0.1 of the MACs landed 38 % over it on a small ViT). The macro logits that learn are
            # shifted too, keeping the search's ranking of heads and blocks: to each side of the macro step closest
            # to the target, the widths are landed again, and the side that lands closer is kept.
            macro = [g for g in (self.gated.gates.head, self.gated.gates.ffn) if g.requires_grad]
            gates = self.gated.gates.as_dict()
            start = {k: v.detach().clone() for k, v in gates.items()}
            best: tuple[float, float, dict[str, torch.Tensor]] | None = None
            for side in self._bracket(macro):
                for k, v in gates.items():
                    v.copy_(start[k])
                for g in macro:
                    g.add_(side)
                extra = self._shift_to_target(micro) + self._shift_to_target([self.gated.gates.neuron])
                landed = {k: v.detach().clone() for k, v in gates.items()}
                if best is None or abs(self._landing_error()) < abs(best[0]):
                    best = (self._landing_error(), extra, landed)
            assert best is not None
            for k, v in gates.items():
                v.copy_(best[2][k])
            shift += best[1]
        self.landing_shift, self.landed = shift + neuron_shift, True
        return self.landing_shift

    def _bracket(self, logits: list[torch.Tensor], error: Any = None) -> tuple[float, float]:
        """The two shifts of `logits` (by one constant) either side of the target, closest to it, by bisection:
        `lo` lands above the target, `hi` at or below it. `error(shift)` sets the shift and returns the landed
        fraction minus the target (default: the shift alone, no fill)."""
        base = [g.detach().clone() for g in logits]
        target = self.budget.target / self.budget.dense

        def plain(shift: float) -> float:
            for g, b in zip(logits, base, strict=True):
                g.copy_(b + shift)
            return self._fraction(float(self.budget.hard(self.gated))) - target

        error = error or plain
        # A shift past the logits' own range opens or closes every gate (a fixed +-40 was too narrow once the
        # search's gate lr is scaled by total/search steps: logits reached +-80 at gate_lr 1).
        span = 1.0 + max(float(b.abs().max()) for b in base)
        lo, hi = -span, span
        for _ in range(50):
            mid = 0.5 * (lo + hi)
            lo, hi = (lo, mid) if error(mid) > 0 else (mid, hi)
        for g, b in zip(logits, base, strict=True):
            g.copy_(b)
        return lo, hi

    def _landing_error(self) -> float:
        """(hard cost - target) / target of the gates as they are now."""
        return (float(self.budget.hard(self.gated)) - self.budget.target) / self.budget.target

    def _shift_to_target(self, logits: list[torch.Tensor]) -> float:
        """Add one constant to `logits` (then fill to the export's widths) so the hard network lands closest to the
        target; no shift unless it lands closer (the macro gates may leave these gates nothing to reach it with)."""
        target = self.budget.target / self.budget.dense
        align = self.options.value_align
        base = [g.detach().clone() for g in logits]

        def error(shift: float) -> float:
            for g, b in zip(logits, base, strict=True):
                g.copy_(b + shift)
            if align:
                self.gated.fill_value_widths(align)
            return self._fraction(float(self.budget.hard(self.gated))) - target

        shift = 0.0
        if abs(error(0.0)) > 0.5 * self.options.target_tolerance * target:
            lo, hi = self._bracket(logits, error)
            shift = min((0.0, lo, hi), key=lambda c: (round(abs(error(c)), 12), abs(c)))
        error(shift)
        return shift

    def _fraction(self, hard_cost: float) -> float:
        """A hard cost as a fraction of dense; MACs are whole numbers (a float32 sum read back is not)."""
        return (round(hard_cost) if self.budget.kind == "macs" else hard_cost) / self.budget.dense

    # --- state ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Gate logits, controller, schedule position and landing: with the model's weights, a run resumes exactly."""
        self._pin()
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "step": self.step_count,
            "total_steps": self.total_steps,
            "search_steps": self.search_steps,
            "controller": self.controller.state(),
            "landing_shift": self.landing_shift,
            "landed": self.landed,
            "geometry": self._geometry_record(),
            "budget": {"kind": self.budget.kind, "dense": self.budget.dense, "target": self.budget.target},
            "start_digest": self._start_digest,
            "qk_gates": self.gated.qk_gated,
            "gates": {k: v.detach().clone() for k, v in self.gated.gates.as_dict().items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state_dict() of a pruner of the same model, budget and schedule; anything else is refused
        before this pruner changes."""
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            raise HiapError("Not a hiap pruner state (Pruner.state_dict()); was another object saved under its key?")
        if state.get("geometry") != self._geometry_record():
            raise HiapError(f"The pruner state is of another model geometry ({state.get('geometry')}), not "
                            f"{self._geometry_record()}.")  # fmt: skip
        mine = {"kind": self.budget.kind, "dense": self.budget.dense, "target": self.budget.target}
        if state.get("budget") != mine:
            raise HiapError(f"The pruner state is of another budget ({state.get('budget')}), not {mine}.")
        if (state.get("total_steps"), state.get("search_steps")) != (self.total_steps, self.search_steps):
            raise HiapError(f"The pruner state is of a {state.get('total_steps')}-step schedule, this pruner "
                            f"{self.total_steps} steps: give the same total_steps and search_fraction.")  # fmt: skip
        if state.get("start_digest") != self._start_digest:
            raise HiapError(
                "The pruner state is of a run that started from other weights (it rewinds to them when the search "
                "ends): load the same starting weights into the model before wrapping it."
            )
        if bool(state.get("qk_gates", False)) != self.gated.qk_gated:
            raise HiapError(f"The pruner state is of a run with qk_gates {bool(state.get('qk_gates', False))}, this "
                            f"pruner's is {self.gated.qk_gated}: give the same qk_gates.")  # fmt: skip
        step = state.get("step")
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= self.total_steps:
            raise HiapError(f"The pruner state's step {step!r} is not within its {self.total_steps}-step schedule.")
        gates = state.get("gates")
        gates = with_qk_logits(dict(gates)) if isinstance(gates, Mapping) else gates
        own = self.gated.gates.as_dict()
        if (
            not isinstance(gates, Mapping)
            or set(gates) != set(own)
            or any(not isinstance(gates[k], torch.Tensor) or gates[k].shape != own[k].shape for k in own)
        ):
            raise HiapError("The pruner state's gate logits do not match this model's gates (another model?).")
        self.gated.gates.load_state_dict(dict(gates))
        self.controller.load_state(dict(state["controller"]))
        self.step_count = step
        self.landing_shift = float(state.get("landing_shift") or 0.0)
        self.landed = bool(state.get("landed", False))
        self._final = self.gated.hard_masks() if step >= self.search_steps else None
        self._fixed_logits = (
            {k: v.detach().clone() for k, v in self.gated.gates.as_dict().items()} if self._final is not None else None
        )
        self._forward_masks = None
        self._fixed_costs = None
        self.hard_fraction = self._fraction(float(self.budget.hard(self.gated)))

    def _geometry_record(self) -> dict[str, int]:
        g = self.geometry
        return {"depth": g.depth, "num_heads": g.num_heads, "head_dim": g.head_dim, "hidden": g.hidden,
                "dense_macs": g.dense_macs}  # fmt: skip


def _digest(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 of a state dict's names and values (first 16 hex): which starting weights a run rewinds to."""
    import hashlib

    h = hashlib.sha256()
    for name, value in state.items():
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
