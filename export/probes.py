"""The probe set of a latency table: small ONNX files of single block branches of one model geometry, over a grid
of kept heads, value widths, q/k widths and FFN widths, plus the parts outside the blocks and a call-overhead graph.

Each probe is cut from the model exactly as the exporter cuts a pruned network (export/compact.py): an attention
branch is norm1, attention with h heads of value width w (the emitted, padded width) or of q/k width q at full value
width (the q/k axis, on models whose q/k dims can be gated: no qk-norm), LayerScale and the residual add; an FFN
branch is norm2, an MLP of k neurons, LayerScale and the add; `fixed` is the network with no blocks (patch
embedding, prefix tokens, final norm, head). They are written, simplified and checked as `hiap export` writes a
model, so the device runs the same operators it will run in the real file. The weights are the random init of the
model: latency does not depend on their values at FP32.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hiap import __version__
from hiap.base.atomic import write_json_atomic
from hiap.base.errors import HiapError
from hiap.base.lut import (
    FIXED_PROBE,
    OVERHEAD_PROBE,
    PROBE_MANIFEST,
    attention_probe,
    ffn_probe,
    geometry_record,
    qk_probe,
)
from hiap.base.precision import COMPUTE_PRECISIONS, FILE_PRECISIONS, FP32, INT8, ORT
from hiap.cost import BlockStructure, Geometry
from hiap.export.compact import build_compact, compact_block
from hiap.export.onnx_io import simplify_onnx, torch2onnx
from hiap.gated import describe_vit, qk_gateable
from hiap.models import create_model, data_config


@dataclass(frozen=True)
class Grid:
    """The widths a table is measured at; each ends at the dense width."""

    heads: tuple[int, ...]
    value_widths: tuple[int, ...]  # emitted widths: multiples of align (and the head width)
    ffn_widths: tuple[int, ...]
    qk_widths: tuple[int, ...] = ()  # emitted q/k widths, as value widths; empty: no q/k axis

    @property
    def size(self) -> int:
        # the q/k axis's full width is the attention probe at full value width: no file of its own
        qk = len(self.heads) * max(len(self.qk_widths) - 1, 0)
        return len(self.heads) * len(self.value_widths) + qk + len(self.ffn_widths) + 2


def default_grid(geom: Geometry, align: int, ffn_step: int) -> Grid:
    """Every head count, every value width the exporter can emit with `align`, the same q/k widths where q/k dims
    can be gated (no qk-norm), FFN widths every `ffn_step`."""
    if align < 1:
        raise HiapError(f"--align must be >= 1, got {align}.")
    if ffn_step < 1:
        raise HiapError(f"--ffn-step must be >= 1, got {ffn_step}.")
    widths = sorted({min(w, geom.head_dim) for w in range(align, geom.head_dim + align, align)})
    ffn = sorted(set(range(ffn_step, geom.hidden, ffn_step)) | {geom.hidden})
    qk = tuple(widths) if qk_gateable(geom) else ()
    return Grid(heads=tuple(range(1, geom.num_heads + 1)), value_widths=tuple(widths), ffn_widths=tuple(ffn),
                qk_widths=qk)  # fmt: skip


class _Copy(nn.Module):
    """Returns its input: the probe of one call's cost (session dispatch, input binding, output copy)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()


def _branch(block: nn.Module, geom: Geometry, heads: int, width: int, neurons: int, align: int,
            chain: int = 1, qk_width: int | None = None) -> nn.Module:  # fmt: skip
    """`chain` compact blocks in a row that keep only an attention branch (heads > 0; q/k at `qk_width`, None: full)
    or only an FFN branch (neurons > 0), each with its own copy of the weights, as the blocks of a network have."""
    plan = BlockStructure(
        heads=tuple(range(heads)),
        value_dims=tuple(tuple(range(width)) for _ in range(heads)),
        ffn=neurons > 0,
        neurons=tuple(range(neurons)),
        qk_dims=None if qk_width is None else tuple(tuple(range(qk_width)) for _ in range(heads)),
    )
    one = compact_block(block, plan, align)
    return nn.Sequential(one, *(copy.deepcopy(one) for _ in range(chain - 1))).eval()


def make_probes(model: str, model_kwargs: dict[str, Any], out: Path, align: int = 8, ffn_step: int = 16,
                batches: tuple[int, ...] = (1,), opset: int = 17, simplify: bool = True, chain: int = 4,
                progress: Any = None, precision: str = FP32, runtime: str = ORT) -> dict[str, Any]:  # fmt: skip
    """Write the probe files and `probes.json` (what `hiap profile --probes` measures on the device) into `out`.
    `precision` int8 / int8-dynamic: each probe quantized as `hiap export --precision` quantizes for `runtime`
    (calibrated on random activations: the kernels, not the accuracy, are what a table measures)."""
    if chain < 1:
        raise HiapError(f"--chain must be >= 1, got {chain}.")
    if precision not in FILE_PRECISIONS:
        raise HiapError(f"Probe files are fp32, int8 or int8-dynamic, not '{precision}' (bf16 and fp16 tables time "
                        "FP32 probes at that precision).")  # fmt: skip
    vit = create_model(model, model_kwargs=model_kwargs).eval()
    geom = describe_vit(vit)
    grid = default_grid(geom, align, ffn_step)
    cfg = data_config(vit)
    out.mkdir(parents=True, exist_ok=True)
    tokens = (geom.num_tokens, geom.dim)
    compact = build_compact(vit, geom.dense_structure(), align)
    compact.vit.blocks = nn.Sequential()  # the network around the blocks
    probes: list[dict[str, Any]] = [
        {"kind": "overhead", "file": OVERHEAD_PROBE, "module": _Copy(), "input": tokens},
        {"kind": "fixed", "file": FIXED_PROBE, "module": compact, "input": tuple(cfg["input_size"])},
    ]
    block = vit.blocks[0]
    for h in grid.heads:
        for w in grid.value_widths:
            probes.append({"kind": "attention", "heads": h, "width": w, "file": attention_probe(h, w),
                           "module": _branch(block, geom, h, w, 0, align, chain), "input": tokens})  # fmt: skip
        for q in grid.qk_widths[:-1]:
            branch = _branch(block, geom, h, geom.head_dim, 0, align, chain, qk_width=q)
            probes.append({"kind": "attention_qk", "heads": h, "qk_width": q, "file": qk_probe(h, q),
                           "module": branch, "input": tokens})  # fmt: skip
    for k in grid.ffn_widths:
        probes.append({"kind": "ffn", "neurons": k, "file": ffn_probe(k),
                       "module": _branch(block, geom, 0, 0, k, align, chain), "input": tokens})  # fmt: skip
    dynamic = any(b != 1 for b in batches)
    for i, probe in enumerate(probes):
        module, shape = probe.pop("module"), probe.pop("input")
        meta = {"hiap_probe": json.dumps({k: v for k, v in probe.items() if k != "file"}), "precision": FP32}
        path = out / probe["file"]
        with torch.no_grad():
            torch2onnx(module, shape, path, opset=opset, dynamic_batch=dynamic, metadata=meta)
        if simplify:
            simplify_onnx(path)
        if precision != FP32 and probe["kind"] != "overhead":  # the call overhead has nothing to quantize
            _quantize_probe(path, shape, precision, runtime, meta | {"precision": precision})
        if progress is not None:
            progress(i + 1, len(probes))
    manifest = {
        "schema": "hiap-probes",
        "schema_version": 1,
        "hiap_version": __version__,
        "model": model,
        "model_kwargs": dict(model_kwargs),
        "input_size": list(cfg["input_size"]),
        "geometry": geometry_record(geom),
        "dense_macs": geom.dense_macs,
        "align": align,
        "ffn_step": ffn_step,
        "chain": chain,
        "opset": opset,
        "batches": sorted(set(batches)),
        "precision": precision,
        "grid": {
            "heads": list(grid.heads),
            "value_widths": list(grid.value_widths),
            "ffn_widths": list(grid.ffn_widths),
        }
        | ({"qk_widths": list(grid.qk_widths)} if grid.qk_widths else {}),
        "probes": probes,
    }
    write_json_atomic(out / PROBE_MANIFEST, manifest, indent=1)
    return manifest


def profile_model(model: str, model_kwargs: dict[str, Any], profile: Any, align: int = 8, ffn_step: int = 16,
                  batches: tuple[int, ...] = (1,), chain: int = 4, runtime: str | None = None,
                  iterations: int | None = None, warmup: int | None = None, rounds: int | None = None,
                  progress: Any = None, precision: str = FP32) -> dict[str, Any]:  # fmt: skip
    """`hiap profile` on one machine: the model's probe set made in a temporary folder and timed there with the
    device profile's runner; returns the lut.json body. `progress(stage, i, n)` follows both stages."""
    import tempfile

    from hiap.devices.lut import ROUNDS, measure_lut

    def stage(name: str) -> Any:
        return None if progress is None else (lambda i, n: progress(name, i, n))

    with tempfile.TemporaryDirectory(prefix="hiap-probes-") as tmp:
        lowered = precision if precision in COMPUTE_PRECISIONS else None
        make_probes(model, model_kwargs, Path(tmp), align=align, ffn_step=ffn_step, batches=batches, chain=chain,
                    progress=stage("writing probes"), precision=FP32 if lowered else precision,
                    runtime=profile.runtime)  # fmt: skip
        return measure_lut(Path(tmp), profile, runtime=runtime, iterations=iterations, warmup=warmup, batches=batches,
                           progress=stage("timing probes"), rounds=rounds or ROUNDS, precision=lowered)  # fmt: skip


def _quantize_probe(path: Path, shape: tuple[int, ...], precision: str, runtime: str, meta: dict[str, str]) -> None:
    """The probe at `path` replaced by its INT8 version (the export's recipe for `runtime`)."""
    import numpy as np

    from hiap.export.quantize import Recipe, quantize_file

    recipe = Recipe.for_runtime(precision, runtime)
    calibration = None
    if precision == INT8:
        calibration = np.random.default_rng(0).standard_normal((8, *shape)).astype(np.float32)
    quantize_file(path, path, recipe, calibration, meta)
