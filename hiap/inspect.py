"""`hiap inspect`: dense and pruned MACs, params and per-block structure of a model name, run or checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hiap.checkpoint import CHECKPOINT_NAME, load_checkpoint
from hiap.cost import Structure, block_macs, structure_macs, structure_params
from hiap.errors import HiapError
from hiap.gated import Floors, GatedViT, describe_vit
from hiap.models import check_model_name, create_model, data_config


def structure_report(name: str, source: str, model: Any, structure: Structure) -> dict[str, Any]:
    geom = describe_vit(model)
    blocks = []
    for i, b in enumerate(structure.blocks):
        blocks.append(
            {
                "block": i,
                "heads": list(b.heads),
                "value_widths": [len(v) for v in b.value_dims],
                "ffn": b.ffn,
                "neurons": len(b.neurons),
                "gmacs": block_macs(geom, b) / 1e9,
            }
        )
    cfg = data_config(model)
    return {
        "target": source,
        "model": name,
        "input_size": list(cfg["input_size"]),
        "num_tokens": geom.num_tokens,
        "num_heads": geom.num_heads,
        "head_dim": geom.head_dim,
        "hidden": geom.hidden,
        "gmacs": structure_macs(geom, structure) / 1e9,
        "params": structure_params(geom, structure),
        "dense_gmacs": geom.dense_macs / 1e9,
        "dense_params": geom.dense_params,
        "blocks": blocks,
    }


def inspect_target(target: str) -> dict[str, Any]:
    path = Path(target)
    if path.exists():
        if path.is_dir() and not (path / CHECKPOINT_NAME).exists():
            raise HiapError(f"'{path}' is a folder without {CHECKPOINT_NAME}: pass a run directory or a checkpoint.")
        if path.is_file() and path.suffix != ".safetensors":
            raise HiapError(f"Cannot inspect '{path}': expected a timm model name, a run directory or a checkpoint.")
        ckpt = load_checkpoint(path)
        name = ckpt.state["model"]
        model = create_model(name, num_classes=ckpt.state.get("num_classes"), meta=True,
                             model_kwargs=ckpt.state.get("model_kwargs"))  # fmt: skip
        if not ckpt.gates:
            return structure_report(name, str(path), model, describe_vit(model).dense_structure())
        floors = Floors(**ckpt.state["floors"]) if ckpt.state.get("floors") else Floors()
        gated = GatedViT(model, floors=floors)
        try:
            gated.gates.load_state_dict(ckpt.gates)
        except RuntimeError as exc:
            raise HiapError(
                f"Checkpoint '{path}' gates do not fit model '{name}' ({str(exc).splitlines()[0]})."
            ) from None
        return structure_report(name, str(path), model, gated.hard_structure())
    check_model_name(target)
    model = create_model(target, meta=True)
    return structure_report(target, target, model, describe_vit(model).dense_structure())
