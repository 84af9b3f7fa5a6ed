"""The Python API: prune a timm ViT (on its own or as the backbone of your model) in your own training loop, then
freeze the structure as a plan, make the model physically smaller in place, save and rebuild it without pickle,
and export the artifact folder `hiap bench` runs. `hiap train` is built on the same calls.

    pruner = hiap.api.Pruner(model, total_steps, target_macs=0.5)      # before DDP and the optimizer
    opt = torch.optim.AdamW([{"params": list(pruner.weight_parameters())}, *pruner.param_groups()])
    for x, y in loader:
        loss = pruner.penalty(criterion(model(x), y))
        loss.backward(); opt.step(); opt.zero_grad()
        pruner.step(opt)
    hiap.api.export(model, "out/", pruner=pruner, sample_inputs=x[:8])   # model.onnx, plan.json, golden.npz
    plan = hiap.api.materialize(pruner)                                   # the backbone's blocks, compact
    hiap.api.save_pruned(model, "pruned.safetensors", plan)
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from export.artifact import ExportReport
from export.compact import compact_in_place
from export.plan import Plan, make_plan, read_plan_json, structure_from_dict
from hiap.base.errors import HiapError
from hiap.base.jsonfile import parse_json
from hiap.config import PruneOptions
from hiap.gated import describe_vit
from hiap.models import data_config
from hiap.pruner import GATES, Pruner, StepReport, find_backbone

__all__ = [
    "HiapError",
    "PruneOptions",
    "Pruner",
    "StepReport",
    "apply_plan",
    "data_config",
    "export",
    "load_pruned",
    "materialize",
    "plan_of",
    "save_pruned",
]

PLAN_KEY = "hiap_plan"  # the plan's JSON in the safetensors header of save_pruned's file


def plan_of(pruner: Pruner, class_names: list[str] | None = None, source: str = "hiap.api") -> Plan:
    """The structure the pruner keeps now, as the plan `hiap export --plan` reads (plan.to_dict() is plan.json)."""
    vit = pruner.vit
    name = pruner.model_name or type(vit).__name__
    return make_plan(name, pruner.geometry, pruner.structure(), data_config(vit), int(getattr(vit, "num_classes", 0)),
                     class_names=list(class_names or []), source=source)  # fmt: skip


def materialize(pruner: Pruner, align: int = 8, class_names: list[str] | None = None) -> Plan:
    """Make the pruned ViT physically smaller, in place in the model the pruner wraps: each block becomes a compact
    block of the kept heads, value dims and neurons (value widths padded to `align`, as the export emits them), the
    gate logits are removed, and every other part of the model (your head) is untouched. Returns the plan; the
    pruner is spent. Rebuild such a model later with load_pruned()."""
    if pruner.searching:
        raise HiapError(f"The search is still running (step {pruner.step_count} of {pruner.search_steps}): "
                        "materialize after it has ended, or the structure is not the landed one.")  # fmt: skip
    plan = plan_of(pruner, class_names)
    compact_in_place(pruner.model, pruner.backbone_path, plan.structure, align)
    pruner.model.train(pruner.vit.training)
    return plan


def _read_plan(plan: Plan | dict[str, Any] | str | Path) -> dict[str, Any]:
    if isinstance(plan, Plan):
        return plan.to_dict()
    if isinstance(plan, dict):
        return plan
    return read_plan_json(Path(plan))


def apply_plan(model: nn.Module, plan: Plan | dict[str, Any] | str | Path, align: int = 8) -> nn.Module:
    """Give an unpruned model (your model definition, the same timm backbone) the plan's compact blocks in place,
    with the weights of its own blocks sliced into them; load the pruned weights over them next."""
    body = _read_plan(plan)
    path, vit = find_backbone(model)
    if hasattr(vit, GATES):
        raise HiapError("This model carries hiap gates: apply a plan to the unpruned model definition.")
    structure = structure_from_dict(body.get("blocks"), describe_vit(vit))
    compact_in_place(model, path, structure, align)
    return model


def save_pruned(model: nn.Module, path: str | Path, plan: Plan) -> None:
    """The pruned model's weights as safetensors (no pickle), with the plan in the file's header."""
    import json

    from safetensors.torch import save_file

    from hiap.base.atomic import write_bytes_atomic

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if any(k.split(".")[-1] == GATES or f".{GATES}." in f".{k}" for k in state):
        raise HiapError("The model still carries gate logits: materialize() it before saving the pruned weights.")
    target = Path(path)
    if not target.parent.is_dir():
        raise HiapError(f"Cannot write '{target}': its folder does not exist.")
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        save_file(state, str(tmp), metadata={PLAN_KEY: json.dumps(plan.to_dict())})
        write_bytes_atomic(target, tmp.read_bytes())
    except OSError as exc:
        raise HiapError(f"Cannot write '{target}': {exc.strerror or exc}.") from None
    finally:
        tmp.unlink(missing_ok=True)


def load_pruned(model: nn.Module, path: str | Path, align: int = 8) -> nn.Module:
    """Rebuild a model saved by save_pruned: `model` is the unpruned definition (built as for training); its
    backbone gets the plan from the file's header, then every weight is loaded (strictly: a name or shape that
    differs is an error)."""

    from safetensors import safe_open
    from safetensors.torch import load_file

    file = Path(path)
    if not file.is_file():
        raise HiapError(f"No pruned weights at '{file}'.")
    try:
        with safe_open(str(file), framework="pt") as f:
            header = f.metadata() or {}
        state = load_file(str(file))
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise HiapError(f"'{file}' is not a readable safetensors file ({exc}).") from None
    if PLAN_KEY not in header:
        raise HiapError(f"'{file}' holds no hiap plan: it was not written by hiap.api.save_pruned.")
    plan = parse_json(header[PLAN_KEY], f"The hiap plan in the header of '{file}'")
    # Tried on a copy first: a plan or weights that do not fit leave `model` as it was.
    trial = apply_plan(copy.deepcopy(model), plan, align)
    missing, unexpected = (set(trial.state_dict()) - set(state)), (set(state) - set(trial.state_dict()))
    if missing or unexpected:
        raise HiapError(f"'{file}' does not fit this model: missing {sorted(missing)[:3]}, unexpected "
                        f"{sorted(unexpected)[:3]}.")  # fmt: skip
    try:
        trial.load_state_dict(state)
    except RuntimeError as exc:
        raise HiapError(f"'{file}' does not fit this model: {str(exc).splitlines()[-1].strip()}") from None
    apply_plan(model, plan, align)
    model.load_state_dict(state)
    return model


def export(
    model: nn.Module,
    out: str | Path,
    pruner: Pruner,
    sample_inputs: torch.Tensor | None = None,
    class_names: list[str] | None = None,
    opset: int = 17,
    align: int = 8,
    dynamic_batch: bool = False,
    force: bool = False,
) -> ExportReport:
    """Write the artifact folder `hiap export` writes (plan.json, model.onnx, golden.npz, export_report.json) for
    `model`, a ViT on its own or your whole model around a pruned ViT backbone (its other parts must be
    ONNX-exportable), while `pruner` still wraps it: the file is checked against the gated model. `model` itself
    is not changed. `sample_inputs` (preprocessed, [N, C, H, W]) become the golden inputs the bench's fidelity
    check replays. A folder holding another export is replaced only with `force`. Returns export_report.json's
    content."""
    from export.artifact import export_source
    from export.source import Source

    if not isinstance(pruner, Pruner) or pruner.model is not model:
        raise HiapError("export needs the Pruner that wraps this model (export before materialize()).")
    if sample_inputs is not None and (not isinstance(sample_inputs, torch.Tensor) or sample_inputs.dim() != 4):
        raise HiapError("sample_inputs must be a preprocessed image tensor [N, C, H, W].")
    vit = pruner.vit
    src = Source(
        vit=vit,
        gated=pruner.gated,
        masks=pruner.gated.hard_masks(),
        structure=pruner.structure(),
        model=pruner.model_name or type(vit).__name__,
        num_classes=int(getattr(vit, "num_classes", 0)),
        classes=list(class_names or []),
        data_config=data_config(vit),
        val_acc=None,
        builtin_data=False,
        origin="hiap.api.export",
        wrapper=None if model is vit else model,
        backbone_path=pruner.backbone_path,
        golden_inputs=sample_inputs,
    )
    was_training = model.training
    try:
        return export_source(src, Path(out), opset=opset, align=align, dynamic_batch=dynamic_batch, force=force)
    except OSError as exc:
        raise HiapError(f"Cannot write the export to '{out}': {exc.strerror or exc}.") from None
    finally:
        model.train(was_training)
