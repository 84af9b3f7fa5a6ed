"""The trainer: one budgeted single-phase run (search, adaptation and export together), resumable and seeded."""

from __future__ import annotations

import copy
import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from hiap import __version__, faults
from hiap import distributed as dd
from hiap.atomic import write_json_atomic, write_text_atomic
from hiap.budget import BudgetController, check_schedule, check_target, parse_target
from hiap.checkpoint import CHECKPOINT_NAME, Checkpoint, load_checkpoint, remove_stale_temporaries, save_checkpoint
from hiap.config import TrainConfig, write_yaml
from hiap.cost import Structure, structure_params
from hiap.data import Augment, Dataset, create_data
from hiap.errors import HiapError
from hiap.gated import Floors, GatedViT, describe_vit
from hiap.gates import TemperatureSchedule
from hiap.loss import feasibility_loss, mac_penalty, polarization_loss, task_loss
from hiap.models import create_model, data_config, load_pretrained

# Config keys that may differ when a run is resumed (they do not change what is computed).
RESUMABLE_CHANGES = {"device", "workers", "amp", "on_nonfinite"}


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoint(self) -> Path:
        return self.root / CHECKPOINT_NAME

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"


def default_run_name(cfg: TrainConfig) -> str:
    return cfg.name or (f"{cfg.model}-dense" if cfg.dense else f"{cfg.model}-macs{cfg.target_macs}")


def resolve_run_dir(cfg: TrainConfig, resume: bool) -> Path:
    """--out, or runs/<name>; a fresh default run never reuses a folder that holds a run (adds -2, -3, ...)."""
    if cfg.out:
        root = Path(cfg.out)
        if not resume and (root / CHECKPOINT_NAME).exists():
            raise HiapError(f"'{root}' already holds a run: pass --resume to continue it or choose another --out.")
        return root
    base = Path("runs") / default_run_name(cfg)
    if resume:
        return base
    root, n = base, 1
    while (root / CHECKPOINT_NAME).exists() or (root / "config.yaml").exists():
        n += 1
        root = base.with_name(f"{base.name}-{n}")
    return root


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Linear warm-up, then cosine decay to `min_ratio` of the base lr."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    frac = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(frac, 1.0)))


def select_device(spec: str, local_rank: int | None = None) -> torch.device:
    """The device for `spec`; under torchrun with CUDA each process takes the GPU of its LOCAL_RANK."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise HiapError(f"--device {spec} was asked for but CUDA is not available here: use --device cpu.")
    if local_rank is not None and spec.startswith("cuda:"):
        raise HiapError(f"--device {spec} under torchrun would put every process on one GPU: use --device cuda "
                        "(each process takes the GPU of its LOCAL_RANK).")  # fmt: skip
    if spec == "cuda" and local_rank is not None:
        spec = f"cuda:{local_rank}"
    return torch.device(spec)


def structure_summary(structure: Structure) -> dict[str, list[Any]]:
    return {
        "kept_heads": [len(b.heads) for b in structure.blocks],
        "kept_value_dims": [[len(v) for v in b.value_dims] for b in structure.blocks],
        "kept_ffn": [b.ffn for b in structure.blocks],
        "kept_neurons": [len(b.neurons) for b in structure.blocks],
    }


def all_finite(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """A 0-d bool tensor: every element of every tensor is finite, with no read-back (the caller decides when).

    The max-abs norm of a tensor is finite exactly when all its elements are (NaN propagates, and unlike a sum of
    squares it cannot overflow); _foreach_norm computes all of them in a few fused kernels, not one per tensor.
    """
    if not tensors:
        return torch.ones((), dtype=torch.bool, device=device)
    return torch.stack(torch._foreach_norm(tensors, math.inf)).isfinite().all()


def gate_histogram(gates: nn.Module, bins: int = 10) -> dict[str, list[int]]:
    """Counts of keep probabilities sigmoid(logit) in `bins` equal bins of [0, 1], per gate kind (for hiap report:
    how the gates polarise towards 0 and 1 as the temperature falls)."""
    out = {}
    with torch.no_grad():
        for kind, logits in gates.as_dict().items():
            p = torch.sigmoid(logits.detach().float().flatten().cpu())
            out[kind] = torch.histc(p, bins=bins, min=0.0, max=1.0).long().tolist()
    return out


def param_groups(model: nn.Module, gates: nn.Module | None, cfg: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: decayed weights, non-decayed 1-D params and tokens, and gate logits (own lr, no decay)."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or name in skip else decay).append(p)
    groups = [
        {"params": decay, "lr": cfg.lr, "weight_decay": cfg.weight_decay, "base_lr": cfg.lr},
        {"params": no_decay, "lr": cfg.lr, "weight_decay": 0.0, "base_lr": cfg.lr},
    ]
    if gates is not None:
        # Gate logits keep a constant lr (the controller must still move them at the end), except that macro
        # gates (heads, FFN blocks) are frozen once the budget ramp is over: see BudgetController.
        macro = [gates.head, gates.ffn]
        micro = [gates.value, gates.neuron]
        groups.append({"params": macro, "lr": cfg.gate_lr, "weight_decay": 0.0, "base_lr": None, "gates": "macro"})
        groups.append({"params": micro, "lr": cfg.gate_lr, "weight_decay": 0.0, "base_lr": None, "gates": "micro"})
    return groups


class Trainer:
    """Builds everything from a TrainConfig, then runs epochs; every epoch ends in a complete checkpoint."""

    def __init__(self, cfg: TrainConfig, console: Console | None = None, resume: bool = False) -> None:
        self.cfg = cfg
        self.dist = dd.from_env()
        # Under torchrun only rank 0 talks and writes; the others compute the same steps in silence.
        self.console = (console or Console()) if self.dist.is_main else Console(quiet=True)
        self.resume = resume
        self.device = select_device(cfg.device, self.dist.local_rank if self.dist.enabled else None)
        dd.init(self.dist, self.device)
        self.paths = RunPaths(self._agree_on_run_dir(cfg, resume))
        self.notes: list[str] = []
        self.skipped_steps = 0
        self.trace: list[list[float]] = []  # [step, tau, expected, hard, reference] (fractions of dense)

    def _agree_on_run_dir(self, cfg: TrainConfig, resume: bool) -> Path:
        """Rank 0 picks the run directory (a default name may get a -2 suffix); every rank uses that one, and if
        rank 0 refuses (a run is already there) every rank stops with it instead of waiting."""
        if not self.dist.enabled:
            return resolve_run_dir(cfg, resume)
        mine, error = Path(), ""
        if self.dist.is_main:
            try:
                mine = resolve_run_dir(cfg, resume)
            except HiapError as exc:
                error = str(exc)
        encoded = torch.zeros(4096, dtype=torch.uint8, device=self.device)
        raw = (f"\x01{error}" if error else str(mine)).encode()[:4096]
        encoded[: len(raw)] = torch.tensor(list(raw), dtype=torch.uint8)
        torch.distributed.broadcast(encoded, src=0)
        text = bytes(encoded.cpu().tolist()).rstrip(b"\x00").decode(errors="replace")
        if text.startswith("\x01"):
            raise HiapError(text[1:])
        return Path(text)

    def _on_main(self, what: str, fn: Any, *args: Any) -> None:
        """Run fn on rank 0 only; if it fails there, every rank stops (no rank is left waiting in a collective)."""
        error = None
        if self.dist.is_main:
            try:
                fn(*args)
            except (HiapError, OSError, ValueError, KeyError) as exc:
                error = exc
        if not dd.all_ranks_true(self.dist, error is None, self.device):
            if isinstance(error, HiapError):
                raise error
            if error is not None:
                raise HiapError(f"{what} failed in '{self.paths.root}': {error}") from None
            raise HiapError(f"{what} failed on rank 0 (its message says why); every rank stops.")

    # --- setup -------------------------------------------------------------------------------------------
    def _load_resume(self) -> Checkpoint | None:
        if not self.resume:
            return None
        if self.dist.enabled and not dd.all_ranks_true(self.dist, self.paths.checkpoint.is_file(), self.device):
            raise HiapError(f"No checkpoint at '{self.paths.checkpoint}' for every process: --resume needs one, and "
                            "with several nodes --out must be on a filesystem all nodes share.")  # fmt: skip
        ckpt = load_checkpoint(self.paths.checkpoint)
        stored = ckpt.config
        defaults = TrainConfig().to_dict()
        changed = {
            k: (stored.get(k), v)
            for k, v in self.cfg.to_dict().items()
            if k not in RESUMABLE_CHANGES | {"out", "name"} and stored.get(k, defaults[k]) != v
        }  # a key the run predates counts as its default
        if changed:
            detail = ", ".join(f"{k}: run has {a!r}, command gives {b!r}" for k, (a, b) in changed.items())
            raise HiapError(f"Cannot resume '{self.paths.root}' with a different config ({detail}).")
        return ckpt

    def setup(self) -> None:
        cfg = self.cfg
        self.ckpt = self._load_resume()
        torch.manual_seed(cfg.seed)
        if cfg.batch_size % self.dist.world:
            raise HiapError(f"Batch size {cfg.batch_size} must divide evenly over {self.dist.world} processes.")
        vit = create_model(cfg.model, drop_path_rate=cfg.drop_path, model_kwargs=cfg.model_kwargs)
        self.data_cfg = data_config(vit)
        augment = Augment(cfg.crop_pad, tuple(cfg.scale), tuple(cfg.ratio), cfg.hflip, cfg.color_jitter,
                          cfg.auto_augment)  # fmt: skip
        self.data: Dataset = create_data(cfg.data, self.data_cfg, workers=cfg.workers, augment=augment,
                                         cache=cfg.data_cache)  # fmt: skip
        num_classes = len(self.data.classes)
        if getattr(vit, "num_classes", num_classes) != num_classes:
            vit = create_model(cfg.model, num_classes=num_classes, drop_path_rate=cfg.drop_path,
                               model_kwargs=cfg.model_kwargs)  # fmt: skip
        self.geometry = describe_vit(vit)  # fail early on unsupported models, before loading anything
        self.weights_source, notes = load_pretrained(vit, cfg.model, cfg.pretrained)
        self.notes += notes
        # A classifier that starts fresh makes the dense start chance-level: not a reference for accuracy drops.
        self.dense_reference_valid = not any("starts fresh" in n for n in notes)
        self.vit = vit.to(self.device)
        self.dense_macs = self.geometry.dense_macs
        self.dense_params = self.geometry.dense_params
        floors = Floors(cfg.k_min, cfg.min_value_frac, cfg.min_neuron_frac)
        if cfg.dense:
            self.gated = None
            self.target_macs = self.dense_macs
        else:
            self.target_macs = parse_target(cfg.target_macs).resolve(self.dense_macs)
            check_target(self.geometry, floors, self.target_macs)
            self.gated = GatedViT(self.vit, floors=floors, gate_init=cfg.gate_init).to(self.device)
            if cfg.gate_init_importance:  # a resumed run then loads its own logits over these
                self.gated.init_from_importance(cfg.gate_init_importance)
        self.teacher = None
        if cfg.kd and not cfg.dense:
            self.teacher = copy.deepcopy(self.vit).eval().requires_grad_(False)
        used = min(cfg.train_images, self.data.num_train) if cfg.train_images > 0 else self.data.num_train
        self.steps_per_epoch = used // cfg.batch_size
        if self.steps_per_epoch == 0:
            raise HiapError(f"Batch size {cfg.batch_size} exceeds the {self.data.num_train} training images.")
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.trace_every = max(1, self.steps_per_epoch // 20)
        self.warmup_steps = int(cfg.warmup_epochs * self.steps_per_epoch)
        # The gates learn over the first search_steps; every schedule of the search (temperature, budget ramp,
        # freezes) runs over those steps, and the rest of the run trains the weights of the fixed structure.
        self.search_steps = max(1, round(cfg.search_fraction * self.total_steps))
        self.final_masks: Any = None  # the exported structure's masks once the search has ended
        self.tau = TemperatureSchedule(cfg.tau_start, cfg.tau_end, self.search_steps)
        self.controller = BudgetController(self.target_macs / self.dense_macs, gain=cfg.controller_gain)
        if self.gated is not None:
            ramp = self.controller.ramp * self.search_steps / self.total_steps
            check_schedule(self.total_steps, self.steps_per_epoch, cfg.gate_init, cfg.gate_lr, ramp)
        self.optimizer = torch.optim.AdamW(
            param_groups(self.vit, self.gated.gates if self.gated else None, cfg), lr=cfg.lr
        )
        self.amp = cfg.amp and self.device.type == "cuda"
        self.start_epoch, self.step = 0, 0
        self.dense_val_acc: float | None = None
        if self.ckpt is not None:
            self._restore(self.ckpt)
        # What the training forward calls: the model itself, or its DistributedDataParallel wrapper under
        # torchrun (gradients of weights and gate logits are averaged, so every rank keeps the same gates).
        core: nn.Module = self.gated if self.gated is not None else self.vit
        self.forward_model: nn.Module = core
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward_model = DistributedDataParallel(core, device_ids=ids)
        # Hard MACs of the current gates, refreshed after every optimizer step (computed once per step).
        self.hard_fraction = self.gated.hard_macs() / self.dense_macs if self.gated is not None else 1.0
        self.last_val_acc: float | None = None

    def _restore(self, ckpt: Checkpoint) -> None:
        self.vit.load_state_dict(ckpt.model)
        if self.gated is not None:
            self.gated.gates.load_state_dict(ckpt.gates)
        if ckpt.optimizer is not None:
            self.optimizer.load_state_dict(ckpt.optimizer)
        if "torch" in ckpt.rng:
            torch.set_rng_state(ckpt.rng["torch"])
        st = ckpt.state
        self.start_epoch, self.step = int(st["epoch"]), int(st["step"])
        self.controller.load_state(st["controller"])
        self.dense_val_acc = st.get("dense_val_acc")
        self.skipped_steps = int(st.get("skipped_steps", 0))
        self._on_main("Trimming metrics.jsonl", self._trim_metrics)

    def _trim_metrics(self) -> None:
        """Metrics of epochs after the checkpoint (a crash between writing both) are dropped, then rewritten."""
        if not self.paths.metrics.exists():
            return
        lines = [ln for ln in self.paths.metrics.read_text().splitlines() if ln.strip()]
        try:
            keep = [ln for ln in lines if json.loads(ln)["epoch"] <= self.start_epoch]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise HiapError(
                f"'{self.paths.metrics}' is damaged: move it away to resume (the checkpoint is intact)."
            ) from None
        write_text_atomic(self.paths.metrics, "".join(ln + "\n" for ln in keep))

    # --- one step, one epoch ---------------------------------------------------------------------------------
    def _autocast(self) -> Any:
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else nullcontext()

    def _progress(self, step: int) -> float:
        """How far the structure search is at `step` (0..1): the clock of the controller's phases."""
        return min(step / self.search_steps, 1.0)

    def _searching(self) -> bool:
        return self.gated is not None and self.step < self.search_steps

    def _set_lr(self) -> None:
        f = lr_factor(self.step, self.total_steps, self.warmup_steps, self.cfg.min_lr_ratio)
        searching = self._searching()
        macro_frozen = not searching or self.controller.macro_frozen(self._progress(self.step), self.hard_fraction)
        for g in self.optimizer.param_groups:
            if g.get("base_lr") is not None:
                g["lr"] = g["base_lr"] * f
            elif g.get("gates") == "macro":
                g["lr"] = 0.0 if macro_frozen else self.cfg.gate_lr
            elif g.get("gates") == "micro":
                micro = self.controller.micro_lr_factor(self._progress(self.step)) if searching else 0.0
                g["lr"] = self.cfg.gate_lr * micro

    def _train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        cfg = self.cfg
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        self._set_lr()
        tau = self.tau(self.step)
        # The logged scalars stay tensors until one read-back at the end of the step: on a GPU each float() is a
        # synchronisation that leaves the device idle while the host queues the next kernels (measured on an H100:
        # gated steps took 1.43x plain wall time at 1.04x its kernel time with ten of them).
        stats: dict[str, torch.Tensor] = {}
        with self._autocast():
            if self.gated is None:
                logits, teacher_logits = self.forward_model(x), None
            else:
                if self._searching():
                    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.step)  # noise keyed by step
                    masks = self.gated.sample_masks(tau, gen, hard=cfg.gate_mode == "hard")
                else:  # the search is over: train exactly the network that will be exported
                    if self.final_masks is None:
                        self.final_masks = self.gated.hard_masks()
                    masks = self.final_masks
                logits = self.forward_model(x, masks)
                teacher_logits = None
                if self.teacher is not None:
                    with torch.no_grad():
                        teacher_logits = self.teacher(x)
        loss, task_parts = task_loss(logits, y, cfg.label_smoothing, teacher_logits, cfg.kd_alpha, cfg.kd_temperature)
        stats.update(task_parts)
        if self._searching():
            cost = self.gated.expected_cost()
            penalty, pen_parts = mac_penalty(
                cost, self.dense_macs, cfg.lambda_macro, cfg.lambda_micro, self.controller.scale
            )
            feas = feasibility_loss(self.gated)
            polar_weight = cfg.polarization * self.controller.hard_weight(self._progress(self.step))
            polar = polarization_loss(self.gated)
            loss = loss + penalty + feas + polar_weight * polar
            stats.update(pen_parts, polarization=polar.detach(), feasibility=feas.detach())
        self.optimizer.zero_grad(set_to_none=True)
        # Backward before the finiteness check, so one read-back decides for loss and gradients; under DDP every
        # rank then joins the same gradient all-reduce whatever its own loss was (a non-finite loss on one rank
        # makes every rank's averaged gradients non-finite, and all skip or stop together).
        loss.backward()
        grads = [p.grad for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        flags = torch.stack([loss.detach().isfinite(), all_finite(grads, loss.device)])
        loss_ok, grads_ok = (bool(v) for v in flags.tolist())
        if not dd.all_ranks_true(self.dist, loss_ok and grads_ok, self.device):
            # Every rank is in this branch, so one more collective to name the cause is safe.
            return self._nonfinite("gradient" if dd.all_ranks_true(self.dist, loss_ok, self.device) else "loss", tau)
        self.optimizer.step()
        stats["loss"] = loss.detach()
        if self.gated is not None:
            with torch.no_grad():
                stats["expected_macs"] = self.gated.expected_cost().total
                stats["hard_macs"] = self.gated.hard_cost()
        values = torch.stack([v.detach().reshape(()).double() for v in stats.values()]).tolist()
        parts = {"tau": tau, **dict(zip(stats, values, strict=True))}
        if self.gated is not None:
            parts["penalty_scale"] = self.controller.scale  # the scale this step's penalty used
            expected = parts.pop("expected_macs") / self.dense_macs
            hard = self.hard_fraction = round(parts.pop("hard_macs")) / self.dense_macs  # also read by _set_lr
            if self._searching():
                self.controller.update(expected, hard, self._progress(self.step + 1))
            parts.update(expected_frac=expected, hard_frac=hard)
            if self.step % self.trace_every == 0:  # a few points per epoch for hiap report's curves
                ref = self.controller.reference(self._progress(self.step + 1))
                self.trace.append([self.step, round(tau, 5), expected, hard, ref])
        self.step += 1
        return parts

    def _nonfinite(self, what: str, tau: float) -> dict[str, float]:
        """Stop with the step and the last good checkpoint named, or (on_nonfinite: skip) drop the step."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.cfg.on_nonfinite == "skip":
            self.skipped_steps += 1
            self.step += 1  # schedules move on; the batch is simply not learned from
            return {"tau": tau, "skipped": 1.0}
        last = self.paths.checkpoint
        where = f"'{last}' (resume with --resume)" if last.exists() else "none yet (no epoch has completed)"
        raise HiapError(
            f"Non-finite {what} at step {self.step} (epoch {self.step // self.steps_per_epoch + 1}); the last good "
            f"checkpoint is {where}. Lower --lr or --gate-lr, or set on_nonfinite: skip to drop such batches."
        )

    @torch.no_grad()
    def evaluate(self, open_gates: bool = False) -> tuple[float, float]:
        """Top-1 accuracy and loss on the validation split with hard gates (the exported network)."""
        model: nn.Module = self.gated if self.gated is not None else self.vit
        model.eval()
        # Sums stay on the device (float64, so the result equals summing Python floats) until one read-back.
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # correct, total, loss
        masks = None
        if self.gated is not None:  # once per evaluation, not per batch
            masks = self.gated.open_masks() if open_gates else self.gated.hard_masks()
        # Under torchrun each rank reads and validates every world-th batch; the sums are added across ranks.
        for x, y in self.data.val_batches(256, self.dist.rank, self.dist.world):
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with self._autocast():
                logits = self.gated(x, masks) if self.gated is not None else self.vit(x)
            loss = nn.functional.cross_entropy(logits.float(), y, reduction="sum")
            sums[0] += (logits.argmax(-1) == y).sum()
            sums[1] += y.numel()
            sums[2] += loss.double()
        model.train()
        correct, total, loss_sum = dd.sum_across(self.dist, sums.tolist(), self.device)
        return correct / total, loss_sum / total

    # --- outputs -----------------------------------------------------------------------------------------
    def _structure(self) -> Structure:
        return self.gated.hard_structure() if self.gated is not None else self.geometry.dense_structure()

    def _check_finite_weights(self, epoch: int) -> None:
        """Never write a poisoned checkpoint (weights are equal on every rank, so every rank decides alike)."""
        tensors = [*self.vit.parameters(), *(self.gated.gates.parameters() if self.gated is not None else [])]
        if not bool(all_finite([t.detach() for t in tensors], self.device)):
            raise HiapError(
                f"Weights or gates became non-finite in epoch {epoch}; not writing a poisoned checkpoint. The last "
                f"good one is '{self.paths.checkpoint}': resume from it with a lower --lr."
            )

    def _save(self, epoch: int, val_acc: float) -> None:
        state = {
            "epoch": epoch,
            "step": self.step,
            "controller": self.controller.state(),
            "dense_val_acc": self.dense_val_acc,
            "val_acc": val_acc,
            "model": self.cfg.model,
            "model_kwargs": self.cfg.model_kwargs,
            "num_classes": len(self.data.classes),
            "classes": self.data.classes,
            "data_config": self.data_cfg,
            "dense_macs": self.dense_macs,
            "target_macs": self.target_macs,
            "floors": vars(self.gated.floors) if self.gated is not None else None,
            "weights_source": self.weights_source,
            "skipped_steps": self.skipped_steps,
            "dense_reference_valid": self.dense_reference_valid,
        }
        gates = {k: v.detach() for k, v in self.gated.gates.as_dict().items()} if self.gated is not None else {}
        ckpt = Checkpoint(
            model=self.vit.state_dict(),
            gates=gates,
            optimizer=self.optimizer.state_dict(),
            rng={"torch": torch.get_rng_state()},
            config=self.cfg.to_dict(),
            state=state,
        )
        save_checkpoint(self.paths.checkpoint, ckpt)

    def _epoch_record(
        self, epoch: int, sums: dict[str, float], counts: dict[str, int], val: tuple[float, float], secs: float
    ) -> dict[str, Any]:
        # Under torchrun the epoch's sums and counts are summed over ranks: the record is the global mean.
        keys = sorted(sums)
        totals = dd.sum_across(self.dist, [sums[k] for k in keys] + [counts.get(k, 0) for k in keys], self.device)
        means = {k: totals[i] / max(totals[len(keys) + i], 1) for i, k in enumerate(keys)}
        structure = self._structure()
        record: dict[str, Any] = {
            "epoch": epoch,
            "step": self.step,
            "tau": self.tau(self.step),
            "lr": self.optimizer.param_groups[0]["lr"],
            "loss": means.get("loss"),
            "ce": means.get("ce"),
            "kd": means.get("kd"),
            "macro": means.get("macro"),
            "micro": means.get("micro"),
            "feasibility": means.get("feasibility"),
            "penalty_scale": self.controller.scale if self.gated is not None else None,
            "expected_gmacs": (float(self.gated.expected_cost().total.detach()) if self.gated else self.dense_macs)
            / 1e9,
            "hard_gmacs": (self.gated.hard_macs() if self.gated else self.dense_macs) / 1e9,
            "target_gmacs": self.target_macs / 1e9,
            "val_acc": val[0],
            "val_loss": val[1],
            "epoch_seconds": secs,
            "skipped_steps": self.skipped_steps,
        }
        record.update(structure_summary(structure))
        if self.gated is not None:
            record["gate_histogram"] = gate_histogram(self.gated.gates)
            record["trace"], self.trace = self.trace, []
        return record

    # --- the run -----------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        try:
            return self._run()
        finally:
            dd.shutdown(self.dist)

    def _run(self) -> dict[str, Any]:
        from hiap.progress import TrainProgress

        self.setup()
        cfg, paths, main = self.cfg, self.paths, self.dist.is_main
        self._on_main("Preparing the run directory", self._prepare_run_dir)
        for note in self.notes:
            self.console.print(f"[yellow]note:[/] {note}")
        t_start = time.perf_counter()
        if self.dense_val_acc is None:
            self.dense_val_acc = self.evaluate(open_gates=True)[0]
        self.vit.train()
        if self.gated is not None:
            self.gated.train()
        with TrainProgress(self.console, self.total_steps, self.step, self.target_macs / self.dense_macs) as progress:
            for epoch in range(self.start_epoch, cfg.epochs):
                t0 = time.perf_counter()
                sums: dict[str, float] = {}
                counts: dict[str, int] = {}
                batches = self.data.train_batches(epoch, cfg.batch_size, cfg.seed, self.dist.rank, self.dist.world)
                for i, (x, y) in enumerate(batches):
                    if i == self.steps_per_epoch:
                        break
                    parts = self._train_step(x, y)
                    faults.point("step")
                    for k, v in parts.items():
                        sums[k] = sums.get(k, 0.0) + v
                        counts[k] = counts.get(k, 0) + 1
                    progress.advance(epoch + 1, cfg.epochs, parts)
                val = self.evaluate()
                self.last_val_acc = val[0]
                record = self._epoch_record(epoch + 1, sums, counts, val, time.perf_counter() - t0)
                self._check_finite_weights(epoch + 1)
                self._on_main("Writing metrics and checkpoint", self._write_epoch, record, epoch + 1, val[0])
                progress.epoch_done(record)
        summary = self._summary(time.perf_counter() - t_start)
        if self.dist.enabled:
            gates = list(self.gated.gates.parameters()) if self.gated is not None else list(self.vit.parameters())
            spread = dd.max_spread(self.dist, gates)
            summary["distributed"] = {"world_size": self.dist.world, "backend": torch.distributed.get_backend(),
                                      "gate_max_abs_diff_across_ranks": spread}  # fmt: skip
            if spread != 0.0:
                raise HiapError(f"Ranks ended with different gates (max abs diff {spread:.3g}): report this as a bug.")
        if main:
            write_json_atomic(paths.summary, summary)
        return summary

    def _prepare_run_dir(self) -> None:
        paths = self.paths
        paths.root.mkdir(parents=True, exist_ok=True)
        if not self.resume:  # a folder without a checkpoint may hold lines of a run killed in its first epoch
            for stale_file in (paths.metrics, paths.summary):
                stale_file.unlink(missing_ok=True)
        write_yaml(paths.config, self.cfg.to_dict())
        for stale in remove_stale_temporaries(paths.root):
            self.console.print(f"[yellow]note:[/] removed {stale.name}, left by a process that was killed")

    def _write_epoch(self, record: dict[str, Any], epoch: int, val_acc: float) -> None:
        # Metrics line first, then the checkpoint: a crash in between leaves a line ahead of the checkpoint,
        # which --resume drops and rewrites; never a checkpoint without its line.
        with open(self.paths.metrics, "a") as f:
            f.write(json.dumps(record) + "\n")
        faults.point("metrics-written")
        self._save(epoch, val_acc)

    def _summary(self, seconds: float) -> dict[str, Any]:
        structure = self._structure()
        # The last epoch already validated this exact network; a resumed run with nothing left evaluates once.
        val_acc = self.last_val_acc if self.last_val_acc is not None else self.evaluate()[0]
        pruned_macs = self.gated.hard_macs() if self.gated is not None else self.dense_macs
        return {
            "hiap_version": __version__,
            "model": self.cfg.model,
            "model_kwargs": self.cfg.model_kwargs,
            "data": self.data.description,
            "augmentation": self.data.augmentation,
            "weights_source": self.weights_source,
            "dense": self.cfg.dense,
            "epochs": self.cfg.epochs,
            "dense_gmacs": self.dense_macs / 1e9,
            "pruned_gmacs": pruned_macs / 1e9,
            "target_gmacs": self.target_macs / 1e9,
            "target_error": (pruned_macs - self.target_macs) / self.target_macs,
            # The promise: the exported network lands within target_tolerance of the target (the CLI exits 3 if not).
            "target_met": abs(pruned_macs - self.target_macs) <= self.cfg.target_tolerance * self.target_macs,
            "dense_params": self.dense_params,
            "pruned_params": structure_params(self.geometry, structure),
            "val_acc": val_acc,
            "dense_val_acc": self.dense_val_acc,
            "seconds": seconds,
            "num_heads": self.geometry.num_heads,
            "head_dim": self.geometry.head_dim,
            "hidden": self.geometry.hidden,
            "device": str(self.device),
            "threads": torch.get_num_threads(),
            "torch_version": torch.__version__,
            "run_dir": str(self.paths.root),
            "checkpoint": str(self.paths.checkpoint),
            **structure_summary(structure),
        }
