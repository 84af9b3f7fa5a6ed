"""Where HiAP's accuracy goes at a budget: its own run (the path) against its structure trained like a peer.

    python benchmarks/decompose.py [--task builtin|cifar10] [--split search|search-3k|val|test]
                                   [--budgets 0.5 0.33 0.2] [--seeds 0] [--variants hiap ...]
                                   [--parts path structure l1-sizes uniform]

For every HiAP variant, budget and seed, on the built-in data (or the CIFAR-10 CPU setting of cifar10.py):
- path: the variant's own `hiap train` run (its validation top-1 as the run ends);
- structure: the structure that run exported, its kept units copied from the dense start, fine-tuned like the peers
  (benchmarks/peers.py::finetune: the same epochs x images and KD recipe);
- l1-sizes: the same per-block sizes (heads, value widths, FFN neurons; removed FFNs stay removed), the units chosen
  by l1 magnitude from the dense start, fine-tuned like the peers;
- uniform: the uniform l1 cut (every layer alike) at the MACs of the variant's exported network, fine-tuned (the
  peer HiAP loses to).
path vs structure is what the training path costs; structure vs l1-sizes what the gates' choice of units costs;
l1-sizes vs uniform what the learned allocation costs. Every MAC figure is the exported (align-8) network's, counted
by torch's FlopCounterMode, and every network of a (budget, seed) is matched to the variant's exported MACs.

Splits of the built-in data: `search` / `search-3k` (the choices: 10,800 / 9,000 training images, validated on the
1,200 / 3,000 carved from the training set, from a dense start trained without them, benchmarks/search_split.py)
and `val` (reported: the shipped checkpoint and the built-in validation split). CIFAR-10: `search` (5,000 carved
from the training set) and `test` (the official test split), both from cifar10.py's committed dense start, the
setting's 2 epochs x 45,000 images per network. Resumable: every finished run is appended to
`results/decompose[-cifar10][-SPLIT].jsonl` and skipped on a rerun; the table is rebuilt from that file
(`--report-only`).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import environment, load_runs, results_dir
from peers import example_input, finetune, macs_of, prune_to
from rich.console import Console
from tasks import Task, builtin_task, cifar_task, describe

import hiap.api as hp
from hiap.config import TrainConfig
from hiap.cost import BlockStructure, Structure
from hiap.export.compact import build_compact
from hiap.train import Trainer, structure_summary

# HiAP variants: TrainConfig overrides of the default recipe, named after what they change.
VARIANTS: dict[str, dict[str, Any]] = {
    # the default recipe: search in the first 30 %, land with every kept head filled to the exported value width,
    # then the structure from the dense start's weights
    "hiap": {},
    # the previous default: the gates learn for the whole run, the final structure keeps the gated run's weights
    "hiap-whole-run": {"search_fraction": 1.0, "adapt_from": "gated", "value_align": 0},
    # the search in the first 30 % of the run (gates 1/0.3x faster), no fill, then the fixed structure trains on
    # from the dense start's weights (kept units copied, weight lr and AdamW state restarted) ...
    "hiap-s30-start": {"search_fraction": 0.3, "adapt_from": "start", "value_align": 0},
    # ... and the micro gates starting in l1-magnitude order
    "hiap-s30-start-l1": {"search_fraction": 0.3, "adapt_from": "start", "gate_init_importance": 1.0, "value_align": 0},
    # ... and FFN blocks never removed
    "hiap-s30-start-l1-keepffn": {
        "search_fraction": 0.3,
        "adapt_from": "start",
        "gate_init_importance": 1.0,
        "ffn_block_gates": False,
        "value_align": 0,
    },
    # the default with another search share
    "hiap-s20": {"search_fraction": 0.2},
    "hiap-s50": {"search_fraction": 0.5},
    # the default keeping the gated run's weights after the search
    "hiap-gated": {"adapt_from": "gated"},
    # the default with a prior towards every block keeping the same share of its MACs (loss.allocation_loss)
    "hiap-even1": {"even_allocation": 1.0},
    "hiap-even10": {"even_allocation": 10.0},
    # the default with the search in the first 15 %: the fixed structure trains 85 % of the run
    "hiap-s15": {"search_fraction": 0.15},
    # both: the 15 % search with the weak allocation prior
    "hiap-s15-even1": {"search_fraction": 0.15, "even_allocation": 1.0},
    # the 15 % search with each head's q/k dims gated too (beyond the paper's search space)
    "hiap-s15-qk": {"search_fraction": 0.15, "qk_gates": True},
    # ... and the micro gates (q/k and value dims, neurons) starting in l1-magnitude order
    "hiap-s15-qk-l1": {"search_fraction": 0.15, "qk_gates": True, "gate_init_importance": 1.0},
    # ... or with every FFN block kept (narrowed, never removed)
    "hiap-s15-qk-keepffn": {"search_fraction": 0.15, "qk_gates": True, "ffn_block_gates": False},
}
PARTS = ("path", "structure", "l1-sizes", "uniform")


def l1_sized(dense: torch.nn.Module, learned: Structure) -> Structure:
    """The learned per-block sizes with the units chosen by l1 magnitude of the dense weights they read and write:
    heads by their q/k/v rows and proj columns, the learned value (and q/k) widths given to the heads in order of
    magnitude, value dims and FFN neurons by their own rows and columns, q/k dims by their q and k rows."""
    blocks = []
    for blk, plan in zip(dense.blocks, learned.blocks, strict=True):
        attn, mlp = blk.attn, blk.mlp
        h, dh = attn.num_heads, attn.head_dim
        w = attn.qkv.weight.detach().abs().view(3, h, dh, -1)  # q, k, v rows per head
        proj = attn.proj.weight.detach().abs().view(-1, h, dh)  # proj columns per head
        head_score = w.sum(dim=(0, 2, 3)) + proj.sum(dim=(0, 2))
        heads = sorted(head_score.argsort(descending=True)[: len(plan.heads)].tolist())
        by_score = sorted(heads, key=lambda i: -float(head_score[i]))
        widths = dict(zip(by_score, sorted((len(v) for v in plan.value_dims), reverse=True), strict=True))
        value_score = w[2].sum(-1) + proj.sum(0)  # [h, dh]
        dims = tuple(tuple(sorted(value_score[i].argsort(descending=True)[: widths[i]].tolist())) for i in heads)
        qk_dims = None
        if plan.qk_dims is not None:  # q/k widths were learned too: the same sizes, dims by their q and k rows
            qk_widths = dict(zip(by_score, sorted((len(q) for q in plan.qk_dims), reverse=True), strict=True))
            qk_score = (w[0] + w[1]).sum(-1)  # [h, dh]
            qk_dims = tuple(tuple(sorted(qk_score[i].argsort(descending=True)[: qk_widths[i]].tolist())) for i in heads)
        neurons: tuple[int, ...] = ()
        if plan.ffn and plan.neurons:
            score = mlp.fc1.weight.detach().abs().sum(1) + mlp.fc2.weight.detach().abs().sum(0)
            neurons = tuple(sorted(score.argsort(descending=True)[: len(plan.neurons)].tolist()))
        blocks.append(BlockStructure(tuple(heads), dims, bool(neurons), neurons, qk_dims))
    return Structure(tuple(blocks))


def run_path(variant: str, budget: float, seed: int,
             task: Task) -> tuple[float, torch.nn.Module, Structure, dict[str, Any]]:  # fmt: skip
    """The variant's own run: its accuracy, the exported (align-8) network, its structure and summary."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(target_macs=str(budget), seed=seed, out=f"{tmp}/run", **task.train | VARIANTS[variant])
        trainer = Trainer(cfg, Console(quiet=True), make_data=task.make_data)
        summary = trainer.run()
        structure = hp.materialize(trainer.pruner, align=8).structure  # the exported network's (align 8)
        compact = trainer.pruner.model.eval()
    keys = ("target_error", "target_met", "kept_heads", "kept_ffn", "kept_neurons", "kept_qk_dims")
    return summary["val_acc"], compact, structure, {k: summary[k] for k in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=("builtin", "cifar10"), default="builtin")
    parser.add_argument("--split", choices=("search", "search-3k", "val", "test"), default="search",
                        help="builtin: search, search-3k or val; cifar10: search or test")  # fmt: skip
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.33, 0.2])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=6, help="builtin: epochs per network (cifar10: its setting's)")
    parser.add_argument("--variants", nargs="+", default=["hiap"], choices=sorted(VARIANTS))
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    splits = {"builtin": ("search", "search-3k", "val"), "cifar10": ("search", "test")}[args.task]
    if args.split not in splits:
        raise SystemExit(f"--split {args.split} is not a split of --task {args.task}: one of {', '.join(splits)}.")
    name = (
        "decompose" + ("-cifar10" if args.task == "cifar10" else "") + ("" if args.split == "val" else f"-{args.split}")
    )
    log = results_dir() / f"{name}.jsonl"
    epochs = 2 if args.task == "cifar10" else args.epochs
    if not args.report_only:
        task = cifar_task(args.split) if args.task == "cifar10" else builtin_task(args.split, args.epochs)
        for seed in args.seeds:
            for budget in args.budgets:
                for variant in args.variants:
                    train(args, log, variant, budget, seed, task)
    report(name, log, describe(args.task, args.split, epochs))


def train(args: argparse.Namespace, log: Path, variant: str, budget: float, seed: int, task: Task) -> None:
    """Every part of one (variant, budget, seed) not yet in the log; `path` first (the others need its structure)."""
    runs = load_runs(log)
    dense, data = task.dense, task.data
    example = example_input(dense)
    dense_macs = macs_of(dense, example)
    done = {(r["variant"], r["budget"], r["seed"], r["part"]) for r in runs}
    todo = [p for p in args.parts if (variant, budget, seed, p) not in done]
    if not todo:
        return
    key = (variant, budget, seed)
    path_runs = [r for r in runs if (r["variant"], r["budget"], r["seed"], r["part"]) == (*key, "path")]
    structure = None
    if path_runs and set(todo) <= {"uniform"}:  # the uniform cut needs only the logged run's exported MACs
        exported = round(path_runs[0]["mac_fraction"] * dense_macs)
    else:
        t0 = time.perf_counter()
        acc, model, structure, summary = run_path(variant, budget, seed, task)
        exported = macs_of(model, example)
        if "path" in todo:
            seconds = time.perf_counter() - t0
            append(log, {"variant": variant, "budget": budget, "seed": seed, "part": "path", "val_acc": acc,
                         "mac_fraction": exported / dense_macs, "seconds": seconds, **summary})  # fmt: skip
        elif abs(path_runs[0]["val_acc"] - acc) > 1e-9:
            print(f"note: {variant} {budget} {seed} reran to {acc:.4f}, logged {path_runs[0]['val_acc']:.4f}")
    for part in todo:
        if part == "path":
            continue
        t0 = time.perf_counter()
        if part == "uniform":
            net, _ = prune_to(dense, "uniform", exported, data)
            kept = {}
        else:
            assert structure is not None  # run above whenever a part other than uniform is missing
            plan = structure if part == "structure" else l1_sized(dense, structure)
            net = build_compact(copy.deepcopy(dense), plan, align=8)
            kept = structure_summary(plan)
        macs = macs_of(net, example)
        teacher = copy.deepcopy(dense).eval().requires_grad_(False)
        part_acc = finetune(net, teacher, data, task.epochs, seed)
        append(log, {"variant": variant, "budget": budget, "seed": seed, "part": part, "val_acc": part_acc,
                     "mac_fraction": macs / dense_macs, "seconds": time.perf_counter() - t0,
                     "kept_heads": kept.get("kept_heads"), "kept_neurons": kept.get("kept_neurons")})  # fmt: skip


def append(log: Path, run: dict[str, Any]) -> None:
    run["date"] = time.strftime("%Y-%m-%d %H:%M")
    run["threads"] = torch.get_num_threads()
    print(json.dumps(run), flush=True)
    with open(log, "a") as f:
        f.write(json.dumps(run) + "\n")


def report(name: str, log: Path, what: str) -> None:
    runs = load_runs(log)
    rows = [
        "| variant | budget | seeds | path (own run) | structure (kept units, fine-tuned) "
        "| l1-sizes (its sizes, l1 units) | uniform l1 | path - uniform | MACs (of dense) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    keys = dict.fromkeys((r["variant"], r["budget"]) for r in runs)
    for variant, budget in sorted(keys, key=lambda k: (-k[1], k[0])):
        mine = [r for r in runs if r["variant"] == variant and r["budget"] == budget]
        cells, means = [], {}
        for part in PARTS:
            accs = [100 * r["val_acc"] for r in mine if r["part"] == part]
            means[part] = statistics.mean(accs) if accs else None
            sd = f" +- {statistics.stdev(accs):.2f}" if len(accs) > 1 else ""
            cells.append(f"{means[part]:.2f}{sd}" if accs else "")
        seeds = len({r["seed"] for r in mine})
        paths = [m for m in mine if m["part"] == "path"]
        if means["uniform"] is None and paths:  # no uniform cut of its own: per seed, the one closest in MACs
            closest = []
            for m in paths:
                others = [r for r in runs if (r["part"], r["budget"], r["seed"]) == ("uniform", budget, m["seed"])]
                if others:
                    closest.append(min(others, key=lambda r: abs(r["mac_fraction"] - m["mac_fraction"])))
            if closest:
                means["uniform"] = statistics.mean(100 * r["val_acc"] for r in closest)
                cells[3] = f"({means['uniform']:.2f} at {statistics.mean(r['mac_fraction'] for r in closest):.3f})"
        gap = (f"{means['path'] - means['uniform']:+.2f}" if means["path"] is not None and means["uniform"] is not None
               else "")  # fmt: skip
        macs = statistics.mean(r["mac_fraction"] for r in mine if r["part"] == "path") if means["path"] else 0
        rows.append(f"| {variant} | {budget} | {seeds} | " + " | ".join(cells) + f" | {gap} | {macs:.3f} |")
    env = environment(f"{what}, KD from the dense start")
    results = results_dir()
    note = (
        "Top-1 % (mean over seeds); a uniform cut in parentheses is the one matched to another variant, at the "
        f"same budget and seed and closest in MACs. Every run: `{log.name}`."
    )
    head = [f"# Where HiAP's accuracy goes ({what.split(', ')[0]}, {what.split(', ')[-2]})", "",
            f"{env['recipe']}; {env['machine']}, {env['cpu']['model']} ({' '.join(env['cpu']['flags'])}), 1 thread "
            f"per run, torch {env['torch']}, hiap {env['hiap']}, {env['date']}. {note}",
            ""]  # fmt: skip
    (results / f"{name}.md").write_text("\n".join(head + rows) + "\n")
    print("\n".join(head + rows))


if __name__ == "__main__":
    main()
