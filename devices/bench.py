"""`hiap bench`: a device profile picks and configures the runner, runtime/'s harness measures latency, fidelity and
accuracy, and every budget of the profile is judged. Torch-free: this is what runs on the board."""

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
from devices.profile import DeviceProfile, version_in_range
from hiap import __version__
from hiap.errors import HiapError
from runtime.base import Runner, batch_of
from runtime.data import (
    Preprocessing,
    builtin_fingerprint,
    builtin_val_batches,
    image_folder_batches,
    is_training_root,
    split_fingerprint,
)
from runtime.harness import Latency, accuracy, fidelity, interleaved_latency, measure_latency, random_feeds


@dataclass(frozen=True)
class BenchTarget:
    """The device profile to bench against, resolved once, and this host measured against it (`mismatch`: why
    this host is not that device, '' when it is)."""

    profile: DeviceProfile
    host: Host
    mismatch: str

    @classmethod
    def on(cls, profile: DeviceProfile, host: Host | None = None) -> BenchTarget:
        """`profile` measured against `host` (default: this machine)."""
        host = host if host is not None else detect_host()
        return cls(profile, host, profile_mismatch(profile, host))


@dataclass
class BenchOptions:
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


def engine_build_settings(profile: DeviceProfile) -> dict[str, Any]:
    """The TensorRT build options a profile asks for: the one place they are derived (bench and export both build
    with them, and a cached engine is reused only when its sidecar records the same)."""
    if profile.trt is None:
        raise HiapError(f"Device '{profile.name}' runs {profile.runtime}, not TensorRT: it has no engine settings.")
    return {
        "fp16": profile.precision == "fp16",
        "layernorm_fp32": profile.trt.layernorm_fp32,
        "workspace_mb": profile.trt.workspace_mb,
        "max_batch": max(32, profile.batch),  # a dynamic-batch engine takes batches up to this
    }


def engine_key(trt: Any) -> str:
    """What an engine is specific to: the TensorRT version and the GPU ('trt10.3.0.nvidia-orin')."""
    from runtime.trt_runner import gpu_name

    slug = "".join(ch if ch.isalnum() else "-" for ch in gpu_name()).strip("-").lower()
    return f"trt{trt.__version__}.{slug}"


def timing_cache_for(onnx_path: Path, key: str) -> Path:
    """The TensorRT timing cache beside an ONNX file, one per engine key (a cache is not portable either)."""
    return onnx_path.with_name(f"timing.{key}.cache")


def _engine_for(onnx_path: Path, profile: DeviceProfile) -> Path:
    """On a TensorRT device an .onnx is built into an engine first, cached beside it per TensorRT version and GPU."""
    from runtime.trt_runner import build_engine, import_tensorrt, read_sidecar, sha256_file, sidecar_path

    trt = import_tensorrt()
    if trt is None:
        raise HiapError(f"Device '{profile.name}' runs TensorRT, which is not installed on this host; bench on the "
                        "device, or pick an ONNX Runtime profile (x86-cpu, rpi5, ...).")  # fmt: skip
    wanted = profile.software.tensorrt
    if wanted and not version_in_range(trt.__version__, wanted):
        raise HiapError(f"Device '{profile.name}' expects TensorRT {wanted} but this host has {trt.__version__}: "
                        "use the profile of this JetPack/TensorRT, or pass your own profile file.")  # fmt: skip
    key = engine_key(trt)
    engine = onnx_path.with_name(f"{onnx_path.stem}.{key}.{profile.precision}.engine")
    build = engine_build_settings(profile)
    if engine.is_file() and sidecar_path(engine).is_file():
        # A cached engine is reused only if it was built from this very ONNX with these settings.
        old = read_sidecar(engine)
        if old.get("onnx_sha256") == sha256_file(onnx_path) and old.get("build") == build:
            return engine
    from runtime.ort_runner import OrtRunner

    with OrtRunner(onnx_path) as probe:
        meta = dict(probe.metadata)
    build_engine(onnx_path, engine, **build, timing_cache=timing_cache_for(onnx_path, key), metadata=meta)
    return engine


def open_runner(path: Path, profile: DeviceProfile) -> Runner:
    if profile.runtime == "ort":
        if path.suffix in (".engine", ".plan"):
            raise HiapError(f"'{path}' is a TensorRT engine but device '{profile.name}' runs ONNX Runtime: bench the "
                            ".onnx instead.")  # fmt: skip
        from runtime.ort_runner import OrtRunner

        ort = profile.ort
        assert ort is not None  # validate() requires the section when runtime is 'ort'
        return OrtRunner(path, providers=list(ort.providers), intra_op_threads=ort.intra_op_threads,
                         inter_op_threads=ort.inter_op_threads,
                         graph_optimization_level=ort.graph_optimization_level)  # fmt: skip
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


# `hiap bench` exit status per verdict (2 is a user error; 3 is `hiap train`/`pipeline`'s missed MAC target). An
# unmeasured budget is not a pass: a CI job that gates on the bench must not go green when the accuracy budget was
# never checked, so it gets its own non-zero code, distinct from a failed budget.
EXIT_CODES = {"met": 0, "failed": 1, "not measured": 4}


@dataclass(frozen=True)
class EvalData:
    """What --data names: 'builtin', or the class-folder tree to evaluate (a training root's val/)."""

    spec: str
    folder: Path | None
    note: str = ""

    @classmethod
    def resolve(cls, spec: str) -> EvalData:
        if spec == "builtin":
            return cls(spec, None)
        root = Path(spec)
        if not root.is_dir():  # before minutes of latency measurement, not after
            raise HiapError(f"--data '{spec}' is not a folder: pass 'builtin', the root `hiap train --data` took "
                            "(ROOT/val/<class>/<image>) or a class-folder tree (ROOT/<class>/<image>).")  # fmt: skip
        if is_training_root(root):  # what `hiap train --data` takes: evaluate the split it validated on
            return cls(spec, root / "val", f"training root: evaluated its val/ ({root / 'val'})")
        return cls(spec, root)

    def batches(self, pre: Preprocessing, limit: int | None) -> Any:
        if self.folder is None:
            return builtin_val_batches(pre, limit=limit)
        return image_folder_batches(self.folder, pre, limit=limit)

    def fingerprint(self, limit: int | None = None) -> dict[str, Any]:
        return builtin_fingerprint(limit) if self.folder is None else split_fingerprint(self.folder, limit)


def _describe_split(fp: dict[str, Any]) -> str:
    what = "built-in split" if fp.get("data") == "builtin" else "ImageFolder split"
    return f"{what} of {fp.get('images')} images, classes {list(fp.get('classes') or [])[:5]}"


def _same_split(meta: dict[str, str], data: EvalData, limit: int | None) -> tuple[dict[str, Any], str | None]:
    """The evaluated images' fingerprint against the one the export recorded of the run's validation split, and
    why they differ (None: the same images, so the run's validation accuracy is a like-for-like reference)."""
    try:
        recorded = json.loads(meta.get("val_split", "null"))
    except json.JSONDecodeError:
        recorded = None
    evaluated = data.fingerprint(limit)
    split = {"evaluated": evaluated, "recorded": recorded, "same": False}
    if not isinstance(recorded, dict):
        why = ("the model's metadata records no validation split (a plan-only export, one made without the run's "
               "data, or by an older hiap); re-export from the run, or pass --compare DENSE.onnx")  # fmt: skip
        return split, why
    if evaluated == recorded:
        split["same"] = True
        return split, None
    if limit is not None and data.fingerprint() == recorded:
        return split, (f"--limit {limit} evaluates {evaluated['images']} of the {recorded['images']} images the "
                       "run validated on, so its validation accuracy does not apply")  # fmt: skip
    return split, (f"--data is not the split the run validated on ({_describe_split(evaluated)}; the run's: "
                   f"{_describe_split(recorded)})")  # fmt: skip


def _budget(name: str, value: float | None, limit: float, higher_is_better: bool = False,
            reason: str = "") -> dict[str, Any]:  # fmt: skip
    if value is None:
        return {"budget": name, "limit": limit, "value": None, "passed": None, "margin": None, "reason": reason}
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
    mode = profile.protocol.power_mode
    if mode and host.board == "jetson" and mode.lower() not in power.get("power_mode", "").lower():
        out.append(f"power mode is not {mode} (nvpmodel -q: {power.get('power_mode')!r}); run 'sudo nvpmodel -m 0'")
    if profile.protocol.jetson_clocks and host.board == "jetson" and "not found" in power.get("jetson_clocks", ""):
        out.append("jetson_clocks not found: clocks may scale during the run")
    governor = profile.protocol.governor
    if governor and power.get("governor") not in (governor, "unreadable"):
        out.append(f"CPU governor is {power.get('governor')!r}, the protocol asks for {governor!r}")
    return out


def run_bench(artifact: Path, target: BenchTarget, opts: BenchOptions) -> dict[str, Any]:
    """Everything `hiap bench` reports, as one dict. `verdict`: 'met' (every budget measured and held), 'failed'
    (a measured budget failed) or 'not measured' (none failed, some could not be measured); `passed` is True only
    for 'met'."""
    profile, host, mismatch = target.profile, target.host, target.mismatch
    if mismatch and not opts.allow_mismatch:
        raise HiapError(f"{mismatch}. Bench on the device itself, or pass --allow-mismatch to measure here (every "
                        f"figure is then labelled as not measured on {profile.name}).")  # fmt: skip
    for name, value, low in (("iterations", opts.iterations, 1), ("warmup", opts.warmup, 0), ("limit", opts.limit, 1)):
        if value is not None and value < low:
            raise HiapError(f"--{name} must be >= {low}, got {value}.")
    proto = profile.protocol
    warmup = opts.warmup if opts.warmup is not None else proto.warmup
    iterations = opts.iterations if opts.iterations is not None else proto.iterations
    min_seconds = opts.min_seconds if opts.min_seconds is not None else float(proto.min_seconds)
    golden = opts.golden
    if golden is None and artifact.with_name("golden.npz").is_file():
        golden = artifact.with_name("golden.npz")
    if opts.golden is not None and not opts.golden.is_file():
        raise HiapError(f"Golden file '{opts.golden}' does not exist.")
    data = EvalData.resolve(opts.data) if opts.data else None

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
        if data is not None:
            for name, r in runners.items():
                acc[name] = accuracy(r, data.batches(pre, opts.limit), batch_of(r.inputs[0], profile.batch))
        env = environment(host, runner, profile)
        meta = dict(runner.metadata)
        dense_meta = dict(dense.metadata) if dense is not None else {}

    b = profile.budgets
    p50_limit = opts.budget_ms if opts.budget_ms is not None else b.latency_p50_ms
    # --budget-ms sets the median; the tail budget keeps the profile's p99/p50 ratio.
    p99_limit = p50_limit * (b.latency_p99_ms / b.latency_p50_ms)
    drop_limit = opts.max_acc_drop if opts.max_acc_drop is not None else b.max_acc_drop
    reference, reference_kind, why_not = None, "", "no --data given: pass the validation images to measure top-1"
    split: dict[str, Any] | None = None
    if data is not None:
        split, why_not = _same_split(meta, data, opts.limit)
    if "dense" in acc:
        reference, reference_kind, why_not = acc["dense"]["top1"], "dense model measured here on the same data", ""
    elif data is not None and why_not is None:
        # The same images the run validated on: its recorded accuracies (fractions; the bench reports percent)
        # are the reference. Prefer the dense start's, which is what the budget's drop is defined against.
        kinds = {"dense_val_acc": "dense accuracy in the metadata",
                 "reference_val_acc": "exported model's training-time accuracy in the metadata"}  # fmt: skip
        for key, kind in kinds.items():
            if _meta_float(meta, key) is not None:
                reference, reference_kind = 100 * _meta_float(meta, key), kind  # type: ignore[operator]
                break
        else:
            why_not = "the model's metadata holds no training-time accuracy; pass --compare DENSE.onnx"
    measured = acc["model"]["top1"] if "model" in acc else None
    drop = reference - measured if (reference is not None and measured is not None) else None
    if data is not None:
        acc["data"] = str(data.folder or data.spec)
        if data.note:
            acc["data_note"] = data.note
        acc |= {"split": split, "reference_top1": reference, "reference": reference_kind or None}
        if reference is None:
            acc["reference_unavailable"] = why_not
    no_golden = ("no golden.npz next to the model and no --golden (hiap export writes one when the run's "
                 "validation images are readable)")  # fmt: skip
    budgets = [
        _budget("latency_p50_ms", lat["model"].p50, p50_limit),
        _budget("latency_p99_ms", lat["model"].p99, p99_limit),
        _budget("accuracy_drop_pp", drop, drop_limit, reason=why_not or ""),
        _budget("fidelity_max_abs_diff", fid["max_abs_diff"] if fid else None, b.fidelity_atol, reason=no_golden),
        _budget(
            "fidelity_top1_agreement",
            fid["top1_agreement"] if fid else None,
            b.min_top1_agreement,
            True,
            reason=no_golden,
        ),
    ]
    verdict = ("failed" if any(x["passed"] is False for x in budgets)
               else "not measured" if any(x["passed"] is None for x in budgets) else "met")  # fmt: skip
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
        "accuracy": acc,
        "budgets": budgets,
        # True only when every budget was measured and held: a missing measurement is never read as a pass.
        "passed": verdict == "met",
        "verdict": verdict,
        "exit_code": EXIT_CODES[verdict],
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


def verdict_line(report: dict[str, Any]) -> str:
    """One line for the console and CI logs. Budgets are named by family (latency, accuracy, fidelity); a family
    with an unmeasured budget is listed under 'not measured' with why, never under 'met'."""
    families: dict[str, list[dict[str, Any]]] = {}
    for b in report["budgets"]:
        families.setdefault(b["budget"].split("_")[0], []).append(b)
    met = [f for f, bs in families.items() if all(b["passed"] is True for b in bs)]
    unmeasured = []
    for f, bs in families.items():
        reasons = list(dict.fromkeys(b.get("reason") or "no reason recorded" for b in bs if b["passed"] is None))
        if reasons:
            unmeasured.append(f"{f} ({'; '.join(reasons)})")
    tail = f"; not measured: {', '.join(unmeasured)}" if unmeasured else ""
    if report["verdict"] == "failed":
        failed = [b["budget"] for b in report["budgets"] if b["passed"] is False]
        return f"a budget failed: {', '.join(failed)}{tail}"
    if report["verdict"] == "met":
        return "all budgets met"
    return f"budgets met: {', '.join(met) or 'none'}{tail}"
