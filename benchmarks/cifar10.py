"""Pruning quality on CIFAR-10 against every peer, from one dense start, at equal MACs, epochs and distillation.

    python benchmarks/cifar10.py [--data ARCHIVE_OR_ROOT] [--setting cpu|paper] [--split test|search]
                                 [--seeds 0 1 2] [--budgets 0.67 0.5] [--methods ...]

Resumable: every finished run is appended to `results/cifar10[-SETTING][-search].jsonl` and skipped on a rerun, so a
long comparison can be spread over several sittings; the tables, the plot and the latencies are rebuilt from that
file at the end of every invocation (`--report-only` rebuilds them without training).

Data (never committed): CIFAR-10 as an ImageFolder archive (`../shared/data/cifar10/cifar10-jpeg.tar.gz`) or an
unpacked root with train/ and val/. It is unpacked once into `--cache` and two ImageFolder roots of symbolic links are
made there:
- `search/`: train = the training images minus the last 500 per class (45,000), val = those 5,000 carved images.
  Every choice (recipes, hyperparameters, method variants) is made on this split (`--split search`);
- `test/`: train = the same 45,000, val = CIFAR-10's official test split (10,000). Reported numbers come from here
  (`--split test`, the default), once per seed, after the choices are frozen.

Protocol: one dense start per setting, trained from scratch on the 45,000 (cached in `--cache`; its cost is printed and
recorded). Every method starts from it, trains for the same epochs x images (the same shuffled batches per seed), with
the same recipe and KD from the frozen dense start (AdamW, cosine, label smoothing 0.1, alpha 0.7, T 4); peers are
pruned to the MACs of HiAP's exported (align-8) network for the same budget and seed, counted by torch's
FlopCounterMode. Methods: hiap (`hiap train` at the budget), torch-pruning (Taylor, global, heads + neurons),
uniform l1, l1 FFN-only, dense control (the start fine-tuned as long). Pruning code of the peers: benchmarks/peers.py.
Latency: ONNX Runtime at batch 1 of every run's exported model, all alternating in one process, after training.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import shutil
import statistics
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import environment, load_runs, onnx_latency, results_dir
from peers import example_input, finetune, macs_of, peer_network, plot
from rich.console import Console

from hiap.config import TrainConfig
from hiap.data import Augment, ImageFolderData
from hiap.models import create_model, data_config, load_pretrained
from hiap.train import Trainer

REPO = Path(__file__).resolve().parent.parent
DEFAULT_ARCHIVE = REPO.parent / "shared" / "data" / "cifar10" / "cifar10-jpeg.tar.gz"
CARVE_PER_CLASS = 500
COMMITTED_DENSE = Path(__file__).resolve().parent / "results" / "cifar10_dense"

# Model geometry per setting. 'paper' is the HiAP paper's controlled CIFAR-10 setting (6 blocks, width 192, 3 heads,
# patch 4: 65 tokens, ~175 M MACs); 'cpu' keeps its depth but uses patch 8 (17 tokens) and width 128 / 4 heads, so the
# whole 3-seed comparison fits about two hours on 2 CPU cores (8x fewer MACs).
SETTINGS: dict[str, dict[str, Any]] = {
    "cpu": {
        "model": "vit_tiny_patch16_224",
        "model_kwargs": {"img_size": 32, "patch_size": 8, "depth": 6, "embed_dim": 128, "num_heads": 4},
        "dense": {"epochs": 15, "lr": 1e-3, "warmup_epochs": 1.0, "batch_size": 128},
        "prune": {"epochs": 2, "batch_size": 128},
    },
    # 'cpu' geometry, the dense start trained to its plateau (benchmarks/plateau.py): a cosine over 150 epochs at
    # batch 256 (the fastest fp32 configuration of results/throughput.md: 761 images/s on 2 cores, ~59 s an epoch)
    "plateau": {
        "model": "vit_tiny_patch16_224",
        "model_kwargs": {"img_size": 32, "patch_size": 8, "depth": 6, "embed_dim": 128, "num_heads": 4},
        "dense": {"epochs": 150, "lr": 1e-3, "warmup_epochs": 5.0, "batch_size": 256},
        "prune": {"epochs": 2, "batch_size": 128},
    },
    "paper": {
        "model": "vit_tiny_patch16_224",
        "model_kwargs": {"img_size": 32, "patch_size": 4, "depth": 6},
        "dense": {"epochs": 100, "lr": 1e-3, "warmup_epochs": 5.0, "batch_size": 128},
        "prune": {"epochs": 30, "batch_size": 128},
    },
}
# HiAP variants measured on the search split (benchmarks/results/cifar10_ablation.md): TrainConfig overrides of
# the default recipe. 'hiap' is the default; the others are named after what they change. The variants measured
# before the short search became the default are pinned to the recipe they ran with (WHOLE_RUN).
WHOLE_RUN: dict[str, Any] = {"search_fraction": 1.0, "adapt_from": "gated", "value_align": 0, "narrow_ffn_below": 0.0}
BLOCKS: dict[str, Any] = {"narrow_ffn_below": 0.0}
VARIANTS: dict[str, dict[str, Any]] = {
    "hiap": {},
    # Variants measured before FFN blocks were kept at tight budgets (narrow_ffn_below) are pinned to the recipe they
    # ran with (BLOCKS: whole FFN blocks removable at every budget).
    # the previous default: FFN blocks removable at every budget
    "hiap-blocks": BLOCKS,
    # ... and each removed unit's mean output folded into the next bias when the search ends
    "hiap-comp": BLOCKS | {"compensate": True},
    # ... with the micro gates started in order of each unit's output variance instead of l1 magnitude
    "hiap-var": BLOCKS | {"importance": "variance"},
    "hiap-var-comp": BLOCKS | {"importance": "variance", "compensate": True},
    # FFN blocks never removed whole (their gates fixed open); and an eighth of the macro penalty: at 0.1 and 0.05 of
    # the MACs the previous default removes 5-6 of 6 FFN blocks on the plateau start
    "hiap-keepffn": {"ffn_block_gates": False},
    "hiap-lowmacro": BLOCKS | {"lambda_macro": 0.25},
    # FFN blocks never removed whole, and each kept FFN may narrow to 2 % of its neurons (the default floor of 10 %
    # bounds such a network at 0.107 of the plateau start's MACs, above 0.1 and 0.05): the default below 0.25
    "hiap-keepffn-f02": {"ffn_block_gates": False, "min_neuron_frac": 0.02},
    # the previous default with a search twice as long (30 % of the run): the allocation decided later
    "hiap-s30": BLOCKS | {"search_fraction": 0.3},
    # the previous default: the gates learn for the whole run and the final structure keeps the gated weights
    "hiap-whole-run": WHOLE_RUN,
    # gates learn in the first half, then the fixed structure trains on from the gated weights (measured with the
    # gates at gate_lr; they now move at gate_lr / search_fraction)
    "hiap-search50": WHOLE_RUN | {"search_fraction": 0.5},
    # the search in the first 30 % (gates 1/0.3x faster), no fill, then the fixed structure restarts from the dense
    # start's weights (kept units copied, fresh lr and AdamW state); with micro gates started in l1 order
    "hiap-s30-start": {"search_fraction": 0.3, "adapt_from": "start", "value_align": 0},
    "hiap-s30-start-l1": {"search_fraction": 0.3, "adapt_from": "start", "value_align": 0, "gate_init_importance": 1.0},
    "hiap-l1init": WHOLE_RUN | {"gate_init_importance": 1.0},  # micro-gate logits start ordered by l1 magnitude
    # ... and the macro penalty (heads, FFN blocks) an eighth of the default relative to the micro one (0.25:1
    # instead of 2:1), so the budget is met by narrowing widths before whole FFN blocks go
    "hiap-l1init-lowmacro": WHOLE_RUN | {"gate_init_importance": 1.0, "lambda_macro": 0.25},
    # ... and FFN blocks never removed (their gates fixed open): the budget is met by heads and widths alone
    "hiap-l1init-keepffn": WHOLE_RUN | {"gate_init_importance": 1.0, "ffn_block_gates": False},
    # ... and a pull towards the same kept fraction in every block (the allocation a uniform cut has)
    "hiap-l1init-even": WHOLE_RUN | {"gate_init_importance": 1.0, "even_allocation": 10.0},
    # ... and gates at 0.4x the default lr: decisions spread over more of the run, while the weights adapt
    "hiap-l1init-slowgates": WHOLE_RUN | {"gate_init_importance": 1.0, "gate_lr": 0.02},
}
PAPER = {  # HiAP paper, CIFAR-10, 6-block ViT-Tiny: (top-1 %, fraction of dense MACs)
    "dense": (90.50, 1.0),
    "hiap": {0.67: (87.56, 0.669), 0.5: (87.25, 0.501)},
    "l1-structured": {0.67: (87.15, 0.669), 0.5: (86.80, 0.501)},
    "uniform": {0.67: (86.63, 0.669)},
}


def prepare(data: Path, cache: Path) -> dict[str, Path]:
    """Unpack the archive (once) and build the search and test ImageFolder roots of symlinks."""
    raw = cache / "raw"
    if data.is_dir():
        raw = data
    elif not (raw / "train").is_dir():
        tmp = cache / "raw.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        with tarfile.open(data) as tar:
            tar.extractall(tmp, filter="data")
        tmp.rename(raw)
    roots = {"search": cache / "search", "test": cache / "test"}
    if all((r / "train").is_dir() and (r / "val").is_dir() for r in roots.values()):
        return roots
    for root in roots.values():
        shutil.rmtree(root, ignore_errors=True)
    for cls in sorted(p.name for p in (raw / "train").iterdir() if p.is_dir()):
        files = sorted((raw / "train" / cls).iterdir())
        keep, carved = files[:-CARVE_PER_CLASS], files[-CARVE_PER_CLASS:]
        tests = sorted((raw / "val" / cls).iterdir())
        for root, split, group in ((roots["search"], "train", keep), (roots["search"], "val", carved),
                                   (roots["test"], "train", keep), (roots["test"], "val", tests)):  # fmt: skip
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for f in group:
                (d / f.name).symlink_to(f.resolve())
    return roots


def dense_start(setting: str, roots: dict[str, Path], cache: Path) -> tuple[Path, dict[str, Any]]:
    """The dense start of a setting: trained once from scratch on the 45,000 images, validated on the carved 5,000."""
    from hiap.checkpoint import export_weights

    spec = SETTINGS[setting]
    # A start under 10 MB is committed (results/cifar10_dense/), so a later sitting resumes without retraining it.
    for folder in (COMMITTED_DENSE, cache):
        weights, info_path = folder / f"dense-{setting}.safetensors", folder / f"dense-{setting}.json"
        if weights.is_file() and info_path.is_file():
            return weights, json.loads(info_path.read_text())
    weights, info_path = cache / f"dense-{setting}.safetensors", cache / f"dense-{setting}.json"
    run = cache / f"dense-{setting}-run"
    resume = (run / "checkpoint.safetensors").is_file()
    cfg = TrainConfig(model=spec["model"], model_kwargs=spec["model_kwargs"], data=str(roots["search"]),
                      pretrained="none", dense=True, out=str(run), workers=0, **spec["dense"])  # fmt: skip
    t0 = time.perf_counter()
    summary = Trainer(cfg, Console(), resume=resume).run()
    curve = [json.loads(line)["val_acc"] for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    info = {"config": cfg.to_dict(), "seconds_this_sitting": time.perf_counter() - t0,
            "train_seconds": summary["seconds"], "val_acc_carved": summary["val_acc"], "val_curve": curve,
            "threads": torch.get_num_threads()}  # fmt: skip
    export_weights(run / "checkpoint.safetensors", weights)
    info_path.write_text(json.dumps(info, indent=1))
    if weights.stat().st_size < 10e6:
        COMMITTED_DENSE.mkdir(parents=True, exist_ok=True)
        shutil.copy(weights, COMMITTED_DENSE / weights.name)
        shutil.copy(info_path, COMMITTED_DENSE / info_path.name)
    return weights, info


def hiap_run(setting: str, variant: str, root: Path, weights: Path, budget: float, seed: int,
             tmp: Path) -> tuple[float, Any, dict[str, Any]]:  # fmt: skip
    import hiap.api as hp

    spec = SETTINGS[setting]
    cfg = TrainConfig(model=spec["model"], model_kwargs=spec["model_kwargs"], data=str(root), pretrained=str(weights),
                      target_macs=str(budget), seed=seed, out=str(tmp / "run"), workers=0,
                      **spec["prune"] | VARIANTS[variant])  # fmt: skip
    trainer = Trainer(cfg, Console(quiet=True))
    summary = trainer.run()
    hp.materialize(trainer.pruner, align=8)  # the exported network: value widths padded to 8, as the export does
    compact = trainer.pruner.model.eval()
    keys = ("kept_heads", "kept_ffn", "kept_neurons", "target_error")
    return summary["val_acc"], compact, {k: summary[k] for k in keys}


def run_one(method: str, budget: float, seed: int, ctx: dict[str, Any]) -> dict[str, Any]:
    """Train one method at one budget and seed; export its network to ONNX in the cache for the latency phase."""
    from hiap.export.onnx_io import torch2onnx

    setting, root, weights, dense, data = ctx["setting"], ctx["root"], ctx["weights"], ctx["dense"], ctx["data"]
    example = example_input(dense)
    dense_macs = macs_of(dense, example)
    t0 = time.perf_counter()
    structure: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if method in VARIANTS:
            acc, model, structure = hiap_run(setting, method, root, weights, budget, seed, Path(tmp))
            ratio = None
        else:
            hiap = [r for r in ctx["runs"]
                    if r["method"] == ctx["matched_to"] and r["budget"] == budget and r["seed"] == seed]  # fmt: skip
            target = hiap[0]["macs"] if hiap else budget * dense_macs
            teacher = copy.deepcopy(dense).eval().requires_grad_(False)
            model, ratio = peer_network(dense, method, target, data, seed)
            acc = finetune(model, teacher, data, SETTINGS[setting]["prune"]["epochs"], seed)
    macs = macs_of(model.eval(), example)
    if ctx.get("per_image"):  # which test images the network gets right, for paired comparisons (paired.py)
        from paired import pack

        hits = correctness(model, data)
        structure |= {"correct": pack(hits), "images": len(hits)}
    onnx_path = ctx["onnx_dir"] / f"{method}-{budget}-{seed}.onnx"
    torch2onnx(model.eval(), tuple(example.shape[1:]), onnx_path)
    return {"method": method, "budget": budget, "seed": seed, "val_top1": 100 * acc, "macs": int(macs),
            "macs_fraction": macs / dense_macs, "params": int(sum(p.numel() for p in model.parameters())),
            "prune_ratio": ratio, "seconds": time.perf_counter() - t0, "ort_ms": None, "onnx": onnx_path.name,
            "split": ctx["split"], "setting": setting} | structure  # fmt: skip


@torch.no_grad()
def correctness(model: torch.nn.Module, data: Any) -> Any:
    """Per validation image (in the data's fixed order): the network's top-1 is its label."""
    import numpy as np

    model.eval()
    device = next(model.parameters()).device
    hits = [(model(x.to(device)).argmax(-1).cpu() == y).numpy() for x, y in data.val_batches(256)]
    return np.concatenate(hits)


def measure_latency(runs: list[dict[str, Any]], onnx_dir: Path, dense: Any, rounds: int, iters: int) -> float:
    """ORT batch-1 latency of every run's model (and the dense start), alternating in one process."""
    from hiap.export.onnx_io import torch2onnx

    start = onnx_dir / "dense-start.onnx"
    torch2onnx(dense.eval(), tuple(example_input(dense).shape[1:]), start)
    paths = {"dense start": start} | {r["onnx"]: onnx_dir / r["onnx"] for r in runs if (onnx_dir / r["onnx"]).is_file()}
    latency = {k: v.p50 for k, v in onnx_latency(paths, rounds, iters).items()}
    for r in runs:
        r["ort_ms"] = latency.get(r["onnx"])
    return latency["dense start"]


def summarise(runs: list[dict[str, Any]], methods: list[str], budgets: list[float],
              asked: list[float]) -> list[str]:  # fmt: skip
    """Mean +- sd per method and budget (a method without runs at a budget: "not run yet" where `asked`), and the
    paper's table beside ours."""
    lines = ["| method | budget | seeds | top-1 % (mean +- sd) | min..max | MACs (of dense) | params (M) | ORT ms |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for method in methods:
        for budget in [1.0] if method == "dense" else budgets:
            rs = [r for r in runs if r["method"] == method and r["budget"] == budget]
            if not rs:
                if budget in asked:  # a budget of an earlier invocation that this method was never run at: no row
                    lines.append(f"| {method} | {budget} | 0 | not run yet | | | | |")
                continue
            accs = [r["val_top1"] for r in rs]
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            ms = [r["ort_ms"] for r in rs if r.get("ort_ms") is not None]
            ms_text = f"{statistics.mean(ms):.3f}" if ms else "-"
            lines.append(f"| {method} | {budget} | {len(rs)} | {statistics.mean(accs):.2f} +- {sd:.2f} | "
                         f"{min(accs):.2f}..{max(accs):.2f} | {statistics.mean(r['macs_fraction'] for r in rs):.3f} | "
                         f"{statistics.mean(r['params'] for r in rs) / 1e6:.3f} | {ms_text} |")  # fmt: skip
    lines += ["", "ORT ms: batch 1, every network in the cache alternating in one process, timed as `hiap bench` "
              "times (p50 of every call); - where a run's network is no longer in the cache.", "",
              "The paper (6-block ViT-Tiny, patch 4, 174.0 M MACs dense; its own training recipe):", "",
              "| method | ~67 % of dense MACs | ~50 % of dense MACs |", "|---|---|---|",
              f"| dense | {PAPER['dense'][0]:.2f} (100 %) | |"]  # fmt: skip
    for method in ("hiap", "l1-structured", "uniform"):
        cells = [f"{PAPER[method][b][0]:.2f}" if b in PAPER[method] else "-" for b in (0.67, 0.5)]
        lines.append(f"| {method} | {cells[0]} | {cells[1]} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_ARCHIVE, help="CIFAR-10 ImageFolder archive or root")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "hiap" / "cifar10")
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="cpu")
    parser.add_argument("--split", choices=["test", "search"], default="test")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.67, 0.5])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=["hiap", "torch-pruning", "uniform", "l1-ffn", "dense"])
    parser.add_argument("--rounds", type=int, default=20, help="latency rounds (every model timed once per round)")
    parser.add_argument("--iters", type=int, default=50, help="calls per model per round")
    parser.add_argument("--report-only", action="store_true", help="rebuild tables, plot and latency; train nothing")
    parser.add_argument("--no-latency", action="store_true", help="skip the latency phase (e.g. while runs remain)")
    args = parser.parse_args()
    if not args.data.exists():
        raise SystemExit(f"--data '{args.data}' does not exist: give the CIFAR-10 archive or an unpacked root.")
    if importlib.util.find_spec("torch_pruning") is None and set(args.methods) - set(VARIANTS) - {"dense"}:
        raise SystemExit("cifar10.py needs Torch-Pruning for its pruning peers: pip install -e '.[bench]'")
    torch.set_num_threads(torch.get_num_threads())
    roots = prepare(args.data, args.cache)
    weights, dense_info = dense_start(args.setting, roots, args.cache)
    spec = SETTINGS[args.setting]
    name = (
        "cifar10" + ("" if args.setting == "cpu" else f"-{args.setting}") + ("" if args.split == "test" else "-search")
    )
    out = results_dir()
    runs_path = out / f"{name}.jsonl"
    onnx_dir = args.cache / f"onnx-{name}"
    onnx_dir.mkdir(parents=True, exist_ok=True)
    dense = create_model(spec["model"], num_classes=10, model_kwargs=spec["model_kwargs"]).eval()
    load_pretrained(dense, spec["model"], str(weights))
    dcfg = data_config(dense)
    data = ImageFolderData(roots[args.split], dcfg, workers=0, augment=Augment())
    runs = load_runs(runs_path)
    ctx = {"setting": args.setting, "root": roots[args.split], "weights": weights, "dense": dense, "data": data,
           "runs": runs, "onnx_dir": onnx_dir, "split": args.split,
           # peers are pruned to the MACs of the first HiAP recipe in --methods (that seed and budget)
           "matched_to": next((m for m in args.methods if m in VARIANTS), "hiap")}  # fmt: skip
    if not args.report_only:
        for seed in args.seeds:
            for method in args.methods:
                for budget in [1.0] if method == "dense" else args.budgets:
                    if any(r["method"] == method and r["budget"] == budget and r["seed"] == seed for r in runs):
                        continue
                    run = run_one(method, budget, seed, ctx)
                    runs.append(run)
                    with open(runs_path, "a") as f:  # appended as it finishes: a rerun skips it
                        f.write(json.dumps(run) + "\n")
                    print(json.dumps(run), flush=True)
    from peers import evaluate

    dense_acc = 100 * evaluate(dense, data)
    dense_ms = None if args.no_latency else measure_latency(runs, onnx_dir, dense, args.rounds, args.iters)
    env = environment(f"CIFAR-10 {args.setting} setting ({spec['model']} {spec['model_kwargs']}), split {args.split}, "
                      f"{spec['prune']['epochs']} epochs x 45,000 images per method, "
                      f"seeds {sorted({r['seed'] for r in runs} | set(args.seeds))}")  # fmt: skip
    env["onnxruntime"] = __import__("onnxruntime").__version__
    env["dense_start"] = dense_info | {"top1_this_split": dense_acc, "ort_ms": dense_ms}
    body = {"environment": env, "runs": runs}
    (out / f"{name}.json").write_text(json.dumps(body, indent=1) + "\n")
    # The report covers every run in the jsonl, not only this invocation's --budgets and --methods.
    budgets = sorted({r["budget"] for r in runs if r["method"] != "dense"} | set(args.budgets), reverse=True)
    methods = list(dict.fromkeys([*args.methods, *(r["method"] for r in runs)]))
    table = summarise(runs, methods, budgets, args.budgets)
    head = [f"# Pruning quality on CIFAR-10 ({args.setting} setting, {args.split} split)", "",
            f"{env['recipe']}; {env['machine']}, {env['cpu']['model']} ({' '.join(env['cpu']['flags'])}), "
            f"{env['threads']} threads, torch {env['torch']}, "
            f"onnxruntime {env['onnxruntime']}, hiap {env['hiap']}, {env['date']}.", "",
            f"Dense start: {dense_acc:.2f} % on this split's val, trained {spec['dense']['epochs']} epochs "
            f"({dense_info['train_seconds'] / 60:.0f} min here)." + (f" ORT batch 1: {dense_ms:.3f} ms." if dense_ms
                                                                    else ""), ""]  # fmt: skip
    (out / f"{name}.md").write_text("\n".join(head + table) + "\n")
    print("\n".join(head + table))
    if runs:
        points = [(r["method"], r["budget"], r["macs_fraction"], r["val_top1"]) for r in runs]
        plot(points, dense_acc, out / f"{name}.png", f"CIFAR-10 ({args.setting}, {args.split}): dots are seeds",
             f"top-1 % ({'official test split' if args.split == 'test' else 'carved validation'})")  # fmt: skip


if __name__ == "__main__":
    main()
