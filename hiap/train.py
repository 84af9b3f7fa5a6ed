"""The trainer behind `hiap train`: model, data, optimizer, KD and checkpoints around the public Pruner, resumable
and seeded."""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from hiap import __version__, faults
from hiap import distributed as dd
from hiap.base.atomic import write_json_atomic, write_text_atomic
from hiap.base.cpu import cpu_flags, cpu_model, read_cpuinfo
from hiap.base.errors import HiapError
from hiap.base.jsonfile import parse_json
from hiap.checkpoint import CHECKPOINT_NAME, Checkpoint, load_checkpoint, remove_stale_temporaries, save_checkpoint
from hiap.compensate import calibration_batches
from hiap.config import TrainConfig, write_yaml
from hiap.cost import Structure, structure_params
from hiap.data import Augment, Dataset, create_data
from hiap.gated import GatedViT, describe_vit
from hiap.loss import task_loss
from hiap.models import create_model, data_config, load_pretrained
from hiap.pruner import GATES, Budget, Latency, Pruner, gate_histogram

LOCK_NAME = ".hiap.lock"
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
    if cfg.name or cfg.dense:
        return cfg.name or f"{cfg.model}-dense"
    if cfg.target_latency_ms:
        return f"{cfg.model}-lat{cfg.target_latency_ms:g}ms"
    return f"{cfg.model}-macs{cfg.target_macs}"


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
        # per kept head where q/k dims were pruned; null for a block whose heads keep them all
        "kept_qk_dims": [None if b.qk_dims is None else [len(q) for q in b.qk_dims] for b in structure.blocks],
    }


def all_finite(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """A 0-d bool tensor: every element of every tensor is finite, with no read-back (the caller decides when).

    The max-abs norm of a tensor is finite exactly when all its elements are (NaN propagates, and unlike a sum of
    squares it cannot overflow); _foreach_norm computes all of them in a few fused kernels, not one per tensor.
    """
    if not tensors:
        return torch.ones((), dtype=torch.bool, device=device)
    return torch.stack(torch._foreach_norm(tensors, math.inf)).isfinite().all()


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups of the weights: decayed matrices, and non-decayed 1-D params and tokens (the gate logits of a
    pruned model are the Pruner's groups)."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad or name.startswith(f"{GATES}."):
            continue
        (no_decay if p.ndim < 2 or name in skip else decay).append(p)
    return [
        {"params": decay, "lr": cfg.lr, "weight_decay": cfg.weight_decay, "base_lr": cfg.lr},
        {"params": no_decay, "lr": cfg.lr, "weight_decay": 0.0, "base_lr": cfg.lr},
    ]


@dataclass(frozen=True)
class Schedule:
    """The step counts of a run, fixed by the config and the number of training images."""

    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    trace_every: int

    @classmethod
    def of(cls, cfg: TrainConfig, num_train: int) -> Schedule:
        used = min(cfg.train_images, num_train) if cfg.train_images > 0 else num_train
        per_epoch = used // cfg.batch_size
        if per_epoch == 0:
            raise HiapError(f"Batch size {cfg.batch_size} exceeds the {num_train} training images.")
        total = cfg.epochs * per_epoch
        return cls(
            steps_per_epoch=per_epoch,
            total_steps=total,
            warmup_steps=int(cfg.warmup_epochs * per_epoch),
            trace_every=max(1, per_epoch // 20),
        )


class Trainer:
    """Builds everything from a TrainConfig, then runs epochs; every epoch ends in a complete checkpoint."""

    def __init__(
        self,
        cfg: TrainConfig,
        console: Console | None = None,
        resume: bool = False,
        make_data: Callable[[dict[str, Any]], Dataset] | None = None,
    ) -> None:
        """`console`: where notes and the progress bar go (none: silent, as a library). `make_data`, given the
        model's data config, builds the data instead of `cfg.data` (benchmarks use it for the built-in data's search
        split)."""
        cfg.validate()
        self.cfg = cfg
        self.make_data = make_data
        self.dist = dd.from_env()
        # Prints only to the console the caller gives (the CLI's); under torchrun only rank 0 talks and writes, the
        # others compute the same steps in silence.
        self.console = console if console is not None and self.dist.is_main else Console(quiet=True)
        self.resume = resume
        self.device = select_device(cfg.device, self.dist.local_rank if self.dist.enabled else None)
        dd.init(self.dist, self.device)
        self.paths = RunPaths(self._agree_on_run_dir(cfg, resume))
        self.notes: list[str] = []
        self.skipped_steps = 0
        self._lock_file: Any = None

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
        target = None if cfg.dense else cfg.target()  # a malformed target fails before anything is loaded
        self.ckpt = self._load_resume()
        torch.manual_seed(cfg.seed)
        if cfg.batch_size % self.dist.world:
            raise HiapError(f"Batch size {cfg.batch_size} must divide evenly over {self.dist.world} processes.")
        self._build_model_and_data()
        self.schedule = Schedule.of(cfg, self.data.num_train)
        # The teacher is the plain starting network: copied before the pruner gates the model in place.
        self.teacher = copy.deepcopy(self.vit).eval().requires_grad_(False) if cfg.kd and not cfg.dense else None
        self.pruner = None if target is None else self._pruner()
        groups = param_groups(self.vit, cfg) + (self.pruner.param_groups() if self.pruner else [])
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
        self.amp = cfg.amp and self.device.type == "cuda"
        self.start_epoch, self.step = 0, 0
        self.dense_val_acc: float | None = None
        self.last_val_acc: float | None = None
        if self.ckpt is not None:
            self._restore(self.ckpt)
        self.forward_model = self._wrap_for_ddp(self.vit)
        table = self.budget.latency.table if self.budget.latency is not None else None
        if table is not None and table.measured_elsewhere:
            self.notes.append(f"latency table '{table.path}' was not measured on {table.device} "
                              f"({table.measured_elsewhere}): the latencies trained to are not its")  # fmt: skip

    def _pruner(self) -> Pruner:
        """The run's pruner, on the model as built (before a resumed run's weights are loaded)."""
        cfg = self.cfg
        lut = self._lut()
        budget = cfg.target_macs if lut is None else Latency(cfg.target_latency_ms, lut, cfg.latency_batch)
        return Pruner(
            self.vit,
            self.schedule.total_steps,
            budget,
            options=cfg.prune_options(),
            model_name=cfg.model,
            steps_per_epoch=self.schedule.steps_per_epoch,
            trace_every=self.schedule.trace_every,
            calibration=calibration_batches(self.data, cfg.batch_size, cfg.seed, self.device)
            if cfg.prune_options().needs_calibration()
            else None,
        )

    def _lut(self) -> Path | None:
        """The latency table of a latency target: the run's own copy when resuming (the file --lut named may have
        been measured again since), else --lut."""
        if not self.cfg.target_latency_ms:
            return None
        own = self.paths.root / "lut.json"
        return own if self.resume and own.is_file() else Path(self.cfg.lut)

    def _build_model_and_data(self) -> None:
        """The model (rebuilt for the data's class count), its data pipeline, geometry and starting weights."""
        cfg = self.cfg
        vit = create_model(cfg.model, drop_path_rate=cfg.drop_path, model_kwargs=cfg.model_kwargs)
        self.data_cfg = data_config(vit)
        self.data: Dataset = (
            self.make_data(self.data_cfg)
            if self.make_data is not None
            else create_data(cfg.data, self.data_cfg, workers=cfg.workers, augment=Augment.from_config(cfg),
                             cache=cfg.data_cache)
        )  # fmt: skip
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

    def _wrap_for_ddp(self, core: nn.Module) -> nn.Module:
        """What the training forward calls: the model itself, or its DistributedDataParallel wrapper under
        torchrun (gradients of weights and gate logits are averaged, so every rank keeps the same gates)."""
        if not self.dist.enabled:
            return core
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(core, device_ids=ids)

    @property
    def gated(self) -> GatedViT | None:
        """The gated model of a budgeted run (None for a dense run)."""
        return self.pruner.gated if self.pruner else None

    @property
    def budget(self) -> Budget:
        """The run's budget; a dense run's is the dense MACs themselves."""
        if self.pruner is not None:
            return self.pruner.budget
        return Budget(float(self.geometry.dense_macs), float(self.geometry.dense_macs))

    @property
    def dense_macs(self) -> int:
        return self.geometry.dense_macs

    @property
    def target_macs(self) -> int | None:
        """The MAC target (None under a latency budget)."""
        return self.pruner.target_macs if self.pruner else self.geometry.dense_macs

    def _restore(self, ckpt: Checkpoint) -> None:
        st = ckpt.state
        if self.pruner is None:
            self.vit.load_state_dict(ckpt.model)
        else:
            # The gate logits are entries of the model's state_dict; the checkpoint keeps them apart.
            self.vit.load_state_dict({**ckpt.model, **{f"{GATES}.{k}": v for k, v in ckpt.gates.items()}})
            if not isinstance(st.get("pruner"), dict):
                raise HiapError(f"'{self.paths.checkpoint}' was written by an older hiap (no pruner state): it can be "
                                "exported, not resumed; start the run again.")  # fmt: skip
            self.pruner.load_state_dict({**st["pruner"], "gates": ckpt.gates})
        if ckpt.optimizer is not None:
            self.optimizer.load_state_dict(ckpt.optimizer)
        if "torch" in ckpt.rng:
            torch.set_rng_state(ckpt.rng["torch"])
        self.start_epoch, self.step = int(st["epoch"]), int(st["step"])
        self.dense_val_acc = st.get("dense_val_acc")
        self.skipped_steps = int(st.get("skipped_steps", 0))
        self._on_main("Trimming metrics.jsonl", self._trim_metrics)

    def _trim_metrics(self) -> None:
        """Metrics of epochs after the checkpoint (a crash between writing both) are dropped, then rewritten."""
        if not self.paths.metrics.exists():
            return
        lines = [ln for ln in self.paths.metrics.read_text().splitlines() if ln.strip()]
        try:
            keep = [ln for ln in lines if parse_json(ln, "", allow_nan=True)["epoch"] <= self.start_epoch]
        except (HiapError, KeyError, TypeError):
            raise HiapError(
                f"'{self.paths.metrics}' is damaged: move it away to resume (the checkpoint is intact)."
            ) from None
        write_text_atomic(self.paths.metrics, "".join(ln + "\n" for ln in keep))

    # --- one step, one epoch ---------------------------------------------------------------------------------
    def _autocast(self) -> Any:
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else nullcontext()

    def tau(self, step: int) -> float:
        """The gate temperature at `step` (the pruner's; a dense run, which has no gates, records tau_end)."""
        return self.pruner.temperature(step) if self.pruner is not None else self.cfg.tau_end

    def _set_lr(self) -> None:
        sched, first = self.schedule, 0
        # When the pruner rewinds the weights at the search's end, they get a fresh cosine over the remaining steps.
        if self.pruner is not None and self.pruner.rewinds and self.step >= self.pruner.search_steps:
            first = self.pruner.search_steps
        f = lr_factor(self.step - first, sched.total_steps - first, sched.warmup_steps if first == 0 else 0,
                      self.cfg.min_lr_ratio)  # fmt: skip
        for g in self.optimizer.param_groups:
            if g.get("base_lr") is not None:  # the weights; the pruner sets its gates' lrs
                g["lr"] = g["base_lr"] * f

    def _train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        self._set_lr()
        tau = self.tau(self.step)
        loss, stats = self._loss(x, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        cause = self._nonfinite_cause(loss)
        if cause is not None:
            return self._nonfinite(cause, tau)
        self.optimizer.step()
        stats["loss"] = loss.detach()
        if self.pruner is None:
            # One read-back for every logged scalar (on a GPU each float() is a synchronisation that leaves the
            # device idle while the host queues the next kernels).
            values = torch.stack([v.detach().reshape(()).double() for v in stats.values()]).tolist()
            parts = {"tau": tau, **dict(zip(stats, values, strict=True))}
        else:
            report = self.pruner.step(self.optimizer, log=stats)  # the same single read-back, pruner's figures too
            parts = {"tau": tau, **report.logged, "penalty_scale": report.penalty_scale,
                     "expected_frac": report.expected_fraction, "hard_frac": report.hard_fraction}  # fmt: skip
        self.step += 1
        return parts

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Task loss (with KD from the frozen dense start) plus the search's penalty terms, and their parts."""
        cfg = self.cfg
        with self._autocast():
            logits = self.forward_model(x)
            teacher_logits = None
            if self.teacher is not None:
                with torch.no_grad():
                    teacher_logits = self.teacher(x)
        loss, stats = task_loss(logits, y, cfg.label_smoothing, teacher_logits, cfg.kd_alpha, cfg.kd_temperature)
        if self.pruner is not None:
            loss = self.pruner.penalty(loss)
            stats.update(self.pruner.penalty_parts)
        return loss, stats

    def _nonfinite_cause(self, loss: torch.Tensor) -> str | None:
        """'loss' or 'gradient' when either is non-finite on any rank, else None. Checked after backward, so one
        read-back decides for both; under DDP every rank has joined the same gradient all-reduce whatever its own
        loss was (a non-finite loss on one rank makes every rank's averaged gradients non-finite, and all skip or
        stop together)."""
        grads = [p.grad for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        flags = torch.stack([loss.detach().isfinite(), all_finite(grads, loss.device)])
        loss_ok, grads_ok = (bool(v) for v in flags.tolist())
        if dd.all_ranks_true(self.dist, loss_ok and grads_ok, self.device):
            return None
        # Every rank is here, so one more collective to name the cause is safe.
        return "gradient" if dd.all_ranks_true(self.dist, loss_ok, self.device) else "loss"

    def _nonfinite(self, what: str, tau: float) -> dict[str, float]:
        """Stop with the step and the last good checkpoint named, or (on_nonfinite: skip) drop the step."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.cfg.on_nonfinite == "skip":
            self.skipped_steps += 1
            if self.pruner is not None:
                self.pruner.skip_step(self.optimizer)
            self.step += 1  # schedules move on; the batch is simply not learned from
            return {"tau": tau, "skipped": 1.0}
        last = self.paths.checkpoint
        where = f"'{last}' (resume with --resume)" if last.exists() else "none yet (no epoch has completed)"
        raise HiapError(
            f"Non-finite {what} at step {self.step} (epoch {self.step // self.schedule.steps_per_epoch + 1}); the last "
            f"good checkpoint is {where}. Lower --lr or --gate-lr, or set on_nonfinite: skip to drop such batches."
        )

    @torch.no_grad()
    def evaluate(self, open_gates: bool = False) -> tuple[float, float]:
        """Top-1 accuracy and loss on the validation split with hard gates (the exported network)."""
        model = self.vit
        model.eval()
        # Sums stay on the device (float64, so the result equals summing Python floats) until one read-back.
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # correct, total, loss
        dense = self.pruner.open_gates() if open_gates and self.pruner is not None else nullcontext()
        # Under torchrun each rank reads and validates every world-th batch; the sums are added across ranks.
        with dense:
            for x, y in self.data.val_batches(256, self.dist.rank, self.dist.world):
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                with self._autocast():
                    logits = model(x)
                loss = nn.functional.cross_entropy(logits.float(), y, reduction="sum")
                sums[0] += (logits.argmax(-1) == y).sum()
                sums[1] += y.numel()
                sums[2] += loss.double()
        model.train()
        correct, total, loss_sum = dd.sum_across(self.dist, sums.tolist(), self.device)
        return correct / total, loss_sum / total

    # --- outputs -----------------------------------------------------------------------------------------
    def _structure(self) -> Structure:
        return self.pruner.structure() if self.pruner else self.geometry.dense_structure()

    def _check_finite_weights(self, epoch: int) -> None:
        """Never write a poisoned checkpoint (weights are equal on every rank, so every rank decides alike)."""
        tensors = list(self.vit.parameters())  # the gate logits of a pruned model included
        if not bool(all_finite([t.detach() for t in tensors], self.device)):
            raise HiapError(
                f"Weights or gates became non-finite in epoch {epoch}; not writing a poisoned checkpoint. The last "
                f"good one is '{self.paths.checkpoint}': resume from it with a lower --lr."
            )

    def _save(self, epoch: int, val_acc: float) -> None:
        pruner = self.pruner.state_dict() if self.pruner else None
        gates = pruner.pop("gates") if pruner else {}
        state = {
            "epoch": epoch,
            "step": self.step,
            "pruner": pruner,
            "dense_val_acc": self.dense_val_acc,
            "val_acc": val_acc,
            "model": self.cfg.model,
            "model_kwargs": self.cfg.model_kwargs,
            "num_classes": len(self.data.classes),
            "classes": self.data.classes,
            "data_config": self.data_cfg,
            "dense_macs": self.dense_macs,
            "target_macs": self.target_macs,
            "budget": self.budget.record(),
            "floors": vars(self.pruner.floors) if self.pruner else None,
            "weights_source": self.weights_source,
            "skipped_steps": self.skipped_steps,
            "dense_reference_valid": self.dense_reference_valid,
        }
        ckpt = Checkpoint(
            model={k: v for k, v in self.vit.state_dict().items() if not k.startswith(f"{GATES}.")},
            gates=gates,
            optimizer=self.optimizer.state_dict(),
            rng={"torch": torch.get_rng_state()},
            config=self.cfg.to_dict(),
            state=state,
        )
        save_checkpoint(self.paths.checkpoint, ckpt)

    def _latency_fields(self, structure: Structure) -> dict[str, Any]:
        """The latency budget's figures (none for a MAC budget): target and predicted ms of the structure."""
        budget = self.budget
        if budget.latency is None:
            return {}
        return {"target_latency_ms": budget.target, "predicted_latency_ms": budget.of(self.geometry, structure),
                "dense_latency_ms": budget.dense, "latency_table": budget.record()["table"]}  # fmt: skip

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
            "penalty_scale": self.pruner.penalty_scale if self.pruner else None,
            "expected_gmacs": (self.pruner.expected_macs() if self.pruner else self.dense_macs) / 1e9,
            "hard_gmacs": (self.pruner.hard_macs() if self.pruner else self.dense_macs) / 1e9,
            "target_gmacs": self.target_macs / 1e9 if self.target_macs is not None else None,
            **self._latency_fields(structure),
            "val_acc": val[0],
            "val_loss": val[1],
            "epoch_seconds": secs,
            "skipped_steps": self.skipped_steps,
        }
        record.update(structure_summary(structure))
        if self.pruner is not None:  # the gate histogram and the epoch's trace points (the trace starts afresh)
            trace, self.pruner.trace = self.pruner.trace, []
            record.update(gate_histogram=gate_histogram(self.pruner.gates), trace=trace)
        return record

    # --- the run -----------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train (or, resumed, finish) the run; a finished run resumed is left as it is and its summary returned."""
        try:
            self._on_main("Locking the run directory", self._lock)
            return self._run()
        finally:
            if self._lock_file is not None:
                self._lock_file.close()  # releases the lock (a crash releases it too)
                self._lock_file = None
            dd.shutdown(self.dist)

    def _lock(self) -> None:
        """An advisory lock on RUN/.hiap.lock for the whole run, so a second `hiap train` on the same folder stops
        in one line instead of interleaving its files with this one's; the kernel drops it when the process ends."""
        import fcntl
        import os

        self.paths.root.mkdir(parents=True, exist_ok=True)
        handle = open(self.paths.root / LOCK_NAME, "a+")  # noqa: SIM115 (held open for the run)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise HiapError(f"'{self.paths.root}' is being written by another hiap train (pid {holder}): wait for it "
                            "to end, or choose another --out.") from None  # fmt: skip
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock_file = handle

    def _run(self) -> dict[str, Any]:
        from hiap.progress import TrainProgress

        self.setup()
        if self.resume and self.start_epoch >= self.cfg.epochs and self.paths.summary.is_file():
            from hiap.base.jsonfile import read_json_object

            self.console.print(f"[yellow]note:[/] '{self.paths.root}' has finished all {self.cfg.epochs} epochs: "
                               "nothing to resume; its summary.json is left as it is")  # fmt: skip
            return read_json_object(self.paths.summary, "Run summary")
        self._on_main("Preparing the run directory", self._prepare_run_dir)
        for note in self.notes:
            self.console.print(f"[yellow]note:[/] {note}")
        t_start = time.perf_counter()
        if self.dense_val_acc is None:
            self.dense_val_acc = self.evaluate(open_gates=True)[0]
        self.vit.train()
        budget = self.budget
        fraction = budget.target / budget.dense
        with TrainProgress(self.console, self.schedule.total_steps, self.step, fraction, budget.kind) as progress:
            for epoch in range(self.start_epoch, self.cfg.epochs):
                self._train_epoch(epoch, progress)
        summary = self._summary(time.perf_counter() - t_start)
        if self.dist.enabled:
            summary["distributed"] = self._ranks_agree()
        if self.dist.is_main:
            write_json_atomic(self.paths.summary, summary)
        return summary

    def _train_epoch(self, epoch: int, progress: Any) -> None:
        """One epoch of steps, then validation, the metrics line and the checkpoint."""
        cfg = self.cfg
        t0 = time.perf_counter()
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        batches = self.data.train_batches(epoch, cfg.batch_size, cfg.seed, self.dist.rank, self.dist.world)
        for i, (x, y) in enumerate(batches):
            if i == self.schedule.steps_per_epoch:
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

    def _ranks_agree(self) -> dict[str, Any]:
        """Under torchrun every rank must end with the same gates (they decide the structure) to the bit; a dense
        run compares its weights."""
        spread = dd.max_spread(
            self.dist, list(self.pruner.gates.parameters() if self.pruner else self.vit.parameters())
        )
        if spread != 0.0:
            raise HiapError(f"Ranks ended with different gates (max abs diff {spread:.3g}): report this as a bug.")
        return {"world_size": self.dist.world, "backend": torch.distributed.get_backend(),
                "gate_max_abs_diff_across_ranks": spread}  # fmt: skip

    def _prepare_run_dir(self) -> None:
        paths = self.paths
        paths.root.mkdir(parents=True, exist_ok=True)
        if not self.resume:  # a folder without a checkpoint may hold lines of a run killed in its first epoch
            for stale_file in (paths.metrics, paths.summary):
                stale_file.unlink(missing_ok=True)
        write_yaml(paths.config, self.cfg.to_dict())
        if self.cfg.lut and self.cfg.target_latency_ms and not self.resume:  # the run carries its table
            from hiap.base.atomic import write_bytes_atomic

            source = Path(self.cfg.lut).resolve()
            if source != (paths.root / "lut.json").resolve():
                write_bytes_atomic(paths.root / "lut.json", source.read_bytes())
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
        pruned_macs = self.pruner.hard_macs() if self.pruner else self.dense_macs
        budget = self.budget
        landed = budget.of(self.geometry, structure)
        cpuinfo = read_cpuinfo()
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
            "budget": budget.kind,
            "target_gmacs": self.target_macs / 1e9 if self.target_macs is not None else None,
            **self._latency_fields(structure),
            # The promise: the exported network lands within target_tolerance of the target, in the budget's unit
            # (MACs, or the table's predicted ms); the CLI exits 3 if not.
            "target_error": (landed - budget.target) / budget.target,
            "target_met": abs(landed - budget.target) <= self.cfg.target_tolerance * budget.target,
            # What the end of a short search added to the micro-gate logits to land (Pruner.land); 0 otherwise.
            "landing_shift": self.pruner.landing_shift if self.pruner else 0.0,
            "dense_params": self.geometry.dense_params,
            "pruned_params": structure_params(self.geometry, structure),
            "val_acc": val_acc,
            "dense_val_acc": self.dense_val_acc,
            "seconds": seconds,
            "num_heads": self.geometry.num_heads,
            "head_dim": self.geometry.head_dim,
            "hidden": self.geometry.hidden,
            "device": str(self.device),
            "threads": torch.get_num_threads(),
            # The CPU the run's seconds were measured on (its features decide the kernels a CPU run got).
            "cpu": cpu_model(cpuinfo),
            "cpu_flags": cpu_flags(cpuinfo),
            "torch_version": torch.__version__,
            "run_dir": str(self.paths.root),
            "checkpoint": str(self.paths.checkpoint),
            **structure_summary(structure),
        }
