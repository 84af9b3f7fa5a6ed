"""ONNX Runtime runner: providers, intra/inter-op threads and graph optimisation level are the caller's (devices/
maps a profile onto them; the exporter's parity checks take ONNX Runtime's defaults)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hiap.base.errors import HiapError
from hiap.base.precision import FP32, ONNX_RUNTIME
from hiap.runtime.base import TensorSpec, check_feeds

_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64", "tensor(int32)": "int32"}


def _spec(arg: Any) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else None for d in arg.shape)
    return TensorSpec(arg.name, shape, _TYPES.get(arg.type, arg.type))


def _first_line(exc: BaseException, limit: int = 240) -> str:
    """The first line of an error, cut at a word boundary (ONNX Runtime's messages run to paragraphs)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."


def check_model_file(path: Path, suffixes: tuple[str, ...]) -> None:
    if not path.exists():
        raise HiapError(f"Model '{path}' does not exist: pass the model.onnx or model.engine that hiap export wrote.")
    if not path.is_file():
        raise HiapError(f"Model '{path}' is not a file.")
    if path.suffix not in suffixes:
        raise HiapError(f"Model '{path}' should end in {' or '.join(suffixes)}.")
    if path.stat().st_size == 0:
        raise HiapError(f"Model '{path}' is empty (0 bytes): export it again.")


class OrtRunner:
    """One InferenceSession with pinned threads; `metadata` is the model's metadata_props."""

    def __init__(
        self,
        path: Path,
        providers: list[str] | None = None,
        intra_op_threads: int = 1,
        inter_op_threads: int = 1,
        graph_optimization_level: str = "all",
        allow_spinning: bool = True,
    ) -> None:
        self.path = Path(path)
        check_model_file(self.path, (".onnx",))
        self.providers = list(providers or ["CPUExecutionProvider"])
        self.intra_op_threads = intra_op_threads
        self.inter_op_threads = inter_op_threads
        self.graph_optimization_level = graph_optimization_level
        # Spinning keeps the intra-op threads busy-waiting between calls (ORT's default, fastest for one network);
        # off, when many sessions take turns and the one that just ran would steal the cores from the next.
        self.allow_spinning = allow_spinning
        self.session: Any = None
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []
        self.metadata: dict[str, str] = {}

    def __enter__(self) -> OrtRunner:
        import onnxruntime as ort

        available = ort.get_available_providers()
        missing = [p for p in self.providers if p not in available]
        if missing:
            raise HiapError(f"ONNX Runtime here lacks {missing} (it has {available}); install the matching build.")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.intra_op_threads
        opts.inter_op_num_threads = self.inter_op_threads
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.graph_optimization_level]
        if not self.allow_spinning:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3  # warnings about unused initializers etc. say nothing to a bench user
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=self.providers)
        except Exception as exc:  # ORT raises its own Fail/InvalidProtobuf/InvalidGraph types
            first = _first_line(exc)
            if "external data" in first.lower() or "external_data" in first.lower():
                raise HiapError(f"Model '{self.path}' refers to external data ONNX Runtime will not read (a path "
                                f"outside the model's folder, or a missing file): {first}") from None  # fmt: skip
            raise HiapError(
                f"Model '{self.path}' is corrupt or truncated: ONNX Runtime cannot load it ({first})."
            ) from None
        self.inputs = [_spec(a) for a in self.session.get_inputs()]
        self.outputs = [_spec(a) for a in self.session.get_outputs()]
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        return self

    def __exit__(self, *exc: object) -> None:
        self.session = None

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_feeds(self.inputs, feeds)
        try:
            values = self.session.run(None, feeds)
        except Exception as exc:  # ORT's own Fail/InvalidArgument/RuntimeException types
            first = _first_line(exc)
            raise HiapError(f"ONNX Runtime cannot run '{self.path}' ({first}).") from None
        return {spec.name: value for spec, value in zip(self.outputs, values, strict=True)}

    def describe(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {
            "runtime": ONNX_RUNTIME.library,
            "version": ort.__version__,
            "providers": self.session.get_providers() if self.session else self.providers,
            "intra_op_threads": self.intra_op_threads,
            "inter_op_threads": self.inter_op_threads,
            "graph_optimization_level": self.graph_optimization_level,
            "allow_spinning": self.allow_spinning,
            "precision": self.metadata.get("precision", FP32),  # what hiap export recorded in the file
        }


def default_runner(path: Path) -> OrtRunner:
    """The CPU provider with ONNX Runtime's own thread and optimisation defaults: for parity checks off the device,
    where the numbers matter and the time does not."""
    return OrtRunner(path, intra_op_threads=0, inter_op_threads=0)
