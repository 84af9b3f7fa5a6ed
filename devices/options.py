"""A bench's target and options, checked and resolved into its plan before any runner opens."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hiap.base.errors import HiapError
from hiap.base.precision import (
    COMPUTE_PRECISIONS,
    FILE_PRECISIONS,
    FP32,
    OPENVINO_HINTS,
    OPENVINO_RUNTIME,
    TRT,
    precision_named,
)
from hiap.devices.evaldata import EvalData
from hiap.devices.host import Host, profile_mismatch
from hiap.devices.profile import DeviceProfile
from hiap.devices.runners import resolve_runtime
from hiap.runtime.base import Runner


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


@dataclass(frozen=True)
class BenchPlan:
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
    plan_bench(artifact, target, opts)


def plan_bench(artifact: Path, target: BenchTarget, opts: BenchOptions) -> BenchPlan:
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
    return BenchPlan(
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
    from hiap.runtime.ov_runner import import_openvino

    if import_openvino() is None:
        raise HiapError(f"--precision {precision} runs on OpenVINO, which is not installed here "
                        "(pip install 'hiap[openvino]').")  # fmt: skip
    return precision


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
