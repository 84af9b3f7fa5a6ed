"""The runner a device profile configures: the runtime chosen, TensorRT's engine settings and its engine cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hiap.base.errors import HiapError
from hiap.base.jsonfile import parse_json
from hiap.base.precision import (
    CPU_RUNTIME_LIBRARIES,
    CPU_RUNTIMES,
    FP16,
    FP32,
    INT8,
    OPENVINO,
    ORT,
    TRT,
    runtime_by_library,
)
from hiap.devices.profile import DeviceProfile, version_in_range
from hiap.runtime.base import Runner


def resolve_runtime(profile: DeviceProfile, requested: str | None) -> tuple[str, str]:
    """The runtime to bench on ('ort', 'openvino' or 'trt') and a note: --runtime when given, else the profile's. A
    profile whose default is OpenVINO falls back to ONNX Runtime where OpenVINO is not installed, and says so."""
    from hiap.runtime.ov_runner import import_openvino

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
    from hiap.runtime.trt_env import gpu_name

    slug = "".join(ch if ch.isalnum() else "-" for ch in gpu_name()).strip("-").lower()
    return f"trt{trt.__version__}.{slug}"


def timing_cache_for(onnx_path: Path, key: str) -> Path:
    """The TensorRT timing cache beside an ONNX file, one per engine key (a cache is not portable either)."""
    return onnx_path.with_name(f"timing.{key}.cache")


def _engine_for(onnx_path: Path, profile: DeviceProfile) -> Path:
    """On a TensorRT device an .onnx is built into an engine first, cached beside it per TensorRT version and GPU."""
    from hiap.runtime.trt_build import build_engine, read_sidecar, sha256_file, sidecar_path
    from hiap.runtime.trt_env import import_tensorrt

    trt = import_tensorrt()
    if trt is None:
        raise HiapError(f"Device '{profile.name}' runs TensorRT, which is not installed on this host; bench on the "
                        "device, or pick an ONNX Runtime profile (x86-cpu, rpi5, ...).")  # fmt: skip
    wanted = profile.software.tensorrt
    if wanted and not version_in_range(trt.__version__, wanted):
        raise HiapError(f"Device '{profile.name}' expects TensorRT {wanted} but this host has {trt.__version__}: "
                        "use the profile of this JetPack/TensorRT, or pass your own profile file.")  # fmt: skip
    from hiap.runtime.ort_runner import OrtRunner

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
            from hiap.devices.profile import OvSettings
            from hiap.runtime.ov_runner import OvRunner

            # A CPU profile without its own OpenVINO section runs it with its ONNX Runtime thread count.
            ov = profile.openvino or OvSettings(profile.ort.intra_op_threads if profile.ort else 1)
            return OvRunner(path, threads=ov.threads, hint=ov.hint, precision=precision)
        from hiap.runtime.ort_runner import OrtRunner

        ort = profile.ort
        assert ort is not None  # validate() requires the section when runtime is 'ort'
        return OrtRunner(path, providers=list(ort.providers), intra_op_threads=ort.intra_op_threads,
                         inter_op_threads=ort.inter_op_threads,
                         graph_optimization_level=ort.graph_optimization_level)  # fmt: skip
    from hiap.runtime.ort_runner import check_model_file
    from hiap.runtime.trt_runner import TrtRunner

    check_model_file(path, (".onnx", ".engine", ".plan"))
    engine = _engine_for(path, profile) if path.suffix == ".onnx" else path
    return TrtRunner(engine, batch=profile.batch)
