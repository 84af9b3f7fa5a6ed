"""OpenVINO runner for x86 and ARM CPUs: reads the exported ONNX (FP32 or Q/DQ INT8) directly; torch-free, and
imported only when a bench asks for it (`pip install 'hiap[openvino]'`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hiap.base.errors import HiapError
from hiap.base.precision import FP32, OPENVINO_HINTS, OPENVINO_RUNTIME
from hiap.runtime.base import TensorSpec, check_feeds
from hiap.runtime.ort_runner import check_model_file

_TYPES = {"f32": "float32", "f16": "float16", "i64": "int64", "i32": "int32"}


def import_openvino() -> Any:
    """The openvino module, or None when it is not installed (it is an optional runtime)."""
    try:
        import openvino
    except ImportError:
        return None
    return openvino


def _spec(port: Any) -> TensorSpec:
    shape = tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())
    kind = port.get_element_type().get_type_name()
    return TensorSpec(port.get_any_name(), shape, _TYPES.get(kind, kind))


class OvRunner:
    """One compiled model on OpenVINO's CPU plugin with pinned threads and the latency hint; `metadata` is the ONNX
    file's metadata_props (OpenVINO keeps them in the model's rt_info)."""

    def __init__(self, path: Path, threads: int = 1, hint: str = "LATENCY", precision: str = FP32,
                 static_batch: int | None = None) -> None:  # fmt: skip
        """`precision`: what an FP32 file computes in, fp32 (default), bf16 or fp16 (OpenVINO's inference precision
        hint); the compiled model's own reading of it is `inference_precision`. `static_batch`: compile a file with
        a dynamic batch axis for that one batch size (OpenVINO's low-precision transformations reject some Q/DQ
        graphs whose batch is dynamic)."""
        self.path = Path(path)
        check_model_file(self.path, (".onnx",))
        if precision not in OPENVINO_HINTS:
            raise HiapError(f"OpenVINO runs an FP32 file at {', '.join(OPENVINO_HINTS)}, not '{precision}'.")
        self.threads = threads
        self.hint = hint
        self.precision = precision
        self.static_batch = static_batch
        self.request: Any = None
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []
        self.metadata: dict[str, str] = {}
        self._version = ""
        self.inference_precision = ""

    def __enter__(self) -> OvRunner:
        ov = import_openvino()
        if ov is None:
            raise HiapError("OpenVINO is not installed here: pip install 'hiap[openvino]', or bench with "
                            "--runtime onnxruntime.")  # fmt: skip
        core = ov.Core()
        try:
            model = core.read_model(str(self.path))
            if self.static_batch is not None:
                model.reshape({p.get_any_name(): [self.static_batch, *p.get_partial_shape()[1:]] for p in model.inputs})
            # Always set: the CPU plugin's own default is bf16 where the CPU has AMX/AVX512-BF16 (f16 on ARM with
            # FP16 arithmetic), which would run an FP32 file at another precision than its label (max abs diff
            # 1.1e-2 on the built-in model); the Q/DQ parts of an INT8 file still run in int8.
            config = {"INFERENCE_NUM_THREADS": self.threads, "PERFORMANCE_HINT": self.hint,
                      "INFERENCE_PRECISION_HINT": OPENVINO_HINTS[self.precision]}  # fmt: skip
            compiled = core.compile_model(model, "CPU", config)
        except RuntimeError as exc:  # OpenVINO reports unreadable files and unsupported operators alike
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise HiapError(f"OpenVINO cannot load '{self.path}' ({first}).") from None
        info = model.get_rt_info()
        framework = info["framework"] if "framework" in list(info.keys()) else {}
        self.metadata = {str(k): str(v.value) for k, v in dict(framework).items()}
        self.inputs = [_spec(p) for p in compiled.inputs]
        self.outputs = [_spec(p) for p in compiled.outputs]
        self.request = compiled.create_infer_request()
        self._version = ov.__version__
        # What the plugin really computes in, read back rather than assumed.
        hint = compiled.get_property("INFERENCE_PRECISION_HINT")  # an openvino Type ('f32'), or its name
        self.inference_precision = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
        return self

    def __exit__(self, *exc: object) -> None:
        self.request = None

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_feeds(self.inputs, feeds)
        result = self.request.infer({spec.name: feeds[spec.name] for spec in self.inputs})
        values = list(result.values())
        return {spec.name: np.asarray(value) for spec, value in zip(self.outputs, values, strict=True)}

    def describe(self) -> dict[str, Any]:
        return {
            "runtime": OPENVINO_RUNTIME.library,
            "version": self._version,
            "device": "CPU",
            "intra_op_threads": self.threads,
            "performance_hint": self.hint,
            "precision": self.metadata.get("precision", FP32),
            "inference_precision": self.inference_precision,
        }
