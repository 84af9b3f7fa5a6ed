"""TensorRT engines from ONNX: the build (FP16, INT8 from Q/DQ, LayerNorm in FP32, timing cache), its trtexec line,
the sidecar JSON."""

from __future__ import annotations

import hashlib
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from hiap import __version__
from hiap.base.atomic import write_bytes_atomic, write_json_atomic
from hiap.base.errors import HiapError
from hiap.base.jsonfile import read_json_object
from hiap.base.precision import FP16, FP32, INT8
from hiap.runtime.trt_env import NOT_VALIDATED, cudart, gpu_name, import_tensorrt

# Where JetPack installs trtexec (it is not on PATH there).
JETPACK_TRTEXEC = "/usr/src/tensorrt/bin/trtexec"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def trtexec_command(
    onnx_path: Path,
    engine_path: Path,
    fp16: bool = True,
    layernorm_fp32: bool = True,
    layer_names: list[str] | None = None,
    dynamic_chw: tuple[int, ...] | None = None,
    workspace_mb: int = 1024,
    max_batch: int = 32,
    int8: bool = False,
    names_are_layers: bool = True,
) -> str:
    """The trtexec line equivalent to build_engine, for NVIDIA's own timing on the device (trtexec at JetPack's
    path). Its engine has no hiap sidecar, so `hiap bench` takes the .onnx (and builds its own engine) rather than
    that file. LayerNorm is pinned by layer name, which is the ONNX node name only from TensorRT 10.1 on
    (`names_are_layers`); before that the line cannot pin it, and hiap bench's own build (by layer type) is the one
    to use."""
    q = shlex.quote
    cache = engine_path.with_name("timing.cache")
    parts = [f"{JETPACK_TRTEXEC} --onnx={q(str(onnx_path))} --saveEngine={q(str(engine_path))}",
             f"--timingCacheFile={q(str(cache))} --memPoolSize=workspace:{workspace_mb}M"]  # fmt: skip
    if int8:
        parts.append("--int8")  # explicit quantization: the Q/DQ nodes of the file decide what runs in INT8
    if fp16:
        parts.append("--fp16")
        if layernorm_fp32 and layer_names and names_are_layers:
            pinned = ",".join(f"{n}:fp32" for n in layer_names)
            parts.append(f"--precisionConstraints=obey --layerPrecisions={q(pinned)} --layerOutputTypes={q(pinned)}")
    if dynamic_chw:  # same optimisation profile as build_engine: batch 1..max_batch, tuned for 1
        chw = "x".join(str(d) for d in dynamic_chw)
        parts.append(f"--minShapes=input:1x{chw} --optShapes=input:1x{chw} --maxShapes=input:{max_batch}x{chw}")
    return " ".join(parts)


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    *,
    fp16: bool = True,
    layernorm_fp32: bool = True,
    workspace_mb: int = 1024,
    max_batch: int = 32,
    int8: bool = False,
    timing_cache: Path | None = None,
    metadata: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Build and write engine + sidecar JSON (written last, so an engine without a sidecar is known incomplete).
    With `int8`, the file's Q/DQ nodes run in INT8 (explicit quantization) and everything else as `fp16` says."""
    trt = import_tensorrt()
    if trt is None:
        raise HiapError(f"TensorRT is not installed here; engines only run where they are built: {NOT_VALIDATED}.")
    cudart()  # the sidecar and every run need cuda-python: refuse now, not after a build of minutes
    t0 = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # The parser owns the weights the network points at: it must stay referenced until the engine is built.
    network, _parser = _parse_onnx(trt, builder, logger, onnx_path)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if int8:
        config.set_flag(trt.BuilderFlag.INT8)
    pinned_fp32 = _set_precision(trt, network, config, fp16, layernorm_fp32)
    _add_batch_profile(builder, network, config, max_batch)
    _load_timing_cache(config, timing_cache)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise HiapError(f"TensorRT could not build an engine from '{onnx_path}' (see the TensorRT log above).")
    write_bytes_atomic(engine_path, bytes(serialized))
    _save_timing_cache(config, timing_cache)
    # Keyed as devices/bench.py::engine_build_settings keys them (the precisions by their names), so a cached
    # engine's recorded build compares equal to the settings asked for.
    build = {FP16: fp16, "layernorm_fp32": layernorm_fp32, "workspace_mb": workspace_mb, "max_batch": max_batch,
             INT8: int8}  # fmt: skip
    sidecar = _sidecar(trt, onnx_path, engine_path, build, pinned_fp32, metadata, t0)
    write_sidecar(engine_path, sidecar)
    return sidecar


def _parse_onnx(trt: Any, builder: Any, logger: Any, onnx_path: Path) -> tuple[Any, Any]:
    """The network parsed from the ONNX file, and the parser that holds its weights."""
    major = int(trt.__version__.split(".")[0])
    # TensorRT 10 has only explicit batch (flag 0); 8.x needs the flag, or the ONNX parser refuses the network.
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise HiapError(f"TensorRT cannot parse '{onnx_path}': {errors[:400]}")
    return network, parser


def _set_precision(trt: Any, network: Any, config: Any, fp16: bool, layernorm_fp32: bool) -> list[str]:
    """FP16 where asked, with the LayerNorm layers pinned to FP32; returns the names of the pinned layers."""
    pinned_fp32: list[str] = []
    if not fp16:
        return pinned_fp32
    config.set_flag(trt.BuilderFlag.FP16)
    if not layernorm_fp32:
        return pinned_fp32
    # FP16 LayerNorm overflows on ViT activations (TensorRT #2564/#3656): keep those layers, and the tensors they
    # emit, in FP32 and make the builder obey it instead of treating it as a hint.
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    norm = getattr(trt.LayerType, "NORMALIZATION", None)  # absent before 8.6 (LayerNorm decomposed)
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if norm is not None and layer.type == norm:
            layer.precision = trt.float32
            layer.set_output_type(0, trt.float32)
            pinned_fp32.append(layer.name)
    return pinned_fp32


def _add_batch_profile(builder: Any, network: Any, config: Any, max_batch: int) -> None:
    """A dynamic-batch input gets one optimisation profile from 1 to max_batch, tuned for 1 (the latency case)."""
    inp = network.get_input(0)
    if inp.shape[0] != -1:
        return
    profile = builder.create_optimization_profile()
    rest = tuple(inp.shape)[1:]
    profile.set_shape(inp.name, (1, *rest), (1, *rest), (max_batch, *rest))
    config.add_optimization_profile(profile)


def _load_timing_cache(config: Any, timing_cache: Path | None) -> None:
    """The cached tactic timings, or an empty cache: one from another GPU or TensorRT version is refused
    (ignore_mismatch=False), and a corrupt or unreadable file is only slower, never an error."""
    try:
        cache_bytes = timing_cache.read_bytes() if timing_cache and timing_cache.is_file() else b""
        if config.set_timing_cache(config.create_timing_cache(cache_bytes), ignore_mismatch=False):
            return
    except (OSError, RuntimeError, TypeError) as exc:  # TensorRT raises RuntimeError/TypeError on a bad blob
        print(f"note: timing cache '{timing_cache}' is unusable ({type(exc).__name__}); building without it",
              file=sys.stderr)  # fmt: skip
    config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


def _save_timing_cache(config: Any, timing_cache: Path | None) -> None:
    cache_out = config.get_timing_cache()
    if timing_cache is not None and cache_out is not None:
        write_bytes_atomic(timing_cache, bytes(cache_out.serialize()))


def _sidecar(
    trt: Any,
    onnx_path: Path,
    engine_path: Path,
    build: dict[str, Any],
    pinned_fp32: list[str],
    metadata: dict[str, str] | None,
    t0: float,
) -> dict[str, Any]:
    """What the engine is specific to and was built from; build_seconds runs to here (hashing included)."""
    return {
        **(metadata or {}),
        "engine_hiap_version": __version__,
        "tensorrt_version": trt.__version__,
        "gpu": gpu_name(),
        # The engine's own precision; `precision` (from the ONNX metadata) stays the file's: fp32 or int8.
        "engine_precision": INT8 if build.get(INT8) else (FP16 if build[FP16] else FP32),
        "layernorm_fp32_layers": pinned_fp32,
        "onnx_sha256": sha256_file(onnx_path),
        "build": build,
        "engine_sha256": sha256_file(engine_path),
        "build_seconds": round(time.perf_counter() - t0, 3),
        "validated_on_hardware": False,
    }


def sidecar_path(engine_path: Path) -> Path:
    return engine_path.with_name(engine_path.name + ".json")


def write_sidecar(engine_path: Path, body: dict[str, Any]) -> None:
    write_json_atomic(sidecar_path(engine_path), body)


def read_sidecar(engine_path: Path) -> dict[str, Any]:
    path = sidecar_path(engine_path)
    if not path.is_file():
        raise HiapError(f"Engine '{engine_path}' has no sidecar '{path.name}': it is incomplete or not from hiap; "
                        "rebuild it from the .onnx.")  # fmt: skip
    return read_json_object(path, "Engine sidecar")
