"""`hiap profile` on the device: time every probe of a probe set with the profile's runner, threads and protocol,
and write the latency table (lut.json) that describes itself (torch-free)."""

from __future__ import annotations

import datetime
import platform
from pathlib import Path
from typing import Any

import numpy as np

from hiap import __version__
from hiap.base.errors import HiapError
from hiap.base.jsonfile import read_json_object
from hiap.base.lut import (
    FIXED_PROBE,
    LUT_SCHEMA,
    LUT_VERSION,
    OVERHEAD_PROBE,
    PROBE_MANIFEST,
    attention_probe,
    ffn_probe,
    parse_lut,
    qk_probe,
)
from hiap.base.precision import COMPUTE_PRECISIONS, FP32, OPENVINO_HINTS, OPENVINO_RUNTIME, TRT
from hiap.devices.host import detect_host
from hiap.devices.options import check_inference_precision
from hiap.devices.profile import DeviceProfile
from hiap.devices.runners import open_runner, resolve_runtime
from hiap.runtime.harness import fastest_round_median, random_feeds, time_calls

# Probes are timed in rounds, every probe a share of its calls per round (see time_in_rounds).
ROUNDS = 20
# Samples of one file at one batch: the call latencies (ms) of each round, in round order.
Rounds = list[list[float]]


def read_manifest(probes: Path) -> dict[str, Any]:
    path = probes / PROBE_MANIFEST
    if not path.is_file():
        raise HiapError(f"'{probes}' holds no probes.json: write a probe set with hiap profile --model M "
                        f"--probes-only {probes}.")  # fmt: skip
    body = read_json_object(path, "Probe set")
    if body.get("schema") != "hiap-probes" or not isinstance(body.get("probes"), list):
        raise HiapError(f"'{path}' is not a hiap probe set: write one with hiap profile --probes-only.")
    for probe in body["probes"]:
        file = probe.get("file") if isinstance(probe, dict) else None
        if not isinstance(file, str) or "/" in file or "\\" in file or not (probes / file).is_file():
            raise HiapError(f"'{path}' names a probe file {file!r} that is missing from '{probes}': copy the whole "
                            "folder to the device.")  # fmt: skip
    grid = body.get("grid")
    try:
        wanted = {OVERHEAD_PROBE, FIXED_PROBE} | {ffn_probe(k) for k in grid["ffn_widths"]}
        wanted |= {attention_probe(h, w) for h in grid["heads"] for w in grid["value_widths"]}
        wanted |= {qk_probe(h, q) for h in grid["heads"] for q in grid.get("qk_widths", [])[:-1]}
        listed = {p["file"] for p in body["probes"]}
        complete = all(k in body for k in ("model", "geometry", "align")) and wanted <= listed
    except (TypeError, KeyError):
        complete = False
    if not complete:
        raise HiapError(f"'{path}' is incomplete (model, geometry, align, grid and a probe per grid cell): write the "
                        "probe set again with hiap profile --probes-only.")  # fmt: skip
    return body


def steady_ms(rounds: Rounds) -> float:
    """The device's steady latency: the median of the fastest round.

    On a shared machine slow spells last seconds and raise every call in them alike; the median of all calls
    then depends on how many rounds a spell hit (measured: +-20 % between repeats on a 2-core VM), the fastest
    round's median does not (+-1 %). On a quiet device both agree."""
    return fastest_round_median(rounds)


def all_calls(rounds: Rounds) -> list[float]:
    return [ms for r in rounds for ms in r]


def _cell(rounds: Rounds) -> dict[str, float]:
    p50, p90 = (float(v) for v in np.percentile(np.asarray(all_calls(rounds)), [50, 90]))
    return {"ms": round(steady_ms(rounds), 6), "p50": round(p50, 6), "p90": round(p90, 6)}


def time_in_rounds(files: list[Path], profile: DeviceProfile, runtime: str, batches: tuple[int, ...],
                   iterations: int, warmup: int, progress: Any = None, rounds: int = ROUNDS,
                   precision: str = FP32) -> tuple[dict[tuple[int, Path], Rounds], dict[str, Any]]:  # fmt: skip
    """Single-call latencies (ms) of every file at every batch, `iterations` each, taken in `rounds` rounds that
    time every file in turn for its share of the calls, so that a slow spell of a shared machine (seconds long, up
    to 1.7x on a 2-core VM) falls on every file alike. One session is open at a time: the idle thread pool of
    another open session spins and slows the one being timed. Returns the samples and the runner's describe()."""
    per_round = -(-iterations // rounds)
    samples: dict[tuple[int, Path], Rounds] = {}
    describe: dict[str, Any] = {}
    for r in range(rounds):
        for path in files:
            with open_runner(path, profile, runtime, precision) as runner:
                describe = runner.describe()
                _check_computed(describe, precision)
                for b in batches:
                    # A new session each round: its first `warmup` calls allocate.
                    calls = time_calls(runner, random_feeds(runner, b), warmup, per_round)
                    samples.setdefault((b, path), []).append(calls)
        if progress is not None:
            progress(r + 1, rounds)
    return samples, describe


def measure_lut(probes: Path, profile: DeviceProfile, runtime: str | None = None, iterations: int | None = None,
                warmup: int | None = None, batches: tuple[int, ...] | None = None, progress: Any = None,
                rounds: int = ROUNDS, precision: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Time every probe at each batch; returns the lut.json body (validated). `precision` bf16 / fp16: the FP32
    probes computed at that precision on OpenVINO (a table for `hiap bench --precision` deployments)."""
    return measure_lut_alongside(probes, profile, [], runtime, iterations, warmup, batches, progress, rounds,
                                 precision)[0]  # fmt: skip


def _check_computed(describe: dict[str, Any], precision: str) -> None:
    """A table is only labelled with a precision its runner confirmed computing in."""
    if precision in COMPUTE_PRECISIONS and describe.get("inference_precision") != OPENVINO_HINTS[precision]:
        computed = describe.get("inference_precision")
        raise HiapError(f"--precision {precision}: OpenVINO computes the probes in '{computed}' here, not "
                        f"{precision}; no table written.")  # fmt: skip


def measure_lut_alongside(probes: Path, profile: DeviceProfile, others: list[Path], runtime: str | None = None,
                          iterations: int | None = None, warmup: int | None = None,
                          batches: tuple[int, ...] | None = None, progress: Any = None, rounds: int = ROUNDS,
                          precision: str | None = None,
                          ) -> tuple[dict[str, Any], dict[tuple[int, Path], Rounds]]:  # fmt: skip
    """measure_lut, with `others` (whole networks) timed in the same rounds, alternating with the probes: how a
    table's predictions are checked against measurements that saw the same machine. Returns the body and the
    samples of `others` by (batch, path)."""
    manifest = read_manifest(probes)
    lowered = check_inference_precision(precision, profile, detect_host(), runtime)
    if lowered is not None and manifest.get("precision", FP32) != FP32:
        raise HiapError(f"--precision {lowered} computes FP32 probes at {lowered}; '{probes}' holds "
                        f"{manifest.get('precision')} probes.")  # fmt: skip
    runtime, _ = resolve_runtime(profile, OPENVINO_RUNTIME.library if lowered else runtime)
    iterations = iterations if iterations is not None else profile.protocol.iterations
    warmup = warmup if warmup is not None else profile.protocol.warmup
    for flag, value in (("--iterations", iterations), ("--rounds", rounds)):
        if value < 1:
            raise HiapError(f"{flag} must be >= 1, got {value}.")
    made = tuple(manifest.get("batches") or (1,))
    batches = tuple(sorted(set(batches or made)))
    if any(b != 1 for b in batches) and made == (1,):
        raise HiapError(f"The probes in '{probes}' have a fixed batch of 1; write them with --batch "
                        f"{' --batch '.join(str(b) for b in batches)} to measure other batches.")  # fmt: skip
    files = [probes / p["file"] for p in manifest["probes"]]
    samples, describe = time_in_rounds(files + others, profile, runtime, batches, iterations, warmup, progress, rounds,
                                       lowered or FP32)  # fmt: skip
    grid = manifest["grid"]
    tables = {}
    for b in batches:
        cells = {p["file"]: _cell(samples[(b, probes / p["file"])]) for p in manifest["probes"]}
        attention = [[cells[attention_probe(h, w)] for w in grid["value_widths"]] for h in grid["heads"]]
        tables[str(b)] = {
            "overhead": cells[OVERHEAD_PROBE],
            "fixed": cells[FIXED_PROBE],
            "attention": attention,
            "ffn": [cells[ffn_probe(k)] for k in grid["ffn_widths"]],
        }
        if grid.get("qk_widths"):
            # at full q/k width the branch is the attention probe at full value width (attention[i][-1])
            *narrower, _ = grid["qk_widths"]
            tables[str(b)]["attention_qk"] = [[cells[qk_probe(h, q)] for q in narrower] + [row[-1]]
                                              for h, row in zip(grid["heads"], attention, strict=True)]  # fmt: skip
    host = detect_host()
    body = {
        "schema": LUT_SCHEMA,
        "schema_version": LUT_VERSION,
        "device": profile.name,
        "host": {"describe": host.describe(), "cpu": host.cpu, "arch": host.arch, "python": platform.python_version()},
        "runtime": describe.get("runtime", runtime),
        "runner": describe,
        "precision": profile.precision if runtime == TRT else lowered or manifest.get("precision", FP32),
        "threads": _threads(describe),
        "model": manifest["model"],
        "model_kwargs": manifest.get("model_kwargs", {}),
        "input_size": manifest.get("input_size"),
        "geometry": manifest["geometry"],
        "align": manifest["align"],
        "chain": manifest.get("chain", 1),
        "grid": grid,
        "protocol": {
            "warmup": warmup,
            "iterations": iterations,
            "rounds": rounds,
            "statistic": "ms: median of the fastest round; p50/p90: of all calls",
        },
        "validated": runtime != TRT,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hiap_version": __version__,
        "tables": tables,
    }
    if runtime == TRT:
        body["note"] = "TensorRT probes are not validated against measured networks yet: check its predictions there."
    parse_lut(body, "measured table")  # what was written is what every reader accepts
    return body, {k: v for k, v in samples.items() if k[1] in others}


def _threads(describe: dict[str, Any]) -> dict[str, Any]:
    keys = ("intra_op_threads", "inter_op_threads", "threads", "hint")
    return {k: describe[k] for k in keys if k in describe}
