"""TensorRT: engine build from ONNX (FP16, LayerNorm in FP32, timing cache, sidecar JSON) and the TensorRT 10 runner.

NOT YET VALIDATED ON HARDWARE: TensorRT cannot be installed on the machines this was written on, so this module is
exercised only where `tensorrt` imports (tests marked `tensorrt`). Device memory uses cuda-python (NVIDIA's thin
official binding, aarch64 wheels for Jetson, no torch); Polygraphy's wrapper would bring a whole toolkit for four
calls, and pycuda needs a compiler on the board.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import time
from pathlib import Path
from typing import Any

import numpy as np

from hiap import __version__
from hiap.atomic import write_bytes_atomic, write_json_atomic
from hiap.errors import HiapError
from runtime.base import TensorSpec
from runtime.ort_runner import check_model_file

NOT_VALIDATED = "TensorRT path not yet validated on hardware"


def import_tensorrt() -> Any:
    try:
        import tensorrt as trt  # type: ignore[import-not-found]
    except ImportError:
        return None
    return trt


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # type: ignore[import-not-found]  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[import-not-found]  # older cuda-python
        except ImportError:
            raise HiapError("TensorRT runs need cuda-python for device memory: pip install cuda-python") from None
    return cudart


def _check(result: Any, what: str) -> Any:
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise HiapError(f"CUDA call {what} failed with error {int(err)}.")
    return rest[0] if len(rest) == 1 else rest


def gpu_name() -> str:
    cudart = _cudart()
    props = _check(cudart.cudaGetDeviceProperties(0), "cudaGetDeviceProperties")
    name = props.name
    return (name.decode() if isinstance(name, bytes) else str(name)).rstrip("\x00")


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
) -> str:
    """The trtexec line equivalent to build_engine, for NVIDIA's own timing on the device. Its engine has no hiap
    sidecar, so `hiap bench` takes the .onnx (and builds its own engine) rather than that file."""
    q = shlex.quote
    cache = engine_path.with_name("timing.cache")
    parts = [f"trtexec --onnx={q(str(onnx_path))} --saveEngine={q(str(engine_path))}",
             f"--timingCacheFile={q(str(cache))} --memPoolSize=workspace:{workspace_mb}M"]  # fmt: skip
    if fp16:
        parts.append("--fp16")
        if layernorm_fp32 and layer_names:
            pinned = ",".join(f"{n}:fp32" for n in layer_names)
            parts.append(f"--precisionConstraints=obey --layerPrecisions={q(pinned)} --layerOutputTypes={q(pinned)}")
    if dynamic_chw:  # same optimisation profile as build_engine: batch 1..32, tuned for 1
        chw = "x".join(str(d) for d in dynamic_chw)
        parts.append(f"--minShapes=input:1x{chw} --optShapes=input:1x{chw} --maxShapes=input:32x{chw}")
    return " ".join(parts)


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    *,
    fp16: bool = True,
    layernorm_fp32: bool = True,
    workspace_mb: int = 1024,
    max_batch: int = 32,
    timing_cache: Path | None = None,
    metadata: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Build and write engine + sidecar JSON (written last, so an engine without a sidecar is known incomplete)."""
    trt = import_tensorrt()
    if trt is None:
        raise HiapError(f"TensorRT is not installed here; engines only run where they are built: {NOT_VALIDATED}.")
    t0 = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = int(trt.__version__.split(".")[0])
    # TensorRT 10 has only explicit batch (flag 0); 8.x needs the flag, or the ONNX parser refuses the network.
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise HiapError(f"TensorRT cannot parse '{onnx_path}': {errors[:400]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    pinned_fp32 = []
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
        if layernorm_fp32:
            # FP16 LayerNorm overflows on ViT activations (TensorRT #2564/#3656): keep those layers, and the
            # tensors they emit, in FP32 and make the builder obey it instead of treating it as a hint.
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
            norm = getattr(trt.LayerType, "NORMALIZATION", None)  # absent before 8.6 (LayerNorm decomposed)
            for i in range(network.num_layers):
                layer = network.get_layer(i)
                if norm is not None and layer.type == norm:
                    layer.precision = trt.float32
                    layer.set_output_type(0, trt.float32)
                    pinned_fp32.append(layer.name)
    inp = network.get_input(0)
    if inp.shape[0] == -1:  # dynamic batch: one optimisation profile from 1 to max_batch, tuned for 1
        profile = builder.create_optimization_profile()
        rest = tuple(inp.shape)[1:]
        profile.set_shape(inp.name, (1, *rest), (1, *rest), (max_batch, *rest))
        config.add_optimization_profile(profile)
    # A cache from another GPU or TensorRT version is refused (ignore_mismatch=False): start an empty one then.
    cache_bytes = timing_cache.read_bytes() if timing_cache and timing_cache.is_file() else b""
    if not config.set_timing_cache(config.create_timing_cache(cache_bytes), ignore_mismatch=False):
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise HiapError(f"TensorRT could not build an engine from '{onnx_path}' (see the TensorRT log above).")
    write_bytes_atomic(engine_path, bytes(serialized))
    cache_out = config.get_timing_cache()
    if timing_cache is not None and cache_out is not None:
        write_bytes_atomic(timing_cache, bytes(cache_out.serialize()))
    sidecar = {
        **(metadata or {}),
        "engine_hiap_version": __version__,
        "tensorrt_version": trt.__version__,
        "gpu": gpu_name(),
        "precision": "fp16" if fp16 else "fp32",
        "layernorm_fp32_layers": pinned_fp32,
        "onnx_sha256": sha256_file(onnx_path),
        "build": {"fp16": fp16, "layernorm_fp32": layernorm_fp32, "workspace_mb": workspace_mb, "max_batch": max_batch},
        "engine_sha256": sha256_file(engine_path),
        "build_seconds": round(time.perf_counter() - t0, 3),
        "validated_on_hardware": False,
    }
    write_json_atomic(sidecar_path(engine_path), sidecar)
    return sidecar


def sidecar_path(engine_path: Path) -> Path:
    return engine_path.with_name(engine_path.name + ".json")


def read_sidecar(engine_path: Path) -> dict[str, Any]:
    path = sidecar_path(engine_path)
    if not path.is_file():
        raise HiapError(f"Engine '{engine_path}' has no sidecar '{path.name}': it is incomplete or not from hiap; "
                        "rebuild it from the .onnx.")  # fmt: skip
    try:
        body = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise HiapError(f"Engine sidecar '{path}' is not valid JSON ({exc}).") from None
    if not isinstance(body, dict):
        raise HiapError(f"Engine sidecar '{path}' must hold a JSON object.")
    return body


class TrtRunner:
    """A deserialised engine with device buffers sized for the fixed (or chosen) batch; TensorRT 10 tensor API."""

    def __init__(self, path: Path, batch: int = 1) -> None:
        self.path = Path(path)
        check_model_file(self.path, (".engine", ".plan"))
        self.batch = batch
        self.metadata: dict[str, str] = {}
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []
        self._buffers: dict[str, tuple[int, np.ndarray]] = {}

    def __enter__(self) -> TrtRunner:
        trt = import_tensorrt()
        if trt is None:
            raise HiapError(
                f"'{self.path}' is a TensorRT engine but TensorRT is not installed here; bench the .onnx with an "
                "ONNX Runtime profile, or run this on the device the engine was built on."
            )
        sidecar = read_sidecar(self.path)
        here_gpu = gpu_name()
        if sidecar.get("tensorrt_version") != trt.__version__ or sidecar.get("gpu") != here_gpu:
            raise HiapError(
                f"Engine '{self.path}' was built with TensorRT {sidecar.get('tensorrt_version')} on "
                f"'{sidecar.get('gpu')}'; this host has TensorRT {trt.__version__} on '{here_gpu}'. Engines are not "
                "portable: rebuild from the .onnx here (hiap bench model.onnx --device ...)."
            )
        if sidecar.get("engine_sha256") and sidecar["engine_sha256"] != sha256_file(self.path):
            raise HiapError(
                f"Engine '{self.path}' does not match its sidecar checksum: it is truncated or was replaced."
            )
        self.metadata = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in sidecar.items()}
        cudart = _cudart()
        self._cudart = cudart
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            raise HiapError(f"TensorRT cannot deserialise '{self.path}': corrupt, or built for another GPU/version.")
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise HiapError(f"TensorRT could not create an execution context for '{self.path}' (out of GPU memory?).")
        self._stream = _check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            shape = list(self._engine.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
            is_input = self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            if shape and shape[0] == -1:
                shape[0] = self.batch
                if is_input and not self._context.set_input_shape(name, tuple(shape)):
                    raise HiapError(f"Engine '{self.path}' does not accept batch {self.batch} (outside the batch "
                                    "range it was built for).")  # fmt: skip
            spec = TensorSpec(name, tuple(shape), dtype.name)
            (self.inputs if is_input else self.outputs).append(spec)
        for spec in [*self.inputs, *self.outputs]:
            host = np.empty(spec.shape, dtype=spec.dtype)
            ptr = _check(cudart.cudaMalloc(host.nbytes), "cudaMalloc")
            self._context.set_tensor_address(spec.name, int(ptr))
            self._buffers[spec.name] = (int(ptr), host)
        return self

    def __exit__(self, *exc: object) -> None:
        for ptr, _ in self._buffers.values():
            self._cudart.cudaFree(ptr)
        self._buffers.clear()
        if getattr(self, "_stream", None) is not None:
            self._cudart.cudaStreamDestroy(self._stream)
            self._stream = None

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart = self._cudart
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for spec in self.inputs:
            value = np.ascontiguousarray(feeds[spec.name])
            spec.check(value)
            ptr, _ = self._buffers[spec.name]
            _check(cudart.cudaMemcpyAsync(ptr, value.ctypes.data, value.nbytes, h2d, self._stream), "memcpy in")
        if not self._context.execute_async_v3(self._stream):
            raise HiapError(f"TensorRT failed to run '{self.path}'.")
        out = {}
        for spec in self.outputs:
            ptr, host = self._buffers[spec.name]
            _check(cudart.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes, d2h, self._stream), "memcpy out")
            out[spec.name] = host
        _check(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return {k: v.copy() for k, v in out.items()}

    def describe(self) -> dict[str, Any]:
        trt = import_tensorrt()
        return {
            "runtime": "tensorrt",
            "version": getattr(trt, "__version__", "missing"),
            "gpu": self.metadata.get("gpu", ""),
            "precision": self.metadata.get("precision", ""),
            "batch": self.batch,
            "launch": "enqueue per call (execute_async_v3), host-device copies included",
            "validated_on_hardware": False,
        }
