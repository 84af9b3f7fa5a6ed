"""What TensorRT work needs from this host, imported only when used: tensorrt, cuda-python, CUDA checks, the GPU."""

from __future__ import annotations

from typing import Any

from hiap.base.errors import HiapError

# TensorRT cannot be installed on the machines this was written on: the TensorRT path is exercised only where
# `tensorrt` imports (tests marked `tensorrt`), and every engine and message says so.
NOT_VALIDATED = "TensorRT path not yet validated on hardware"


def import_tensorrt() -> Any:
    """The tensorrt module, or None where it is not installed (imported here, so the device install needs none)."""
    try:
        import tensorrt as trt  # type: ignore[import-not-found]
    except ImportError:
        return None
    return trt


def cudart() -> Any:
    """cuda-python's runtime binding for device memory and streams.

    cuda-python is NVIDIA's thin official binding with aarch64 wheels for Jetson and no torch; Polygraphy's wrapper
    would bring a whole toolkit for four calls, and pycuda needs a compiler on the board.
    """
    try:
        from cuda.bindings import runtime as binding  # type: ignore[import-not-found]  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart as binding  # type: ignore[import-not-found]  # older cuda-python
        except ImportError:
            raise HiapError("TensorRT runs need cuda-python for device memory: pip install 'hiap[jetson]' (cuda-python "
                            "12.x, for JetPack 6's CUDA 12; TensorRT itself comes from JetPack, so the venv needs "
                            "--system-site-packages)") from None  # fmt: skip
    return binding


def cuda_check(result: Any, what: str) -> Any:
    """The value of a cuda-python call, which returns (error, *values); a non-zero error is raised as HiapError."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise HiapError(f"CUDA call {what} failed with error {int(err)}.")
    return rest[0] if len(rest) == 1 else rest


def gpu_name() -> str:
    """The name of GPU 0, as engines and timing caches record the GPU they were built for."""
    props = cuda_check(cudart().cudaGetDeviceProperties(0), "cudaGetDeviceProperties")
    name = props.name
    return (name.decode() if isinstance(name, bytes) else str(name)).rstrip("\x00")
