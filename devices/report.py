"""What `hiap bench` reports: each budget judged, the accuracy check, the dense comparison, the verdict."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from hiap.base.errors import HiapError
from hiap.base.jsonfile import parse_json
from hiap.base.precision import FP32
from hiap.devices.evaldata import EvalData
from hiap.runtime.harness import Accuracy, Fidelity, Latency


def meta_float(meta: dict[str, str], key: str) -> float | None:
    try:
        value = parse_json(meta[key], f"metadata '{key}'") if key in meta else None
    except (HiapError, TypeError):
        return None
    return float(value) if isinstance(value, (int, float)) else None


# `hiap bench` exit status per verdict (2 is a user error; 3 is `hiap train`/`pipeline`'s missed MAC target). An
# unmeasured budget is not a pass: a CI job that gates on the bench must not go green when the accuracy budget was
# never checked, so it gets its own non-zero code, distinct from a failed budget.
EXIT_CODES = {"met": 0, "failed": 1, "not measured": 4}


Verdict = Literal["met", "failed", "not measured"]


@dataclass(frozen=True)
class Budget:
    """One budget of the profile judged: `value` against `limit` (None: not measured, and `reason` says why).
    Truthy only when measured and held: an unmeasured budget is never a pass."""

    name: str
    limit: float
    value: float | None
    higher_is_better: bool = False
    reason: str = ""

    @property
    def family(self) -> str:
        """What the budget is about: 'latency', 'accuracy' or 'fidelity'."""
        return self.name.split("_")[0]

    @property
    def margin(self) -> float | None:
        """How far inside the limit the value is (negative: over it); None when not measured."""
        if self.value is None:
            return None
        return (self.value - self.limit) if self.higher_is_better else (self.limit - self.value)

    @property
    def passed(self) -> bool | None:
        """True when held, False when missed, None when not measured."""
        margin = self.margin
        return None if margin is None else bool(margin >= 0)

    def __bool__(self) -> bool:
        return self.passed is True

    def to_dict(self) -> dict[str, Any]:
        if self.value is None:
            return {"budget": self.name, "limit": self.limit, "value": None, "passed": None, "margin": None,
                    "reason": self.reason}  # fmt: skip
        return {"budget": self.name, "limit": self.limit, "value": self.value, "passed": self.passed,
                "margin": self.margin}  # fmt: skip


@dataclass(frozen=True)
class AccuracyCheck:
    """Top-1 on the evaluation data (None: no --data), and the reference the accuracy budget's drop is taken against:
    `reference_top1` and what it is, or `unavailable`, why there is none."""

    data: EvalData | None
    model: Accuracy | None = None
    dense: Accuracy | None = None
    split: dict[str, Any] | None = None
    reference_top1: float | None = None
    reference: str = ""
    unavailable: str = ""

    @property
    def drop(self) -> float | None:
        """Percentage points of top-1 below the reference; None when either is missing."""
        if self.reference_top1 is None or self.model is None:
            return None
        return self.reference_top1 - self.model.top1

    def to_dict(self) -> dict[str, Any]:
        if self.data is None:
            return {}
        out: dict[str, Any] = {name: acc.to_dict() for name, acc in (("model", self.model), ("dense", self.dense))
                               if acc is not None}  # fmt: skip
        out["data"] = str(self.data.folder or self.data.spec)
        if self.data.note:
            out["data_note"] = self.data.note
        out |= {"split": self.split, "reference_top1": self.reference_top1, "reference": self.reference or None}
        if self.reference_top1 is None:
            out["reference_unavailable"] = self.unavailable
        return out


@dataclass(frozen=True)
class DenseComparison:
    """The dense model (--compare), timed alternating with the model, and what the pruning bought."""

    artifact: Path
    size_mb: float
    latency: Latency
    speedup_p50: float
    speedup_mean: float
    mac_ratio: float | None  # dense over pruned MACs, from both models' metadata
    realisation: float | None  # the share of the MAC saving that shows as p50 speedup
    precision: str = FP32  # the dense file's (an INT8 pruned model is often compared with the FP32 dense one)
    runtime: str = ""  # the runtime it ran on ('' when the model's own)

    @classmethod
    def measured(cls, artifact: Path, model: Latency, dense: Latency, meta: dict[str, str], dense_meta: dict[str, str],
                 precision: str | None = None, runtime: str = "") -> DenseComparison:  # fmt: skip
        gm, dgm = meta_float(meta, "gmacs"), meta_float(dense_meta, "gmacs")
        mac_ratio = (dgm / gm) if gm and dgm else None
        speedup = dense.p50 / model.p50
        return cls(artifact, artifact.stat().st_size / 1e6, dense, speedup, dense.mean / model.mean, mac_ratio,
                   speedup / mac_ratio if mac_ratio else None, precision or FP32, runtime)  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        runtime = {"dense_runtime": self.runtime} if self.runtime else {}
        return runtime | {"dense_artifact": str(self.artifact), "dense_precision": self.precision,
                "dense_size_mb": self.size_mb, "speedup_p50": self.speedup_p50,
                "speedup_mean": self.speedup_mean, "mac_ratio": self.mac_ratio,
                "realisation": self.realisation}  # fmt: skip


@dataclass(frozen=True)
class BenchReport:
    """Everything `hiap bench` reports. `verdict`: 'met' (every budget measured and held), 'failed' (a measured
    budget failed) or 'not measured' (none failed, some could not be measured); truthy only when 'met'."""

    artifact: Path
    format: str
    size_mb: float
    device: str
    mismatch: str  # why this host is not the device, '' when it is
    label: str
    model: dict[str, str | None]  # the export's metadata that names the model
    batch: int
    latency: Latency
    fidelity: Fidelity | None
    accuracy: AccuracyCheck
    budgets: tuple[Budget, ...]
    environment: dict[str, Any]
    seconds: float
    protocol_warnings: tuple[str, ...] = ()
    note: str = ""
    compare: DenseComparison | None = None
    precision: str = FP32  # the model file's, as its export recorded it
    prediction: dict[str, Any] | None = None  # the latency table's prediction vs this measurement (or why not)

    @property
    def measured_on_target(self) -> bool:
        return not self.mismatch

    @property
    def verdict(self) -> Verdict:
        if any(b.passed is False for b in self.budgets):
            return "failed"
        return "not measured" if any(b.passed is None for b in self.budgets) else "met"

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]

    def __bool__(self) -> bool:
        # Only when every budget was measured and held: a missing measurement is never read as a pass.
        return self.verdict == "met"

    def to_dict(self) -> dict[str, Any]:
        """The JSON report (`hiap bench --json`, a run's bench.json)."""
        verdict = self.verdict
        latency = {"model": self.latency.to_dict()}
        if self.compare is not None:
            latency["dense"] = self.compare.latency.to_dict()
        out: dict[str, Any] = {
            "artifact": str(self.artifact), "format": self.format, "precision": self.precision,
            "size_mb": self.size_mb, "device": self.device,
            "measured_on_target": self.measured_on_target, "label": self.label, "model": self.model,
            "batch": self.batch, "latency": latency,
            "fidelity": self.fidelity.to_dict() if self.fidelity is not None else None,
            "accuracy": self.accuracy.to_dict(), "budgets": [b.to_dict() for b in self.budgets],
            "passed": verdict == "met", "verdict": verdict, "exit_code": EXIT_CODES[verdict],
            "environment": self.environment, "seconds": self.seconds,
        }  # fmt: skip
        if self.note:
            out["note"] = self.note
        out["protocol_warnings"] = list(self.protocol_warnings)
        if self.compare is not None:
            out["compare"] = self.compare.to_dict()
        if self.prediction is not None:
            out["prediction"] = self.prediction
        return out


def verdict_line(report: BenchReport) -> str:
    """One line for the console and CI logs. Budgets are named by family (latency, accuracy, fidelity); a family
    with an unmeasured budget is listed under 'not measured' with why, never under 'met'."""
    families: dict[str, list[Budget]] = {}
    for b in report.budgets:
        families.setdefault(b.family, []).append(b)
    met = [f for f, bs in families.items() if all(bs)]
    unmeasured = []
    for f, bs in families.items():
        reasons = list(dict.fromkeys(b.reason or "no reason recorded" for b in bs if b.passed is None))
        if reasons:
            unmeasured.append(f"{f} ({'; '.join(reasons)})")
    tail = f"; not measured: {', '.join(unmeasured)}" if unmeasured else ""
    verdict = report.verdict
    if verdict == "failed":
        failed = [b.name for b in report.budgets if b.passed is False]
        return f"a budget failed: {', '.join(failed)}{tail}"
    if verdict == "met":
        return "all budgets met"
    return f"budgets met: {', '.join(met) or 'none'}{tail}"
