"""`hiap inspect` for export artifacts: a plan.json (structure and counts) or an .onnx (counted from the graph)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from export.onnx_io import onnx_cost
from export.plan import read_plan_json, structure_from_dict
from hiap.base.jsonfile import parse_json
from hiap.gated import describe_vit
from hiap.inspect import structure_report
from hiap.models import create_model


def inspect_plan(path: Path) -> dict[str, Any]:
    body = read_plan_json(path)
    model = create_model(body["model"], num_classes=int(body["num_classes"]), meta=True,
                         model_kwargs=body.get("model_kwargs"))  # fmt: skip
    structure = structure_from_dict(body["blocks"], describe_vit(model))
    return structure_report(body["model"], str(path), model, structure) | {"plan_hash": body.get("hash")}


def inspect_onnx(path: Path) -> dict[str, Any]:
    import onnx

    from runtime.ort_runner import default_runner

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
