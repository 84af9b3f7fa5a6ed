"""`hiap inspect` for export artifacts: a plan.json, an export folder or hiap.api.save_pruned's weights (the
plan's structure and counts), or an .onnx (counted from the graph)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hiap.base.errors import HiapError
from hiap.base.jsonfile import parse_json
from hiap.checkpoint import CHECKPOINT_NAME
from hiap.export.onnx_io import onnx_cost
from hiap.export.plan import check_plan, read_plan_json, structure_from_dict
from hiap.gated import describe_vit
from hiap.inspect import structure_report
from hiap.models import create_model

PLAN_NAME = "plan.json"  # in every export folder (`hiap export`, hiap.api.export)


def plan_report(body: dict[str, Any], source: str) -> dict[str, Any]:
    """The structure report of a checked plan (`check_plan`), for the model it names."""
    model = create_model(body["model"], num_classes=int(body["num_classes"]), meta=True,
                         model_kwargs=body.get("model_kwargs"))  # fmt: skip
    structure = structure_from_dict(body["blocks"], describe_vit(model))
    return structure_report(body["model"], source, model, structure) | {"plan_hash": body.get("hash")}


def inspect_plan(path: Path) -> dict[str, Any]:
    return plan_report(read_plan_json(path), str(path))


def inspect_planned(path: Path, plan_key: str) -> dict[str, Any] | None:
    """The plan's report for what holds a plan but no checkpoint: an export folder (its plan.json), or the weights
    hiap.api.save_pruned writes (the plan in the safetensors header under `plan_key`). None for anything else: a
    run directory, a checkpoint or a damaged file is the checkpoint reader's to describe or refuse."""
    if path.is_dir():
        if (path / CHECKPOINT_NAME).exists() or not (path / PLAN_NAME).is_file():
            return None
        return plan_report(read_plan_json(path / PLAN_NAME), str(path))
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except Exception:  # damaged: the checkpoint reader says so in its own words
        return None
    if plan_key not in header:
        return None
    where = f"The plan in the header of '{path}'"
    body = parse_json(header[plan_key], where)
    if not isinstance(body, dict):
        raise HiapError(f"{where} is not a JSON object: write the file again with hiap.api.save_pruned.")
    return plan_report(check_plan(body, where), str(path))


def inspect_onnx(path: Path) -> dict[str, Any]:
    import onnx

    from hiap.runtime.ort_runner import default_runner

    with default_runner(path):  # counted figures of a graph no runtime can load would mislead: it must load
        pass
    macs, params = onnx_cost(path)
    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return {
        "target": str(path),
        "model": meta.get("model", "?"),
        "plan_hash": meta.get("plan_hash"),
        "input_size": parse_json(meta["input_size"], f"'{path}' metadata") if "input_size" in meta else None,
        "gmacs": macs / 1e9,
        "params": params,
        "file_bytes": path.stat().st_size,
        "metadata": meta,
    }
