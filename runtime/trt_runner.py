"""The TensorRT 10 runner: a deserialised engine with its CUDA stream and device buffers, behind the Runner contract."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from hiap.base.errors import HiapError
from hiap.base.precision import TENSORRT
from hiap.runtime.base import TensorSpec
from hiap.runtime.ort_runner import check_model_file
from hiap.runtime.trt_build import read_sidecar
from hiap.runtime.trt_env import cuda_check, cudart, gpu_name, import_tensorrt


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
        self._cudart: Any = None
        self._stream: Any = None
        self._runtime: Any = None
        self._engine: Any = None
        self._context: Any = None

    def __enter__(self) -> TrtRunner:
        trt = import_tensorrt()
        if trt is None:
            raise HiapError(
                f"'{self.path}' is a TensorRT engine but TensorRT is not installed here; bench the .onnx with an "
                "ONNX Runtime profile, or run this on the device the engine was built on."
            )
        blob = self.path.read_bytes()  # read once: hashed against the sidecar, then deserialised
        self.metadata = self._checked_sidecar(trt, blob)
        self._cudart = cudart()
        try:
            self._open(trt, blob)
        except BaseException:
            # `with` does not call __exit__ when __enter__ raises: what was created so far is freed here, and the
            # runner is left holding no device resources, so a later __exit__ frees nothing twice.
            self._release()
            raise
        return self

    def _checked_sidecar(self, trt: Any, blob: bytes) -> dict[str, str]:
        """The sidecar as metadata, once it shows the engine was built here (same TensorRT, same GPU) and is whole."""
        sidecar = read_sidecar(self.path)
        here_gpu = gpu_name()
        if sidecar.get("tensorrt_version") != trt.__version__ or sidecar.get("gpu") != here_gpu:
            raise HiapError(
                f"Engine '{self.path}' was built with TensorRT {sidecar.get('tensorrt_version')} on "
                f"'{sidecar.get('gpu')}'; this host has TensorRT {trt.__version__} on '{here_gpu}'. Engines are not "
                "portable: rebuild from the .onnx here (hiap bench model.onnx --device ...)."
            )
        if sidecar.get("engine_sha256") and sidecar["engine_sha256"] != hashlib.sha256(blob).hexdigest():
            raise HiapError(
                f"Engine '{self.path}' does not match its sidecar checksum: it is truncated or was replaced."
            )
        return {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in sidecar.items()}

    def _open(self, trt: Any, blob: bytes) -> None:
        """Engine, execution context, stream and one device buffer per I/O tensor; _release undoes any prefix."""
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = self._runtime.deserialize_cuda_engine(blob)
        if self._engine is None:
            raise HiapError(f"TensorRT cannot deserialise '{self.path}': corrupt, or built for another GPU/version.")
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise HiapError(f"TensorRT could not create an execution context for '{self.path}' (out of GPU memory?).")
        self._stream = cuda_check(self._cudart.cudaStreamCreate(), "cudaStreamCreate")
        # Built apart and assigned whole, so a runner opened twice does not list (and allocate) its tensors twice.
        self.inputs, self.outputs = self._tensor_specs(trt)
        for spec in [*self.inputs, *self.outputs]:
            host = np.empty(spec.shape, dtype=spec.dtype)
            ptr = int(cuda_check(self._cudart.cudaMalloc(host.nbytes), "cudaMalloc"))
            self._buffers[spec.name] = (ptr, host)  # recorded before binding, so a failing bind still frees it
            self._context.set_tensor_address(spec.name, ptr)

    def _tensor_specs(self, trt: Any) -> tuple[list[TensorSpec], list[TensorSpec]]:
        """The engine's inputs, a dynamic batch axis set to this runner's batch, then its outputs with the shapes
        the context infers from those inputs (an output's own dynamic axes need not be the batch)."""
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        is_input = {n: self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}

        def spec(name: str, shape: Any) -> TensorSpec:
            return TensorSpec(
                name, tuple(int(d) for d in shape), np.dtype(trt.nptype(self._engine.get_tensor_dtype(name))).name
            )

        inputs = []
        for name in (n for n in names if is_input[n]):
            shape = list(self._engine.get_tensor_shape(name))
            if shape and shape[0] == -1:
                shape[0] = self.batch
                if not self._context.set_input_shape(name, tuple(shape)):
                    raise HiapError(f"Engine '{self.path}' does not accept batch {self.batch} (outside the batch "
                                    "range it was built for).")  # fmt: skip
            inputs.append(spec(name, shape))
        outputs = [spec(n, self._context.get_tensor_shape(n)) for n in names if not is_input[n]]
        if any(d < 0 for s in outputs for d in s.shape):
            raise HiapError(f"Engine '{self.path}' leaves an output shape unresolved ({[s.shape for s in outputs]}).")
        return inputs, outputs

    def __exit__(self, *exc: object) -> None:
        self._release()

    def _release(self) -> None:
        """Free every device buffer and the stream, each once; harmless when called again or before any exist."""
        try:
            while self._buffers:  # popped before freeing: a buffer is never freed twice
                _, (ptr, _host) = self._buffers.popitem()
                self._cudart.cudaFree(ptr)
        finally:
            if self._stream is not None:
                stream, self._stream = self._stream, None
                self._cudart.cudaStreamDestroy(stream)
            # Dropped now, the engine's device memory comes back at once rather than whenever the runner is
            # collected; the context before the engine before the runtime (a TensorRT factory outlives what it made).
            self._context = None
            self._engine = None
            self._runtime = None

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart = self._cudart
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for spec in self.inputs:
            value = np.ascontiguousarray(feeds[spec.name])
            spec.check(value)
            ptr, _ = self._buffers[spec.name]
            cuda_check(cudart.cudaMemcpyAsync(ptr, value.ctypes.data, value.nbytes, h2d, self._stream), "memcpy in")
        if not self._context.execute_async_v3(self._stream):
            raise HiapError(f"TensorRT failed to run '{self.path}'.")
        out = {}
        for spec in self.outputs:
            ptr, host = self._buffers[spec.name]
            cuda_check(cudart.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes, d2h, self._stream), "memcpy out")
            out[spec.name] = host
        cuda_check(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return {k: v.copy() for k, v in out.items()}

    def describe(self) -> dict[str, Any]:
        trt = import_tensorrt()
        return {
            "runtime": TENSORRT.library,
            "version": getattr(trt, "__version__", "missing"),
            "gpu": self.metadata.get("gpu", ""),
            "precision": self.metadata.get("engine_precision", self.metadata.get("precision", "")),
            "batch": self.batch,
            "launch": "enqueue per call (execute_async_v3), host-device copies included",
            "validated_on_hardware": False,
        }
