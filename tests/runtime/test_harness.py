"""The runners and harness on the base install: ONNX Runtime on a hand-written model, latency statistics, the one
logit comparison, batching, fidelity against golden.npz and accuracy (no torch, no onnx package)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tiny_onnx import INPUT_SIZE, linear_export

from hiap.errors import HiapError
from runtime.base import TensorSpec, batch_of
from runtime.harness import accuracy, compare_logits, fidelity, latency_stats, measure_latency, random_feeds
from runtime.ort_runner import OrtRunner, default_runner


def test_latency_stats_values() -> None:
    stats = latency_stats([float(v) for v in range(1, 101)], batch=2, warmup=0)
    assert stats.p50 == pytest.approx(50.5) and stats.p99 == pytest.approx(99.01)
    assert stats.mean == pytest.approx(50.5) and stats.throughput_fps == pytest.approx(2000 / 50.5)
    assert (stats.min, stats.max, stats.runs) == (1.0, 100.0, 100)


def test_compare_logits_measures_max_abs_and_top1_agreement() -> None:
    ref = np.array([[0.0, 1.0, 0.5], [2.0, 0.0, 0.0]], np.float32)
    out = ref + np.array([[0.0, -0.25, 0.0], [0.0, 0.0, 3.0]], np.float32)  # row 2's argmax moves to class 2
    assert compare_logits(ref, out) == {"max_abs_diff": 3.0, "top1_agreement": 0.5}
    assert compare_logits(ref, ref) == {"max_abs_diff": 0.0, "top1_agreement": 1.0}


def test_ort_runner_specs_metadata_fidelity_and_accuracy(tmp_path: Path) -> None:
    model = linear_export(tmp_path / "export")
    with OrtRunner(model, intra_op_threads=1) as runner:
        assert runner.inputs == [TensorSpec("input", (1, *INPUT_SIZE), "float32")]
        assert runner.outputs == [TensorSpec("logits", (1, 10), "float32")]
        assert runner.metadata["model"] == "tiny-linear" and runner.describe()["runtime"] == "onnxruntime"
        assert batch_of(runner.inputs[0], 1) == 1
        with pytest.raises(HiapError, match="fixed at 1"):
            batch_of(runner.inputs[0], 4)
        result = fidelity(runner, model.with_name("golden.npz"), 1)
        assert result["images"] == 8 and result["max_abs_diff"] < 1e-5 and result["top1_agreement"] == 1.0
        x = np.load(model.with_name("golden.npz"))["inputs"][:5]
        y = np.load(model.with_name("golden.npz"))["logits"][:5].argmax(-1)
        got = accuracy(runner, iter([(x[:3], y[:3]), (x[3:], y[3:])]), 1)
        assert got == {"images": 5, "top1": 100.0}
        lat = measure_latency(runner, random_feeds(runner, 1), warmup=1, iterations=5)
        assert lat.runs == 5 and lat.batch == 1 and 0 < lat.min <= lat.p50 <= lat.max
        with pytest.raises(HiapError, match="has shape 2x1x28x28"):
            runner.infer({"input": np.zeros((2, *INPUT_SIZE), np.float32)})
        with pytest.raises(HiapError, match="is float64"):
            runner.infer({"input": np.zeros((1, *INPUT_SIZE))})
    with default_runner(model) as runner:  # the exporter's parity runner: ONNX Runtime's own thread choice
        assert (runner.intra_op_threads, runner.inter_op_threads) == (0, 0)
        one = runner.infer({"input": x[:1]})["logits"]
    assert compare_logits(np.load(model.with_name("golden.npz"))["logits"][:1], one)["max_abs_diff"] < 1e-5
