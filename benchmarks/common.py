"""Shared pieces of the benchmark scripts: the environment record, ONNX latency by the product's harness, and one
in-process training run."""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from hiap import __version__
from hiap.config import TrainConfig
from hiap.cost import BlockStructure, Geometry, Structure, structure_macs
from hiap.devices.host import detect_host
from hiap.runtime.harness import Latency, interleaved_latency, random_feeds
from hiap.runtime.ort_runner import OrtRunner
from hiap.train import Trainer


def environment(recipe: str) -> dict[str, Any]:
    host = detect_host()
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu": {"model": host.cpu, "flags": host.cpu_flags},
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "hiap": __version__,
        "recipe": recipe,
    }


# What every ONNX latency in benchmarks/ is timed with, unless a script says otherwise: hiap bench's runner and harness.
# Spinning is off because many sessions take turns: the spin-waiting threads of the session that just ran steal the
# cores from the next (measured: medians 0.85-1.25 ms for six copies of one model with spinning, 0.78-0.88 without).
WARMUP_CALLS = 5


def onnx_latency(paths: dict[str, Path], rounds: int, calls: int, batch: int = 1, threads: int = 2,
                 warmup: int = WARMUP_CALLS) -> dict[str, Latency]:  # fmt: skip
    """The latency of each ONNX file on ONNX Runtime's CPU provider, timed as `hiap bench` times (its OrtRunner and
    harness): `rounds` rounds, each calling every file `calls` times in turn, on random inputs of `batch` rows; every
    call kept, so Latency.p50 is over rounds x calls samples and Latency.steady is the median of the fastest round."""
    with ExitStack() as stack:
        runners = {k: stack.enter_context(OrtRunner(p, intra_op_threads=threads, allow_spinning=False))
                   for k, p in paths.items()}  # fmt: skip
        feeds = {k: random_feeds(r, batch) for k, r in runners.items()}
        return interleaved_latency(runners, feeds, warmup, rounds * calls, calls_per_turn=calls)


def learned_like_plan(geom: Geometry, seed: int, target_gmacs: float) -> Structure:
    """A plan shaped like a learned one (some heads removed per block, uneven value widths 16..head_dim), FFN
    neurons trimmed uniformly until the exact plan is at or below `target_gmacs`."""
    rng = np.random.default_rng(seed)
    blocks = []
    for _ in range(geom.depth):
        heads = tuple(
            sorted(
                rng.choice(
                    geom.num_heads,
                    size=int(rng.integers(-(-2 * geom.num_heads // 3), geom.num_heads + 1)),
                    replace=False,
                )
            )
        )
        dims = tuple(tuple(range(int(rng.integers(16, geom.head_dim + 1)))) for _ in heads)
        blocks.append((heads, dims))
    for k in range(geom.hidden, 0, -8):
        s = Structure(blocks=tuple(BlockStructure(h, d, True, tuple(range(k))) for h, d in blocks))
        if structure_macs(geom, s) / 1e9 <= target_gmacs:
            return s
    raise SystemExit("no plan reaches the target")


def train_run(**overrides: Any) -> dict[str, Any]:
    """Run `hiap train` in-process with `overrides` on the defaults; return the summary plus wall time."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(**overrides, out=f"{tmp}/run")
        t0 = time.perf_counter()
        summary = Trainer(cfg, Console(quiet=True)).run()
        summary["wall_seconds"] = time.perf_counter() - t0
    return summary


def load_runs(path: Path) -> list[dict[str, Any]]:
    """Every run a resumable benchmark has appended to its JSON-lines log (none when it has none yet)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def results_dir() -> Path:
    """benchmarks/results, or $HIAP_BENCH_RESULTS (run_all.py's reduced runs write there, not over the committed
    results)."""
    results = Path(os.environ.get("HIAP_BENCH_RESULTS") or Path(__file__).parent / "results")
    results.mkdir(parents=True, exist_ok=True)
    return results


def write_results(name: str, title: str, env: dict[str, Any], runs: list[dict[str, Any]], table: list[str]) -> None:
    """<results>/<name>.json (environment and every run) and <name>.md (title, environment, table)."""
    results = results_dir()
    (results / f"{name}.json").write_text(json.dumps({"environment": env, "runs": runs}, indent=2) + "\n")
    cpu = env.get("cpu", {})
    head = [f"# {title}", "", f"{env['recipe']}; {env['machine']}, {cpu.get('model', '')} "
            f"({' '.join(cpu.get('flags', []))}), {env['threads']} threads, "
            f"torch {env['torch']}, hiap {env['hiap']}, {env['date']}.", ""]  # fmt: skip
    (results / f"{name}.md").write_text("\n".join(head + table) + "\n")
    print("\n".join(head + table))
