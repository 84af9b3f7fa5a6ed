"""`hiap bench`, torch-free: a device profile configures the runner, runtime/ measures, every budget is judged."""

from __future__ import annotations

import contextlib
import math
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from devices.host import Host, power_state, profile_mismatch
from devices.profile import DeviceProfile, version_in_range
from hiap import __version__
from hiap.base.errors import HiapError
from hiap.base.jsonfile import parse_json
from hiap.base.precision import (
    COMPUTE_PRECISIONS,
    CPU_RUNTIME_LIBRARIES,
    CPU_RUNTIMES,
    FILE_PRECISIONS,
    FP16,
    FP32,
    INT8,
    OPENVINO,
    OPENVINO_HINTS,
    OPENVINO_RUNTIME,
    ORT,
    TRT,
    precision_named,
    runtime_by_library,
)
from runtime.base import Runner, batch_of
from runtime.data import (
    SUBSET_SELECTION,
    Preprocessing,
    builtin_fingerprint,
    builtin_val_batches,
    image_folder_batches,
    resolve_image_folder,
    split_fingerprint,
)
from runtime.harness import (
    Accuracy,
    Fidelity,
    Latency,
    Tolerance,
    accuracy,
    fidelity,
    interleaved_latency,
    measure_latency,
    random_feeds,
)
from runtime.trt_env import NOT_VALIDATED


@dataclass(frozen=True)
class BenchTarget:
    """The device profile to bench against, resolved once, and this host measured against it (`mismatch`: why
    this host is not that device, '' when it is)."""

    profile: DeviceProfile
    host: Host
    mismatch: str

    @classmethod
    def on(cls, profile: DeviceProfile, host: Host) -> BenchTarget:
        """`profile` measured against `host`."""
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
    runtime: str | None = None  # 'onnxruntime' or 'openvino' on a CPU profile; None: the profile's
    # The runtime the --compare model runs on (None: the model's); without --compare, the model itself is compared,
    # so one bench shows one file on two runtimes side by side.
    compare_runtime: str | None = None
    # What an FP32 file computes in: 'bf16' or 'fp16' on OpenVINO where the CPU has the instructions; None: its own.
    precision: str | None = None


def resolve_runtime(profile: DeviceProfile, requested: str | None) -> tuple[str, str]:
    """The runtime to bench on ('ort', 'openvino' or 'trt') and a note: --runtime when given, else the profile's. A
    profile whose default is OpenVINO falls back to ONNX Runtime where OpenVINO is not installed, and says so."""
    from runtime.ov_runner import import_openvino

    if requested is not None:
        chosen = runtime_by_library(requested)  # --runtime names the library
        if chosen is None or not chosen.cpu:
            raise HiapError(f"--runtime {requested}: choose {' or '.join(CPU_RUNTIME_LIBRARIES)}.")
        if profile.runtime == TRT:
            raise HiapError(f"--runtime {requested}: device '{profile.name}' runs TensorRT, not a CPU runtime.")
        if chosen.short == OPENVINO and import_openvino() is None:
            raise HiapError("--runtime openvino: OpenVINO is not installed here (pip install 'hiap[openvino]').")
        return chosen.short, ""
    if profile.runtime == OPENVINO and import_openvino() is None:
        return ORT, (f"measured on ONNX Runtime: OpenVINO, the default of '{profile.name}', is not installed "
                     "(pip install 'hiap[openvino]')")  # fmt: skip
    return profile.runtime, ""


def engine_build_settings(profile: DeviceProfile, meta: dict[str, str] | None = None) -> dict[str, Any]:
    """The TensorRT build options a profile asks for, for a file with metadata `meta` (an INT8 file builds an INT8
    engine): the one place they are derived (bench and export both build with them, and a cached engine is reused
    only when its sidecar records the same)."""
    if profile.trt is None:
        raise HiapError(f"Device '{profile.name}' runs {profile.runtime}, not TensorRT: it has no engine settings.")
    int8 = (meta or {}).get("precision") == INT8
    if int8:
        # TensorRT's explicit quantization takes signed, symmetric activations (zero point 0) only.
        recipe = parse_json((meta or {}).get("quantization") or "{}", "The file's metadata 'quantization'")
        recipe = recipe if isinstance(recipe, dict) else {}
        if recipe.get("activations") != "s8":
            raise HiapError(f"This INT8 file was quantized for ONNX Runtime (activations {recipe.get('activations')}"
                            f"); TensorRT needs s8: export with --precision int8 --target {profile.name}.")  # fmt: skip
    # The precisions the engine may use are keyed by their names (TensorRT's builder flags; build_engine's
    # keyword arguments).
    return {
        FP16: profile.precision == FP16,
        "layernorm_fp32": profile.trt.layernorm_fp32,
        "workspace_mb": profile.trt.workspace_mb,
        "max_batch": max(32, profile.batch),  # a dynamic-batch engine takes batches up to this
        INT8: int8,
    }


def engine_key(trt: Any) -> str:
    """What an engine is specific to: the TensorRT version and the GPU ('trt10.3.0.nvidia-orin')."""
    from runtime.trt_env import gpu_name

    slug = "".join(ch if ch.isalnum() else "-" for ch in gpu_name()).strip("-").lower()
    return f"trt{trt.__version__}.{slug}"


def timing_cache_for(onnx_path: Path, key: str) -> Path:
    """The TensorRT timing cache beside an ONNX file, one per engine key (a cache is not portable either)."""
    return onnx_path.with_name(f"timing.{key}.cache")


def _engine_for(onnx_path: Path, profile: DeviceProfile) -> Path:
    """On a TensorRT device an .onnx is built into an engine first, cached beside it per TensorRT version and GPU."""
    from runtime.trt_build import build_engine, read_sidecar, sha256_file, sidecar_path
    from runtime.trt_env import import_tensorrt

    trt = import_tensorrt()
    if trt is None:
        raise HiapError(f"Device '{profile.name}' runs TensorRT, which is not installed on this host; bench on the "
                        "device, or pick an ONNX Runtime profile (x86-cpu, rpi5, ...).")  # fmt: skip
    wanted = profile.software.tensorrt
    if wanted and not version_in_range(trt.__version__, wanted):
        raise HiapError(f"Device '{profile.name}' expects TensorRT {wanted} but this host has {trt.__version__}: "
                        "use the profile of this JetPack/TensorRT, or pass your own profile file.")  # fmt: skip
    from runtime.ort_runner import OrtRunner

    with OrtRunner(onnx_path) as probe:
        meta = dict(probe.metadata)
    key = engine_key(trt)
    build = engine_build_settings(profile, meta)
    engine = onnx_path.with_name(f"{onnx_path.stem}.{key}.{INT8 if build[INT8] else profile.precision}.engine")
    if engine.is_file() and sidecar_path(engine).is_file():
        # A cached engine is reused only if it was built from this very ONNX with these settings.
        old = read_sidecar(engine)
        if old.get("onnx_sha256") == sha256_file(onnx_path) and old.get("build") == build:
            return engine
    build_engine(onnx_path, engine, **build, timing_cache=timing_cache_for(onnx_path, key), metadata=meta)
    return engine


def open_runner(path: Path, profile: DeviceProfile, runtime: str | None = None, precision: str = FP32) -> Runner:
    """The runner of `runtime` ('ort', 'openvino', 'trt'; default the profile's) configured by the profile; OpenVINO
    computes an FP32 file at `precision` (fp32, bf16, fp16)."""
    runtime = runtime or profile.runtime
    if runtime in CPU_RUNTIMES:
        if path.suffix in (".engine", ".plan"):
            raise HiapError(f"'{path}' is a TensorRT engine but device '{profile.name}' runs a CPU runtime: bench the "
                            ".onnx instead.")  # fmt: skip
        if runtime == OPENVINO:
            from devices.profile import OvSettings
            from runtime.ov_runner import OvRunner

            # A CPU profile without its own OpenVINO section runs it with its ONNX Runtime thread count.
            ov = profile.openvino or OvSettings(profile.ort.intra_op_threads if profile.ort else 1)
            return OvRunner(path, threads=ov.threads, hint=ov.hint, precision=precision)
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
        value = parse_json(meta[key], f"metadata '{key}'") if key in meta else None
    except (HiapError, TypeError):
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
        folder = resolve_image_folder(root)  # what `hiap train --data` takes: the split it validated on
        return cls(spec, folder, f"training root: evaluated its val/ ({folder})" if folder != root else "")

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
        recorded = parse_json(meta.get("val_split", "null"), "metadata 'val_split'")
    except HiapError:
        recorded = None
    evaluated = data.fingerprint(limit)
    split: dict[str, Any] = {"evaluated": evaluated, "recorded": recorded, "same": False}
    whole = evaluated
    if limit is not None:  # a class-balanced subset (runtime.data.balanced_subset) of the whole split
        whole = data.fingerprint()
        split["subset"] = {"images": evaluated["images"], "of": whole["images"], "selection": SUBSET_SELECTION}
    if not isinstance(recorded, dict):
        why = ("the model's metadata records no validation split (a plan-only export, one made without the run's "
               "data, or by an older hiap); re-export from the run, or pass --compare DENSE.onnx")  # fmt: skip
        return split, why
    if evaluated == recorded:
        split["same"] = True
        return split, None
    if limit is not None and whole == recorded:
        return split, (f"--limit {limit} evaluates {evaluated['images']} of the {recorded['images']} images the "
                       "run validated on, so its validation accuracy does not apply")  # fmt: skip
    return split, (f"--data is not the split the run validated on ({_describe_split(evaluated)}; the run's: "
                   f"{_describe_split(recorded)})")  # fmt: skip


Verdict = Literal["met", "failed", "not measured"]


@dataclass(frozen=True)
class Budget:
    """One budget of the profile judged: `value` against `limit` (None: not measured, and `reason` says why).
    Truthy only when measured and held: an unmeasured budget is never a pass."""

    name: str
    limit: float
    value: float | None
    higher_is_better: bool = False
    reason: str = ""

    @property
    def family(self) -> str:
        """What the budget is about: 'latency', 'accuracy' or 'fidelity'."""
        return self.name.split("_")[0]

    @property
    def margin(self) -> float | None:
        """How far inside the limit the value is (negative: over it); None when not measured."""
        if self.value is None:
            return None
        return (self.value - self.limit) if self.higher_is_better else (self.limit - self.value)

    @property
    def passed(self) -> bool | None:
        """True when held, False when missed, None when not measured."""
        margin = self.margin
        return None if margin is None else bool(margin >= 0)

    def __bool__(self) -> bool:
        return self.passed is True

    def to_dict(self) -> dict[str, Any]:
        if self.value is None:
            return {"budget": self.name, "limit": self.limit, "value": None, "passed": None, "margin": None,
                    "reason": self.reason}  # fmt: skip
        return {"budget": self.name, "limit": self.limit, "value": self.value, "passed": self.passed,
                "margin": self.margin}  # fmt: skip


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


@dataclass(frozen=True)
class AccuracyCheck:
    """Top-1 on the evaluation data (None: no --data), and the reference the accuracy budget's drop is taken against:
    `reference_top1` and what it is, or `unavailable`, why there is none."""

    data: EvalData | None
    model: Accuracy | None = None
    dense: Accuracy | None = None
    split: dict[str, Any] | None = None
    reference_top1: float | None = None
    reference: str = ""
    unavailable: str = ""

    @property
    def drop(self) -> float | None:
        """Percentage points of top-1 below the reference; None when either is missing."""
        if self.reference_top1 is None or self.model is None:
            return None
        return self.reference_top1 - self.model.top1

    def to_dict(self) -> dict[str, Any]:
        if self.data is None:
            return {}
        out: dict[str, Any] = {name: acc.to_dict() for name, acc in (("model", self.model), ("dense", self.dense))
                               if acc is not None}  # fmt: skip
        out["data"] = str(self.data.folder or self.data.spec)
        if self.data.note:
            out["data_note"] = self.data.note
        out |= {"split": self.split, "reference_top1": self.reference_top1, "reference": self.reference or None}
        if self.reference_top1 is None:
            out["reference_unavailable"] = self.unavailable
        return out


@dataclass(frozen=True)
class DenseComparison:
    """The dense model (--compare), timed alternating with the model, and what the pruning bought."""

    artifact: Path
    size_mb: float
    latency: Latency
    speedup_p50: float
    speedup_mean: float
    mac_ratio: float | None  # dense over pruned MACs, from both models' metadata
    realisation: float | None  # the share of the MAC saving that shows as p50 speedup
    precision: str = FP32  # the dense file's (an INT8 pruned model is often compared with the FP32 dense one)
    runtime: str = ""  # the runtime it ran on ('' when the model's own)

    @classmethod
    def measured(cls, artifact: Path, model: Latency, dense: Latency, meta: dict[str, str], dense_meta: dict[str, str],
                 precision: str | None = None, runtime: str = "") -> DenseComparison:  # fmt: skip
        gm, dgm = _meta_float(meta, "gmacs"), _meta_float(dense_meta, "gmacs")
        mac_ratio = (dgm / gm) if gm and dgm else None
        speedup = dense.p50 / model.p50
        return cls(artifact, artifact.stat().st_size / 1e6, dense, speedup, dense.mean / model.mean, mac_ratio,
                   speedup / mac_ratio if mac_ratio else None, precision or FP32, runtime)  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        runtime = {"dense_runtime": self.runtime} if self.runtime else {}
        return runtime | {"dense_artifact": str(self.artifact), "dense_precision": self.precision,
                "dense_size_mb": self.size_mb, "speedup_p50": self.speedup_p50,
                "speedup_mean": self.speedup_mean, "mac_ratio": self.mac_ratio,
                "realisation": self.realisation}  # fmt: skip


@dataclass(frozen=True)
class BenchReport:
    """Everything `hiap bench` reports. `verdict`: 'met' (every budget measured and held), 'failed' (a measured
    budget failed) or 'not measured' (none failed, some could not be measured); truthy only when 'met'."""

    artifact: Path
    format: str
    size_mb: float
    device: str
    mismatch: str  # why this host is not the device, '' when it is
    label: str
    model: dict[str, str | None]  # the export's metadata that names the model
    batch: int
    latency: Latency
    fidelity: Fidelity | None
    accuracy: AccuracyCheck
    budgets: tuple[Budget, ...]
    environment: dict[str, Any]
    seconds: float
    protocol_warnings: tuple[str, ...] = ()
    note: str = ""
    compare: DenseComparison | None = None
    precision: str = FP32  # the model file's, as its export recorded it
    prediction: dict[str, Any] | None = None  # the latency table's prediction vs this measurement (or why not)

    @property
    def measured_on_target(self) -> bool:
        return not self.mismatch

    @property
    def verdict(self) -> Verdict:
        if any(b.passed is False for b in self.budgets):
            return "failed"
        return "not measured" if any(b.passed is None for b in self.budgets) else "met"

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]

    def __bool__(self) -> bool:
        # Only when every budget was measured and held: a missing measurement is never read as a pass.
        return self.verdict == "met"

    def to_dict(self) -> dict[str, Any]:
        """The JSON report (`hiap bench --json`, a run's bench.json)."""
        verdict = self.verdict
        latency = {"model": self.latency.to_dict()}
        if self.compare is not None:
            latency["dense"] = self.compare.latency.to_dict()
        out: dict[str, Any] = {
            "artifact": str(self.artifact), "format": self.format, "precision": self.precision,
            "size_mb": self.size_mb, "device": self.device,
            "measured_on_target": self.measured_on_target, "label": self.label, "model": self.model,
            "batch": self.batch, "latency": latency,
            "fidelity": self.fidelity.to_dict() if self.fidelity is not None else None,
            "accuracy": self.accuracy.to_dict(), "budgets": [b.to_dict() for b in self.budgets],
            "passed": verdict == "met", "verdict": verdict, "exit_code": EXIT_CODES[verdict],
            "environment": self.environment, "seconds": self.seconds,
        }  # fmt: skip
        if self.note:
            out["note"] = self.note
        out["protocol_warnings"] = list(self.protocol_warnings)
        if self.compare is not None:
            out["compare"] = self.compare.to_dict()
        if self.prediction is not None:
            out["prediction"] = self.prediction
        return out


def compare_prediction(meta: dict[str, str], profile: DeviceProfile, runner: Runner, precision: str,
                       latency: Latency) -> dict[str, Any] | None:  # fmt: skip
    """The export's predicted latency (from a device's table) against the p50 just measured, when the prediction is
    for this device, runtime, precision, threads and batch; otherwise why it is not compared. None: no prediction."""
    try:
        pred = parse_json(meta["predicted_latency"], "metadata") if "predicted_latency" in meta else None
    except HiapError:
        return {"compared": False, "reason": "the file's predicted_latency is not valid JSON"}
    if not isinstance(pred, dict) or not isinstance(pred.get("ms"), dict):
        return None if pred is None else {"compared": False, "reason": "the file's predicted_latency is malformed"}
    described = runner.describe()
    threads = {k: described[k] for k in pred.get("threads", {}) if k in described}
    for what, theirs, ours in (("device", pred.get("device"), profile.name),
                               ("runtime", pred.get("runtime"), described.get("runtime")),
                               ("precision", pred.get("precision"), precision),
                               ("threads", pred.get("threads", {}), threads)):  # fmt: skip
        if theirs != ours:
            return {"compared": False, "reason": f"the prediction is for {what} {theirs}, this bench runs {ours}"}
    ms = pred["ms"].get(str(latency.batch))
    if not isinstance(ms, (int, float)):
        return {"compared": False, "reason": f"the table has no cells at batch {latency.batch}"}
    # Like with like: a table's cell is the median of the fastest round, so the measurement is taken the same way
    # (Latency.steady); the p50 of all calls is shown beside it.
    steady = latency.steady if latency.steady is not None else latency.p50
    return {"compared": True, "device": profile.name, "batch": latency.batch, "predicted_ms": ms,
            "statistic": "median of the fastest round", "measured_ms": steady, "measured_p50_ms": latency.p50,
            "error": steady / ms - 1.0, "table": pred.get("table"),
            "validated": pred.get("validated", True), "measured_elsewhere": pred.get("measured_elsewhere")}  # fmt: skip


@dataclass(frozen=True)
class _Plan:
    """What a bench does, resolved from the options and the profile's protocol before any runner opens."""

    warmup: int
    iterations: int
    min_seconds: float
    golden: Path | None
    data: EvalData | None
    runtime: str
    runtime_note: str
    compare: Path | None  # the model run beside it (--compare, or the model itself under --compare-runtime)
    compare_runtime: str
    precision: str | None = None  # bf16 / fp16: the FP32 file computed at that precision (--precision)


def check_options(artifact: Path, target: BenchTarget, opts: BenchOptions) -> None:
    """Raise HiapError for options that cannot be benched (the checks `run_bench` makes before measuring)."""
    _plan(artifact, target, opts)


def _plan(artifact: Path, target: BenchTarget, opts: BenchOptions) -> _Plan:
    """Every check of the options that can fail, made before minutes of measuring."""
    profile, mismatch = target.profile, target.mismatch
    if mismatch and not opts.allow_mismatch:
        raise HiapError(f"{mismatch}. Bench on the device itself, or pass --allow-mismatch to measure here (every "
                        f"figure is then labelled as not measured on {profile.name}).")  # fmt: skip
    for name, value, low in (("iterations", opts.iterations, 1), ("warmup", opts.warmup, 0), ("limit", opts.limit, 1)):
        if value is not None and value < low:
            raise HiapError(f"--{name} must be >= {low}, got {value}.")
    for flag, limit, positive in (("--budget-ms", opts.budget_ms, True), ("--max-acc-drop", opts.max_acc_drop, False),
                                  ("--min-seconds", opts.min_seconds, False)):  # fmt: skip
        if limit is not None and not (math.isfinite(limit) and (limit > 0 if positive else limit >= 0)):
            raise HiapError(f"{flag} must be a finite number {'> 0' if positive else '>= 0'}, got {limit}.")
    proto = profile.protocol
    golden = opts.golden
    if golden is None and artifact.with_name("golden.npz").is_file():
        golden = artifact.with_name("golden.npz")
    if opts.golden is not None and not opts.golden.is_file():
        raise HiapError(f"Golden file '{opts.golden}' does not exist.")
    precision = check_inference_precision(opts.precision, profile, target.host, opts.runtime)
    runtime, runtime_note = resolve_runtime(profile, OPENVINO_RUNTIME.library if precision else opts.runtime)
    # The dense file of --compare runs at its own precision on the profile's runtime: the baseline a user has.
    default_runtime = resolve_runtime(profile, None)[0] if precision else runtime
    compare_runtime = resolve_runtime(profile, opts.compare_runtime)[0] if opts.compare_runtime else default_runtime
    if opts.compare_runtime and compare_runtime == runtime and opts.compare is None:
        raise HiapError(f"--compare-runtime {opts.compare_runtime} is the runtime the model runs on already: name the "
                        "other one (onnxruntime or openvino), or pass --compare DENSE.onnx.")  # fmt: skip
    return _Plan(
        runtime=runtime,
        runtime_note=runtime_note,
        precision=precision,
        compare=opts.compare or (artifact if opts.compare_runtime else None),
        compare_runtime=compare_runtime,
        warmup=opts.warmup if opts.warmup is not None else proto.warmup,
        iterations=opts.iterations if opts.iterations is not None else proto.iterations,
        min_seconds=opts.min_seconds if opts.min_seconds is not None else float(proto.min_seconds),
        golden=golden,
        data=EvalData.resolve(opts.data) if opts.data else None,
    )


def check_inference_precision(
    precision: str | None, profile: DeviceProfile, host: Any, runtime: str | None
) -> str | None:
    """--precision: None or fp32 (the file's own), or bf16 / fp16, which OpenVINO computes an FP32 file in where
    the profile lists it and this CPU has the instructions; refused in one line otherwise, naming what is missing."""
    if precision is None or precision == FP32:
        return None
    if precision not in COMPUTE_PRECISIONS:
        raise HiapError(f"--precision {precision}: choose fp32, bf16 or fp16 (INT8 is a file of its own: hiap export "
                        "--precision int8).")  # fmt: skip
    if profile.runtime == TRT:
        raise HiapError(f"--precision {precision}: device '{profile.name}' builds TensorRT engines at its profile's "
                        f"precision ({profile.precision}); bench without --precision.")  # fmt: skip
    if runtime is not None and runtime != OPENVINO_RUNTIME.library:  # --runtime's name
        raise HiapError(f"--precision {precision}: ONNX Runtime's CPU provider computes an FP32 file in fp32; bench "
                        f"with --runtime openvino.")  # fmt: skip
    if precision not in profile.precisions:
        raise HiapError(f"--precision {precision}: device '{profile.name}' lists {list(profile.precisions)}; add "
                        f"{precision} to its precisions with {precision}_fidelity_atol and "
                        f"{precision}_min_top1_agreement budgets.")  # fmt: skip
    entry = precision_named(precision)
    need = entry.cpu_need(host.arch) if entry is not None else None
    if need is None:
        raise HiapError(f"--precision {precision}: not supported on {host.arch} CPUs.")
    mode, flags = need.mode, need.flags
    have = set(host.cpu_flags)
    missing = [f for f in flags if f not in have]
    if (mode == "any" and len(missing) == len(flags)) or (mode == "all" and missing):
        which = " or ".join(missing) if mode == "any" else " and ".join(missing)
        raise HiapError(f"--precision {precision}: this CPU lacks {which} (its {precision} arithmetic); OpenVINO "
                        "would not compute in it here. Bench fp32 or int8 on this machine.")  # fmt: skip
    from runtime.ov_runner import import_openvino

    if import_openvino() is None:
        raise HiapError(f"--precision {precision} runs on OpenVINO, which is not installed here "
                        "(pip install 'hiap[openvino]').")  # fmt: skip
    return precision


def _check_declared_input(model: Runner, pre: Preprocessing, artifact: Path) -> None:
    """The graph's declared input against the metadata's input_size, which the images are prepared at: a file
    edited or assembled by hand can disagree, and the runtime would fail on the first batch."""
    declared = tuple(model.inputs[0].shape[1:])
    if len(declared) != 3 or any(d is not None and d != s for d, s in zip(declared, pre.input_size, strict=True)):
        raise HiapError(f"'{artifact}' declares input {list(model.inputs[0].shape)} but its metadata input_size is "
                        f"{list(pre.input_size)}: re-export it with hiap export.")  # fmt: skip


def _check_same_input(model: Runner, dense: Runner, artifact: Path) -> None:
    if tuple(dense.inputs[0].shape[1:]) != tuple(model.inputs[0].shape[1:]):
        raise HiapError(f"--compare model takes {list(dense.inputs[0].shape)} but '{artifact}' takes "
                        f"{list(model.inputs[0].shape)}: compare models of the same input.")  # fmt: skip


def _measure_latency(model: Runner, dense: Runner | None, batch: int, plan: _Plan) -> tuple[Latency, Latency | None]:
    """The model timed alone, or alternating call by call with the dense model."""
    runners = {"model": model} | ({"dense": dense} if dense is not None else {})
    feeds = {name: random_feeds(r, batch_of(r.inputs[0], batch)) for name, r in runners.items()}
    if dense is None:
        return measure_latency(model, feeds["model"], plan.warmup, plan.iterations, plan.min_seconds), None
    lat = interleaved_latency(runners, feeds, plan.warmup, plan.iterations, plan.min_seconds)
    return lat["model"], lat["dense"]


def _measure_accuracy(model: Runner, dense: Runner | None, data: EvalData | None, pre: Preprocessing,
                      limit: int | None, batch: int) -> tuple[Accuracy | None, Accuracy | None]:  # fmt: skip
    if data is None:
        return None, None

    def top1(runner: Runner) -> Accuracy:
        return accuracy(runner, data.batches(pre, limit), batch_of(runner.inputs[0], batch))

    return top1(model), (top1(dense) if dense is not None else None)


def _recorded_reference(meta: dict[str, str]) -> tuple[float | None, str]:
    """The run's recorded validation accuracy (a fraction; the bench reports percent) and what it is. The dense
    start's comes first: it is what the budget's drop is defined against."""
    kinds = {"dense_val_acc": "dense accuracy in the metadata",
             "reference_val_acc": "exported model's training-time accuracy in the metadata"}  # fmt: skip
    for key, kind in kinds.items():
        value = _meta_float(meta, key)
        if value is not None and 0.0 < value <= 1.0:  # 0.0, NaN or 86 (percent) is not a recorded accuracy
            return 100 * value, kind
    return None, ""


def check_accuracy(data: EvalData | None, model: Accuracy | None, dense: Accuracy | None, meta: dict[str, str],
                   limit: int | None) -> AccuracyCheck:  # fmt: skip
    """The measured top-1 with the reference its drop is taken against: the dense model measured here, else, on
    the very images the run validated on, the accuracy the run recorded."""
    if data is None:
        return AccuracyCheck(None, unavailable="no --data given: pass the validation images to measure top-1")
    split, why_not = _same_split(meta, data, limit)
    if dense is not None:
        return AccuracyCheck(data, model, dense, split, dense.top1, "dense model measured here on the same data")
    if why_not is not None:
        return AccuracyCheck(data, model, None, split, unavailable=why_not)
    reference, kind = _recorded_reference(meta)
    if reference is None:
        why_not = "the model's metadata holds no training-time accuracy; pass --compare DENSE.onnx"
        return AccuracyCheck(data, model, None, split, unavailable=why_not)
    return AccuracyCheck(data, model, None, split, reference, kind)


NO_GOLDEN = ("no golden.npz next to the model and no --golden (hiap export writes one when the run's validation "
             "images are readable)")  # fmt: skip


def fidelity_tolerance(profile: DeviceProfile, precision: str = FP32) -> Tolerance:
    return Tolerance(*profile.budgets.fidelity_limits(precision))


def model_precision(meta: dict[str, str], profile: DeviceProfile, artifact: Path) -> str:
    """The precision the export recorded in the file (FP32 for files without one), refused when the device's
    profile does not run it."""
    precision = meta.get("precision", FP32)  # files and engine sidecars from before it was recorded: FP32
    if precision not in FILE_PRECISIONS:
        raise HiapError(f"'{artifact}' says its precision is {precision!r:.30}, which hiap does not write "
                        f"({', '.join(FILE_PRECISIONS)}): export it again.")  # fmt: skip
    if precision not in profile.precisions:
        raise HiapError(f"'{artifact}' is {precision} but device '{profile.name}' runs {list(profile.precisions)}: "
                        f"export with --precision {profile.precisions[0]}, or bench on a device that runs "
                        f"{precision}.")  # fmt: skip
    return precision


def computed_precision(model: Runner, asked: str | None, profile: DeviceProfile, artifact: Path) -> str:
    """The precision the model's figures are computed in: the file's own, or the bf16 / fp16 an FP32 file was run
    at, confirmed by the runtime (never a precision only asked for)."""
    precision = model_precision(model.metadata, profile, artifact)
    if asked is None:
        return precision
    if precision != FP32:
        raise HiapError(f"--precision {asked} lowers an FP32 file; '{artifact}' is {precision} already.")
    computed = getattr(model, "inference_precision", "")
    if computed != OPENVINO_HINTS[asked]:
        raise HiapError(f"--precision {asked}: OpenVINO computes in '{computed}' on this CPU, not "
                        f"{OPENVINO_HINTS[asked]}; no figure was measured at {asked}.")  # fmt: skip
    return asked


def judge_budgets(profile: DeviceProfile, opts: BenchOptions, latency: Latency, fid: Fidelity | None,
                  acc: AccuracyCheck, precision: str = FP32) -> tuple[Budget, ...]:  # fmt: skip
    """Every budget of the profile (latency and accuracy limits as the options override them) against the figures."""
    b, fid_tol = profile.budgets, fidelity_tolerance(profile, precision)  # the limits the fidelity was judged by
    p50_limit = opts.budget_ms if opts.budget_ms is not None else b.latency_p50_ms
    # --budget-ms sets the median; the tail budget keeps the profile's p99/p50 ratio.
    p99_limit = p50_limit * (b.latency_p99_ms / b.latency_p50_ms)
    drop_limit = opts.max_acc_drop if opts.max_acc_drop is not None else b.max_acc_drop
    # `is None`, not truthiness: a comparison that failed is falsy but measured.
    max_abs = fid.comparison.max_abs_diff if fid is not None else None
    agreement = fid.comparison.top1_agreement if fid is not None else None
    return (
        Budget("latency_p50_ms", p50_limit, latency.p50),
        Budget("latency_p99_ms", p99_limit, latency.p99),
        Budget("accuracy_drop_pp", drop_limit, acc.drop, reason=acc.unavailable),
        Budget("fidelity_max_abs_diff", fid_tol.atol, max_abs, reason=NO_GOLDEN),
        Budget(
            "fidelity_top1_agreement", fid_tol.min_top1_agreement, agreement, higher_is_better=True, reason=NO_GOLDEN
        ),
    )


def _label(target: BenchTarget) -> str:
    """What every figure must be read with: measured off the device, or under emulation."""
    label = f"NOT MEASURED ON {target.profile.name}: {target.mismatch}" if target.mismatch else ""
    if target.host.emulated:
        label = f"EMULATED ({target.host.emulated}): latency is meaningless; fidelity and accuracy are exact. " + label
    return label


def run_bench(artifact: Path, target: BenchTarget, opts: BenchOptions) -> BenchReport:
    """Open the model (and the dense one of --compare), measure latency, fidelity and accuracy, and judge every
    budget of the profile against them."""
    profile, host = target.profile, target.host
    plan = _plan(artifact, target, opts)
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        model = stack.enter_context(open_runner(artifact, profile, plan.runtime, plan.precision or FP32))
        compare_path = plan.compare
        dense = stack.enter_context(open_runner(compare_path, profile, plan.compare_runtime)) if compare_path else None
        batch = batch_of(model.inputs[0], profile.batch)
        pre = Preprocessing.from_metadata(model.metadata, str(artifact))  # before timing: it fails on a bad export
        _check_declared_input(model, pre, artifact)
        precision = computed_precision(model, plan.precision, profile, artifact)
        dense_precision = model_precision(dense.metadata, profile, compare_path) if dense is not None else None
        dense_runtime = (
            dense.describe()["runtime"] if dense is not None and plan.compare_runtime != plan.runtime else ""
        )
        if dense is not None:
            _check_same_input(model, dense, artifact)
        latency, dense_latency = _measure_latency(model, dense, profile.batch, plan)
        fid = fidelity(model, plan.golden, batch, fidelity_tolerance(profile, precision)) if plan.golden else None
        model_acc, dense_acc = _measure_accuracy(model, dense, plan.data, pre, opts.limit, profile.batch)
        env = environment(host, model, profile)
        meta = dict(model.metadata)
        prediction = compare_prediction(meta, profile, model, precision, latency)
        dense_meta = dict(dense.metadata) if dense is not None else {}
    acc = check_accuracy(plan.data, model_acc, dense_acc, meta, opts.limit)
    compare = None
    if plan.compare is not None and dense_latency is not None:
        compare = DenseComparison.measured(plan.compare, latency, dense_latency, meta, dense_meta, dense_precision,
                                           dense_runtime)  # fmt: skip
    built = plan.runtime == TRT and artifact.suffix == ".onnx"
    return BenchReport(
        artifact=artifact,
        format="engine (built from onnx)" if built else artifact.suffix.lstrip("."),
        size_mb=artifact.stat().st_size / 1e6,
        device=profile.name,
        mismatch=target.mismatch,
        label=_label(target),
        model={k: meta.get(k) for k in ("model", "plan_hash", "gmacs", "dense_gmacs", "hiap_version")},
        batch=batch,
        latency=latency,
        fidelity=fid,
        accuracy=acc,
        budgets=judge_budgets(profile, opts, latency, fid, acc, precision),
        precision=precision,
        environment=env,
        seconds=time.perf_counter() - t0,
        protocol_warnings=tuple(protocol_warnings(profile, host, env["power"])),
        note=NOT_VALIDATED if plan.runtime == TRT else plan.runtime_note,
        compare=compare,
        prediction=prediction,
    )


def verdict_line(report: BenchReport) -> str:
    """One line for the console and CI logs. Budgets are named by family (latency, accuracy, fidelity); a family
    with an unmeasured budget is listed under 'not measured' with why, never under 'met'."""
    families: dict[str, list[Budget]] = {}
    for b in report.budgets:
        families.setdefault(b.family, []).append(b)
    met = [f for f, bs in families.items() if all(bs)]
    unmeasured = []
    for f, bs in families.items():
        reasons = list(dict.fromkeys(b.reason or "no reason recorded" for b in bs if b.passed is None))
        if reasons:
            unmeasured.append(f"{f} ({'; '.join(reasons)})")
    tail = f"; not measured: {', '.join(unmeasured)}" if unmeasured else ""
    verdict = report.verdict
    if verdict == "failed":
        failed = [b.name for b in report.budgets if b.passed is False]
        return f"a budget failed: {', '.join(failed)}{tail}"
    if verdict == "met":
        return "all budgets met"
    return f"budgets met: {', '.join(met) or 'none'}{tail}"
