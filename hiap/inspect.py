"""`hiap inspect`: dense and pruned MACs, params and per-block structure of a model name, run or checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hiap.base.errors import HiapError
from hiap.checkpoint import CHECKPOINT_NAME, gated_from_checkpoint, load_checkpoint
from hiap.cost import Structure, block_macs, structure_macs, structure_params
from hiap.gated import describe_vit
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
                "qk_widths": [geom.head_dim] * len(b.heads) if b.qk_dims is None else [len(q) for q in b.qk_dims],
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
            raise HiapError(f"'{path}' is a folder without {CHECKPOINT_NAME} or plan.json: pass a run directory, an "
                            "export folder or a checkpoint.")  # fmt: skip
        if path.is_file() and path.suffix != ".safetensors":
            raise HiapError(f"Cannot inspect '{path}': expected a timm model name, a run directory or a checkpoint.")
        ckpt = load_checkpoint(path)
        gated = gated_from_checkpoint(ckpt, str(path), meta=True)
        structure = gated.hard_structure() if ckpt.gates else gated.geometry.dense_structure()
        return structure_report(ckpt.state["model"], str(path), gated.vit, structure)
    check_model_name(target)
    model = create_model(target, meta=True)
    return structure_report(target, target, model, describe_vit(model).dense_structure())
