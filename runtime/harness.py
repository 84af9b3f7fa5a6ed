"""Harnesses that work with any runner: latency (warm-up, percentiles, spread), fidelity vs golden.npz, accuracy."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hiap.errors import HiapError
from runtime.base import Runner


@dataclass
class Latency:
    """All figures in milliseconds per call (one call = one batch)."""

    batch: int
    runs: int
    warmup: int
    p50: float
    p90: float
    p99: float
    mean: float
    std: float
    min: float
    max: float
    throughput_fps: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def latency_stats(samples_ms: list[float], batch: int, warmup: int) -> Latency:
    a = np.asarray(samples_ms, dtype=np.float64)
    p50, p90, p99 = (float(v) for v in np.percentile(a, [50, 90, 99]))
    return Latency(batch, len(a), warmup, p50, p90, p99, float(a.mean()), float(a.std()), float(a.min()),
                   float(a.max()), 1000.0 * batch / float(a.mean()))  # fmt: skip


def random_feeds(runner: Runner, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in runner.inputs:
        shape = tuple(batch if (i == 0 and d is None) else d for i, d in enumerate(spec.shape))
        if any(d is None for d in shape):
            raise HiapError(
                f"Input '{spec.name}' has dynamic axes besides the batch ({spec.shape}); give fixed shapes."
            )
        feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)  # type: ignore[arg-type]
    return feeds


def measure_latency(runner: Runner, feeds: dict[str, np.ndarray], warmup: int = 20, iterations: int = 200,
                    min_seconds: float = 0.0) -> Latency:  # fmt: skip
    """Time `iterations` calls after `warmup`, continuing until min_seconds have passed; every call is kept."""
    for _ in range(warmup):
        runner.infer(feeds)
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < iterations or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        runner.infer(feeds)
        samples.append((time.perf_counter() - t0) * 1000.0)
    batch = next(iter(feeds.values())).shape[0]
    return latency_stats(samples, batch, warmup)


def interleaved_latency(runners: dict[str, Runner], feeds: dict[str, dict[str, np.ndarray]], warmup: int,
                        iterations: int, min_seconds: float = 0.0) -> dict[str, Latency]:  # fmt: skip
    """Alternate the runners call by call, so drift of a shared, noisy machine hits both alike."""
    for name, runner in runners.items():
        for _ in range(warmup):
            runner.infer(feeds[name])
    samples: dict[str, list[float]] = {name: [] for name in runners}
    start = time.perf_counter()
    while min(len(s) for s in samples.values()) < iterations or time.perf_counter() - start < min_seconds:
        for name, runner in runners.items():
            t0 = time.perf_counter()
            runner.infer(feeds[name])
            samples[name].append((time.perf_counter() - t0) * 1000.0)
    return {n: latency_stats(s, next(iter(feeds[n].values())).shape[0], warmup) for n, s in samples.items()}


def load_golden(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, reference logits) from the exporter's golden.npz; never unpickles."""
    if not path.is_file():
        raise HiapError(f"Golden file '{path}' does not exist: hiap export writes golden.npz next to model.onnx.")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not {"inputs", "logits"} <= set(npz.files):
                raise HiapError(f"Golden file '{path}' must hold arrays 'inputs' and 'logits' (has {npz.files}).")
            x, y = npz["inputs"], npz["logits"]
    except HiapError:
        raise
    except Exception as exc:
        raise HiapError(f"Golden file '{path}' is not a readable .npz ({type(exc).__name__}).") from None
    if len(x) != len(y) or len(x) == 0:
        raise HiapError(f"Golden file '{path}' has {len(x)} inputs but {len(y)} logits rows.")
    return x.astype(np.float32), y.astype(np.float32)


def run_batched(runner: Runner, x: np.ndarray, batch: int) -> np.ndarray:
    """Logits for every row of x, fed `batch` rows at a time (the last batch padded and cut)."""
    spec, out_name = runner.inputs[0], runner.outputs[0].name
    rows = []
    for i in range(0, len(x), batch):
        chunk = x[i : i + batch]
        n = len(chunk)
        if n < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, axis=0)])
        rows.append(runner.infer({spec.name: np.ascontiguousarray(chunk, dtype=spec.dtype)})[out_name][:n])
    return np.concatenate(rows).astype(np.float32)


def compare_logits(ref: np.ndarray, out: np.ndarray) -> dict[str, float]:
    """Largest absolute difference and top-1 agreement of two logit arrays of one shape: the one parity measure,
    used by the bench's fidelity check and by the exporter's checks alike."""
    return {
        "max_abs_diff": float(np.abs(out - ref).max()),
        "top1_agreement": float((out.argmax(-1) == ref.argmax(-1)).mean()),
    }


def fidelity(runner: Runner, golden: Path, batch: int) -> dict[str, Any]:
    x, ref = load_golden(golden)
    expected = tuple(d for d in runner.inputs[0].shape[1:])
    if tuple(x.shape[1:]) != expected:
        raise HiapError(f"Golden inputs are {list(x.shape[1:])} but the model takes {list(expected)}: "
                        "is the golden file from another model?")  # fmt: skip
    out = run_batched(runner, x, batch)
    if out.shape != ref.shape:
        raise HiapError(f"Model outputs {list(out.shape)} but the golden logits are {list(ref.shape)}.")
    return {"images": len(x)} | compare_logits(ref, out)


def accuracy(runner: Runner, batches: Iterator[tuple[np.ndarray, np.ndarray]], batch: int) -> dict[str, Any]:
    correct = total = 0
    for x, y in batches:
        pred = run_batched(runner, x, batch).argmax(-1)
        correct += int((pred == y).sum())
        total += len(y)
    if total == 0:
        raise HiapError("The evaluation data yielded no images.")
    return {"images": total, "top1": 100.0 * correct / total}
