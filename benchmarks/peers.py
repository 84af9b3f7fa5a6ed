"""Pruning quality against peers on the built-in data, from the shipped dense checkpoint, at equal MACs and epochs.

    python benchmarks/peers.py [--budgets 0.67 0.5 0.33 0.2] [--seeds 0 1 2] [--epochs 6] [--methods ...]

Methods, each ending at the same MACs (counted by torch's FlopCounterMode on the pruned network, matmuls of the
attention included; the peers are pruned to the MACs of HiAP's exported network for that budget and seed, which
includes its value-width padding, so no method gets more compute than HiAP) and trained for the same epochs x
images with the same recipe as HiAP's default (AdamW 5e-4, cosine, label smoothing 0.1, KD from the frozen dense
start, alpha 0.7, T 4; weight decay on matrices only, as hiap train decays):
- hiap: the default `hiap train` recipe at the target;
- torch-pruning: Torch-Pruning's ViT recipe (PyPI torch-pruning; Taylor importance from 10 batches, global
  ranking, whole heads and FFN neurons), pruning ratio searched to the target MACs, then fine-tuned;
- uniform: the same ratio in every layer (l1-magnitude, heads' dims and FFN neurons), then fine-tuned;
- uniform-comp: uniform with the removed units' mean output folded into the next bias (hiap.compensate);
- l1-ffn: FFN neurons only (l1-magnitude, uniform ratio), then fine-tuned;
- dense: the dense start fine-tuned for the same epochs (the control).
Every final network is exported to ONNX (hiap's exporter, opset 17) and, after all training, timed with ONNX Runtime
at batch 1 in one process, every model alternating with the others, so latencies compare side by side.
Resumable: every finished run is appended to benchmarks/results/peers.jsonl and skipped on a rerun (its ONNX file
kept in --cache for the latency phase). Writes benchmarks/results/peers.json / .md (every run, mean and spread per
method and budget) and peers.png (the accuracy-vs-MACs plot of every run).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from common import environment, load_runs, onnx_latency, results_dir, write_results
from timm.models.vision_transformer import Attention, Mlp
from torch.utils.flop_counter import FlopCounterMode

from hiap.data import BuiltinData
from hiap.loss import task_loss
from hiap.models import create_model, data_config, load_pretrained

MODEL = "hiap_vit_fmnist"


def example_input(model: torch.nn.Module) -> torch.Tensor:
    """One zero image of the model's own input size (C, H, W)."""
    return torch.zeros(1, *data_config(model)["input_size"])


def macs_of(model: torch.nn.Module, example: torch.Tensor | None = None) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 1, 28, 28) if example is None else example)
    return counter.get_total_flops() // 2


def _attn_forward(self: Attention, x: torch.Tensor, **_: Any) -> torch.Tensor:
    """timm's Attention reshaped with -1 instead of C, so pruned head dims still fit (Torch-Pruning's own patch)."""
    b, n, _ = x.shape
    qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = self.q_norm(q), self.k_norm(k)
    attn = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    x = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, -1)
    return self.proj(x)


def prune(dense: torch.nn.Module, method: str, ratio: float, data: Any) -> torch.nn.Module:
    import torch_pruning as tp

    example = example_input(dense)
    model = copy.deepcopy(dense).eval()
    num_heads, ignored = {}, [model.head]
    for m in model.modules():
        if isinstance(m, Attention):
            m.forward = _attn_forward.__get__(m, Attention)
            num_heads[m.qkv] = m.num_heads
            if method == "l1-ffn":
                ignored += [m.qkv, m.proj]
        if isinstance(m, Mlp):
            ignored.append(m.fc2)  # prune inside the FFN (fc1 rows / fc2 columns), never the residual width
    for m in model.modules():
        if isinstance(m, Attention) and method != "l1-ffn":
            ignored.append(m.proj)  # keep the residual width; heads / head dims go through qkv
    taylor = method == "torch-pruning"
    imp = tp.importance.GroupTaylorImportance() if taylor else tp.importance.GroupMagnitudeImportance(p=1)
    pruner = tp.pruner.MetaPruner(
        model, example, importance=imp, global_pruning=taylor, pruning_ratio=ratio,
        ignored_layers=ignored, num_heads=num_heads, prune_num_heads=taylor,
        prune_head_dims=not taylor, head_pruning_ratio=min(ratio, 0.5) if taylor else 0.0, round_to=None,
    )  # fmt: skip
    if taylor:
        model.zero_grad()
        for i, (x, y) in enumerate(data.train_batches(0, 64, 0)):
            if i == 10:
                break
            F.cross_entropy(model(x), y).backward()
    pruner.step()
    for m in model.modules():
        if isinstance(m, Attention):
            m.num_heads = pruner.num_heads[m.qkv]
            if m.num_heads == 0 or m.qkv.out_features == 0:
                raise ValueError("a layer lost every head")  # the ratio is too aggressive for this method
            m.head_dim = m.qkv.out_features // (3 * m.num_heads)
    model.zero_grad(set_to_none=True)
    return model


def kept_columns(dense: torch.Tensor, cut: torch.Tensor) -> torch.Tensor:
    """Which input columns of a dense weight a cut layer kept (Torch-Pruning copies them in order): a boolean mask."""
    kept = torch.zeros(dense.shape[1], dtype=torch.bool)
    j = 0
    for i in range(dense.shape[1]):
        if j < cut.shape[1] and torch.equal(dense[:, i], cut[:, j]):
            kept[i], j = True, j + 1
    if j != cut.shape[1]:
        raise ValueError("the cut layer holds columns the dense one does not")
    return kept


def compensate_cut(dense: torch.nn.Module, cut: torch.nn.Module, data: Any, seed: int) -> None:
    """Fold the dense start's mean output of every removed FFN neuron and value dim into the cut network's fc2 and
    proj biases (hiap.compensate), measured on the images hiap train calibrates on for the same seed."""
    from hiap.compensate import calibration_batches, fold_removed, unit_stats

    stats = unit_stats(dense, dense, calibration_batches(data, 128, seed))
    for i, (d, c) in enumerate(zip(dense.blocks, cut.blocks, strict=True)):
        pairs = ((d.mlp.fc2, c.mlp.fc2, stats.neuron_mean[i]), (d.attn.proj, c.attn.proj, stats.value_mean[i]))
        for d_lin, c_lin, mean in pairs:
            removed = ~kept_columns(d_lin.weight.detach(), c_lin.weight.detach())
            fold_removed(c_lin, removed, mean, weight=d_lin.weight)


def prune_to(dense: torch.nn.Module, method: str, target_macs: float, data: Any) -> tuple[Any, float]:
    """Bisect the pruning ratio until the pruned MACs are within 1 % of the target (or the closest found)."""
    lo, hi, best = 0.0, 0.95, None
    example = example_input(dense)
    for _ in range(12):
        mid = (lo + hi) / 2
        try:
            model = prune(dense, method, mid, data)
            macs = macs_of(model, example)
        except ValueError:  # emptied a layer: prune less
            hi = mid
            continue
        if best is None or abs(macs - target_macs) < abs(best[1] - target_macs):
            best = (model, macs, mid)
        if abs(macs - target_macs) / target_macs < 0.01:
            break
        lo, hi = (mid, hi) if macs > target_macs else (lo, mid)
    return best[0], best[2]  # type: ignore[index]


def peer_network(dense: torch.nn.Module, method: str, target_macs: float, data: Any, seed: int) -> tuple[Any, float]:
    """A peer's network before fine-tuning: the dense start (the control), or its cut at the target MACs, with the
    removed units' means folded in for a '-comp' method. Returns it and its pruning ratio."""
    if method == "dense":
        return copy.deepcopy(dense), 0.0
    model, ratio = prune_to(dense, method.removesuffix("-comp"), target_macs, data)
    if method.endswith("-comp"):
        compensate_cut(dense, model, data, seed)
    return model, ratio


# Peers train where hiap train would (a CUDA device when there is one), and end on the CPU for export and counting.
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: Any) -> float:
    model.eval()
    device = next(model.parameters()).device
    correct = total = 0
    for x, y in data.val_batches(256):
        correct += int((model(x.to(device)).argmax(-1).cpu() == y).sum())
        total += len(y)
    return correct / total


def finetune(model: torch.nn.Module, teacher: torch.nn.Module, data: Any, epochs: int, seed: int) -> float:
    """The default recipe's weight training: AdamW 5e-4, cosine to 1 %, LS 0.1, KD alpha 0.7 T 4, and weight decay
    0.05 on the weights hiap train decays (matrices; not norms, biases, tokens or position embeddings)."""
    from hiap.config import TrainConfig
    from hiap.export.compact import CompactViT
    from hiap.train import param_groups

    torch.manual_seed(seed)
    model.to(DEVICE), teacher.to(DEVICE)
    core = model.vit if isinstance(model, CompactViT) else model  # a compact network's timm parameter names
    opt = torch.optim.AdamW(param_groups(core, TrainConfig(lr=5e-4, weight_decay=0.05)), lr=5e-4)
    steps = epochs * (data.num_train // 128)
    step = 0
    for epoch in range(epochs):
        model.train()
        for x, y in data.train_batches(epoch, 128, seed):
            x, y = x.to(DEVICE), y.to(DEVICE)
            for g in opt.param_groups:
                g["lr"] = 5e-4 * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * step / steps)))
            with torch.no_grad():
                t = teacher(x)
            loss, _ = task_loss(model(x), y, 0.1, t, 0.7, 4.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    acc = evaluate(model, data)
    model.cpu(), teacher.cpu()
    return acc


def hiap_run(budget: float, seed: int, epochs: int) -> tuple[float, torch.nn.Module, dict[str, Any]]:
    """The default `hiap train` at the target; returns its validation accuracy, the compact network (counted
    with the same FlopCounterMode as the peers) and what it kept."""
    import tempfile

    from rich.console import Console

    import hiap.api as hp
    from hiap.config import TrainConfig
    from hiap.train import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(TrainConfig(target_macs=str(budget), seed=seed, epochs=epochs, out=f"{tmp}/run"),
                          Console(quiet=True))  # fmt: skip
        summary = trainer.run()
        # The exported network (align 8, the export default): any value-width padding counts against HiAP.
        hp.materialize(trainer.pruner, align=8)
        compact = trainer.pruner.model.eval()
    kept = {k: summary[k] for k in ("kept_heads", "kept_ffn", "kept_neurons", "target_error")}
    return summary["val_acc"], compact, kept


def plot(points: list[tuple[str, float, float, float]], dense_top1: float | None, path: Path, title: str,
         ylabel: str = "validation top-1 (%)",
         xlabel: str = "MACs of the exported network (fraction of dense)") -> None:  # fmt: skip
    """Accuracy vs cost from (method, budget, cost as a fraction of dense, top-1 %) per run: every run as a dot, each
    method's mean per budget joined by a line (shared by peers.py, cifar10.py and latency_peers.py)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for i, method in enumerate(dict.fromkeys(p[0] for p in points)):
        mine = [p for p in points if p[0] == method]
        ax.scatter([p[2] for p in mine], [p[3] for p in mine], s=14, alpha=0.5, color=f"C{i}")
        budgets = dict.fromkeys(p[1] for p in mine)
        means = sorted(tuple(statistics.mean(p[k] for p in mine if p[1] == b) for k in (2, 3)) for b in budgets)
        ax.plot(*zip(*means, strict=True), marker="o", color=f"C{i}", label=f"{method} (mean)")
    if dense_top1 is not None:
        ax.axhline(dense_top1, color="grey", linestyle=":", label="dense start")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.67, 0.5, 0.33, 0.2])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--methods", nargs="+", default=["hiap", "torch-pruning", "uniform", "l1-ffn", "dense"])
    parser.add_argument("--rounds", type=int, default=20, help="latency rounds (every model timed once per round)")
    parser.add_argument("--iters", type=int, default=50, help="calls per model per round")
    parser.add_argument(
        "--cache",
        type=Path,
        # one per results folder, so run_all.py's reduced runs never replace the full runs' files
        default=Path(tempfile.gettempdir()) / "hiap-peers" / results_dir().resolve().name,
        help="where every run's ONNX file is kept for the latency phase (across sittings)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads while training (0: torch's default)")
    parser.add_argument("--report-only", action="store_true", help="time and tabulate the runs already logged")
    parser.add_argument(
        "--train-only",
        action="store_true",
        help="train and log, no latency phase (when another process shares the cores)",
    )
    args = parser.parse_args()
    if importlib.util.find_spec("torch_pruning") is None and set(args.methods) - {"hiap", "dense"}:
        raise SystemExit("peers.py needs Torch-Pruning for its pruning peers: pip install -e '.[bench]'")
    from hiap.export.onnx_io import torch2onnx

    dense = create_model(MODEL, num_classes=10).eval()
    load_pretrained(dense, MODEL, "auto")
    cfg = data_config(dense)
    data = BuiltinData(cfg["input_size"], cfg["mean"], cfg["std"])
    args.cache.mkdir(parents=True, exist_ok=True)
    log = results_dir() / "peers.jsonl"
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.report_only:
        for seed in args.seeds:
            for method in args.methods:
                for budget in [1.0] if method == "dense" else args.budgets:
                    run_one(method, budget, seed, args, dense, data, log)
    torch.set_num_threads(threads)
    if args.train_only:
        return
    onnx_paths = {"dense start": args.cache / "dense-start.onnx"}
    torch2onnx(dense, cfg["input_size"], onnx_paths["dense start"])
    report(load_runs(log), onnx_paths, args, dense, data)


def run_one(method: str, budget: float, seed: int, args: argparse.Namespace, dense: torch.nn.Module, data: Any,
            log: Path) -> None:  # fmt: skip
    """Train one method at one budget and seed unless the log has it; append its result to the log."""
    from hiap.export.onnx_io import onnx_cost, torch2onnx

    runs = load_runs(log)
    if any((r["method"], r["budget"], r["seed"]) == (method, budget, seed) for r in runs):
        return
    dense_macs = macs_of(dense)
    t0 = time.perf_counter()
    kept: dict[str, Any] = {}
    if method == "hiap":
        acc, model, kept = hiap_run(budget, seed, args.epochs)
        macs, params, ratio = macs_of(model), sum(p.numel() for p in model.parameters()), None
    else:
        teacher = copy.deepcopy(dense).eval().requires_grad_(False)
        # Matched to HiAP's exported MACs for the same budget and seed (its run comes first in every seed).
        hiap = [r["macs"] for r in runs if (r["method"], r["budget"], r["seed"]) == ("hiap", budget, seed)]
        target = hiap[0] if hiap else budget * dense_macs
        model, ratio = peer_network(dense, method, target, data, seed)
        macs, params = macs_of(model), sum(p.numel() for p in model.parameters())
        acc = finetune(model, teacher, data, args.epochs, seed)
    onnx = args.cache / f"{method}-{budget}-{seed}.onnx"
    torch2onnx(model.eval(), data_config(dense)["input_size"], onnx)
    onnx_macs, onnx_params = onnx_cost(onnx)
    run = {"method": method, "budget": budget, "seed": seed, "val_acc": acc, "macs": int(macs),
           "mac_fraction": macs / dense_macs, "params": int(params), "onnx_macs": onnx_macs,
           "onnx_params": onnx_params, "onnx_bytes": onnx.stat().st_size, "prune_ratio": ratio,
           "seconds": time.perf_counter() - t0, "threads": torch.get_num_threads(),
           "date": time.strftime("%Y-%m-%d %H:%M"), **kept}  # fmt: skip
    print(run, flush=True)
    with open(log, "a") as f:
        f.write(json.dumps(run) + "\n")


def report(runs: list[dict[str, Any]], onnx_paths: dict[str, Path], args: argparse.Namespace,
           dense: torch.nn.Module, data: Any) -> None:  # fmt: skip
    """Time every logged run's ONNX file side by side (those still in the cache) and write the tables and plot."""
    for r in runs:
        path = args.cache / f"{r['method']}-{r['budget']}-{r['seed']}.onnx"
        if path.is_file():
            onnx_paths[f"{r['method']} {r['budget']} {r['seed']}"] = path
    latency = {k: v.p50 for k, v in onnx_latency(onnx_paths, args.rounds, args.iters).items()}
    for run in runs:
        ms = latency.get(f"{run['method']} {run['budget']} {run['seed']}")
        run["ort_ms"] = ms
        run["ort_speedup"] = latency["dense start"] / ms if ms else None
    table = [
        "| method | budget | seeds | val top-1 % (mean +- sd) | min..max | MACs (of dense) | params (M) "
        "| ORT ms (batch 1) | speedup vs dense |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    budgets = sorted({r["budget"] for r in runs if r["method"] != "dense"}, reverse=True)
    for method in dict.fromkeys(r["method"] for r in runs):
        for budget in [1.0] if method == "dense" else budgets:
            rs = [r for r in runs if r["method"] == method and r["budget"] == budget]
            if not rs:
                continue
            accs = [100 * r["val_acc"] for r in rs]
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            timed = [r for r in rs if r["ort_ms"]]
            ms = f"{statistics.mean(r['ort_ms'] for r in timed):.3f}" if timed else "-"
            speedup = f"{statistics.mean(r['ort_speedup'] for r in timed):.2f}x" if timed else "-"
            table.append(f"| {method} | {budget} | {len(rs)} | {statistics.mean(accs):.2f} +- {sd:.2f} | "
                         f"{min(accs):.2f}..{max(accs):.2f} | "
                         f"{statistics.mean(r['mac_fraction'] for r in rs):.3f} | "
                         f"{statistics.mean(r['params'] for r in rs) / 1e6:.3f} | {ms} | {speedup} |")  # fmt: skip
    dense_acc = evaluate(dense, data)
    table.append(f"\nDense start (no fine-tuning): {100 * dense_acc:.2f} %, {macs_of(dense) / 1e6:.2f} MMACs, "
                 f"ORT {latency['dense start']:.3f} ms. Latency: p50 of every call of {args.rounds} rounds x "
                 f"{args.iters} calls (hiap bench's runner and harness), all models alternating in one process "
                 "after training (a run whose ONNX file is no longer in the cache shows -). "
                 "Every run: `peers.jsonl`.")  # fmt: skip
    env = environment(f"{MODEL} from the shipped dense checkpoint, built-in data, {args.epochs} epochs per method, "
                      f"seeds {sorted({r['seed'] for r in runs})}, budgets {budgets}")  # fmt: skip
    env["onnxruntime"] = __import__("onnxruntime").__version__
    env["dense_start"] = {"val_acc": dense_acc, "macs": macs_of(dense), "ort_ms": latency["dense start"]}
    write_results("peers", "Pruning quality against peers (built-in data)", env, runs, table)
    points = [(r["method"], r["budget"], r["mac_fraction"], 100 * r["val_acc"]) for r in runs]
    plot(points, 100 * dense_acc, results_dir() / "peers.png", "Built-in data, equal MACs and epochs (dots: seeds)")


if __name__ == "__main__":
    main()
