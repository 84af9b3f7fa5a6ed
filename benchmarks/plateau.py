"""The discriminating CIFAR-10 setting: the CPU geometry's dense start trained to its plateau, then every method at
budgets where pruning costs accuracy.

    python benchmarks/plateau.py --part dense [--data ARCHIVE_OR_ROOT] [--cache DIR]   # resumable, hours
    python benchmarks/plateau.py --part status                                          # the curve so far
    python benchmarks/plateau.py --part compare [--split test|search] [--budgets ...] [--seeds 0 1 2] [--methods ...]
    python benchmarks/plateau.py --part latency [--split test] [--rounds 20]           # ORT ms, on a quiet machine
    python benchmarks/plateau.py --part report                                          # tables from the runs
    python benchmarks/plateau.py --part oneshot [--split search] [--budgets ...]         # compensation, no fine-tuning

`--part dense` trains the start of cifar10.py's 'plateau' setting (a 150-epoch cosine at batch 256 on the 45,000
training images, validated every epoch on the 5,000 carved from them) in `--cache`, one checkpoint per epoch, and
resumes where a previous sitting stopped. Every finished epoch is mirrored into `results/plateau_dense/` (the
curve, and the resume state: weights, AdamW moments and schedule position, ~15 MB), so a later sitting on a fresh
machine resumes from the committed state instead of epoch 0. When the cosine has run to its end the start's weights
(`dense-plateau.safetensors`, its sha256 in `dense-plateau.json`) are written there, and the resume state is
removed.

The plateau rule: the last fifth of the epochs gains < 0.3 pp on the carved split (`status` reports it).

`--part compare` runs every method x budget x seed from that start as cifar10.py does (same epochs x images, same KD
from the frozen start, peers at HiAP's exported MACs), each run appended to `results/plateau[-search].jsonl` as it
finishes and skipped on a rerun, with the run's per-image correctness on the evaluated split; `--part report`
writes `results/plateau[-search].{json,md,png}`: every run, the dense-control minus uniform gap per budget (where a
method can win at all), and HiAP against the best peer per budget, paired on the same images (paired.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

import cifar10
import numpy as np
import torch
from common import environment, load_runs, onnx_latency, results_dir
from paired import paired, unpack
from rich.console import Console

from hiap.checkpoint import export_weights
from hiap.config import TrainConfig
from hiap.data import Augment, ImageFolderData
from hiap.models import create_model, data_config, load_pretrained
from hiap.train import Trainer

SETTING = "plateau"
PLATEAU_GAIN_PP = 0.3  # the last fifth of the epochs may gain less than this on the carved split
RESUME_FILES = ("checkpoint.safetensors", "metrics.jsonl", "config.yaml")
BUDGETS = [0.67, 0.5, 0.33, 0.2, 0.1, 0.05]
LATENCY_CALLS = 50  # consecutive calls of one network per latency round
METHODS = ["hiap", "uniform", "l1-ffn", "torch-pruning", "dense"]
# Variants run by name with --methods (cifar10.VARIANTS): compensated (the removed units' mean output folded into the
# next bias) and HiAP's micro gates started in output-variance order.
VARIANTS = [
    "hiap-blocks",
    "hiap-comp",
    "uniform-comp",
    "hiap-var",
    "hiap-var-comp",
    "hiap-keepffn",
    "hiap-lowmacro",
    "hiap-s30",
    "hiap-keepffn-f02",
]
PEERS = ("uniform", "uniform-comp", "l1-ffn", "torch-pruning")
# A peer whose network stays more than this factor above a budget is at its floor there: out of reach, not a rival.
FLOOR_SLACK = 1.1
# The two recipes the default is made of, each reported with the same paired statistics against the best peer: the
# previous default (whole FFN blocks removable at every budget) and FFN blocks only narrowed (neuron floor 2 %). The
# carved split chose the first at 0.33 and the second at 0.2 and 0.1 (hiap.config narrow_ffn_below); the carved
# split's runs predate that rule and are under these two names.
COMPONENTS = ("hiap-blocks", "hiap-keepffn-f02")


def load_start(weights: Path) -> torch.nn.Module:
    """The plateau start, in eval mode."""
    spec = cifar10.SETTINGS[SETTING]
    dense = create_model(spec["model"], num_classes=10, model_kwargs=spec["model_kwargs"]).eval()
    load_pretrained(dense, spec["model"], str(weights))
    return dense


def committed_dir() -> Path:
    return results_dir() / "plateau_dense"


def dense_config(roots: dict[str, Path], run: Path) -> TrainConfig:
    spec = cifar10.SETTINGS[SETTING]
    return TrainConfig(model=spec["model"], model_kwargs=spec["model_kwargs"], data=str(roots["search"]),
                       pretrained="none", dense=True, out=str(run), workers=0, seed=0, **spec["dense"])  # fmt: skip


def curve(metrics: Path) -> list[dict[str, Any]]:
    """Epoch, carved-split top-1 (%), training loss and seconds of every finished epoch."""
    if not metrics.is_file():
        return []
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return [{"epoch": r["epoch"], "val_top1": 100 * r["val_acc"], "loss": r["loss"], "lr": r["lr"],
             "epoch_seconds": r["epoch_seconds"]} for r in rows]  # fmt: skip


def plateau_gain(points: list[dict[str, Any]], epochs: int) -> float | None:
    """Top-1 gained over the last fifth of a finished run (pp); None while it runs."""
    if len(points) < epochs:
        return None
    fifth = epochs // 5
    return points[-1]["val_top1"] - points[-1 - fifth]["val_top1"]


def seed_from_committed(run: Path) -> None:
    """A fresh cache resumes from the committed resume state, when one is there and the cache has none."""
    resume = committed_dir() / "resume"
    if (run / "checkpoint.safetensors").is_file() or not (resume / "checkpoint.safetensors").is_file():
        return
    run.mkdir(parents=True, exist_ok=True)
    for name in RESUME_FILES:
        shutil.copy(resume / name, run / name)


def mirror(run: Path) -> None:
    """Copy the run's resume state and curve into results/ (after every epoch), so a sitting can end any time."""
    resume = committed_dir() / "resume"
    resume.mkdir(parents=True, exist_ok=True)
    for name in RESUME_FILES:
        if (run / name).is_file():
            tmp = resume / f".{name}.tmp"
            shutil.copy(run / name, tmp)
            tmp.replace(resume / name)


class MirroredTrainer(Trainer):
    """hiap train's trainer that mirrors each epoch's resume state into results/ once the epoch is written."""

    def _write_epoch(self, record: dict[str, Any], epoch: int, val_acc: float) -> None:
        super()._write_epoch(record, epoch, val_acc)
        mirror(self.paths.root)
        print(f"epoch {epoch}/{self.cfg.epochs}: carved top-1 {100 * val_acc:.2f} %, loss {record['loss']:.4f}, "
              f"{record['epoch_seconds']:.0f} s", flush=True)  # fmt: skip


def train_dense(roots: dict[str, Path], cache: Path) -> dict[str, Any]:
    """Run (or resume) the cosine to its end; write the start and its record when done."""
    run = cache / f"dense-{SETTING}-run"
    seed_from_committed(run)
    cfg = dense_config(roots, run)
    MirroredTrainer(cfg, Console(quiet=True), resume=(run / "checkpoint.safetensors").is_file()).run()
    return finish(run, cfg)


def finish(run: Path, cfg: TrainConfig) -> dict[str, Any]:
    out = committed_dir()
    weights = out / f"dense-{SETTING}.safetensors"
    export_weights(run / "checkpoint.safetensors", weights)
    points = curve(run / "metrics.jsonl")
    info = {"config": cfg.to_dict(), "curve": points, "val_acc_carved": points[-1]["val_top1"] / 100,
            "plateau_gain_pp": plateau_gain(points, cfg.epochs), "plateau_rule_pp": PLATEAU_GAIN_PP,
            "train_seconds": sum(p["epoch_seconds"] for p in points), "threads": torch.get_num_threads(),
            "environment": environment(f"CIFAR-10 plateau dense start ({cifar10.SETTINGS[SETTING]['model_kwargs']})"),
            "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}  # fmt: skip
    (out / f"dense-{SETTING}.json").write_text(json.dumps(info, indent=1) + "\n")
    shutil.rmtree(out / "resume", ignore_errors=True)
    return info


def compare(args: argparse.Namespace, roots: dict[str, Path]) -> None:
    """Every method x budget x seed from the plateau start, appended run by run (a rerun skips what is done)."""
    weights = committed_dir() / f"dense-{SETTING}.safetensors"
    if not weights.is_file():
        sys.exit(f"No plateau start at '{weights}': run --part dense to the end of its cosine first.")
    dense = load_start(weights)
    data = ImageFolderData(roots[args.split], data_config(dense), workers=0, augment=Augment())
    runs_path = results_dir() / f"{run_name(args.split)}.jsonl"
    runs = load_runs(runs_path)
    onnx_dir = args.cache / f"onnx-{run_name(args.split)}"
    onnx_dir.mkdir(parents=True, exist_ok=True)
    ctx = {"setting": SETTING, "root": roots[args.split], "weights": weights, "dense": dense, "data": data,
           "runs": runs, "onnx_dir": onnx_dir, "split": args.split, "matched_to": "hiap",
           "per_image": True}  # fmt: skip
    for seed in args.seeds:
        for budget in args.budgets:
            for method in args.methods:  # HiAP first: the peers are pruned to its exported MACs
                b = 1.0 if method == "dense" else budget
                if any(r["method"] == method and r["budget"] == b and r["seed"] == seed for r in runs):
                    continue
                if at_floor(runs, method, b, seed):
                    continue
                run = cifar10.run_one(method, b, seed, ctx)
                runs.append(run)
                with open(runs_path, "a") as f:
                    f.write(json.dumps(run) + "\n")
                print(json.dumps({k: v for k, v in run.items() if k != "correct"}), flush=True)


def at_floor(runs: list[dict[str, Any]], method: str, budget: float, seed: int) -> bool:
    """A peer that already stopped above a larger budget (by more than 10 %: l1 FFN-only cannot cut attention,
    Torch-Pruning's ratio search ends at 0.95) would train its floor network again at this one: skipped, and reported
    as out of its reach."""
    return method in PEERS and any(r["method"] == method and r["seed"] == seed and budget < r["budget"]
                                   and r["macs_fraction"] > FLOOR_SLACK * r["budget"] for r in runs)  # fmt: skip


def oneshot(args: argparse.Namespace, roots: dict[str, Path]) -> list[str]:
    """What compensation does before any fine-tuning: each peer's cut of the plateau start at each budget, evaluated
    on the split's validation images as cut and with the removed units' means folded in (peers.compensate_cut)."""
    from peers import evaluate, example_input, macs_of, peer_network

    weights = committed_dir() / f"dense-{SETTING}.safetensors"
    dense = load_start(weights)
    data = ImageFolderData(roots[args.split], data_config(dense), workers=0, augment=Augment())
    dense_macs = macs_of(dense, example_input(dense))
    rows = [{"method": "dense", "budget": 1.0, "top1": 100 * evaluate(dense, data), "mac_fraction": 1.0}]
    for method in ("uniform", "l1-ffn"):
        for budget in args.budgets:
            for comp in ("", "-comp"):
                model, _ = peer_network(dense, method + comp, budget * dense_macs, data, seed=0)
                rows.append({"method": method + comp, "budget": budget, "top1": 100 * evaluate(model, data),
                             "mac_fraction": macs_of(model, example_input(dense)) / dense_macs})  # fmt: skip
    env = environment(f"CIFAR-10 plateau start, cut without fine-tuning, split {args.split}")
    name = f"{run_name(args.split)}-oneshot"
    (results_dir() / f"{name}.json").write_text(json.dumps({"environment": env, "runs": rows}, indent=1) + "\n")
    lines = [f"# The plateau start cut without fine-tuning, with and without compensation ({args.split} split)", "",
             f"{env['machine']}, {env['cpu']['model']}, torch {env['torch']}, hiap {env['hiap']}, {env['date']}; "
             f"dense start {rows[0]['top1']:.2f} %.", "",
             "| method | budget | MACs (of dense) | top-1 % as cut | with the means folded in | gain (pp) |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for plain, comp in zip(rows[1::2], rows[2::2], strict=True):
        lines.append(f"| {plain['method']} | {plain['budget']} | {plain['mac_fraction']:.3f} | {plain['top1']:.2f} | "
                     f"{comp['top1']:.2f} | {comp['top1'] - plain['top1']:+.2f} |")  # fmt: skip
    (results_dir() / f"{name}.md").write_text("\n".join(lines) + "\n")
    return lines


def latency(args: argparse.Namespace) -> dict[str, Any]:
    """ORT batch-1 latency of every run's exported network and the dense start, alternating in one process (take it
    when nothing else runs); written beside the runs for the report's latency columns and plot."""
    from peers import example_input

    from hiap.export.onnx_io import torch2onnx

    dense = load_start(committed_dir() / f"dense-{SETTING}.safetensors")
    onnx_dir = args.cache / f"onnx-{run_name(args.split)}"
    start = onnx_dir / "dense-start.onnx"
    chw = tuple(example_input(dense).shape[1:])
    torch2onnx(dense, chw, start)
    runs = [r for r in load_runs(results_dir() / f"{run_name(args.split)}.jsonl") if r["method"] != "dense"]
    missing = [r["onnx"] for r in runs if not (onnx_dir / r["onnx"]).is_file()]
    if missing:
        sys.exit(f"{len(missing)} runs' networks are not in '{onnx_dir}' (e.g. {missing[0]}): rerun them there.")
    paths = {"dense start": start} | {r["onnx"]: onnx_dir / r["onnx"] for r in runs}
    ms = {k: v.p50 for k, v in onnx_latency(paths, args.rounds, LATENCY_CALLS).items()}
    env = environment(f"ORT batch-1 latency of the plateau runs' networks ({args.split} split), {args.rounds} "
                      f"rounds x {LATENCY_CALLS} calls alternating, p50 of every call (hiap bench's runner and "
                      "harness, 2 intra-op threads, spinning off)")  # fmt: skip
    env["onnxruntime"] = __import__("onnxruntime").__version__
    body = {"environment": env, "dense_ms": ms.pop("dense start"), "ms": ms}
    (results_dir() / f"{run_name(args.split)}-latency.json").write_text(json.dumps(body, indent=1) + "\n")
    return body


def run_name(split: str) -> str:
    return "plateau" + ("" if split == "test" else "-search")


def _versus(runs: list[dict[str, Any]], method: str, budgets: list[float], dense_mean: float | None) -> list[str]:
    """Per budget: the dense-minus-uniform gap, `method`'s mean, the best peer's, and their paired statistics."""
    lines = [f"| budget | dense control | uniform | dense - uniform (pp) | {method} | best peer | MACs: it / peer | "
             f"{method} - best peer (pp) | paired 95 % CI, pooled (pp) | only it / only peer | McNemar p |",
             "|---" * 11 + "|"]  # fmt: skip
    for budget in budgets:
        by = {m: [r for r in runs if r["method"] == m and r["budget"] == budget] for m in METHODS + VARIANTS
              if m != "dense"}  # fmt: skip
        mean = {m: statistics.mean(r["val_top1"] for r in rs) for m, rs in by.items() if rs}
        macs = {m: statistics.mean(r["macs_fraction"] for r in rs) for m, rs in by.items() if rs}
        gap = f"{dense_mean - mean['uniform']:+.2f}" if dense_mean is not None and "uniform" in mean else "-"
        peers = {m: v for m, v in mean.items() if m in PEERS and macs[m] <= FLOOR_SLACK * budget}
        best = max(peers, key=peers.get) if peers else None
        cells = [f"{budget}", f"{dense_mean:.2f}" if dense_mean is not None else "-",
                 f"{mean['uniform']:.2f}" if "uniform" in mean else "-", gap,
                 f"{mean[method]:.2f}" if method in mean else "-",
                 f"{best} {peers[best]:.2f}" if best else "-",
                 f"{macs[method]:.3f} / {macs[best]:.3f}" if best and method in macs else "-"]  # fmt: skip
        stats = paired_stats(by.get(method, []), by.get(best, []) if best else [])
        if stats is None:
            cells += ["-", "-", "-", "-"]
        else:
            cells += [f"{stats.diff_pp:+.2f}", f"[{stats.ci95_pp[0]:+.2f}, {stats.ci95_pp[1]:+.2f}]",
                      f"{stats.only_a} / {stats.only_b}", f"{stats.mcnemar_p:.3g}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def report(split: str) -> list[str]:
    """Tables of every run: per budget the dense-minus-uniform gap, each method's mean, HiAP minus the best peer
    with the paired statistics on the same images (per seed, and pooled over seeds)."""
    name = run_name(split)
    runs = load_runs(results_dir() / f"{name}.jsonl")
    dense = [r["val_top1"] for r in runs if r["method"] == "dense"]
    dense_mean = statistics.mean(dense) if dense else None
    budgets = sorted({r["budget"] for r in runs if r["method"] != "dense"}, reverse=True)
    lines: list[str] = []
    for method in ("hiap", *COMPONENTS):
        if not any(r["method"] == method for r in runs):
            continue
        if lines:
            lines += ["", f"The same for `{method}`:", ""]
        lines += _versus(runs, method, budgets, dense_mean)
    timing_path = results_dir() / f"{name}-latency.json"
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else None
    header = "| method | " + " | ".join(str(b) for b in budgets) + " |"
    lines += ["", "Every method's mean per budget (+- sd over its seeds, n seeds):", "", header,
              "|---" * (len(budgets) + 1) + "|"]  # fmt: skip
    for method in METHODS + VARIANTS:
        cells = []
        for budget in [1.0] * len(budgets) if method == "dense" else budgets:
            accs = [r["val_top1"] for r in runs if r["method"] == method and r["budget"] == budget]
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            cells.append(f"{statistics.mean(accs):.2f} +- {sd:.2f} ({len(accs)})" if accs else "-")
        if any(c != "-" for c in cells):
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    if timing is not None:
        where = timing["environment"]
        lines += ["", f"ORT batch-1 latency, mean over seeds (ms; the dense start {timing['dense_ms']:.3f} ms; "
                  f"{where['cpu']['model']}, {where['threads']} threads, onnxruntime {where['onnxruntime']}):", "",
                  header, "|---" * (len(budgets) + 1) + "|"]  # fmt: skip
        for method in METHODS + VARIANTS:
            cells = []
            for budget in budgets:
                ms = [timing["ms"][r["onnx"]] for r in runs if r["method"] == method and r["budget"] == budget
                      and r.get("onnx") in timing["ms"]]  # fmt: skip
                cells.append(f"{statistics.mean(ms):.3f}" if ms else "-")
            if any(c != "-" for c in cells):
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", "| method | budget | seed | top-1 % | MACs (of dense) | ORT ms |", "|---|---|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: (-r["budget"], r["method"], r["seed"])):
        ms = timing["ms"].get(r.get("onnx")) if timing else None
        lines.append(f"| {r['method']} | {r['budget']} | {r['seed']} | {r['val_top1']:.2f} | "
                     f"{r['macs_fraction']:.3f} | {f'{ms:.3f}' if ms is not None else '-'} |")  # fmt: skip
    env = environment(f"CIFAR-10 plateau setting ({cifar10.SETTINGS[SETTING]['model_kwargs']}), split {split}")
    out = results_dir()
    rows = [{k: v for k, v in r.items() if k != "correct"} | {"top1": r["val_top1"], "mac_fraction": r["macs_fraction"]}
            for r in runs]  # fmt: skip
    body = {"environment": env, "runs": rows}
    (out / f"{name}.json").write_text(json.dumps(body, indent=1) + "\n")
    head = [f"# Pruning quality from the plateau start (CIFAR-10, {split} split)", "",
            f"{env['machine']}, {env['cpu']['model']} ({' '.join(env['cpu']['flags'])}), {env['threads']} threads, "
            f"torch {env['torch']}, hiap {env['hiap']}, {env['date']}.", ""]  # fmt: skip
    (out / f"{name}.md").write_text("\n".join(head + lines) + "\n")
    plot_runs(runs, dense_mean, timing, out / f"{name}.png", split)
    return head + lines


def plot_runs(runs: list[dict[str, Any]], dense_mean: float | None, timing: dict[str, Any] | None, path: Path,
              split: str) -> None:  # fmt: skip
    """Top-1 against MACs, and against measured latency where it was timed (a second file, `-latency.png`)."""
    from peers import plot

    pruned = [r for r in runs if r["method"] != "dense"]
    title = f"CIFAR-10 plateau setting, {split} split: dots are seeds"
    ylabel = f"top-1 % ({'the 10,000 test images' if split == 'test' else 'carved validation'})"
    plot([(r["method"], r["budget"], r["macs_fraction"], r["val_top1"]) for r in pruned], dense_mean, path, title,
         ylabel)  # fmt: skip
    if timing is not None:
        points = [(r["method"], r["budget"], timing["ms"][r["onnx"]] / timing["dense_ms"], r["val_top1"])
                  for r in pruned if r.get("onnx") in timing["ms"]]  # fmt: skip
        plot(points, dense_mean, path.with_name(path.stem + "-latency.png"), title, ylabel,
             "ORT batch-1 latency (fraction of the dense start's)")  # fmt: skip


def paired_stats(hiap: list[dict[str, Any]], peer: list[dict[str, Any]]) -> Any:
    """HiAP against a peer on the seeds both have, their per-image correctness concatenated (pooled)."""
    seeds = sorted({r["seed"] for r in hiap} & {r["seed"] for r in peer})
    pairs = [(next(r for r in hiap if r["seed"] == s), next(r for r in peer if r["seed"] == s)) for s in seeds]
    pairs = [(a, b) for a, b in pairs if "correct" in a and "correct" in b]
    if not pairs:
        return None
    a = np.concatenate([unpack(x["correct"], x["images"]) for x, _ in pairs])
    b = np.concatenate([unpack(y["correct"], y["images"]) for _, y in pairs])
    return paired(a, b)


def status(cache: Path) -> None:
    run = cache / f"dense-{SETTING}-run"
    source = run / "metrics.jsonl" if (run / "metrics.jsonl").is_file() else committed_dir() / "resume/metrics.jsonl"
    points = curve(source)
    epochs = cifar10.SETTINGS[SETTING]["dense"]["epochs"]
    for p in points:
        print(f"{p['epoch']:4d}  {p['val_top1']:6.2f} %  loss {p['loss']:.4f}  lr {p['lr']:.2e}")
    gain = plateau_gain(points, epochs)
    print(f"{len(points)} of {epochs} epochs; " + ("running" if gain is None else
          f"last fifth gained {gain:+.2f} pp (rule < {PLATEAU_GAIN_PP})"))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["dense", "status", "compare", "report", "oneshot", "latency"],
                        required=True)  # fmt: skip
    parser.add_argument("--rounds", type=int, default=20, help="latency rounds (every network timed once per round)")
    parser.add_argument("--split", choices=["test", "search"], default="test")
    parser.add_argument("--budgets", type=float, nargs="+", default=BUDGETS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS + VARIANTS)
    parser.add_argument("--data", type=Path, default=cifar10.DEFAULT_ARCHIVE, help="CIFAR-10 archive or root")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "hiap" / "cifar10")
    args = parser.parse_args()
    if args.part == "status":
        status(args.cache)
        return
    if args.part == "report":
        print("\n".join(report(args.split)))
        return
    if args.part == "latency":
        body = latency(args)
        print(f"timed {len(body['ms'])} networks; dense start {body['dense_ms']:.3f} ms")
        print("\n".join(report(args.split)))
        return
    if not args.data.exists():
        sys.exit(f"--data '{args.data}' does not exist: give the CIFAR-10 archive or an unpacked root.")
    roots = cifar10.prepare(args.data, args.cache)
    if args.part == "oneshot":
        print("\n".join(oneshot(args, roots)))
        return
    if args.part == "compare":
        compare(args, roots)
        print("\n".join(report(args.split)))
        return
    info = train_dense(roots, args.cache)
    print(json.dumps({k: v for k, v in info.items() if k != "curve"}, indent=1))


if __name__ == "__main__":
    main()
