"""The precisions (a file's number format, or what a runtime computes an FP32 file in) and runtimes, one table each."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# The names hiap writes and reads (file metadata, profiles, lut.json, reports): code says these, never the text.
FP32, INT8, INT8_DYNAMIC, BF16, FP16 = "fp32", "int8", "int8-dynamic", "bf16", "fp16"

# -- runtimes --


@dataclass(frozen=True)
class Runtime:
    """One runtime by its two names: `short` is what a device profile's `runtime` says and the code passes around;
    `library` is its Python package, what a runner's describe() and a sweep row report, and what `--runtime` takes
    on a CPU profile. `cpu`: a CPU runtime (`--runtime` can pick it; it computes a file at its own precision unless
    asked otherwise)."""

    short: str
    library: str
    cpu: bool


ONNX_RUNTIME = Runtime(short="ort", library="onnxruntime", cpu=True)
OPENVINO_RUNTIME = Runtime(short="openvino", library="openvino", cpu=True)
TENSORRT = Runtime(short="trt", library="tensorrt", cpu=False)
RUNTIMES = (ONNX_RUNTIME, OPENVINO_RUNTIME, TENSORRT)
ORT, OPENVINO, TRT = ONNX_RUNTIME.short, OPENVINO_RUNTIME.short, TENSORRT.short
# What a profile's `runtime` may be, and the CPU ones by either name (`--runtime` takes the library's).
RUNTIME_SHORT_NAMES = tuple(r.short for r in RUNTIMES)
CPU_RUNTIMES = tuple(r.short for r in RUNTIMES if r.cpu)
CPU_RUNTIME_LIBRARIES = tuple(r.library for r in RUNTIMES if r.cpu)
_BY_SHORT = {r.short: r for r in RUNTIMES}
_BY_LIBRARY = {r.library: r for r in RUNTIMES}


def runtime_by_short(short: str) -> Runtime | None:
    """The runtime a profile's `runtime` names ('ort' -> onnxruntime); None for a name hiap does not know."""
    return _BY_SHORT.get(short)


def runtime_by_library(library: str) -> Runtime | None:
    """The runtime of a library name ('onnxruntime' -> ort); None for a name hiap does not know."""
    return _BY_LIBRARY.get(library)


# -- precisions --


@dataclass(frozen=True)
class CpuNeed:
    """The CPU features a precision's arithmetic needs on one architecture: any one of `flags` (x86, where either
    AVX512 or AMX carries it) or all of them (ARM, where the half-precision arithmetic is two features)."""

    arch: str
    mode: Literal["any", "all"]
    flags: tuple[str, ...]


@dataclass(frozen=True)
class Precision:
    """One precision.

    kind: 'file', a number format of the model file (what `hiap export --precision` writes and the file's
    metadata `precision` records), or 'compute', what a runtime computes an FP32 file in (OpenVINO's inference
    precision, `hiap bench --precision`; a TensorRT profile's `precision`). runtimes: the short names of the
    runtimes that run it. openvino_hint: OpenVINO's INFERENCE_PRECISION_HINT for it (None: OpenVINO is not asked
    for it; an INT8 file runs with the f32 hint, its Q/DQ parts in int8). cpu: what a CPU needs to compute in it
    (empty: every CPU hiap runs on). budgets: the prefix of its own fidelity limits in a profile's budgets
    (`int8_fidelity_atol`; None: the float limits, `fidelity_atol`)."""

    name: str
    kind: Literal["file", "compute"]
    runtimes: tuple[str, ...]
    openvino_hint: str | None = None
    cpu: tuple[CpuNeed, ...] = ()
    budgets: str | None = None

    def cpu_need(self, arch: str) -> CpuNeed | None:
        """What a CPU of `arch` needs for it; None where the table has no rule for `arch` (a compute precision is
        then not supported there)."""
        return next((need for need in self.cpu if need.arch == arch), None)


# Files first, then what an FP32 file is computed in: the order every list of names below (and its messages) keeps.
PRECISIONS = (
    Precision(FP32, "file", (ORT, OPENVINO, TRT), openvino_hint="f32"),
    Precision(INT8, "file", (ORT, OPENVINO, TRT), budgets=INT8),
    # TensorRT takes explicit (Q/DQ) quantization only: a dynamically quantized file runs on the CPU runtimes.
    Precision(INT8_DYNAMIC, "file", (ORT, OPENVINO), budgets=INT8),
    Precision(BF16, "compute", (OPENVINO,), openvino_hint="bf16", budgets=BF16,
              cpu=(CpuNeed("x86_64", "any", ("avx512_bf16", "amx_bf16")), CpuNeed("aarch64", "all", ("bf16",)))),
    Precision(FP16, "compute", (OPENVINO, TRT), openvino_hint="f16", budgets=FP16,
              cpu=(CpuNeed("x86_64", "any", ("avx512_fp16", "amx_fp16")),
                   CpuNeed("aarch64", "all", ("fphp", "asimdhp")))),
)  # fmt: skip
_BY_NAME = {p.name: p for p in PRECISIONS}

# Every precision: what a latency table's cells may have been computed in, and `hiap profile --precision`.
PRECISION_NAMES = tuple(p.name for p in PRECISIONS)
# The model file's: `hiap export --precision`, the metadata `precision`, what a bench accepts in a file.
FILE_PRECISIONS = tuple(p.name for p in PRECISIONS if p.kind == "file")
# The quantized files (a Recipe's precision): every file precision but FP32.
QUANTIZED_PRECISIONS = tuple(n for n in FILE_PRECISIONS if n != FP32)
# What an FP32 file is computed in on a runtime that lowers it (OpenVINO: `hiap bench --precision`).
COMPUTE_PRECISIONS = tuple(p.name for p in PRECISIONS if p.kind == "compute")
# A profile's `precision`: what its runtime computes an FP32 file in. A TensorRT profile builds its engines at it;
# the CPU runtimes compute the file's own (fp32) and lower it only when a bench asks.
PROFILE_PRECISIONS = (FP32, *(n for n in COMPUTE_PRECISIONS if TRT in _BY_NAME[n].runtimes))
# hiap's name -> OpenVINO's inference precision hint, for the precisions OpenVINO is asked to compute in.
OPENVINO_HINTS = {p.name: p.openvino_hint for p in PRECISIONS if p.openvino_hint is not None}
# The prefixes of the fidelity budgets a profile may hold, one per family (both INT8 files share int8_).
BUDGET_FAMILIES = tuple(dict.fromkeys(p.budgets for p in PRECISIONS if p.budgets is not None))


def precision_named(name: str) -> Precision | None:
    """The table's entry for `name`; None for a name hiap does not write."""
    return _BY_NAME.get(name)
