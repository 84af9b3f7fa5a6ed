"""`hiap bench --sweep`: a file (and its INT8 sibling) on every runtime x precision the device's profile allows and
this host supports, each timed against the dense file on the profile's default runtime, in one table; the fastest
combination that meets every budget is named."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hiap.base.errors import HiapError
from hiap.base.precision import (
    COMPUTE_PRECISIONS,
    FP32,
    INT8,
    ONNX_RUNTIME,
    OPENVINO_RUNTIME,
    QUANTIZED_PRECISIONS,
    TENSORRT,
    TRT,
    runtime_by_short,
)
from hiap.devices.bench import run_bench
from hiap.devices.options import BenchOptions, BenchTarget, check_inference_precision, check_options
from hiap.devices.report import BenchReport


@dataclass(frozen=True)
class SweepRow:
    """One runtime x precision: its bench report, or why it was not run."""

    runtime: str  # the library's name: onnxruntime, openvino or tensorrt
    precision: str  # what the figures are computed in: fp32, bf16, fp16, int8, int8-dynamic
    file: Path | None
    report: BenchReport | None = None
    skipped: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"runtime": self.runtime, "precision": self.precision,
                               "file": str(self.file) if self.file else None}  # fmt: skip
        if self.report is not None:
            out["report"] = self.report.to_dict()
        else:
            out["skipped"] = self.skipped
        return out


@dataclass(frozen=True)
class SweepReport:
    rows: tuple[SweepRow, ...]
    fastest: SweepRow | None  # the lowest p50 among rows whose every budget was measured and met
    why_none: str  # when there is no fastest: why

    @property
    def exit_code(self) -> int:
        """0: a combination met every budget; 1: every measured one failed a budget; 4: none failed them all but
        some budgets could not be measured (the bench's codes)."""
        if self.fastest is not None:
            return 0
        measured = [r.report for r in self.rows if r.report is not None]
        return 1 if measured and all(r.verdict == "failed" for r in measured) else 4

    def to_dict(self) -> dict[str, Any]:
        fastest = None
        if self.fastest is not None:
            fastest = {"runtime": self.fastest.runtime, "precision": self.fastest.precision}
        return {"rows": [r.to_dict() for r in self.rows], "fastest": fastest, "why_none": self.why_none,
                "exit_code": self.exit_code}  # fmt: skip


def plan_rows(target: BenchTarget, fp32: Path, int8: Path | None) -> list[SweepRow]:
    """Every runtime x precision of the profile, each with the file it runs or why it cannot run here."""
    from hiap.runtime.ov_runner import import_openvino

    profile = target.profile
    if profile.runtime == TRT:
        rows = [SweepRow(TENSORRT.library, profile.precision, fp32)]
        if INT8 in profile.precisions:
            rows.append(_int8_row(TENSORRT.library, int8))
        return rows
    no_ov = "" if import_openvino() is not None else "OpenVINO is not installed here (pip install 'hiap[openvino]')"
    ort, ov = ONNX_RUNTIME.library, OPENVINO_RUNTIME.library
    rows = [SweepRow(ort, FP32, fp32), SweepRow(ov, FP32, fp32, skipped=no_ov)]
    for precision in COMPUTE_PRECISIONS:
        why = no_ov
        if not why:
            try:
                check_inference_precision(precision, profile, target.host, ov)
            except HiapError as exc:
                why = str(exc).removeprefix(f"--precision {precision}: ")
        rows.append(SweepRow(ov, precision, fp32, skipped=why))
    if any(p in QUANTIZED_PRECISIONS for p in profile.precisions):
        rows.append(_int8_row(ort, int8))
        row = _int8_row(ov, int8)
        rows.append(dataclasses.replace(row, skipped=row.skipped or no_ov))
    return rows


def _int8_row(runtime: str, int8: Path | None) -> SweepRow:
    if int8 is None:
        why = "no INT8 file: pass --int8 RUN/export-int8/model.onnx (made by hiap export RUN --precision int8)"
        return SweepRow(runtime, INT8, None, skipped=why)
    from hiap.runtime.ort_runner import OrtRunner

    with OrtRunner(int8) as runner:  # the file says which INT8 it is (static or dynamic)
        precision = runner.metadata.get("precision", INT8)
    return SweepRow(runtime, precision, int8)


def run_sweep(fp32: Path, int8: Path | None, target: BenchTarget, opts: BenchOptions) -> SweepReport:
    """Bench every row (the dense --compare file on the profile's default runtime beside each one)."""
    if opts.runtime is not None or opts.precision is not None or opts.compare_runtime is not None:
        raise HiapError("--sweep runs every runtime and precision itself: drop --runtime, --precision and "
                        "--compare-runtime.")  # fmt: skip
    if int8 is not None and not int8.is_file():
        raise HiapError(f"--int8 '{int8}' does not exist: export it with hiap export RUN --precision int8.")
    # Options every row shares (--data, --golden, limits, the device) are refused once, not skipped row by row.
    check_options(fp32, target, opts)
    # The runtime the dense --compare file runs on, as --runtime names it (None on a TensorRT profile: the row's).
    profile_runtime = runtime_by_short(target.profile.runtime)
    default = profile_runtime.library if profile_runtime is not None and profile_runtime.cpu else None
    rows = []
    for row in plan_rows(target, fp32, int8):
        if row.skipped or row.file is None:
            rows.append(row)
            continue
        engine = row.runtime == TENSORRT.library  # a TensorRT profile's runtime and precision are its own
        row_opts = dataclasses.replace(
            opts,
            runtime=None if engine else row.runtime,
            precision=row.precision if row.precision in COMPUTE_PRECISIONS and not engine else None,
            compare_runtime=default if opts.compare is not None and default != row.runtime else None,
        )
        try:
            rows.append(dataclasses.replace(row, report=run_bench(row.file, target, row_opts)))
        except HiapError as exc:
            rows.append(dataclasses.replace(row, skipped=str(exc)))
    met = [r for r in rows if r.report is not None and r.report.verdict == "met"]
    fastest = min(met, key=lambda r: r.report.latency.p50) if met else None  # type: ignore[union-attr]
    why = ""
    if fastest is None:
        measured = [r for r in rows if r.report is not None]
        why = ("no combination ran" if not measured else
               "no combination met every budget" if any(r.report.verdict == "failed" for r in measured) else
               "no combination had every budget measured (accuracy needs --data)")  # type: ignore[union-attr]  # fmt: skip
    return SweepReport(tuple(rows), fastest, why)
