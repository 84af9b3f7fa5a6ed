"""The runners and harness on the base install: ONNX Runtime on a hand-written model, latency statistics, the one
logit comparison, batching, fidelity against golden.npz and accuracy (no torch, no onnx package)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tiny_onnx import INPUT_SIZE, linear_export

from hiap.base.errors import HiapError
from hiap.runtime.base import TensorSpec, batch_of
from hiap.runtime.harness import (
    Accuracy,
    Tolerance,
    accuracy,
    compare_logits,
    fidelity,
    interleaved_latency,
    latency_stats,
    measure_latency,
    random_feeds,
)
from hiap.runtime.ort_runner import OrtRunner, default_runner


def test_latency_stats_values() -> None:
    stats = latency_stats([float(v) for v in range(1, 101)], batch=2, warmup=0)
    assert stats.p50 == pytest.approx(50.5) and stats.p99 == pytest.approx(99.01)
    assert stats.mean == pytest.approx(50.5) and stats.throughput_fps == pytest.approx(2000 / 50.5)
    assert (stats.min, stats.max, stats.runs) == (1.0, 100.0, 100)
    # steady: 20 runs of 5 consecutive calls, the fastest run's median (the latency table's statistic)
    assert stats.steady == 3.0
    spell = [10.0] * 50 + [5.0, 6.0, 4.0, 5.0, 5.0] + [10.0] * 45  # a quiet moment inside a slow spell
    assert latency_stats(spell, batch=1, warmup=0).steady == 5.0 and latency_stats(spell, 1, 0).p50 == 10.0


def test_latency_stats_steady_over_the_given_rounds() -> None:
    samples = [4.0, 4.0, 9.0, 9.0, 1.0, 9.0]  # three rounds of two calls: medians 4, 9, 5
    assert latency_stats(samples, 1, 0, rounds=3).steady == 4.0
    assert latency_stats(samples, 1, 0).steady == 1.0  # cut into STEADY_ROUNDS runs: one call each


class Recorder:
    """A runner that records which runner was called, in order."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log
        self.inputs = [TensorSpec("x", (1, 2), "float32")]

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.log.append(self.name)
        return {"y": feeds["x"]}


def test_interleaved_latency_takes_turns_of_several_calls() -> None:
    log: list[str] = []
    runners = {n: Recorder(n, log) for n in "ab"}
    feeds = {n: {"x": np.zeros((1, 2), np.float32)} for n in runners}
    lat = interleaved_latency(runners, feeds, 1, 6, calls_per_turn=3)  # type: ignore[arg-type]
    assert "".join(log) == "ab" + "aaabbb" * 2  # warm-up, then two turns each
    assert lat["a"].runs == lat["b"].runs == 6 and lat["a"].warmup == 1
    log.clear()
    interleaved_latency(runners, feeds, 0, 2)  # type: ignore[arg-type]
    assert "".join(log) == "abab"  # one call per turn: alternate call by call, as hiap bench does
    with pytest.raises(HiapError, match="calls_per_turn must be >= 1"):
        interleaved_latency(runners, feeds, 0, 2, calls_per_turn=0)  # type: ignore[arg-type]


def test_compare_logits_measures_each_difference_and_top1_agreement() -> None:
    ref = np.array([[4.0, 1.0, 0.5], [2.0, -1.0, 0.5]], np.float32)
    out = ref + np.array([[0.0, -0.25, 0.0], [0.0, 0.5, 3.0]], np.float32)  # row 2's argmax moves to class 2
    diff = compare_logits(ref, out, Tolerance(atol=3.0, min_top1_agreement=0.5))
    # |out - ref|: 0, .25, 0, 0, .5, 3; relative to |ref|: 0, .25, 0, 0, .5, 6
    assert diff.max_abs_diff == 3.0 and diff.mean_abs_diff == pytest.approx(3.75 / 6)
    assert diff.max_rel_diff == 6.0 and diff.mean_rel_diff == pytest.approx(6.75 / 6)
    assert diff.top1_agreement == 0.5
    assert diff.tolerance == Tolerance(3.0, 0.5) and diff  # both figures exactly at their limits: held
    assert not compare_logits(ref, out, Tolerance(atol=2.99, min_top1_agreement=0.5))  # max abs over
    assert not compare_logits(ref, out, Tolerance(atol=3.0, min_top1_agreement=0.51))  # agreement under
    same = compare_logits(ref, ref, Tolerance(atol=0.0))
    assert (same.max_abs_diff, same.mean_rel_diff, same.top1_agreement) == (0.0, 0.0, 1.0) and same


def test_relative_difference_counts_a_zero_reference_as_epsilon() -> None:
    """As Polygraphy's comparator: a zero in the reference gives a large but finite relative difference."""
    ref = np.array([[0.0, 2.0]], np.float32)
    out = np.array([[1e-6, 2.0]], np.float32)
    diff = compare_logits(ref, out, Tolerance(atol=1e-5))
    assert diff.max_rel_diff == pytest.approx(float(np.float32(1e-6)) / 2e-16)
    assert np.isfinite(diff.mean_rel_diff) and diff  # within atol: the relative figures are reported, not judged


def test_ort_runner_specs_metadata_fidelity_and_accuracy(tmp_path: Path) -> None:
    model = linear_export(tmp_path / "export")
    with OrtRunner(model, intra_op_threads=1) as runner:
        assert runner.inputs == [TensorSpec("input", (1, *INPUT_SIZE), "float32")]
        assert runner.outputs == [TensorSpec("logits", (1, 10), "float32")]
        assert runner.metadata["model"] == "tiny-linear" and runner.describe()["runtime"] == "onnxruntime"
        assert batch_of(runner.inputs[0], 1) == 1
        with pytest.raises(HiapError, match="fixed at 1"):
            batch_of(runner.inputs[0], 4)
        result = fidelity(runner, model.with_name("golden.npz"), 1, Tolerance(atol=1e-5))
        assert result.images == 8 and result.golden == model.with_name("golden.npz") and result
        assert result.comparison.max_abs_diff < 1e-5 and result.comparison.top1_agreement == 1.0
        assert not fidelity(runner, model.with_name("golden.npz"), 1, Tolerance(atol=0.0))  # float32 noise is > 0
        x = np.load(model.with_name("golden.npz"))["inputs"][:5]
        y = np.load(model.with_name("golden.npz"))["logits"][:5].argmax(-1)
        got = accuracy(runner, iter([(x[:3], y[:3]), (x[3:], y[3:])]), 1)
        assert got == Accuracy(images=5, top1=100.0) and got.to_dict() == {"images": 5, "top1": 100.0}
        lat = measure_latency(runner, random_feeds(runner, 1), warmup=1, iterations=5)
        assert lat.runs == 5 and lat.batch == 1 and 0 < lat.min <= lat.p50 <= lat.max
        with pytest.raises(RuntimeError, match="does not have configuration"):  # ORT's default: spinning on
            runner.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
        assert runner.describe()["allow_spinning"] is True
    with OrtRunner(model, allow_spinning=False) as quiet:  # benchmarks: many sessions taking turns
        assert quiet.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
        assert quiet.describe()["allow_spinning"] is False
        with pytest.raises(HiapError, match="has shape 2x1x28x28"):
            runner.infer({"input": np.zeros((2, *INPUT_SIZE), np.float32)})
        with pytest.raises(HiapError, match="is float64"):
            runner.infer({"input": np.zeros((1, *INPUT_SIZE))})
    with default_runner(model) as runner:  # the exporter's parity runner: ONNX Runtime's own thread choice
        assert (runner.intra_op_threads, runner.inter_op_threads) == (0, 0)
        one = runner.infer({"input": x[:1]})["logits"]
    assert compare_logits(np.load(model.with_name("golden.npz"))["logits"][:1], one, Tolerance(atol=1e-5))
