"""The bench's typed results without a runner: budgets and their verdicts, the accuracy reference, the report's
verdict, exit code, JSON layout and printed table (base install only)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hiap.devices.bench import NO_GOLDEN, check_accuracy, judge_budgets
from hiap.devices.evaldata import EvalData
from hiap.devices.options import BenchOptions
from hiap.devices.profile import load_profile
from hiap.devices.report import AccuracyCheck, BenchReport, Budget, DenseComparison, verdict_line
from hiap.runtime.data import builtin_fingerprint
from hiap.runtime.harness import Accuracy, Fidelity, LogitComparison, Tolerance, latency_stats

LATENCY = latency_stats([1.0, 2.0, 3.0, 4.0], batch=1, warmup=0)  # p50 2.5, p99 3.97
HELD = (
    Budget("latency_p50_ms", 100.0, 2.5),
    Budget("latency_p99_ms", 200.0, 3.97),
    Budget("fidelity_max_abs_diff", 1e-4, 2e-6),
    Budget("fidelity_top1_agreement", 1.0, 1.0, higher_is_better=True),
)
NO_DATA = "no --data given"


def _report(budgets: tuple[Budget, ...], **fields: Any) -> BenchReport:
    base: dict[str, Any] = {
        "artifact": Path("run/export/model.onnx"), "format": "onnx", "size_mb": 1.5, "device": "x86-cpu",
        "mismatch": "", "label": "", "model": {"model": "tiny"}, "batch": 1, "latency": LATENCY, "fidelity": None,
        "accuracy": AccuracyCheck(None, unavailable=NO_DATA), "budgets": budgets,
        "environment": {"runner": {"runtime": "onnxruntime", "version": "1.0", "precision": "fp32"}},
        "seconds": 1.0,
    }  # fmt: skip
    return BenchReport(**(base | fields))


def _fidelity(max_abs: float, agreement: float, tolerance: Tolerance) -> Fidelity:
    return Fidelity(Path("golden.npz"), 8, LogitComparison(max_abs, max_abs / 2, 0.1, 0.01, agreement, tolerance))


def test_budget_margin_verdict_and_truthiness_on_both_sides_of_the_limit() -> None:
    under, at, over = (
        Budget("latency_p50_ms", 10.0, 9.5),
        Budget("latency_p50_ms", 10.0, 10.0),
        Budget("latency_p50_ms", 10.0, 10.5),
    )
    assert (under.margin, under.passed, bool(under)) == (0.5, True, True)
    assert (at.margin, at.passed, bool(at)) == (0.0, True, True)  # at the limit is within it
    assert (over.margin, over.passed, bool(over)) == (-0.5, False, False)
    agreement = Budget("fidelity_top1_agreement", 0.75, 0.5, higher_is_better=True)
    assert (agreement.margin, agreement.passed, bool(agreement), agreement.family) == (-0.25, False, False, "fidelity")
    assert over.to_dict() == {"budget": "latency_p50_ms", "limit": 10.0, "value": 10.5, "passed": False,
                              "margin": -0.5}  # fmt: skip


def test_an_unmeasured_budget_is_never_a_pass() -> None:
    unmeasured = Budget("accuracy_drop_pp", 1.0, None, reason=NO_DATA)
    assert (unmeasured.margin, unmeasured.passed, bool(unmeasured)) == (None, None, False)
    assert unmeasured.to_dict() == {"budget": "accuracy_drop_pp", "limit": 1.0, "value": None, "passed": None,
                                    "margin": None, "reason": NO_DATA}  # fmt: skip


def test_report_with_one_unmeasured_budget_is_falsy_exits_4_and_prints_not_measured(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from hiap.render import print_bench

    report = _report((*HELD[:2], Budget("accuracy_drop_pp", 1.0, None, reason=NO_DATA), *HELD[2:]))
    assert not report and report.verdict == "not measured" and report.exit_code == 4
    assert verdict_line(report) == f"budgets met: latency, fidelity; not measured: accuracy ({NO_DATA})"
    body = report.to_dict()
    assert (body["passed"], body["verdict"], body["exit_code"]) == (False, "not measured", 4)
    monkeypatch.setenv("COLUMNS", "200")  # one table row per line
    print_bench(report)
    lines = capsys.readouterr().out.splitlines()
    assert any("accuracy_drop_pp" in line and "not measured" in line for line in lines), lines
    assert lines[-1] == verdict_line(report)


def test_report_verdicts_and_exit_codes() -> None:
    met = _report(HELD)
    assert met and (met.verdict, met.exit_code, verdict_line(met)) == ("met", 0, "all budgets met")
    # A failed budget outweighs an unmeasured one: exit 1, and the line still names what was not measured.
    failed = _report((Budget("latency_p50_ms", 1.0, 2.5), Budget("accuracy_drop_pp", 1.0, None, reason=NO_DATA)))
    assert not failed and (failed.verdict, failed.exit_code) == ("failed", 1)
    assert verdict_line(failed) == f"a budget failed: latency_p50_ms; not measured: accuracy ({NO_DATA})"


def test_report_json_keeps_its_layout() -> None:
    dense = DenseComparison.measured(
        Path(__file__), LATENCY, latency_stats([2.0, 4.0, 6.0, 8.0], 1, 0), {"gmacs": "1.0"}, {"gmacs": "4.0"}
    )
    fid = _fidelity(2e-6, 1.0, Tolerance(1e-4))
    report = _report(HELD, fidelity=fid, compare=dense, note="TensorRT path not yet validated on hardware")
    body = json.loads(json.dumps(report.to_dict()))
    assert list(body) == ["artifact", "format", "precision", "size_mb", "device", "measured_on_target", "label",
                          "model", "batch", "latency", "fidelity", "accuracy", "budgets", "passed", "verdict",
                          "exit_code", "environment", "seconds", "note", "protocol_warnings", "compare"]  # fmt: skip
    assert body["artifact"] == "run/export/model.onnx" and body["measured_on_target"] is True
    assert list(body["latency"]) == ["model", "dense"] and body["latency"]["dense"]["p50"] == 5.0
    assert body["fidelity"] == {"images": 8, "max_abs_diff": 2e-6, "top1_agreement": 1.0, "golden": "golden.npz",
                                "mean_abs_diff": 1e-6, "max_rel_diff": 0.1, "mean_rel_diff": 0.01}  # fmt: skip
    assert body["accuracy"] == {} and body["budgets"] == [b.to_dict() for b in HELD]
    assert body["compare"] == {"dense_artifact": str(Path(__file__)), "dense_precision": "fp32",
                               "dense_size_mb": Path(__file__).stat().st_size / 1e6, "speedup_p50": 2.0,
                               "speedup_mean": 2.0, "mac_ratio": 4.0, "realisation": 0.5}  # fmt: skip
    assert "note" not in _report(HELD).to_dict() and "compare" not in _report(HELD).to_dict()


def test_a_failed_fidelity_is_measured_and_judged_not_dropped() -> None:
    """A failed comparison is falsy; the budgets must still carry its figures and fail, not read 'not measured'."""
    profile = load_profile("x86-cpu")
    fid = _fidelity(0.5, 0.75, Tolerance(1e-4, 1.0))
    assert not fid
    acc = AccuracyCheck(None, unavailable=NO_DATA)
    budgets = {b.name: b for b in judge_budgets(profile, BenchOptions(budget_ms=2.0), LATENCY, fid, acc)}
    assert budgets["fidelity_max_abs_diff"].value == 0.5 and budgets["fidelity_max_abs_diff"].passed is False
    assert budgets["fidelity_top1_agreement"].value == 0.75 and budgets["fidelity_top1_agreement"].passed is False
    # --budget-ms sets the median; the tail keeps the profile's 200/100 ratio
    assert (budgets["latency_p50_ms"].limit, budgets["latency_p99_ms"].limit) == (2.0, 4.0)
    assert budgets["accuracy_drop_pp"].passed is None and budgets["accuracy_drop_pp"].reason == NO_DATA
    unmeasured = judge_budgets(profile, BenchOptions(), LATENCY, None, acc)[3:]
    assert [(b.value, b.reason) for b in unmeasured] == [(None, NO_GOLDEN), (None, NO_GOLDEN)]


def test_accuracy_reference_dense_then_recorded_then_why_not() -> None:
    data = EvalData.resolve("builtin")
    split = json.dumps(builtin_fingerprint(None))
    model, dense = Accuracy(3000, 85.0), Accuracy(3000, 86.5)
    assert check_accuracy(None, None, None, {}, None).unavailable.startswith(NO_DATA)
    here = check_accuracy(data, model, dense, {"val_split": split, "dense_val_acc": "0.99"}, None)
    assert (here.reference_top1, here.drop, here.unavailable) == (86.5, 1.5, "")
    assert here.reference == "dense model measured here on the same data"
    recorded = check_accuracy(data, model, None, {"val_split": split, "dense_val_acc": "0.9",
                                                  "reference_val_acc": "0.5"}, None)  # fmt: skip
    assert recorded.reference_top1 == pytest.approx(90.0) and recorded.drop == pytest.approx(5.0)
    assert recorded.reference == "dense accuracy in the metadata" and recorded.split["same"]
    trained = check_accuracy(data, model, None, {"val_split": split, "reference_val_acc": "0.8"}, None)
    assert trained.reference_top1 == pytest.approx(80.0) and trained.reference.startswith("exported model's")
    limited = check_accuracy(data, model, None, {"val_split": split, "dense_val_acc": "0.9"}, 10)
    assert limited.drop is None and limited.unavailable.startswith("--limit 10 evaluates 10 of the 3000 images")
    assert limited.to_dict()["reference_unavailable"] == limited.unavailable
    none = check_accuracy(data, model, None, {"val_split": split}, None)
    assert none.drop is None and "holds no training-time accuracy" in none.unavailable
