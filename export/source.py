"""What an export starts from: a training run's checkpoint or a model with a plan, as the dense model, its gated
reference and the structure to cut."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from export.plan import read_plan_json, structure_from_dict
from hiap.base.errors import HiapError
from hiap.checkpoint import gated_from_checkpoint, load_checkpoint
from hiap.cost import Structure
from hiap.gated import GatedViT, Masks, masks_to_structure, structure_to_masks
from hiap.models import BUILTIN_MODELS, create_model, data_config, load_pretrained, load_weights


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
        from export.compact import build_compact, compact_in_place

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
    short = float(config.get("search_fraction", 1.0)) < 1.0
    return value_align if short and isinstance(value_align, int) and not isinstance(value_align, bool) else 0


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
