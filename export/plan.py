"""Plans: the frozen structure of a pruned ViT as versioned, hashable, hand-editable JSON, and its validation."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hiap.base.atomic import write_json_atomic
from hiap.base.errors import HiapError
from hiap.base.jsonfile import read_json_object
from hiap.cost import BlockStructure, Geometry, Structure, structure_macs, structure_params

# 1: heads, value dims, FFN, neurons per block; 2 adds a block's kept q/k dims per head ('qk_dims'), written only
# where some are pruned, so a plan that keeps them all stays version 1 (same file, same hash, older readers).
SCHEMA_VERSION = 1
QK_SCHEMA_VERSION = 2


@dataclass
class Plan:
    """What to keep of a timm ViT (kept indices, sorted) plus the facts a device needs to use the result."""

    model: str
    num_classes: int
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    structure: Structure
    class_names: list[str] = field(default_factory=list)
    dense_gmacs: float = 0.0
    gmacs: float = 0.0
    dense_params: int = 0
    params: int = 0
    source: str = ""
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # constructor arguments (img_size, depth, ...)
    # The grid value widths are padded to where the plan was emitted (the export's or materialize's align): a
    # rebuild of saved weights (apply_plan, load_pruned) must use the same. Not part of the hash (the structure is).
    align: int = 8

    def to_dict(self) -> dict[str, Any]:
        qk_pruned = any(b.qk_dims is not None for b in self.structure.blocks)
        body = {
            "schema_version": QK_SCHEMA_VERSION if qk_pruned else SCHEMA_VERSION,
            "model": self.model,
            "model_kwargs": dict(self.model_kwargs),
            "num_classes": self.num_classes,
            "input_size": list(self.input_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "class_names": list(self.class_names),
            "source": self.source,
            "dense_gmacs": self.dense_gmacs,
            "gmacs": self.gmacs,
            "dense_params": self.dense_params,
            "params": self.params,
            "align": self.align,
            "blocks": [_block_dict(b) for b in self.structure.blocks],
        }
        body["hash"] = plan_hash(body)
        return body

    def write(self, path: Path, body: dict[str, Any] | None = None) -> None:
        """Write the plan; pass `body` when its to_dict() is already at hand (it hashes the structure)."""
        write_json_atomic(path, body or self.to_dict(), indent=1)


def _block_dict(b: BlockStructure) -> dict[str, Any]:
    out: dict[str, Any] = {"heads": list(b.heads), "value_dims": [list(v) for v in b.value_dims], "ffn": b.ffn,
                           "neurons": list(b.neurons)}  # fmt: skip
    if b.qk_dims is not None:
        out["qk_dims"] = [list(q) for q in b.qk_dims]
    return out


def plan_hash(body: dict[str, Any]) -> str:
    """sha256 over the structure and the model identity (not the figures derived from them), first 16 hex."""
    keyed = {k: body[k] for k in ("schema_version", "model", "num_classes", "input_size", "blocks")}
    if body.get("model_kwargs"):  # part of the model's identity; absent when empty, so older hashes still hold
        keyed["model_kwargs"] = body["model_kwargs"]
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16]


def make_plan(
    model: str, geom: Geometry, structure: Structure, data_cfg: dict[str, Any], num_classes: int, **extra: Any
) -> Plan:
    return Plan(
        model=model,
        num_classes=num_classes,
        input_size=tuple(data_cfg["input_size"]),
        mean=tuple(data_cfg["mean"]),
        std=tuple(data_cfg["std"]),
        structure=structure,
        dense_gmacs=geom.dense_macs / 1e9,
        gmacs=structure_macs(geom, structure) / 1e9,
        dense_params=geom.dense_params,
        params=structure_params(geom, structure),
        **extra,
    )


def _indices(value: Any, limit: int, where: str, allow_empty: bool) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in value):
        raise HiapError(f"Plan {where}: expected a list of integers, got {value!r:.60}.")
    if not value and not allow_empty:
        raise HiapError(f"Plan {where}: must keep at least one index.")
    if any(i < 0 or i >= limit for i in value):
        raise HiapError(f"Plan {where}: indices must lie in [0, {limit}), got {value!r:.60}.")
    if len(set(value)) != len(value):
        raise HiapError(f"Plan {where}: duplicate indices in {value!r:.60}.")
    if value != sorted(value):
        raise HiapError(f"Plan {where}: indices must be sorted ascending.")
    return tuple(value)


def structure_from_dict(blocks: Any, geom: Geometry) -> Structure:
    """Validate a plan's `blocks` against the model geometry; errors name the block and the field."""
    if not isinstance(blocks, list) or len(blocks) != geom.depth:
        got = len(blocks) if isinstance(blocks, list) else type(blocks).__name__
        raise HiapError(f"Plan 'blocks': expected {geom.depth} blocks for this model, got {got}.")
    out = []
    for i, b in enumerate(blocks):
        if not isinstance(b, dict) or set(b) - {"qk_dims"} != {"heads", "value_dims", "ffn", "neurons"}:
            raise HiapError(f"Plan block {i}: expected the fields heads, value_dims, ffn, neurons (and qk_dims).")
        heads = _indices(b["heads"], geom.num_heads, f"block {i} 'heads'", allow_empty=True)
        vd = b["value_dims"]
        if not isinstance(vd, list) or len(vd) != len(heads):
            raise HiapError(f"Plan block {i} 'value_dims': expected one list per kept head ({len(heads)}).")
        value_dims = tuple(
            _indices(v, geom.head_dim, f"block {i} 'value_dims'[{j}]", allow_empty=False) for j, v in enumerate(vd)
        )
        if not isinstance(b["ffn"], bool):
            raise HiapError(f"Plan block {i} 'ffn': expected true or false.")
        neurons = _indices(b["neurons"], geom.hidden, f"block {i} 'neurons'", allow_empty=not b["ffn"])
        if not b["ffn"] and neurons:
            raise HiapError(f"Plan block {i} 'neurons': must be empty when 'ffn' is false.")
        qk_dims = None
        if "qk_dims" in b:
            qd = b["qk_dims"]
            if not isinstance(qd, list) or len(qd) != len(heads):
                raise HiapError(f"Plan block {i} 'qk_dims': expected one list per kept head ({len(heads)}).")
            qk_dims = tuple(
                _indices(q, geom.head_dim, f"block {i} 'qk_dims'[{j}]", allow_empty=False) for j, q in enumerate(qd)
            )
            if all(len(q) == geom.head_dim for q in qk_dims):
                qk_dims = None  # all kept: the same structure as without the field
            elif geom.qk_norm_params:
                raise HiapError(f"Plan block {i} 'qk_dims': this model normalises q and k over the whole head "
                                "(qk-norm), so q/k dims cannot be removed; drop the field.")  # fmt: skip
        out.append(BlockStructure(heads=heads, value_dims=value_dims, ffn=b["ffn"], neurons=neurons, qk_dims=qk_dims))
    return Structure(blocks=tuple(out))


def read_plan_json(path: Path) -> dict[str, Any]:
    """A plan.json, its fields checked (`check_plan` says how)."""
    return check_plan(read_json_object(path, "Plan"), f"Plan '{path}'")


def check_plan(body: dict[str, Any], where: str) -> dict[str, Any]:
    """A plan's fields checked (the structure is checked against the model by `structure_from_dict`); `where` names
    the plan in the messages ("Plan 'out/plan.json'"). num_classes 0 is a headless backbone (a timm ViT built with
    num_classes=0 under the user's own head)."""
    if body.get("schema_version") not in (SCHEMA_VERSION, QK_SCHEMA_VERSION):
        raise HiapError(f"{where}: expected a JSON object with schema_version {SCHEMA_VERSION} or {QK_SCHEMA_VERSION}.")
    for key in ("model", "num_classes", "input_size", "mean", "std", "blocks"):
        if key not in body:
            raise HiapError(f"{where}: missing field '{key}'.")

    def bad(key: str, want: str) -> HiapError:
        return HiapError(f"{where}: field '{key}' must be {want}, got {body[key]!r:.80}.")

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if not isinstance(body["model"], str) or not body["model"]:
        raise bad("model", "a model name")
    kwargs = body.get("model_kwargs", {})
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise HiapError(f"{where}: field 'model_kwargs' must be an object of constructor arguments.")
    if not is_int(body["num_classes"]) or body["num_classes"] < 0:
        raise bad("num_classes", "an integer >= 0 (0: a headless backbone)")
    size = body["input_size"]
    if not isinstance(size, list) or len(size) != 3 or not all(is_int(v) and v > 0 for v in size):
        raise bad("input_size", "[C, H, W] of positive integers")
    for key in ("mean", "std"):
        v = body[key]
        if not isinstance(v, list) or len(v) != size[0] or not all(isinstance(x, (int, float)) for x in v):
            raise bad(key, f"a list of {size[0]} numbers (one per input channel)")
    if "align" in body and (not is_int(body["align"]) or body["align"] < 1):
        raise bad("align", "an integer >= 1 (the value-width grid the plan was emitted on)")
    names = body.get("class_names", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise bad("class_names", "a list of strings")
    return body
