"""Harnesses for any runner: latency (warm-up, percentiles, spread), logit comparison, fidelity vs golden, accuracy."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hiap.base.errors import HiapError
from hiap.runtime.base import Runner


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
    # The statistic of a latency table's cells (devices/lut.py): the median of the fastest of STEADY_ROUNDS runs of
    # consecutive calls; a slow spell of a shared machine moves p50 but not this.
    steady: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# The most values a random input batch may hold (1 GiB of float32): a file declaring more is not an image model, and
# numpy would fail with a MemoryError (or the board would swap) before the runtime said so.
MAX_INPUT_ELEMENTS = 2**28
STEADY_ROUNDS = 20  # as many rounds as hiap profile times a table in by default


def fastest_round_median(rounds: list[list[float]]) -> float:
    """The median of the fastest round (a round: a run of calls timed together)."""
    return float(min(np.median(r) for r in rounds if r))


def latency_stats(samples_ms: list[float], batch: int, warmup: int, rounds: int = STEADY_ROUNDS) -> Latency:
    """Percentiles over every sample; `steady` over the samples cut into `rounds` consecutive runs."""
    a = np.asarray(samples_ms, dtype=np.float64)
    p50, p90, p99 = (float(v) for v in np.percentile(a, [50, 90, 99]))
    steady = fastest_round_median([list(c) for c in np.array_split(a, min(rounds, len(a)))])
    return Latency(batch, len(a), warmup, p50, p90, p99, float(a.mean()), float(a.std()), float(a.min()),
                   float(a.max()), 1000.0 * batch / float(a.mean()), steady)  # fmt: skip


def random_feeds(runner: Runner, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in runner.inputs:
        shape = tuple(batch if (i == 0 and d is None) else d for i, d in enumerate(spec.shape))
        if any(d is None for d in shape):
            raise HiapError(
                f"Input '{spec.name}' has dynamic axes besides the batch ({spec.shape}); give fixed shapes."
            )
        if any(d < 1 for d in shape) or np.prod(shape, dtype=np.float64) > MAX_INPUT_ELEMENTS:
            raise HiapError(f"Input '{spec.name}' declares shape {list(shape)}: not an image batch hiap can feed "
                            f"(at most {MAX_INPUT_ELEMENTS:.0e} values).")  # fmt: skip
        feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)  # type: ignore[arg-type]
    return feeds


def measure_latency(runner: Runner, feeds: dict[str, np.ndarray], warmup: int = 20, iterations: int = 200,
                    min_seconds: float = 0.0) -> Latency:  # fmt: skip
    """Time `iterations` calls after `warmup`, continuing until min_seconds have passed; every call is kept."""
    samples = time_calls(runner, feeds, warmup, iterations, min_seconds)
    batch = next(iter(feeds.values())).shape[0]
    return latency_stats(samples, batch, warmup)


def time_calls(runner: Runner, feeds: dict[str, np.ndarray], warmup: int, iterations: int,
               min_seconds: float = 0.0) -> list[float]:  # fmt: skip
    """The latency (ms) of each of `iterations` calls after `warmup` untimed ones, continuing until min_seconds
    have passed."""
    for _ in range(warmup):
        runner.infer(feeds)
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < iterations or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        runner.infer(feeds)
        samples.append((time.perf_counter() - t0) * 1000.0)
    return samples


def interleaved_latency(runners: dict[str, Runner], feeds: dict[str, dict[str, np.ndarray]], warmup: int,
                        iterations: int, min_seconds: float = 0.0,
                        calls_per_turn: int = 1) -> dict[str, Latency]:  # fmt: skip
    """Alternate the runners, `calls_per_turn` consecutive calls each in turn, so drift of a shared, noisy machine
    hits all alike; every call is timed and kept. With turns of several calls (a benchmark timing many networks:
    a runner's first call after another's is not what a device running one network sees) `steady` is the median of
    the fastest turn."""
    if calls_per_turn < 1:
        raise HiapError(f"calls_per_turn must be >= 1, got {calls_per_turn}.")
    for name, runner in runners.items():
        for _ in range(warmup):
            runner.infer(feeds[name])
    samples: dict[str, list[float]] = {name: [] for name in runners}
    start = time.perf_counter()
    while min(len(s) for s in samples.values()) < iterations or time.perf_counter() - start < min_seconds:
        for name, runner in runners.items():
            for _ in range(calls_per_turn):
                t0 = time.perf_counter()
                runner.infer(feeds[name])
                samples[name].append((time.perf_counter() - t0) * 1000.0)
    # Every runner took the same number of turns; each turn's calls are consecutive samples.
    rounds = len(next(iter(samples.values()))) // calls_per_turn if calls_per_turn > 1 else STEADY_ROUNDS
    return {n: latency_stats(s, next(iter(feeds[n].values())).shape[0], warmup, rounds) for n, s in samples.items()}


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


# A zero reference value counts as this much when dividing by it, as Polygraphy's comparator does: the relative
# difference there is large but finite, so one exact zero in the logits does not turn the figure into inf or NaN.
REL_DIFF_EPS = 2e-16


@dataclass(frozen=True)
class Tolerance:
    """What a logit comparison must hold to pass: no element further than `atol` from the reference, and at least
    `min_top1_agreement` of the rows with the same top-1 class."""

    atol: float
    min_top1_agreement: float = 1.0


@dataclass(frozen=True)
class LogitComparison:
    """One output's logits against the reference: absolute and relative differences over every element (relative to
    the reference, as Polygraphy's comparator reports them), the fraction of rows whose top-1 class agrees, and the
    tolerance it was judged against. Truthy when it held."""

    max_abs_diff: float
    mean_abs_diff: float
    max_rel_diff: float
    mean_rel_diff: float
    top1_agreement: float
    tolerance: Tolerance

    def __bool__(self) -> bool:
        return self.max_abs_diff <= self.tolerance.atol and self.top1_agreement >= self.tolerance.min_top1_agreement

    def differences(self) -> dict[str, float]:
        """The measured figures, without the tolerance (what reports record)."""
        return {"max_abs_diff": self.max_abs_diff, "mean_abs_diff": self.mean_abs_diff,
                "max_rel_diff": self.max_rel_diff, "mean_rel_diff": self.mean_rel_diff,
                "top1_agreement": self.top1_agreement}  # fmt: skip


def compare_logits(ref: np.ndarray, out: np.ndarray, tolerance: Tolerance) -> LogitComparison:
    """Two logit arrays of one shape compared, and judged against `tolerance`: the one parity measure, used by the
    bench's fidelity check and by the exporter's checks alike."""
    abs_diff = np.abs(out - ref)  # in the arrays' own precision, so max_abs_diff is the figure reports always gave
    rel_diff = abs_diff.astype(np.float64) / np.where(ref == 0, REL_DIFF_EPS, np.abs(ref.astype(np.float64)))
    return LogitComparison(
        max_abs_diff=float(abs_diff.max()),
        mean_abs_diff=float(abs_diff.mean(dtype=np.float64)),
        max_rel_diff=float(rel_diff.max()),
        mean_rel_diff=float(rel_diff.mean()),
        # A row with a non-finite logit agrees with nothing (argmax of NaNs would pick an index and could "agree").
        top1_agreement=float(((out.argmax(-1) == ref.argmax(-1)) & np.isfinite(out).all(-1)).mean()),
        tolerance=tolerance,
    )


@dataclass(frozen=True)
class Fidelity:
    """The model's logits on the golden inputs against the exporter's logits for them; truthy when they agree
    within the tolerance."""

    golden: Path
    images: int
    comparison: LogitComparison

    def __bool__(self) -> bool:
        return bool(self.comparison)

    def to_dict(self) -> dict[str, Any]:
        c = self.comparison
        # The keys reports have always had first; the other differences follow.
        return {"images": self.images, "max_abs_diff": c.max_abs_diff, "top1_agreement": c.top1_agreement,
                "golden": str(self.golden)} | c.differences()  # fmt: skip


def fidelity(runner: Runner, golden: Path, batch: int, tolerance: Tolerance) -> Fidelity:
    x, ref = load_golden(golden)
    expected = tuple(d for d in runner.inputs[0].shape[1:])
    if tuple(x.shape[1:]) != expected:
        raise HiapError(f"Golden inputs are {list(x.shape[1:])} but the model takes {list(expected)}: "
                        "is the golden file from another model?")  # fmt: skip
    out = run_batched(runner, x, batch)
    if out.shape != ref.shape:
        raise HiapError(f"Model outputs {list(out.shape)} but the golden logits are {list(ref.shape)}.")
    return Fidelity(golden, len(x), compare_logits(ref, out, tolerance))


@dataclass(frozen=True)
class Accuracy:
    """Top-1 accuracy in percent over `images` labelled images."""

    images: int
    top1: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def accuracy(runner: Runner, batches: Iterator[tuple[np.ndarray, np.ndarray]], batch: int) -> Accuracy:
    correct = total = 0
    for x, y in batches:
        pred = run_batched(runner, x, batch).argmax(-1)
        correct += int((pred == y).sum())
        total += len(y)
    if total == 0:
        raise HiapError("The evaluation data yielded no images.")
    return Accuracy(total, 100.0 * correct / total)
