"""Latency as the budget, on ONNX Runtime CPU here (the x86-cpu profile: 2 intra-op threads, batch 1).

Parts (a restart skips what is finished: geometries in results/latency_budget.json, runs with an export):
- prediction: per geometry (the built-in model, DeiT-Tiny, DeiT-Small; random weights) the probe set and 8 structures
  (dense, uniform halves, FFN removed, thin, mixed, two random, a learned-shaped plan) exported as hiap exports them,
  all timed in the same rounds, alternating; the table built from those probe timings predicts each structure;
- training: the built-in model trained (default recipe) and exported, to 4 latency targets on its measured table
  (landing, seed 0), and for 3 seeds the default MAC-targeted run (50 % of MACs) beside a latency-targeted run whose
  target is the table's latency of the MAC run's network (value);
- cifar: the same value comparison on the CIFAR-10 CPU setting of benchmarks/cifar10.py (its committed dense start,
  a table of its geometry, 2 epochs x 45,000 images per run, top-1 on the official test split);
- measure: one pass, appended (earlier passes kept): every exported run timed in the same rounds as its table's
  probes, timed again, alternating, with the machine quiet (MEASURE_ROUNDS rounds). Landing is the measured latency
  against the target, value the top-1 at (nearly) equal measured latency; the re-timed table separates the machine's
  drift since the training table from the table's error.
Latency is the steady figure of devices/lut.py (the median of the fastest round): on this shared 2-core VM slow
spells of seconds move the median of all calls by +-20 % between repeats; in 20 rounds near-identical networks still
measured up to 30 % apart within one pass, in 60 shorter rounds two passes agreed within ~4 %.

    python benchmarks/latency_budget.py --part prediction|training|cifar|measure|report|all
    python benchmarks/latency_budget.py --part prediction --repeat 2 --geometry deit_tiny   # time one again
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import environment, learned_like_plan, results_dir
from hiap.base.lut import LatencyTable, parse_lut, read_lut, write_lut
from hiap.cost import BlockStructure, Geometry, Structure, structure_macs
from hiap.devices.lut import all_calls, measure_lut, measure_lut_alongside, steady_ms
from hiap.devices.profile import load_profile
from hiap.export.compact import build_compact
from hiap.export.onnx_io import simplify_onnx, torch2onnx
from hiap.export.probes import make_probes
from hiap.gated import describe_vit
from hiap.latency import LatencyCost
from hiap.models import create_model, data_config

GEOMETRIES = {"builtin": ("hiap_vit_fmnist", 1000), "deit_tiny": ("deit_tiny_patch16_224", 300),
              "deit_small": ("deit_small_patch16_224", 200)}  # name: (model, timed calls per file)  # fmt: skip
LANDING = (0.45, 0.55, 0.65, 0.8)  # latency targets as fractions of the dense model's predicted latency
SEEDS = (0, 1, 2)
# A measuring pass: timed calls per file and rounds (pass 2: 600 in 20, pass 3: 1000 in 20). More, shorter rounds
# give every file more chances at a quiet spell of this VM.
MEASURE_CALLS, MEASURE_ROUNDS = 1200, 60
CACHE = Path(tempfile.gettempdir()) / "hiap-latency-bench"
CIFAR_CACHE = Path.home() / ".cache" / "hiap" / "cifar10"  # benchmarks/cifar10.py's unpacked images and splits
CIFAR_ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10" / "cifar10-jpeg.tar.gz"
RESULTS = "latency_budget"


def _load() -> dict[str, Any]:
    path = results_dir() / f"{RESULTS}.json"
    if path.is_file():
        return json.loads(path.read_text())
    return {"environment": environment("latency_budget: ORT CPU x86-cpu profile"), "prediction": [], "landing": [],
            "value": []}  # fmt: skip


def _save(results: dict[str, Any]) -> None:
    (results_dir() / f"{RESULTS}.json").write_text(json.dumps(results, indent=1) + "\n")


def _block(h: int, w: int, k: int, geom: Geometry, q: int | None = None) -> BlockStructure:
    """h heads of value width w (and q/k width q; None: full), k neurons."""
    h, w = max(1, min(h, geom.num_heads)), max(1, min(w, geom.head_dim))
    qk = None if q is None else tuple(tuple(range(q)) for _ in range(h))
    return BlockStructure(tuple(range(h)), tuple(tuple(range(w)) for _ in range(h)), k > 0, tuple(range(k)), qk)


def structures(geom: Geometry) -> dict[str, Structure]:
    """Ten hand-made and random structures of one geometry (widths off the align grid included; two with q/k widths
    narrowed, priced by a table's q/k axis)."""
    H, D, K, L = geom.num_heads, geom.head_dim, geom.hidden, geom.depth
    rng = np.random.default_rng(7)
    out = {
        "dense": geom.dense_structure(),
        "uniform half": Structure(tuple(_block(H // 2, D // 2, K // 2, geom) for _ in range(L))),
        "FFN removed": Structure(tuple(_block(H, D, 0, geom) for _ in range(L))),
        "thin": Structure(tuple(_block(1, 8, K // 8, geom) for _ in range(L))),
        "mixed": Structure(
            tuple(_block(H - i % H, D - 8 * (i % 3), 0 if i % 3 == 1 else K // (1 + i % 4), geom) for i in range(L))
        ),
    }
    for r in range(2):
        blocks = []
        for _ in range(L):
            k = int(rng.integers(K // 10, K + 1)) if rng.random() > 0.25 else 0
            blocks.append(_block(int(rng.integers(1, H + 1)), int(rng.integers(D // 4, D + 1)), k, geom))
        out[f"random {r}"] = Structure(tuple(blocks))
    out["learned-shaped"] = learned_like_plan(geom, 3, 0.5 * geom.dense_macs / 1e9)
    out["q/k half"] = Structure(tuple(_block(H, D, K, geom, q=D // 2) for _ in range(L)))
    out["half, q/k quarter"] = Structure(tuple(_block(H // 2, D // 2, K // 2, geom, q=D // 4) for _ in range(L)))
    return out


def _export(vit: torch.nn.Module, structure: Structure, input_size: tuple[int, ...], path: Path) -> Path:
    if not path.is_file():
        torch2onnx(build_compact(vit, structure, align=8), input_size, path)
        simplify_onnx(path)
    return path


def part_prediction(results: dict[str, Any], repeat: int = 1, only: list[str] | None = None) -> None:
    """`repeat` 2, 3, ...: the same probes and structures timed again (a new table from the new probe timings);
    `only`: these geometries."""
    profile = load_profile("x86-cpu")
    for name, (model, iterations) in GEOMETRIES.items():
        if only and name not in only:
            continue
        if any(r["geometry"] == name and r.get("repeat", 1) == repeat for r in results["prediction"]):
            continue
        folder = CACHE / name
        torch.manual_seed(0)
        vit = create_model(model).eval()
        geom = describe_vit(vit)
        if not (folder / "probes" / "probes.json").is_file():
            make_probes(model, {}, folder / "probes")
        shapes = structures(geom)
        files = {label: _export(vit, s, tuple(data_config(vit)["input_size"]), folder / f"s{i}.onnx")
                 for i, (label, s) in enumerate(shapes.items())}  # fmt: skip
        print(f"{name}: timing {len(files)} structures with the probes", flush=True)
        body, samples = measure_lut_alongside(folder / "probes", profile, list(files.values()), iterations=iterations,
                                              warmup=10)  # fmt: skip
        lut_path = folder / ("lut.json" if repeat == 1 else f"lut-{repeat}.json")  # training uses the first
        write_lut(lut_path, body)
        results.setdefault("pass_environments", {})[f"{name} {repeat}"] = environment(f"prediction pass {repeat}")
        cost = LatencyCost(parse_lut(body, str(lut_path)), geom, model)
        for label, s in shapes.items():
            calls = samples[(1, files[label])]
            predicted, measured = cost.structure_ms(s), steady_ms(calls)
            results["prediction"].append({
                "geometry": name, "repeat": repeat, "model": model, "structure": label, "predicted_ms": predicted,
                "measured_ms": measured, "measured_p50_all_calls_ms": float(np.median(all_calls(calls))),
                "error": predicted / measured - 1, "mac_fraction": structure_macs(geom, s) / geom.dense_macs,
                "latency_fraction": predicted / cost.dense,
            })  # fmt: skip
            print(f"  {label:15s} predicted {predicted:.4f} measured {measured:.4f} ({predicted / measured - 1:+.1%})")
        _save(results)


def _builtin_lut() -> Path:
    path = CACHE / "builtin" / "lut.json"
    if not path.is_file():
        raise SystemExit("run --part prediction first: the built-in table comes from it")
    return path


def _train_and_export(run: Path, **cfg: Any) -> dict[str, Any]:
    """hiap train (default recipe, in-process) then hiap export of the run; the run's summary."""
    from rich.console import Console

    from hiap.config import TrainConfig
    from hiap.export.artifact import export_source
    from hiap.export.source import source_from_run
    from hiap.train import Trainer

    if not (run / "summary.json").is_file():
        Trainer(TrainConfig(out=str(run), **cfg), Console(quiet=True)).run()
    if not (run / "export" / "model.onnx").is_file():
        export_source(source_from_run(run), run / "export")
    return json.loads((run / "summary.json").read_text())


def part_training(results: dict[str, Any]) -> None:
    """Every run of the landing and value parts, trained and exported (minutes each; timing-insensitive)."""
    lut, dense = _builtin_lut(), _builtin_dense_ms(results)
    for fraction in LANDING:
        print(f"landing: target {round(fraction * dense, 4)} ms ({fraction:.0%} of dense)", flush=True)
        _train_and_export(CACHE / f"landing-{fraction}", target_latency_ms=round(fraction * dense, 4), lut=str(lut))
    for seed in SEEDS:
        print(f"value: seed {seed}", flush=True)
        mac = _train_and_export(CACHE / f"value-macs-{seed}", target_macs="0.5", seed=seed)
        # The latency run's target: the table's latency of the MAC run's exported network (both are then measured
        # side by side, and the comparison is at their measured latencies).
        target = round(_predict_run(CACHE / f"value-macs-{seed}", mac), 4)
        _train_and_export(CACHE / f"value-latency-{seed}", target_latency_ms=target, lut=str(lut), seed=seed)


def _builtin_dense_ms(results: dict[str, Any]) -> float:
    return next(r["predicted_ms"] for r in results["prediction"] if r["geometry"] == "builtin" and
                r["structure"] == "dense")  # fmt: skip


def _predict_run(run: Path, summary: dict[str, Any], lut: Path | None = None,
                 table: LatencyTable | None = None) -> float:  # fmt: skip
    """The table's latency (ms) of a run's exported network: `table`, else the one at `lut`, else the built-in's."""
    from hiap.export.plan import read_plan_json, structure_from_dict

    vit = create_model(summary["model"], model_kwargs=summary.get("model_kwargs") or {})
    geom = describe_vit(vit)
    structure = structure_from_dict(read_plan_json(run / "export" / "plan.json")["blocks"], geom)
    table = table or read_lut(lut or _builtin_lut())
    return LatencyCost(table, geom, summary["model"]).structure_ms(structure)


def part_cifar(data: Path) -> None:
    """The value comparison on the CIFAR-10 CPU setting (benchmarks/cifar10.py): its committed dense start, its
    table measured here, and for 3 seeds the default MAC-targeted run at 50 % beside a latency-targeted run whose
    target is the table's latency of the MAC run's network; 2 epochs x 45,000 images each, top-1 on CIFAR-10's
    official test split (no choice is made on it: the latency recipe is the one chosen on the built-in data)."""
    import cifar10

    spec, folder = cifar10.SETTINGS["cpu"], CACHE / "cifar"
    roots = cifar10.prepare(data, CIFAR_CACHE)
    weights, _ = cifar10.dense_start("cpu", roots, CIFAR_CACHE)
    lut = folder / "lut.json"
    if not lut.is_file():
        if not (folder / "probes" / "probes.json").is_file():
            make_probes(spec["model"], spec["model_kwargs"], folder / "probes")
        print("cifar: timing its table", flush=True)  # the machine should be quiet for this
        write_lut(lut, measure_lut(folder / "probes", load_profile("x86-cpu"), iterations=1000, warmup=10))
    common = {"model": spec["model"], "model_kwargs": spec["model_kwargs"], "data": str(roots["test"]),
              "pretrained": str(weights), "workers": 0, **spec["prune"]}  # fmt: skip
    for seed in SEEDS:
        print(f"cifar: seed {seed}", flush=True)
        mac = _train_and_export(folder / f"value-macs-{seed}", target_macs="0.5", seed=seed, **common)
        target = round(_predict_run(folder / f"value-macs-{seed}", mac, lut), 4)
        _train_and_export(folder / f"value-latency-{seed}", target_latency_ms=target, lut=str(lut), seed=seed,
                          **common)  # fmt: skip


def part_measure(results: dict[str, Any]) -> None:
    """One measuring pass (appended, earlier passes kept): every exported run timed in the same rounds as its
    table's probes, timed again, alternating, with the machine quiet. Landing is the measured latency against the
    target; value the top-1 at (nearly) equal measured latency. The re-timed table tells drift of the machine since
    the training table was timed (its dense prediction moves) from error of the table (its prediction of the run)."""

    def exported(run: Path) -> bool:
        return (run / "export" / "model.onnx").is_file()

    def value_runs(folder: Path) -> list[tuple[int, Path, Path]]:
        return [(s, folder / f"value-macs-{s}", folder / f"value-latency-{s}") for s in SEEDS
                if exported(folder / f"value-macs-{s}") and exported(folder / f"value-latency-{s}")]  # fmt: skip

    # Whatever training has finished: a later pass, after more training, times them all again.
    groups = {"builtin": ([CACHE / f"landing-{f}" for f in LANDING if exported(CACHE / f"landing-{f}")],
                          value_runs(CACHE), _builtin_lut()),
              "cifar10": ([], value_runs(CACHE / "cifar"), CACHE / "cifar" / "lut.json")}  # fmt: skip
    if not any(landing or value for landing, value, _ in groups.values()):
        raise SystemExit("train first (--part training, --part cifar)")
    for key in ("landing", "value"):
        for r in results[key]:
            r.setdefault("pass", 1)  # the first pass timed only the runs (its table was timed ~2 h before)
    n = 1 + max((r["pass"] for key in ("landing", "value") for r in results[key]), default=0)
    when = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes")
    for data, (landing, value, lut) in groups.items():
        runs = landing + [run for _, *pair in value for run in pair]
        if not runs:
            continue
        files = [r / "export" / "model.onnx" for r in runs]
        print(f"pass {n}, {data}: timing {len(files)} exported runs with the table's probes", flush=True)
        body, samples = measure_lut_alongside(lut.parent / "probes", load_profile("x86-cpu"), files,
                                              iterations=MEASURE_CALLS, warmup=10, rounds=MEASURE_ROUNDS)  # fmt: skip
        write_lut(lut.parent / f"lut-pass{n}.json", body)
        retimed = parse_lut(body, f"pass {n}")
        measured = {r: steady_ms(samples[(1, f)]) for r, f in zip(runs, files, strict=True)}
        p50 = {r: float(np.median(all_calls(samples[(1, f)]))) for r, f in zip(runs, files, strict=True)}
        summaries = {r: json.loads((r / "summary.json").read_text()) for r in runs}
        # The machine's drift since the training table: the re-timed table's dense prediction over the first's.
        drift = _predict_dense(retimed, summaries[runs[0]]) / _predict_dense(read_lut(lut), summaries[runs[0]])
        for run in landing:
            s, ms = summaries[run], measured[run]
            again, target, predicted = (
                _predict_run(run, s, table=retimed),
                s["target_latency_ms"],
                s["predicted_latency_ms"],
            )
            results["landing"].append({
                "pass": n, "timed": when, "calls": MEASURE_CALLS, "rounds": MEASURE_ROUNDS,
                "fraction": float(run.name.split("-")[1]), "target_ms": target,
                "predicted_ms": predicted, "measured_ms": ms, "measured_p50_all_calls_ms": p50[run],
                "error_vs_target": ms / target - 1, "prediction_error": predicted / ms - 1,
                "retimed_predicted_ms": again, "retimed_prediction_error": again / ms - 1, "drift": drift,
                "error_vs_drifted_target": ms / (drift * target) - 1, "val_acc": s["val_acc"],
                "mac_fraction": s["pruned_gmacs"] / s["dense_gmacs"], "target_met": s["target_met"],
            })  # fmt: skip
        for seed, *pair in value:
            row: dict[str, Any] = {"pass": n, "timed": when, "data": data, "seed": seed, "drift": drift,
                                   "calls": MEASURE_CALLS, "rounds": MEASURE_ROUNDS}  # fmt: skip
            for kind, run in zip(("macs", "latency"), pair, strict=True):
                s = summaries[run]
                row[kind] = {"val_acc": s["val_acc"], "measured_ms": measured[run],
                             "predicted_ms": _predict_run(run, s, lut),
                             "retimed_predicted_ms": _predict_run(run, s, table=retimed),
                             "mac_fraction": s["pruned_gmacs"] / s["dense_gmacs"], "structure": _kept(s)}  # fmt: skip
            row["target_ms"] = summaries[pair[1]]["target_latency_ms"]
            row["dense_val_acc"] = summaries[pair[0]]["dense_val_acc"]
            results["value"].append(row)
        _save(results)


def _predict_dense(table: LatencyTable, summary: dict[str, Any]) -> float:
    vit = create_model(summary["model"], model_kwargs=summary.get("model_kwargs") or {})
    return LatencyCost(table, describe_vit(vit), summary["model"]).dense


def _kept(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: summary[k] for k in ("kept_heads", "kept_ffn", "kept_neurons")}


def part_report(results: dict[str, Any]) -> None:
    env = results["environment"]
    lines = ["# Latency as the budget (ONNX Runtime CPU, x86-cpu profile)", "",
             f"{env['machine']}, {env['processor']}, {env['cpu_count']} cores; torch {env['torch']}, hiap "
             f"{env['hiap']}, {env['date']}. ONNX Runtime with 2 intra-op threads, batch 1, FP32. Latency: the median "
             "of the fastest round (devices/lut.py::steady_ms; 20 rounds for tables and prediction, a measuring pass "
             "as it says); tables and structures timed in the same rounds. Probes: chains of 4 branches, align 8, "
             "FFN every 16 neurons.", "", "## Prediction", "",
             "| geometry | pass | structure | MACs | predicted ms | measured ms | error | p50 of all calls / ms |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in results["prediction"]:
        lines.append(f"| {r['geometry']} | {r.get('repeat', 1)} | {r['structure']} | {r['mac_fraction']:.2f} | "
                     f"{r['predicted_ms']:.4f} | {r['measured_ms']:.4f} | {r['error']:+.1%} | "
                     f"{r['measured_p50_all_calls_ms'] / r['measured_ms']:.2f} |")  # fmt: skip
    for repeat in sorted({r.get("repeat", 1) for r in results["prediction"]}):
        rows = [r for r in results["prediction"] if r.get("repeat", 1) == repeat]
        worst = max(rows, key=lambda r: abs(r["error"]))
        median = np.median([abs(r["error"]) for r in rows])
        where = f"{worst['error']:+.1%} ({worst['geometry']}, {worst['structure']})"
        lines += ["", f"Pass {repeat}: median |error| {median:.1%} over {len(rows)} structures; worst {where}."]
    for key, penv in results.get("pass_environments", {}).items():
        lines += ["", f"Pass {key}: {penv['date']}, {penv['machine']}, CPU {penv['cpu']['model']} "
                      f"({' '.join(penv['cpu']['flags'])}), torch {penv['torch']}, hiap {penv['hiap']}."]  # fmt: skip
    lines += ["", "## Landing (built-in model, default recipe, seed 0)", "",
              "Every measuring pass is kept. From pass 2 the table's probes are timed again in the same rounds as the "
              "networks: 'drift' is that table's dense prediction over the training table's (how much the machine "
              "moved since), 'vs drifted target' the measured latency against the target scaled by it, 're-timed "
              "error' the re-timed table's prediction of the network against its measurement. Calls per network "
              "and rounds: pass 1 600 in 20 (table timed ~2 h before), pass 2 600 in 20, pass 3 1000 in 20, later "
              "passes as the row says.", "",
              "| pass | timed | calls / rounds | target ms | predicted ms | measured ms | measured vs target | drift "
              "| vs drifted target | re-timed error | MACs | val top-1 |", "|---" * 12 + "|"]  # fmt: skip
    for r in results["landing"]:
        extra = (f"{r['drift']:.3f} | {r['error_vs_drifted_target']:+.1%} | {r['retimed_prediction_error']:+.1%}"
                 if "drift" in r else "- | - | -")  # fmt: skip
        protocol = f"{r['calls']} / {r['rounds']}" if "rounds" in r else "-"
        lines.append(f"| {r.get('pass', 1)} | {r.get('timed', '-')} | {protocol} | {r['target_ms']:.4f} | "
                     f"{r['predicted_ms']:.4f} | {r['measured_ms']:.4f} | {r['error_vs_target']:+.1%} | {extra} | "
                     f"{r['mac_fraction']:.2f} | {r['val_acc']:.4f} |")  # fmt: skip
    for data, title in (("builtin", "built-in model, its held-out split"),
                        ("cifar10", "CIFAR-10 CPU setting, official test split")):  # fmt: skip
        rows = _latest(r for r in results["value"] if r.get("data", "builtin") == data)
        if not rows:
            continue
        lines += ["", f"## Value: latency-targeted vs MAC-targeted at equal measured latency ({title})", "",
                  f"Measuring pass {rows[0].get('pass', 1)} ({rows[0].get('timed', '-')}, "
                  f"{rows[0].get('calls', 600)} calls per network in {rows[0].get('rounds', 20)} rounds); top-1 does "
                  "not change between passes, the latencies of every pass are in the JSON.", "",
                  "| seed | MAC run: ms / top-1 / MACs | latency run: ms / top-1 / MACs | top-1 difference (pp) |",
                  "|---|---|---|---|"]  # fmt: skip
        for r in rows:
            m, t = r["macs"], r["latency"]
            lines.append(f"| {r['seed']} | {m['measured_ms']:.4f} / {m['val_acc']:.4f} / {m['mac_fraction']:.2f} | "
                         f"{t['measured_ms']:.4f} / {t['val_acc']:.4f} / {t['mac_fraction']:.2f} | "
                         f"{100 * (t['val_acc'] - m['val_acc']):+.2f} |")  # fmt: skip
        diffs = [100 * (r["latency"]["val_acc"] - r["macs"]["val_acc"]) for r in rows]
        ms = [r["latency"]["measured_ms"] / r["macs"]["measured_ms"] - 1 for r in rows]
        lines += ["", f"Mean top-1 difference (latency - MACs): {np.mean(diffs):+.2f} pp over {len(diffs)} seeds; "
                  f"the latency run's measured latency {np.mean(ms):+.1%} against the MAC run's (mean)."]  # fmt: skip
    (results_dir() / f"{RESULTS}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot(results)


def _latest(rows: Any) -> list[dict[str, Any]]:
    """The value records of the latest measuring pass that timed each seed, by seed."""
    by_seed: dict[int, dict[str, Any]] = {}
    for r in rows:
        if r["seed"] not in by_seed or r.get("pass", 1) >= by_seed[r["seed"]].get("pass", 1):
            by_seed[r["seed"]] = r
    return [by_seed[s] for s in sorted(by_seed)]


def _plot(results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, *value_axes) = plt.subplots(1, 3, figsize=(15, 4.2))
    for name in GEOMETRIES:
        rows = [r for r in results["prediction"] if r["geometry"] == name]
        if rows:
            ax1.scatter([r["measured_ms"] for r in rows], [r["predicted_ms"] for r in rows], label=name)
    lim = max([r["measured_ms"] for r in results["prediction"]] or [1.0]) * 1.1
    ax1.plot([0.01, lim], [0.01, lim], color="gray", lw=0.8)
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.set_xlabel("measured ms")
    ax1.set_ylabel("predicted ms (table)")
    ax1.set_title("prediction")
    ax1.legend(fontsize=8)
    last = max((r.get("pass", 1) for r in results["landing"]), default=1)
    for ax, data, title in zip(value_axes, ("builtin", "cifar10"), ("built-in model", "CIFAR-10 CPU setting"),
                               strict=True):  # fmt: skip
        rows = _latest(r for r in results["value"] if r.get("data", "builtin") == data)
        for kind, marker in (("macs", "s"), ("latency", "o")):
            pts = [(r[kind]["measured_ms"], r[kind]["val_acc"]) for r in rows]
            if pts:
                ax.scatter(*zip(*pts, strict=True), marker=marker, label=f"{kind}-targeted (value runs)")
        landing = [r for r in results["landing"] if r.get("pass", 1) == last] if data == "builtin" else []
        if landing:
            ax.scatter([r["measured_ms"] for r in landing], [r["val_acc"] for r in landing], marker="^",
                       label="latency-targeted (landing runs)")  # fmt: skip
        ax.set_xlabel("measured ms (ORT CPU, batch 1)")
        ax.set_ylabel("top-1")
        ax.set_title(f"{title}: accuracy vs measured latency")
        if rows or landing:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(results_dir() / f"{RESULTS}.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("prediction", "training", "cifar", "measure", "report", "all"),
                        default="all")  # fmt: skip
    parser.add_argument("--data", type=Path, default=CIFAR_ARCHIVE, help="cifar: the CIFAR-10 archive or root")
    parser.add_argument("--repeat", type=int, default=1, help="prediction: time the structures again (pass 2, 3..)")
    parser.add_argument("--geometry", nargs="+", choices=tuple(GEOMETRIES), help="prediction: only these")
    args = parser.parse_args()
    torch.set_num_threads(2)
    CACHE.mkdir(parents=True, exist_ok=True)
    results = _load()
    if args.part in ("prediction", "all"):
        part_prediction(results, args.repeat, args.geometry)
    if args.part in ("training", "all"):
        part_training(results)
    if args.part in ("cifar", "all"):
        part_cifar(args.data)
    if args.part in ("measure", "all"):
        part_measure(results)
    part_report(results)


if __name__ == "__main__":
    main()
