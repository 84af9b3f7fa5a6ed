"""`hiap bench`: run an exported model with its device's runner, measure latency, fidelity and accuracy, and judge
every budget of the device profile. Torch-free: this is what runs on the board."""

from __future__ import annotations

import contextlib
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from devices.host import Host, detect_host, power_state, profile_mismatch
from devices.profile import DeviceProfile, load_profile
from hiap import __version__
from hiap.errors import HiapError
from runtime.base import Runner, batch_of
from runtime.data import Preprocessing, builtin_val_batches, image_folder_batches
from runtime.harness import Latency, accuracy, fidelity, interleaved_latency, measure_latency, random_feeds


@dataclass
class BenchOptions:
    device: str
    data: str | None = None
    golden: Path | None = None
    budget_ms: float | None = None
    max_acc_drop: float | None = None
    compare: Path | None = None
    allow_mismatch: bool = False
    iterations: int | None = None
    warmup: int | None = None
    min_seconds: float | None = None
    limit: int | None = None


def _engine_for(onnx_path: Path, profile: DeviceProfile) -> Path:
    """On a TensorRT device an .onnx is built into an engine first, cached beside it per TensorRT version and GPU."""
    from devices.profile import version_in_range
    from runtime.trt_runner import build_engine, gpu_name, import_tensorrt, read_sidecar, sha256_file, sidecar_path

    trt = import_tensorrt()
    if trt is None:
        raise HiapError(f"Device '{profile.name}' runs TensorRT, which is not installed on this host; bench on the "
                        "device, or pick an ONNX Runtime profile (x86-cpu, rpi5, ...).")  # fmt: skip
    wanted = profile.software.get("tensorrt")
    if wanted and not version_in_range(trt.__version__, wanted):
        raise HiapError(f"Device '{profile.name}' expects TensorRT {wanted} but this host has {trt.__version__}: "
                        "use the profile of this JetPack/TensorRT, or pass your own profile file.")  # fmt: skip
    slug = "".join(ch if ch.isalnum() else "-" for ch in gpu_name()).strip("-").lower()
    key = f"trt{trt.__version__}.{slug}"
    engine = onnx_path.with_name(f"{onnx_path.stem}.{key}.{profile.precision}.engine")
    build = {
        "fp16": profile.precision == "fp16",
        "layernorm_fp32": bool(profile.trt.get("layernorm_fp32", True)),
        "workspace_mb": int(profile.trt.get("workspace_mb", 1024)),
        "max_batch": max(32, profile.batch),
    }
    if engine.is_file() and sidecar_path(engine).is_file():
        # A cached engine is reused only if it was built from this very ONNX with these settings.
        old = read_sidecar(engine)
        if old.get("onnx_sha256") == sha256_file(onnx_path) and old.get("build") == build:
            return engine
    from runtime.ort_runner import OrtRunner

    with OrtRunner(onnx_path) as probe:
        meta = dict(probe.metadata)
    build_engine(onnx_path, engine, **build, timing_cache=onnx_path.with_name(f"timing.{key}.cache"), metadata=meta)
    return engine


def open_runner(path: Path, profile: DeviceProfile) -> Runner:
    if profile.runtime == "ort":
        if path.suffix in (".engine", ".plan"):
            raise HiapError(f"'{path}' is a TensorRT engine but device '{profile.name}' runs ONNX Runtime: bench the "
                            ".onnx instead.")  # fmt: skip
        from runtime.ort_runner import OrtRunner

        return OrtRunner(path, providers=profile.ort["providers"], intra_op_threads=profile.ort["intra_op_threads"],
                         inter_op_threads=profile.ort["inter_op_threads"],
                         graph_optimization_level=profile.ort["graph_optimization_level"])  # fmt: skip
    from runtime.ort_runner import check_model_file
    from runtime.trt_runner import TrtRunner

    check_model_file(path, (".onnx", ".engine", ".plan"))
    engine = _engine_for(path, profile) if path.suffix == ".onnx" else path
    return TrtRunner(engine, batch=profile.batch)


def _meta_float(meta: dict[str, str], key: str) -> float | None:
    try:
        value = json.loads(meta[key]) if key in meta else None
    except (json.JSONDecodeError, TypeError):
        return None
    return float(value) if isinstance(value, (int, float)) else None


def _batches(data: str, pre: Preprocessing, limit: int | None) -> Any:
    if data == "builtin":
        return builtin_val_batches(pre, limit=limit)
    return image_folder_batches(Path(data), pre, limit=limit)


def _budget(name: str, value: float | None, limit: float, higher_is_better: bool = False) -> dict[str, Any]:
    if value is None:
        return {"budget": name, "limit": limit, "value": None, "passed": None, "margin": None}
    margin = (value - limit) if higher_is_better else (limit - value)
    return {"budget": name, "limit": limit, "value": value, "passed": bool(margin >= 0), "margin": margin}


def environment(host: Host, runner: Runner, profile: DeviceProfile) -> dict[str, Any]:
    import onnxruntime

    return {
        "host": host.to_dict(),
        "host_description": host.describe(),
        "power": power_state(host),
        "runner": runner.describe(),
        "profile": profile.name,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": onnxruntime.__version__,
        "hiap": __version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": sys.argv,
    }


def protocol_warnings(profile: DeviceProfile, host: Host, power: dict[str, str]) -> list[str]:
    """The measurement protocol's host settings that do not hold (reported, not failed: the figures stand)."""
    out = []
    mode = profile.protocol.get("power_mode")
    if mode and host.board == "jetson" and mode.lower() not in power.get("power_mode", "").lower():
        out.append(f"power mode is not {mode} (nvpmodel -q: {power.get('power_mode')!r}); run 'sudo nvpmodel -m 0'")
    if (
        profile.protocol.get("jetson_clocks")
        and host.board == "jetson"
        and "not found" in power.get("jetson_clocks", "")
    ):
        out.append("jetson_clocks not found: clocks may scale during the run")
    governor = profile.protocol.get("governor")
    if governor and power.get("governor") not in (governor, "unreadable"):
        out.append(f"CPU governor is {power.get('governor')!r}, the protocol asks for {governor!r}")
    return out


def run_bench(artifact: Path, opts: BenchOptions) -> dict[str, Any]:
    """Everything `hiap bench` reports, as one dict; `passed` is False when a measured budget fails."""
    profile = load_profile(opts.device)
    host = detect_host()
    mismatch = profile_mismatch(profile, host)
    if mismatch and not opts.allow_mismatch:
        raise HiapError(f"{mismatch}. Bench on the device itself, or pass --allow-mismatch to measure here (every "
                        f"figure is then labelled as not measured on {profile.name}).")  # fmt: skip
    for name, value, low in (("iterations", opts.iterations, 1), ("warmup", opts.warmup, 0), ("limit", opts.limit, 1)):
        if value is not None and value < low:
            raise HiapError(f"--{name} must be >= {low}, got {value}.")
    proto = profile.protocol
    warmup = opts.warmup if opts.warmup is not None else int(proto["warmup"])
    iterations = opts.iterations if opts.iterations is not None else int(proto["iterations"])
    min_seconds = opts.min_seconds if opts.min_seconds is not None else float(proto["min_seconds"])
    golden = opts.golden
    if golden is None and artifact.with_name("golden.npz").is_file():
        golden = artifact.with_name("golden.npz")
    if opts.golden is not None and not opts.golden.is_file():
        raise HiapError(f"Golden file '{opts.golden}' does not exist.")

    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        runner = stack.enter_context(open_runner(artifact, profile))
        dense = stack.enter_context(open_runner(opts.compare, profile)) if opts.compare else None
        batch = batch_of(runner.inputs[0], profile.batch)
        pre = Preprocessing.from_metadata(runner.metadata, str(artifact))
        runners: dict[str, Runner] = {"model": runner}
        if dense is not None:
            if tuple(dense.inputs[0].shape[1:]) != tuple(runner.inputs[0].shape[1:]):
                raise HiapError(f"--compare model takes {list(dense.inputs[0].shape)} but '{artifact}' takes "
                                f"{list(runner.inputs[0].shape)}: compare models of the same input.")  # fmt: skip
            runners["dense"] = dense
        feeds = {name: random_feeds(r, batch_of(r.inputs[0], profile.batch)) for name, r in runners.items()}
        if dense is None:
            lat: dict[str, Latency] = {
                "model": measure_latency(runner, feeds["model"], warmup, iterations, min_seconds)
            }
        else:
            lat = interleaved_latency(runners, feeds, warmup, iterations, min_seconds)
        fid = fidelity(runner, golden, batch) if golden else None
        acc: dict[str, Any] = {}
        if opts.data:
            for name, r in runners.items():
                acc[name] = accuracy(r, _batches(opts.data, pre, opts.limit), batch_of(r.inputs[0], profile.batch))
        env = environment(host, runner, profile)
        meta = dict(runner.metadata)
        dense_meta = dict(dense.metadata) if dense is not None else {}

    b = profile.budgets
    p50_limit = opts.budget_ms if opts.budget_ms is not None else b.latency_p50_ms
    # --budget-ms sets the median; the tail budget keeps the profile's p99/p50 ratio.
    p99_limit = p50_limit * (b.latency_p99_ms / b.latency_p50_ms)
    drop_limit = opts.max_acc_drop if opts.max_acc_drop is not None else b.max_acc_drop
    reference, reference_kind = None, ""
    if "dense" in acc:
        reference, reference_kind = acc["dense"]["top1"], "dense model measured here on the same data"
    elif opts.data == "builtin" and opts.limit is not None:
        # the metadata's accuracies are over the whole validation split; a subset is not comparable to them
        reference_kind = "none: --limit evaluates a subset; the metadata's reference is the full validation split"
    elif opts.data == "builtin" and _meta_float(meta, "dense_val_acc") is not None:
        # training records accuracies as fractions; the bench reports percent
        reference, reference_kind = 100 * _meta_float(meta, "dense_val_acc"), "dense accuracy in the metadata"  # type: ignore[operator]
    elif opts.data == "builtin" and _meta_float(meta, "reference_val_acc") is not None:
        reference = 100 * _meta_float(meta, "reference_val_acc")  # type: ignore[operator]
        reference_kind = "exported model's training-time accuracy in the metadata"
    measured = acc["model"]["top1"] if "model" in acc else None
    drop = reference - measured if (reference is not None and measured is not None) else None
    budgets = [
        _budget("latency_p50_ms", lat["model"].p50, p50_limit),
        _budget("latency_p99_ms", lat["model"].p99, p99_limit),
        _budget("accuracy_drop_pp", drop, drop_limit),
        _budget("fidelity_max_abs_diff", fid["max_abs_diff"] if fid else None, b.fidelity_atol),
        _budget("fidelity_top1_agreement", fid["top1_agreement"] if fid else None, b.min_top1_agreement, True),
    ]
    report: dict[str, Any] = {
        "artifact": str(artifact),
        "format": artifact.suffix.lstrip(".")
        if profile.runtime == "ort" or artifact.suffix != ".onnx"
        else "engine (built from onnx)",
        "size_mb": artifact.stat().st_size / 1e6,
        "device": profile.name,
        "measured_on_target": not mismatch,
        "label": "" if not mismatch else f"NOT MEASURED ON {profile.name}: {mismatch}",
        "model": {k: meta.get(k) for k in ("model", "plan_hash", "gmacs", "dense_gmacs", "hiap_version")},
        "batch": batch,
        "latency": {name: v.to_dict() for name, v in lat.items()},
        "fidelity": fid | {"golden": str(golden)} if fid else None,
        "accuracy": acc | ({"reference_top1": reference, "reference": reference_kind} if reference_kind else {}),
        "budgets": budgets,
        "passed": all(x["passed"] is not False for x in budgets),
        "environment": env,
        "seconds": time.perf_counter() - t0,
    }
    if host.emulated:
        report["label"] = (
            f"EMULATED ({host.emulated}): latency is meaningless; fidelity and accuracy are exact. " + (report["label"])
        )
    if profile.runtime == "trt":
        report["note"] = "TensorRT path not yet validated on hardware"
    report["protocol_warnings"] = protocol_warnings(profile, host, env["power"])
    if "dense" in lat:
        gm, dgm = _meta_float(meta, "gmacs"), _meta_float(dense_meta, "gmacs")
        speedup = lat["dense"].p50 / lat["model"].p50
        report["compare"] = {
            "dense_artifact": str(opts.compare),
            "dense_size_mb": opts.compare.stat().st_size / 1e6 if opts.compare else None,
            "speedup_p50": speedup,
            "speedup_mean": lat["dense"].mean / lat["model"].mean,
            "mac_ratio": (dgm / gm) if gm and dgm else None,
            "realisation": (speedup / (dgm / gm)) if gm and dgm else None,
        }
    return report
