"""`hiap bench`, torch-free: a device profile configures the runner, runtime/ measures, every budget is judged."""

from __future__ import annotations

import contextlib
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from hiap import __version__
from hiap.base.errors import HiapError
from hiap.base.jsonfile import parse_json
from hiap.base.precision import FP32, TRT
from hiap.devices.evaldata import EvalData, same_split
from hiap.devices.host import Host, power_state
from hiap.devices.options import BenchOptions, BenchPlan, BenchTarget, computed_precision, model_precision, plan_bench
from hiap.devices.profile import DeviceProfile
from hiap.devices.report import AccuracyCheck, BenchReport, Budget, DenseComparison, meta_float
from hiap.devices.runners import open_runner
from hiap.runtime.base import Runner, batch_of
from hiap.runtime.data import Preprocessing
from hiap.runtime.harness import (
    Accuracy,
    Fidelity,
    Latency,
    Tolerance,
    accuracy,
    fidelity,
    interleaved_latency,
    measure_latency,
    random_feeds,
)
from hiap.runtime.trt_env import NOT_VALIDATED


def environment(host: Host, runner: Runner, profile: DeviceProfile) -> dict[str, Any]:
    import onnxruntime

    return {
        "host": host.to_dict(),
        "host_description": host.describe(),
        "power": power_state(host),
        "runner": runner.describe(),
        "profile": profile.name,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": onnxruntime.__version__,
        "hiap": __version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": sys.argv,
    }


def protocol_warnings(profile: DeviceProfile, host: Host, power: dict[str, str]) -> list[str]:
    """The measurement protocol's host settings that do not hold (reported, not failed: the figures stand)."""
    out = []
    mode = profile.protocol.power_mode
    if mode and host.board == "jetson" and mode.lower() not in power.get("power_mode", "").lower():
        out.append(f"power mode is not {mode} (nvpmodel -q: {power.get('power_mode')!r}); run 'sudo nvpmodel -m 0'")
    if profile.protocol.jetson_clocks and host.board == "jetson" and "not found" in power.get("jetson_clocks", ""):
        out.append("jetson_clocks not found: clocks may scale during the run")
    governor = profile.protocol.governor
    if governor and power.get("governor") not in (governor, "unreadable"):
        out.append(f"CPU governor is {power.get('governor')!r}, the protocol asks for {governor!r}")
    return out


def compare_prediction(meta: dict[str, str], profile: DeviceProfile, runner: Runner, precision: str,
                       latency: Latency) -> dict[str, Any] | None:  # fmt: skip
    """The export's predicted latency (from a device's table) against the p50 just measured, when the prediction is
    for this device, runtime, precision, threads and batch; otherwise why it is not compared. None: no prediction."""
    try:
        pred = parse_json(meta["predicted_latency"], "metadata") if "predicted_latency" in meta else None
    except HiapError:
        return {"compared": False, "reason": "the file's predicted_latency is not valid JSON"}
    if not isinstance(pred, dict) or not isinstance(pred.get("ms"), dict):
        return None if pred is None else {"compared": False, "reason": "the file's predicted_latency is malformed"}
    described = runner.describe()
    threads = {k: described[k] for k in pred.get("threads", {}) if k in described}
    for what, theirs, ours in (("device", pred.get("device"), profile.name),
                               ("runtime", pred.get("runtime"), described.get("runtime")),
                               ("precision", pred.get("precision"), precision),
                               ("threads", pred.get("threads", {}), threads)):  # fmt: skip
        if theirs != ours:
            return {"compared": False, "reason": f"the prediction is for {what} {theirs}, this bench runs {ours}"}
    ms = pred["ms"].get(str(latency.batch))
    if not isinstance(ms, (int, float)):
        return {"compared": False, "reason": f"the table has no cells at batch {latency.batch}"}
    # Like with like: a table's cell is the median of the fastest round, so the measurement is taken the same way
    # (Latency.steady); the p50 of all calls is shown beside it.
    steady = latency.steady if latency.steady is not None else latency.p50
    return {"compared": True, "device": profile.name, "batch": latency.batch, "predicted_ms": ms,
            "statistic": "median of the fastest round", "measured_ms": steady, "measured_p50_ms": latency.p50,
            "error": steady / ms - 1.0, "table": pred.get("table"),
            "validated": pred.get("validated", True), "measured_elsewhere": pred.get("measured_elsewhere")}  # fmt: skip


def _check_declared_input(model: Runner, pre: Preprocessing, artifact: Path) -> None:
    """The graph's declared input against the metadata's input_size, which the images are prepared at: a file
    edited or assembled by hand can disagree, and the runtime would fail on the first batch."""
    declared = tuple(model.inputs[0].shape[1:])
    if len(declared) != 3 or any(d is not None and d != s for d, s in zip(declared, pre.input_size, strict=True)):
        raise HiapError(f"'{artifact}' declares input {list(model.inputs[0].shape)} but its metadata input_size is "
                        f"{list(pre.input_size)}: re-export it with hiap export.")  # fmt: skip


def _check_same_input(model: Runner, dense: Runner, artifact: Path) -> None:
    if tuple(dense.inputs[0].shape[1:]) != tuple(model.inputs[0].shape[1:]):
        raise HiapError(f"--compare model takes {list(dense.inputs[0].shape)} but '{artifact}' takes "
                        f"{list(model.inputs[0].shape)}: compare models of the same input.")  # fmt: skip


def _measure_latency(
    model: Runner, dense: Runner | None, batch: int, plan: BenchPlan
) -> tuple[Latency, Latency | None]:
    """The model timed alone, or alternating call by call with the dense model."""
    runners = {"model": model} | ({"dense": dense} if dense is not None else {})
    feeds = {name: random_feeds(r, batch_of(r.inputs[0], batch)) for name, r in runners.items()}
    if dense is None:
        return measure_latency(model, feeds["model"], plan.warmup, plan.iterations, plan.min_seconds), None
    lat = interleaved_latency(runners, feeds, plan.warmup, plan.iterations, plan.min_seconds)
    return lat["model"], lat["dense"]


def _measure_accuracy(model: Runner, dense: Runner | None, data: EvalData | None, pre: Preprocessing,
                      limit: int | None, batch: int) -> tuple[Accuracy | None, Accuracy | None]:  # fmt: skip
    if data is None:
        return None, None

    def top1(runner: Runner) -> Accuracy:
        return accuracy(runner, data.batches(pre, limit), batch_of(runner.inputs[0], batch))

    return top1(model), (top1(dense) if dense is not None else None)


def _recorded_reference(meta: dict[str, str]) -> tuple[float | None, str]:
    """The run's recorded validation accuracy (a fraction; the bench reports percent) and what it is. The dense
    start's comes first: it is what the budget's drop is defined against."""
    kinds = {"dense_val_acc": "dense accuracy in the metadata",
             "reference_val_acc": "exported model's training-time accuracy in the metadata"}  # fmt: skip
    for key, kind in kinds.items():
        value = meta_float(meta, key)
        if value is not None and 0.0 < value <= 1.0:  # 0.0, NaN or 86 (percent) is not a recorded accuracy
            return 100 * value, kind
    return None, ""


def check_accuracy(data: EvalData | None, model: Accuracy | None, dense: Accuracy | None, meta: dict[str, str],
                   limit: int | None) -> AccuracyCheck:  # fmt: skip
    """The measured top-1 with the reference its drop is taken against: the dense model measured here, else, on
    the very images the run validated on, the accuracy the run recorded."""
    if data is None:
        return AccuracyCheck(None, unavailable="no --data given: pass the validation images to measure top-1")
    split, why_not = same_split(meta, data, limit)
    if dense is not None:
        return AccuracyCheck(data, model, dense, split, dense.top1, "dense model measured here on the same data")
    if why_not is not None:
        return AccuracyCheck(data, model, None, split, unavailable=why_not)
    reference, kind = _recorded_reference(meta)
    if reference is None:
        why_not = "the model's metadata holds no training-time accuracy; pass --compare DENSE.onnx"
        return AccuracyCheck(data, model, None, split, unavailable=why_not)
    return AccuracyCheck(data, model, None, split, reference, kind)


NO_GOLDEN = ("no golden.npz next to the model and no --golden (hiap export writes one when the run's validation "
             "images are readable)")  # fmt: skip


def fidelity_tolerance(profile: DeviceProfile, precision: str = FP32) -> Tolerance:
    return Tolerance(*profile.budgets.fidelity_limits(precision))


def judge_budgets(profile: DeviceProfile, opts: BenchOptions, latency: Latency, fid: Fidelity | None,
                  acc: AccuracyCheck, precision: str = FP32) -> tuple[Budget, ...]:  # fmt: skip
    """Every budget of the profile (latency and accuracy limits as the options override them) against the figures."""
    b, fid_tol = profile.budgets, fidelity_tolerance(profile, precision)  # the limits the fidelity was judged by
    p50_limit = opts.budget_ms if opts.budget_ms is not None else b.latency_p50_ms
    # --budget-ms sets the median; the tail budget keeps the profile's p99/p50 ratio.
    p99_limit = p50_limit * (b.latency_p99_ms / b.latency_p50_ms)
    drop_limit = opts.max_acc_drop if opts.max_acc_drop is not None else b.max_acc_drop
    # `is None`, not truthiness: a comparison that failed is falsy but measured.
    max_abs = fid.comparison.max_abs_diff if fid is not None else None
    agreement = fid.comparison.top1_agreement if fid is not None else None
    return (
        Budget("latency_p50_ms", p50_limit, latency.p50),
        Budget("latency_p99_ms", p99_limit, latency.p99),
        Budget("accuracy_drop_pp", drop_limit, acc.drop, reason=acc.unavailable),
        Budget("fidelity_max_abs_diff", fid_tol.atol, max_abs, reason=NO_GOLDEN),
        Budget(
            "fidelity_top1_agreement", fid_tol.min_top1_agreement, agreement, higher_is_better=True, reason=NO_GOLDEN
        ),
    )


def _label(target: BenchTarget) -> str:
    """What every figure must be read with: measured off the device, or under emulation."""
    label = f"NOT MEASURED ON {target.profile.name}: {target.mismatch}" if target.mismatch else ""
    if target.host.emulated:
        label = f"EMULATED ({target.host.emulated}): latency is meaningless; fidelity and accuracy are exact. " + label
    return label


def run_bench(artifact: Path, target: BenchTarget, opts: BenchOptions) -> BenchReport:
    """Open the model (and the dense one of --compare), measure latency, fidelity and accuracy, and judge every
    budget of the profile against them."""
    profile, host = target.profile, target.host
    plan = plan_bench(artifact, target, opts)
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        model = stack.enter_context(open_runner(artifact, profile, plan.runtime, plan.precision or FP32))
        compare_path = plan.compare
        dense = stack.enter_context(open_runner(compare_path, profile, plan.compare_runtime)) if compare_path else None
        batch = batch_of(model.inputs[0], profile.batch)
        pre = Preprocessing.from_metadata(model.metadata, str(artifact))  # before timing: it fails on a bad export
        _check_declared_input(model, pre, artifact)
        precision = computed_precision(model, plan.precision, profile, artifact)
        dense_precision = model_precision(dense.metadata, profile, compare_path) if dense is not None else None
        dense_runtime = (
            dense.describe()["runtime"] if dense is not None and plan.compare_runtime != plan.runtime else ""
        )
        if dense is not None:
            _check_same_input(model, dense, artifact)
        latency, dense_latency = _measure_latency(model, dense, profile.batch, plan)
        fid = fidelity(model, plan.golden, batch, fidelity_tolerance(profile, precision)) if plan.golden else None
        model_acc, dense_acc = _measure_accuracy(model, dense, plan.data, pre, opts.limit, profile.batch)
        env = environment(host, model, profile)
        meta = dict(model.metadata)
        prediction = compare_prediction(meta, profile, model, precision, latency)
        dense_meta = dict(dense.metadata) if dense is not None else {}
    acc = check_accuracy(plan.data, model_acc, dense_acc, meta, opts.limit)
    compare = None
    if plan.compare is not None and dense_latency is not None:
        compare = DenseComparison.measured(plan.compare, latency, dense_latency, meta, dense_meta, dense_precision,
                                           dense_runtime)  # fmt: skip
    built = plan.runtime == TRT and artifact.suffix == ".onnx"
    return BenchReport(
        artifact=artifact,
        format="engine (built from onnx)" if built else artifact.suffix.lstrip("."),
        size_mb=artifact.stat().st_size / 1e6,
        device=profile.name,
        mismatch=target.mismatch,
        label=_label(target),
        model={k: meta.get(k) for k in ("model", "plan_hash", "gmacs", "dense_gmacs", "hiap_version")},
        batch=batch,
        latency=latency,
        fidelity=fid,
        accuracy=acc,
        budgets=judge_budgets(profile, opts, latency, fid, acc, precision),
        precision=precision,
        environment=env,
        seconds=time.perf_counter() - t0,
        protocol_warnings=tuple(protocol_warnings(profile, host, env["power"])),
        note=NOT_VALIDATED if plan.runtime == TRT else plan.runtime_note,
        compare=compare,
        prediction=prediction,
    )
