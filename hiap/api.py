"""The Python API: prune a timm ViT (on its own or as the backbone of your model) in your own training loop, then
freeze the structure as a plan, make the model physically smaller in place, save and rebuild it without pickle,
and export the artifact folder `hiap bench` runs. `hiap train` is built on the same calls.

    pruner = hiap.api.Pruner(model, total_steps, budget=0.5)      # before DDP and the optimizer
    opt = torch.optim.AdamW([{"params": list(pruner.weight_parameters())}, *pruner.param_groups()])
    for x, y in loader:
        loss = pruner.penalty(criterion(model(x), y))
        loss.backward(); opt.step(); opt.zero_grad()
        pruner.step(opt)
    hiap.api.export(pruner, "out/", preprocessing={"mean": MEAN, "std": STD},
                    sample_inputs=x[:8])                                # model.onnx, plan.json, golden.npz
    plan = hiap.api.materialize(pruner)                                   # the backbone's blocks, compact
    hiap.api.save_pruned(model, "pruned.safetensors", plan)
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hiap.base.errors import HiapError
from hiap.base.jsonfile import parse_json
from hiap.base.precision import INT8
from hiap.config import PruneOptions
from hiap.export.artifact import ExportReport
from hiap.export.compact import check_landing_grid, compact_in_place
from hiap.export.plan import Plan, make_plan, read_plan_json, structure_from_dict
from hiap.export.source import Source, source_from_model, source_from_pruner
from hiap.gated import describe_vit
from hiap.models import constructor_kwargs
from hiap.models import data_config as backbone_data_config
from hiap.pruner import GATES, Latency, Pruner, StepReport, find_backbone

__all__ = [
    "HiapError",
    "Latency",
    "PruneOptions",
    "Pruner",
    "StepReport",
    "apply_plan",
    "data_config",
    "export",
    "export_dense",
    "load_pruned",
    "materialize",
    "plan_of",
    "save_pruned",
]

PLAN_KEY = "hiap_plan"  # the plan's JSON in the safetensors header of save_pruned's file


def data_config(model: nn.Module) -> dict[str, Any]:
    """timm's preprocessing of the ViT in `model` (itself or your model's backbone) at the input size it was built
    for: input_size, mean, std, interpolation, crop_pct. Right only if your training loop normalised that way."""
    return backbone_data_config(find_backbone(model)[1])


def plan_of(pruner: Pruner, class_names: list[str] | None = None, source: str = "hiap.api", align: int = 8) -> Plan:
    """The structure the search fixed, as the plan `hiap export --plan` reads (plan.to_dict() is plan.json), to be
    emitted with value widths padded to `align` (which must divide or be a multiple of the landing's grid,
    Pruner.landing_align)."""
    _check_searched(pruner, "plan_of")
    _check_align(align)
    check_landing_grid(pruner.landing_align, align)
    vit = pruner.vit
    name = pruner.model_name or type(vit).__name__
    return make_plan(name, pruner.geometry, pruner.structure(), backbone_data_config(vit),
                     int(getattr(vit, "num_classes", 0)), class_names=list(class_names or []), source=source,
                     model_kwargs=constructor_kwargs(vit, name), align=align)  # fmt: skip


def _check_align(align: Any) -> None:
    if isinstance(align, bool) or not isinstance(align, int) or align < 1:
        raise HiapError(f"align must be an int >= 1 (1: no rounding), got {align!r}.")


def _plan_align(body: dict[str, Any], align: int | None) -> int:
    """The grid a plan's weights were emitted on (plans from before it was recorded: 8, the default then); an
    explicit `align` must be that one, or the rebuilt blocks would not have the saved weights' shapes."""
    recorded = body.get("align", 8)
    if isinstance(recorded, bool) or not isinstance(recorded, int) or recorded < 1:
        raise HiapError(f"The plan's 'align' must be an int >= 1, got {recorded!r:.40}.")
    if align is None:
        return int(recorded)
    _check_align(align)
    if align != recorded:
        raise HiapError(f"The plan was emitted with value widths padded to align {recorded}, not {align}: leave "
                        "align out to rebuild it as it was saved.")  # fmt: skip
    return align


def _check_searched(pruner: Pruner, what: str) -> None:
    """The structure exists only once the search has ended (before, the gates are still moving)."""
    if not isinstance(pruner, Pruner):
        raise HiapError(f"{what} needs the hiap.api.Pruner that wraps the model, got {type(pruner).__name__}.")
    pruner._check_live()
    if pruner.searching:
        raise HiapError(f"The search is still running (step {pruner.step_count} of {pruner.search_steps}): {what} "
                        "after it has ended, or the structure is not the landed one (for the unpruned network, "
                        "export_dense() the model before wrapping it).")  # fmt: skip


def materialize(pruner: Pruner, align: int = 8, class_names: list[str] | None = None) -> Plan:
    """Make the pruned ViT physically smaller, in place in the model the pruner wraps: each block becomes a compact
    block of the kept heads, value dims and neurons (value widths padded to `align`, as the export emits them), the
    gate logits are removed, and every other part of the model (your head) is untouched. Returns the plan (which
    records `align`); the pruner is spent. Rebuild such a model later with load_pruned()."""
    _check_searched(pruner, "materialize")
    plan = plan_of(pruner, class_names, align=align)
    training = pruner.vit.training
    compact_in_place(pruner.model, pruner.backbone_path, plan.structure, align)
    pruner.spent = True
    pruner.model.train(training)
    return plan


def _read_plan(plan: Plan | dict[str, Any] | str | Path) -> dict[str, Any]:
    if isinstance(plan, Plan):
        return plan.to_dict()
    if isinstance(plan, dict):
        return plan
    return read_plan_json(Path(plan))


def apply_plan(model: nn.Module, plan: Plan | dict[str, Any] | str | Path, align: int | None = None) -> nn.Module:
    """Give an unpruned model (your model definition, the same timm backbone) the plan's compact blocks in place,
    with the weights of its own blocks sliced into them (value widths padded to the plan's recorded align); load the
    pruned weights over them next."""
    body = _read_plan(plan)
    align = _plan_align(body, align)
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


def load_pruned(model: nn.Module, path: str | Path, align: int | None = None) -> nn.Module:
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
    pruner: Pruner,
    out: str | Path,
    *,
    preprocessing: Mapping[str, Any] | None = None,
    sample_inputs: torch.Tensor | None = None,
    class_names: list[str] | None = None,
    opset: int = 17,
    align: int = 8,
    dynamic_batch: bool = False,
    force: bool = False,
    lut: str | Path | None = None,
    int8_data: str | Path | None = None,
) -> ExportReport:
    """Write the artifact folder `hiap export` writes (plan.json, model.onnx, golden.npz, export_report.json) for
    the model `pruner` wraps, a ViT on its own or your whole model around a pruned ViT backbone (its other parts
    must be ONNX-exportable), after the search has ended and before materialize(): the file is checked against the
    gated model. The model itself is not changed. `align` must divide or be a multiple of the landing's grid
    (Pruner.landing_align).

    `preprocessing`: how your loop turned images into the model's input, recorded in the file so that `hiap bench
    --data` evaluates the same way: {"mean": (...), "std": (...)} per channel of [0, 1] pixels, optionally
    "input_size" (C, H, W; default the size the ViT was built for), "interpolation" and "crop_pct"
    (data_config(model) gives timm's values, right only if you trained with them). `sample_inputs` (preprocessed
    float [N, C, H, W]) become the golden inputs the bench's fidelity check replays. `lut`: a latency table whose
    prediction for the exported network the report records (default: the table of a latency-targeted pruner).
    `int8_data`: an ImageFolder root (train/ for calibration, val/ for the accuracy check) to make model.onnx the
    INT8 file (model-fp32.onnx beside it). A folder holding another export is replaced only with `force`. Returns
    export_report.json's content."""
    if not isinstance(pruner, Pruner):
        raise HiapError(f"export(pruner, out, ...) takes the Pruner that wraps your model first, got "
                        f"{type(pruner).__name__}.")  # fmt: skip
    _check_searched(pruner, "export")
    _check_int8_data(int8_data)
    src = source_from_pruner(pruner, preprocessing, sample_inputs, class_names, _data(int8_data))
    return _export(src, Path(out), opset, align, dynamic_batch, force, lut if lut is not None else _pruner_lut(pruner),
                   int8_data is not None)  # fmt: skip


def export_dense(
    model: nn.Module,
    out: str | Path,
    *,
    preprocessing: Mapping[str, Any] | None = None,
    model_name: str | None = None,
    sample_inputs: torch.Tensor | None = None,
    class_names: list[str] | None = None,
    opset: int = 17,
    dynamic_batch: bool = False,
    force: bool = False,
    int8_data: str | Path | None = None,
) -> ExportReport:
    """The same artifact folder for the unpruned `model` (before wrapping it in a Pruner): the dense baseline that
    `hiap bench --compare` and `--sweep` judge a pruned file against. Arguments as for export()."""
    from hiap.gated import GatedViT

    path, vit = find_backbone(model)
    if hasattr(vit, GATES):
        raise HiapError("export_dense takes the unpruned model: this one carries hiap gates (export the dense model "
                        "before wrapping it in a Pruner).")  # fmt: skip
    _check_int8_data(int8_data)
    gated = GatedViT(vit)
    name = model_name or str(getattr(vit, "pretrained_cfg", {}).get("architecture") or type(vit).__name__)
    src = source_from_model(
        model,
        vit,
        path,
        gated,
        gated.geometry.dense_structure(),
        name,
        preprocessing,
        sample_inputs,
        class_names,
        _data(int8_data),
        "hiap.api.export_dense",
        landing_align=0,
    )
    return _export(src, Path(out), opset, 8, dynamic_batch, force, None, int8_data is not None)


def _pruner_lut(pruner: Pruner) -> Path | None:
    latency = pruner.budget.latency
    path = getattr(latency.table, "path", None) if latency is not None else None
    return Path(path) if path else None


def _check_int8_data(int8_data: str | Path | None) -> None:
    if int8_data is not None and not Path(int8_data).is_dir():
        raise HiapError(f"int8_data '{int8_data}' is not a folder: give an ImageFolder root with train/ and val/.")


def _data(int8_data: str | Path | None) -> str | None:
    return str(int8_data) if int8_data is not None else None


def _export(src: Source, out: Path, opset: int, align: int, dynamic_batch: bool, force: bool,
            lut: Path | str | None, int8: bool) -> ExportReport:  # fmt: skip
    """The artifact folder of `src` (the model it wraps left in the train/eval mode it was in)."""
    from hiap.export.artifact import Int8Options, export_source

    model = src.wrapper if src.wrapper is not None else src.vit
    was_training = model.training
    try:
        return export_source(src, out, opset=opset, align=align, dynamic_batch=dynamic_batch, force=force,
                             lut=Path(lut) if lut is not None else None,
                             int8=Int8Options.asked(INT8, None) if int8 else None)  # fmt: skip
    except OSError as exc:
        raise HiapError(f"Cannot write the export to '{out}': {exc.strerror or exc}.") from None
    finally:
        model.train(was_training)
