"""`hiap export` for a run: plan.json, compact model.onnx, golden.npz and export_report.json with parity checks."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.compact import build_compact, padded_structure
from export.onnx_io import onnx_cost, ort_run, simplify_onnx, torch2onnx
from export.plan import make_plan
from hiap import __version__
from hiap.checkpoint import load_checkpoint
from hiap.cost import structure_macs, structure_params
from hiap.errors import HiapError
from hiap.gated import Floors, GatedViT
from hiap.models import create_model, load_weights

PARITY_TOL = 1e-4


def _inputs(state: dict[str, Any], config: dict[str, Any], n_random: int = 4, n_real: int = 8) -> dict[str, np.ndarray]:
    """Random inputs, plus real validation images when the run used the built-in data."""
    c, h, w = state["data_config"]["input_size"]
    rng = np.random.default_rng(0)
    inputs = {"random": rng.standard_normal((n_random, c, h, w)).astype(np.float32)}
    if config.get("data") == "builtin":
        from hiap.data import BuiltinData

        data = BuiltinData(tuple(state["data_config"]["input_size"]), state["data_config"]["mean"],
                           state["data_config"]["std"], augment=False)  # fmt: skip
        x, _ = next(data.val_batches(n_real))
        inputs["validation"] = x.numpy().astype(np.float32)
    return inputs


def _compare(name: str, ref: np.ndarray, out: np.ndarray) -> dict[str, Any]:
    diff = float(np.abs(ref - out).max())
    agree = float((ref.argmax(-1) == out.argmax(-1)).mean())
    return {"pair": name, "max_abs_diff": diff, "top1_agreement": agree, "passed": diff <= PARITY_TOL and agree == 1.0}


def export_run(run: Path, out: Path, opset: int = 17, align: int = 8, dynamic_batch: bool = False,
               dense: bool = False, simplify: bool = True) -> dict[str, Any]:  # fmt: skip
    t0 = time.perf_counter()
    ckpt = load_checkpoint(run)
    state, config = ckpt.state, ckpt.config
    vit = create_model(state["model"], num_classes=state["num_classes"]).eval()
    load_weights(vit, ckpt.model, str(run))
    gated = GatedViT(vit, floors=Floors(**state["floors"]) if state.get("floors") else Floors()).eval()
    if ckpt.gates and not dense:
        gated.gates.load_state_dict(ckpt.gates)
        structure = gated.hard_structure()
    else:
        structure = gated.geometry.dense_structure()
        with torch.no_grad():
            for p in gated.gates.parameters():
                p.fill_(3.0)  # all gates open: the reference is the dense network
    geom = gated.geometry
    emitted = padded_structure(structure, geom.head_dim, align)
    plan = make_plan(state["model"], geom, structure, state["data_config"], state["num_classes"],
                     class_names=list(state.get("classes", [])), source=str(run))  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    plan.write(out / "plan.json")
    body = plan.to_dict()
    compact = build_compact(vit, structure, align=align)
    meta = {
        "hiap_version": __version__,
        "plan_hash": body["hash"],
        "model": state["model"],
        "input_size": json.dumps(list(state["data_config"]["input_size"])),
        "mean": json.dumps(list(state["data_config"]["mean"])),
        "std": json.dumps(list(state["data_config"]["std"])),
        "class_names": json.dumps(list(state.get("classes", []))),
        "reference_val_acc": json.dumps(state.get("val_acc")),
        "gmacs": json.dumps(structure_macs(geom, emitted) / 1e9),
    }
    onnx_path = out / "model.onnx"
    torch2onnx(compact, tuple(state["data_config"]["input_size"]), onnx_path, opset, dynamic_batch, meta)
    nodes = simplify_onnx(onnx_path) if simplify else None  # the checks below run on the final file
    checks, golden = [], {}
    for kind, x in _inputs(state, config).items():
        with torch.no_grad():
            ref = gated(torch.from_numpy(x)).numpy()
            mid = compact(torch.from_numpy(x)).numpy()
        onnx_out = np.concatenate([ort_run(onnx_path, x[i : i + 1]) for i in range(len(x))]) if not dynamic_batch \
            else ort_run(onnx_path, x)  # fmt: skip
        checks += [{"inputs": kind} | _compare("gated-vs-compact", ref, mid),
                   {"inputs": kind} | _compare("gated-vs-onnx", ref, onnx_out)]  # fmt: skip
        if kind == "validation":
            golden = {"inputs": x, "logits": mid}
    if golden:
        np.savez(out / "golden.npz", **golden)
    onnx_macs, onnx_params = onnx_cost(onnx_path)
    report = {
        "hiap_version": __version__,
        "plan_hash": body["hash"],
        "align": align,
        "opset": opset,
        "gmacs": structure_macs(geom, emitted) / 1e9,
        "unpadded_gmacs": structure_macs(geom, structure) / 1e9,
        "padding_gmacs": (structure_macs(geom, emitted) - structure_macs(geom, structure)) / 1e9,
        "params": structure_params(geom, emitted),
        "onnx_gmacs": onnx_macs / 1e9,
        "onnx_params": onnx_params,
        "file_bytes": onnx_path.stat().st_size,
        "simplified": simplify,
        "nodes_before_after_simplify": list(nodes) if nodes else None,
        "parity": {
            "max_abs_diff": max(c["max_abs_diff"] for c in checks),
            "top1_agreement": min(c["top1_agreement"] for c in checks),
            "passed": all(c["passed"] for c in checks),
            "checks": checks,
        },
        "counts_match": onnx_macs == structure_macs(geom, emitted) and onnx_params == structure_params(geom, emitted),
        "seconds": time.perf_counter() - t0,
    }
    (out / "export_report.json").write_text(json.dumps(report, indent=2) + "\n")
    if not report["parity"]["passed"] or not report["counts_match"]:
        failed = [f"{c['pair']} on {c['inputs']}: max abs {c['max_abs_diff']:.2e}, top-1 {c['top1_agreement']:.2%}"
                  for c in checks if not c["passed"]]  # fmt: skip
        if not report["counts_match"]:
            failed.append("ONNX MACs/params differ from the plan")
        raise HiapError(f"Export parity failed ({'; '.join(failed)}); report written to {out / 'export_report.json'}.")
    return report
