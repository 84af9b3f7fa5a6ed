"""What an export starts from: a training run's checkpoint or a model with a plan, as the dense model, its gated
reference and the structure to cut."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hiap.base.errors import HiapError
from hiap.checkpoint import gated_from_checkpoint, load_checkpoint
from hiap.cost import Structure
from hiap.export.plan import read_plan_json, structure_from_dict
from hiap.gated import GatedViT, Masks, masks_to_structure, structure_to_masks
from hiap.models import BUILTIN_MODELS, constructor_kwargs, create_model, data_config, load_pretrained, load_weights
from hiap.pruner import landing_grid

if TYPE_CHECKING:
    from hiap.pruner import Pruner


@dataclass
class Source:
    """What an export starts from: the dense timm model, the reference (gated, eval) and the structure."""

    vit: torch.nn.Module
    gated: GatedViT
    masks: Masks
    structure: Structure
    model: str
    num_classes: int
    classes: list[str]
    data_config: dict[str, Any]
    val_acc: float | None
    builtin_data: bool
    origin: str
    dense_val_acc: float | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    data: str | None = None  # the run's --data ('builtin' or an ImageFolder root); None for a plan-only export
    lut: Path | None = None  # the latency table a latency-targeted run was trained to (RUN/lut.json)
    # A ViT inside the user's own model (hiap.api.export): the whole model is exported, `vit` being its backbone at
    # `backbone_path`; its reference forward is the model itself, gated by its pruner (or already compact).
    wrapper: torch.nn.Module | None = None
    backbone_path: str = ""
    golden_inputs: torch.Tensor | None = None  # the user's sample inputs for golden.npz (hiap.api.export)
    # The value-width grid the search's landing filled kept heads to and counted the budget on (Pruner.landing_align;
    # 0: none): the export's align must divide it or be a multiple of it.
    landing_align: int = 0

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The network the export must reproduce: the gated model with the structure's masks."""
        with torch.no_grad():
            if self.wrapper is None:
                return self.gated(x, self.masks)
            return self.wrapper.eval()(x)

    def exported(self, align: int) -> torch.nn.Module:
        """The module to write as ONNX: the compact ViT, or a copy of the user's model with a compact backbone."""
        from hiap.export.compact import build_compact, compact_in_place

        if self.wrapper is None:
            return build_compact(self.vit, self.structure, align=align)
        return compact_in_place(self.wrapper, self.backbone_path, self.structure, align, copy_model=True)


def source_from_run(run: Path, dense: bool = False) -> Source:
    """The run's pruned network; with `dense`, the network the run started from (its pretrained weights, all gates
    open), which is the baseline a user compares against. A run from random init has no such baseline: its dense
    export is the trained weights with every gate open, and the metadata says so."""
    ckpt = load_checkpoint(run)
    state, config = ckpt.state, ckpt.config
    model_kwargs = dict(state.get("model_kwargs") or {})
    gated = gated_from_checkpoint(ckpt, str(run)).eval()
    vit = gated.vit
    origin = str(run)
    pretrained = str(config.get("pretrained", "none"))
    reference_valid = bool(state.get("dense_reference_valid", True))
    if dense and not config.get("dense", False) and pretrained != "none" and reference_valid:
        described, notes = load_pretrained(vit, state["model"], pretrained)
        if described == "random init" or notes:
            load_weights(vit, ckpt.model, str(run))
        else:
            origin = f"{run} (dense start: {described})"
    else:
        load_weights(vit, ckpt.model, str(run))
    masks = gated.hard_masks() if ckpt.gates and not dense else gated.open_masks()
    start = origin != str(run)
    val_acc = state.get("dense_val_acc") if start else state.get("val_acc")
    return Source(
        vit=vit,
        gated=gated,
        masks=masks,
        structure=masks_to_structure(masks),
        model=state["model"],
        num_classes=state["num_classes"],
        classes=list(state.get("classes", [])),
        data_config=state["data_config"],
        val_acc=val_acc,
        builtin_data=config.get("data") == "builtin",
        origin=origin,
        dense_val_acc=state.get("dense_val_acc") if reference_valid else None,
        model_kwargs=model_kwargs,
        data=str(config["data"]) if config.get("data") else None,
        lut=_run_lut(run) if not dense else None,
        landing_align=0 if dense or not ckpt.gates else _landing_align(config),
    )


def _landing_align(config: dict[str, Any]) -> int:
    """The run's landing grid: its value_align when the search ended before the run (a whole-run search or a run
    that predates the key: none)."""
    value_align = config.get("value_align", 0)
    if not isinstance(value_align, int) or isinstance(value_align, bool):
        return 0
    return landing_grid(value_align, float(config.get("search_fraction", 1.0)) < 1.0)


def _run_lut(run: Path) -> Path | None:
    folder = run if run.is_dir() else run.parent
    return folder / "lut.json" if (folder / "lut.json").is_file() else None


def source_from_plan(model: str, plan_path: Path, pretrained: str = "auto") -> Source:
    """A timm (or built-in) model and a plan, without a training run: edited plans, latency studies."""
    body = read_plan_json(plan_path)
    if body["model"] != model:
        raise HiapError(f"Plan '{plan_path}' is for model '{body['model']}', not '{model}'.")
    model_kwargs = dict(body.get("model_kwargs") or {})
    vit = create_model(model, num_classes=int(body["num_classes"]), model_kwargs=model_kwargs).eval()
    load_pretrained(vit, model, pretrained)
    gated = GatedViT(vit).eval()
    structure = structure_from_dict(body["blocks"], gated.geometry)
    return Source(
        vit=vit,
        gated=gated,
        masks=structure_to_masks(structure, gated.open_masks()),
        structure=structure,
        model=model,
        num_classes=int(body["num_classes"]),
        classes=list(body.get("class_names", [])),
        data_config=data_config(vit),
        val_acc=None,
        builtin_data=model in BUILTIN_MODELS,
        origin=str(plan_path),
        model_kwargs=model_kwargs,
    )


def source_from_pruner(pruner: Pruner, preprocessing: Mapping[str, Any] | None,
                       sample_inputs: torch.Tensor | None = None, class_names: list[str] | None = None,
                       data: str | None = None) -> Source:  # fmt: skip
    """The network a Pruner wraps, at the structure its search ended on (hiap.api.export): a ViT on its own or the
    user's model around it, gated by the pruner, with the preprocessing the user's loop used."""
    name = pruner.model_name or type(pruner.vit).__name__
    return source_from_model(pruner.model, pruner.vit, pruner.backbone_path, pruner.gated, pruner.structure(), name,
                             preprocessing, sample_inputs, class_names, data, "hiap.api.export",
                             pruner.landing_align)  # fmt: skip


def source_from_model(model: nn.Module, vit: nn.Module, backbone_path: str, gated: GatedViT, structure: Structure,
                      name: str, preprocessing: Mapping[str, Any] | None, sample_inputs: torch.Tensor | None,
                      class_names: list[str] | None, data: str | None, origin: str,
                      landing_align: int) -> Source:  # fmt: skip
    """A model in the user's hands (the ViT `vit` at `backbone_path` of `model`, or `model` itself) to export at
    `structure`, its inputs checked: the preprocessing, one output tensor, the class names and sample inputs."""
    data_cfg = _preprocessing(preprocessing, data_config(vit))
    outputs = _check_model_output(model, data_cfg["input_size"])
    _check_sample_inputs(sample_inputs, data_cfg["input_size"])
    if class_names is not None and len(class_names) != outputs:
        raise HiapError(f"class_names has {len(class_names)} names but the model outputs {outputs} values per image: "
                        "give one name per output.")  # fmt: skip
    return Source(
        vit=vit,
        gated=gated,
        masks=structure_to_masks(structure, gated.open_masks()),
        structure=structure,
        model=name,
        num_classes=int(getattr(vit, "num_classes", 0)),
        classes=list(class_names or []),
        data_config=data_cfg,
        val_acc=None,
        builtin_data=False,
        origin=origin,
        model_kwargs=constructor_kwargs(vit, name),
        data=data,
        wrapper=None if model is vit else model,
        backbone_path=backbone_path,
        golden_inputs=sample_inputs,
        landing_align=landing_align,
    )


def _preprocessing(given: Mapping[str, Any] | None, built: dict[str, Any]) -> dict[str, Any]:
    """The user's preprocessing over the backbone's own facts (input size it was built for), checked."""
    if not isinstance(given, Mapping) or "mean" not in given or "std" not in given:
        raise HiapError(
            "export needs the preprocessing your loop used: preprocessing={'mean': (...), 'std': (...)} per channel "
            "of [0, 1] pixels (data_config(model) gives timm's, if you trained with it)."
        )
    unknown = set(given) - set(built)
    if unknown:
        raise HiapError(f"preprocessing has unknown keys {sorted(unknown)}: known are {sorted(built)}.")
    cfg = dict(built) | dict(given)
    channels = int(cfg["input_size"][0]) if len(cfg["input_size"]) == 3 else -1
    if len(cfg["input_size"]) != 3 or tuple(int(v) for v in cfg["input_size"]) != tuple(built["input_size"]):
        raise HiapError(f"preprocessing input_size {tuple(cfg['input_size'])} is not the model's "
                        f"{tuple(built['input_size'])} (C, H, W) it was built for.")  # fmt: skip
    for key in ("mean", "std"):
        values = cfg[key]
        numbers = isinstance(values, (list, tuple)) and all(isinstance(v, (int, float)) for v in values)
        if not numbers or len(values) != channels or not all(math.isfinite(v) for v in values):
            raise HiapError(f"preprocessing {key} must be {channels} finite numbers (one per channel), got {values!r}.")
    if not all(v > 0 for v in cfg["std"]):
        raise HiapError(f"preprocessing std must be > 0 per channel, got {cfg['std']!r}.")
    cfg["mean"], cfg["std"] = tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"])
    cfg["input_size"] = tuple(int(v) for v in cfg["input_size"])
    return cfg


def _check_model_output(model: nn.Module, input_size: tuple[int, ...]) -> int:
    """The model returns one tensor (what an ONNX file with one output reproduces); its last dimension's size."""
    was_training = model.training
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(1, *input_size, device=next(model.parameters()).device))
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise HiapError(f"The model returns a {type(out).__name__}, not one tensor: export a module whose forward "
                        "returns the output to deploy (wrap your model and pick that output).")  # fmt: skip
    return int(out.shape[-1])


def _check_sample_inputs(x: torch.Tensor | None, input_size: tuple[int, ...]) -> None:
    if x is None:
        return
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != tuple(input_size):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise HiapError(f"sample_inputs must be a preprocessed image tensor [N, {', '.join(map(str, input_size))}], "
                        f"got {shape}.")  # fmt: skip
    if not x.is_floating_point():
        raise HiapError(f"sample_inputs are {x.dtype}: give them preprocessed (float, normalised as in training).")
    if x.shape[0] < 1:
        raise HiapError("sample_inputs hold no images: give at least one.")
