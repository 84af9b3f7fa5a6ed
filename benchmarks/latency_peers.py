"""Pruning quality against peers at equal measured latency (ONNX Runtime CPU, x86-cpu profile).

    python benchmarks/latency_peers.py [--task builtin|cifar10]
                                       --part table|choose|train|match|finetune|measure|report|all
                                       [--targets 0.65 0.45] [--seeds 0 1 2] [--threads 1]

The MAC comparison (peers.py) holds compute equal; this one holds the measured latency equal, which is what a user
with a latency budget buys. Per target (a fraction of the table's dense latency) and seed:
- table: the task's latency table, timed here with the x86-cpu profile (2 threads, batch 1), with its q/k axis;
- choose (built-in data only): the recipe under a latency target, chosen on the search-3k split (3,000 images
  carved from the training set, its own dense start; benchmarks/search_split.py): the default (q/k dims gated,
  priced by the table's q/k axis) against the paper's search space (qk_gates false), same target, table and seeds
  (--choose-targets);
- train: HiAP's default recipe trained to the target (`--target-latency-ms` on that table) and exported;
- match: every peer (uniform l1, l1 FFN-only, Torch-Pruning; peers.py's pruning code) pruned at 18 ratios without
  training, exported, and timed alternating with every HiAP network of the target; near where the peer's measured
  latency crosses each seed's HiAP network, ratios every 0.01 are timed again the same way and the one measured
  closest is that seed's (none where no candidate comes within 5 %: the peer cannot reach that latency). Peers are
  matched on measurement, not on the table: the table prices a block's widest head and the align-8 grid of hiap's
  export, while a uniform cut leaves every head at an unaligned width (measured slower than a narrower aligned one);
- finetune: each peer pruned at its ratio and trained like peers.py (the same epochs x images, recipe and KD);
- measure: every final network and the dense start timed alternating in one process (p50 of all calls, and the
  median of the fastest round as the tables use); accuracy on the held-out split (the built-in validation split;
  CIFAR-10's official test split, the setting's dense start and 2 epochs x 45,000 images per network).
The parts that time (table, match, measure) want a quiet machine. Resumable: trained networks are appended to
results/latency_peers[-cifar10].jsonl (the choice: latency_peers_choice.jsonl) and skipped on a rerun; ratios and
timings go to results/latency_peers[-cifar10].json.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import environment, load_runs, onnx_latency, results_dir
from peers import finetune, plot, prune
from tasks import Task, builtin_task, cifar_task

from hiap.base.lut import read_lut, write_lut
from hiap.devices.profile import load_profile
from hiap.export.onnx_io import onnx_cost, torch2onnx
from hiap.export.probes import profile_model
from hiap.gated import describe_vit
from hiap.latency import LatencyCost
from hiap.models import data_config
from hiap.runtime.harness import Latency

CACHE = Path(tempfile.gettempdir()) / "hiap-latency-peers"
TITLES = {"builtin": "built-in data", "cifar10": "CIFAR-10 CPU setting"}
PEERS = ("uniform", "l1-ffn", "torch-pruning")
RATIOS = tuple(round(r, 2) for r in np.arange(0.05, 0.95, 0.05))
EPOCHS = 6  # as peers.py and hiap train's default on the built-in data
ROUNDS, CALLS = 40, 30  # a pass: every network called CALLS times per round, in turn


@dataclass
class Setup:
    """One task's comparison: its dense start, data and hiap train settings, where its files go, its result names."""

    name: str  # builtin | cifar10
    task: Task
    cache: Path  # latency table, candidates, final networks, HiAP runs

    @property
    def stem(self) -> str:
        return "latency_peers" if self.name == "builtin" else f"latency_peers-{self.name}"

    @property
    def lut(self) -> Path:
        return self.cache / "lut.json"

    @property
    def input_size(self) -> tuple[int, ...]:
        return tuple(data_config(self.task.dense)["input_size"])

    def onnx(self, name: str) -> Path:
        return self.cache / "final" / f"{name}.onnx"

    def dense_ms(self) -> float:
        return LatencyCost(read_lut(self.lut), describe_vit(self.task.dense), self.task.model).dense

    def target_ms(self, fraction: float) -> float:
        return round(fraction * self.dense_ms(), 4)

    def dense_onnx_macs(self) -> int:
        path = self.onnx("dense-start")
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            torch2onnx(self.task.dense, self.input_size, path)
        return onnx_cost(path)[0]


def setup(name: str) -> Setup:
    if name == "cifar10":
        return Setup(name, cifar_task("test"), CACHE / "cifar10")
    return Setup(name, builtin_task("val", EPOCHS), CACHE)


def part_table(s: Setup) -> None:
    if not s.lut.is_file():
        s.cache.mkdir(parents=True, exist_ok=True)
        write_lut(s.lut, profile_model(s.task.model, s.task.model_kwargs, load_profile("x86-cpu")))
    print(f"table: dense {s.dense_ms():.4f} ms predicted ({s.lut})", flush=True)


def _log_run(log: Path, run: dict[str, Any]) -> None:
    print(json.dumps(run), flush=True)
    with open(log, "a") as f:
        f.write(json.dumps(run) + "\n")


def _record(method: str, target: float, seed: int, acc: float, onnx: Path, dense_macs: int,
            t0: float) -> dict[str, Any]:  # fmt: skip
    macs, params = onnx_cost(onnx)
    return {"method": method, "target": target, "seed": seed, "val_acc": acc, "onnx_macs": macs,
            "mac_fraction": macs / dense_macs, "onnx_params": params, "onnx": onnx.name,
            "seconds": time.perf_counter() - t0, "threads": torch.get_num_threads(),
            "date": time.strftime("%Y-%m-%d %H:%M")}  # fmt: skip


CHOICES: dict[str, dict[str, Any]] = {"hiap": {}, "hiap-no-qk": {"qk_gates": False}}


def part_choose(s: Setup, targets: list[float], seeds: list[int], log: Path) -> None:
    """The default and the paper's search space to the same latency targets on the search-3k split."""
    from rich.console import Console
    from search_split import dense_start, search_data

    from hiap.config import TrainConfig
    from hiap.train import Trainer

    start = dense_start(Path(tempfile.gettempdir()) / "hiap-search-split", "search-3k")
    for target in targets:
        for seed in seeds:
            for variant, overrides in CHOICES.items():
                if any((r["variant"], r["target"], r["seed"]) == (variant, target, seed) for r in load_runs(log)):
                    continue
                t0 = time.perf_counter()
                with tempfile.TemporaryDirectory() as tmp:
                    cfg = TrainConfig(target_latency_ms=s.target_ms(target), lut=str(s.lut), seed=seed, epochs=EPOCHS,
                                      pretrained=str(start), out=f"{tmp}/run", **overrides)  # fmt: skip
                    s = Trainer(cfg, Console(quiet=True), make_data=lambda c: search_data(c, "search-3k")).run()
                keys = ("val_acc", "target_latency_ms", "predicted_latency_ms", "target_error", "kept_heads",
                        "kept_ffn", "kept_neurons", "kept_qk_dims")  # fmt: skip
                _log_run(log, {"variant": variant, "target": target, "seed": seed} | {k: s[k] for k in keys}
                         | {"mac_fraction": s["pruned_gmacs"] / s["dense_gmacs"], "seconds": time.perf_counter() - t0,
                            "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d %H:%M")})  # fmt: skip


def part_train(s: Setup, targets: list[float], seeds: list[int], log: Path) -> None:
    """HiAP's default recipe to each latency target, exported (the compact network hiap export writes)."""
    from rich.console import Console

    from hiap.config import TrainConfig
    from hiap.export.artifact import export_source
    from hiap.export.source import source_from_run
    from hiap.train import Trainer

    dense_macs = s.dense_onnx_macs()
    for target in targets:
        for seed in seeds:
            if any((r["method"], r["target"], r["seed"]) == ("hiap", target, seed) for r in load_runs(log)):
                continue
            t0 = time.perf_counter()
            run = s.cache / "runs" / f"hiap-{target}-{seed}"
            cfg = TrainConfig(target_latency_ms=s.target_ms(target), lut=str(s.lut), seed=seed, out=str(run),
                              **s.task.train)  # fmt: skip
            resume = (run / "checkpoint.safetensors").is_file()
            summary = Trainer(cfg, Console(quiet=True), resume=resume, make_data=s.task.make_data).run()
            export_source(source_from_run(run), run / "export", force=True)
            onnx = s.onnx(f"hiap-{target}-{seed}")
            onnx.parent.mkdir(parents=True, exist_ok=True)
            onnx.write_bytes((run / "export" / "model.onnx").read_bytes())
            kept = {k: summary[k] for k in ("kept_heads", "kept_ffn", "kept_neurons", "target_error")}
            row = _record("hiap", target, seed, summary["val_acc"], onnx, dense_macs, t0)
            _log_run(log, row | kept | {"target_ms": summary["target_latency_ms"],
                                        "predicted_ms": summary["predicted_latency_ms"]})  # fmt: skip


def _time(paths: dict[str, Path]) -> dict[str, Latency]:
    """Per network, the latency of ROUNDS rounds that call every network CALLS times in turn (x86-cpu's runner
    settings: 2 intra-op threads, batch 1; spinning off between networks), by hiap bench's runner and harness."""
    return onnx_latency(paths, ROUNDS, CALLS, warmup=10)


def _crossing(ratios: list[float], ms: list[float], target: float) -> float | None:
    """The smallest ratio where the measured latency falls to `target` (linear between neighbouring candidates)."""
    for (r0, m0), (r1, m1) in itertools.pairwise(zip(ratios, ms, strict=True)):
        if m0 >= target >= m1 and m0 > m1:
            return r0 + (m0 - target) / (m0 - m1) * (r1 - r0)
    return None


def _candidates(s: Setup, method: str, ratios: list[float]) -> dict[str, Path]:
    """The peer pruned at each ratio (no training) and exported; ratios that empty a layer are left out."""
    out = {}
    for ratio in ratios:
        path = s.cache / "candidates" / f"{method}-{ratio}.onnx"
        if not path.is_file():
            try:
                model = prune(s.task.dense, method, ratio, s.task.data)
            except ValueError:  # emptied a layer: no network at this ratio
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            torch2onnx(model.eval(), s.input_size, path)
        out[f"{method} {ratio}"] = path
    return out


def part_match(s: Setup, targets: list[float], seeds: list[int], log: Path, results: dict[str, Any]) -> None:
    """Each peer's ratio per seed, on measured latency: a coarse pass over RATIOS finds where the peer's latency
    crosses each HiAP network's, a fine pass (every 0.01 within 0.04 of each crossing) picks the ratio whose network
    measured closest to it. Latency is not monotone in the ratio (a head width off the multiples of 8 runs slower
    than a wider aligned one), so the fine pass measures instead of interpolating. Both passes time the candidates
    alternating with the HiAP networks they are matched to."""
    coarse = {m: _candidates(s, m, list(RATIOS)) for m in PEERS}
    for target in targets:
        hiap = {f"hiap {r['seed']}": s.onnx(f"hiap-{target}-{r['seed']}") for r in load_runs(log)
                if (r["method"], r["target"]) == ("hiap", target) and r["seed"] in seeds}  # fmt: skip
        if not hiap:
            print(f"match: no HiAP network at {target} yet (--part train)", flush=True)
            continue
        steady = {k: v.steady for k, v in _time(hiap | {k: p for c in coarse.values() for k, p in c.items()}).items()}
        fine: dict[str, dict[str, Path]] = {}
        for method in PEERS:
            ratios = [float(k.split()[1]) for k in coarse[method]]
            crossings = [_crossing(ratios, [steady[k] for k in coarse[method]], steady[h]) for h in hiap]
            near = {round(c + d / 100, 2) for c in crossings if c is not None for d in range(-4, 5)}
            fine[method] = _candidates(s, method, sorted(r for r in near if 0 < r < 1))
        timed = {k: v.steady for k, v in _time(hiap | {k: p for c in fine.values() for k, p in c.items()}).items()}
        entry: dict[str, Any] = {"timed": time.strftime("%Y-%m-%d %H:%M"), "rounds": ROUNDS, "calls": CALLS,
                                 "coarse_ms": steady, "fine_ms": timed, "ratios": {}}  # fmt: skip
        for method in PEERS:
            entry["ratios"][method] = {}
            for h in hiap:
                # the closest measured candidate, if the peer can reach within 5 % of the HiAP network at all
                best = min(fine[method], key=lambda k: abs(timed[k] - timed[h]), default=None)
                close = best is not None and abs(timed[best] / timed[h] - 1) <= 0.05
                entry["ratios"][method][h.split()[1]] = float(best.split()[1]) if close else None
        results.setdefault("match", {})[str(target)] = entry
        _save(s, results)
        print(f"match {target}: {json.dumps(entry['ratios'])}", flush=True)


def part_finetune(s: Setup, targets: list[float], seeds: list[int], log: Path, results: dict[str, Any]) -> None:
    """Each peer pruned at its matched ratio and trained like peers.py."""
    dense, data = s.task.dense, s.task.data
    dense_macs = s.dense_onnx_macs()
    for target in targets:
        match = results.get("match", {}).get(str(target))
        for seed in seeds:
            for method in PEERS:
                ratio = (match or {}).get("ratios", {}).get(method, {}).get(str(seed))
                done = any((r["method"], r["target"], r["seed"]) == (method, target, seed) for r in load_runs(log))
                if done or ratio is None:
                    if not done:
                        print(f"finetune: {method} {target} seed {seed} has no matched ratio", flush=True)
                    continue
                t0 = time.perf_counter()
                model = prune(dense, method, ratio, data)
                teacher = copy.deepcopy(dense).eval().requires_grad_(False)
                acc = finetune(model, teacher, data, s.task.epochs, seed)
                onnx = s.onnx(f"{method}-{target}-{seed}")
                torch2onnx(model.eval(), s.input_size, onnx)
                _log_run(log, _record(method, target, seed, acc, onnx, dense_macs, t0) | {"prune_ratio": ratio})


def part_measure(s: Setup, log: Path, results: dict[str, Any]) -> None:
    """Every final network and the dense start, alternating in one pass (appended; earlier passes kept)."""
    s.dense_onnx_macs()
    runs = load_runs(log)
    paths = {"dense start": s.onnx("dense-start")} | {r["onnx"]: s.onnx(r["onnx"][: -len(".onnx")]) for r in runs}
    samples = _time(paths)
    results.setdefault("measure", []).append({
        "timed": time.strftime("%Y-%m-%d %H:%M"), "rounds": ROUNDS, "calls": CALLS,
        "p50_ms": {k: v.p50 for k, v in samples.items()}, "steady_ms": {k: v.steady for k, v in samples.items()},
    })  # fmt: skip
    _save(s, results)


def _save(s: Setup, results: dict[str, Any]) -> None:
    (results_dir() / f"{s.stem}.json").write_text(json.dumps(results, indent=1) + "\n")


def _choice_lines(log: Path) -> list[str]:
    """The search-split comparison: per target and variant, top-1 on the carved images, and the per-seed gap."""
    runs = load_runs(log)
    if not runs:
        return []
    lines = ["## The recipe under a latency target, chosen on the search-3k split", "",
             "3,000 images carved from the training set, its own dense start; the same table, target and seeds for "
             f"both; top-1 on the carved images. Every run: `{log.name}`.", "",
             "| target (of dense table ms) | variant | seeds | top-1 % (mean +- sd) | per seed | predicted ms / "
             "target | MACs (of dense) | vs no q/k per seed (pp) |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for target in sorted({r["target"] for r in runs}, reverse=True):
        base = {r["seed"]: r for r in runs if (r["variant"], r["target"]) == ("hiap-no-qk", target)}
        for variant in CHOICES:
            rs = sorted((r for r in runs if (r["variant"], r["target"]) == (variant, target)), key=lambda r: r["seed"])
            if not rs:
                continue
            accs = [100 * r["val_acc"] for r in rs]
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            land = statistics.mean(r["predicted_latency_ms"] / r["target_latency_ms"] for r in rs)
            gap = [100 * (r["val_acc"] - base[r["seed"]]["val_acc"]) for r in rs if r["seed"] in base]
            lines.append(f"| {target} | {variant} | {len(rs)} | {statistics.mean(accs):.2f} +- {sd:.2f} | "
                         f"{' / '.join(f'{a:.2f}' for a in accs)} | {land:.3f} | "
                         f"{statistics.mean(r['mac_fraction'] for r in rs):.3f} | "
                         f"{' / '.join(f'{g:+.2f}' for g in gap) if variant != 'hiap-no-qk' else '-'} |")  # fmt: skip
    return [*lines, ""]


def _unreached(results: dict[str, Any]) -> str:
    """Per target, each peer matched for no seed: its fastest candidate against the HiAP networks, in the same pass."""
    notes = []
    for target, entry in results.get("match", {}).items():
        coarse = entry["coarse_ms"]
        hiap = [ms for k, ms in coarse.items() if k.startswith("hiap ")]
        for method in PEERS:
            timed = {k: ms for k, ms in coarse.items() if k.startswith(f"{method} ")}
            if timed and not any(r is not None for r in entry["ratios"][method].values()):
                best = min(timed, key=timed.__getitem__)
                notes.append(f"at {target}, {method}'s fastest candidate (ratio {best.split()[1]}) ran "
                             f"{timed[best]:.3f} ms against HiAP's {min(hiap):.3f}-{max(hiap):.3f} ms")  # fmt: skip
    return "; ".join(notes) or "every peer reached every target"


def part_report(s: Setup, log: Path, results: dict[str, Any]) -> None:
    runs = load_runs(log)
    choice = _choice_lines(results_dir() / "latency_peers_choice.jsonl") if s.name == "builtin" else []
    md = results_dir() / f"{s.stem}.md"
    if not results.get("measure"):
        if choice:
            md.write_text("\n".join(choice))
            print("\n".join(choice))
        raise SystemExit("nothing measured yet: --part measure")
    last = results["measure"][-1]
    p50, steady = last["p50_ms"], last["steady_ms"]
    dense_p50 = p50["dense start"]
    held_out = "built-in validation split" if s.name == "builtin" else "official CIFAR-10 test split"
    lines = [
        f"# Pruning quality at equal measured latency ({TITLES[s.name]}, ONNX Runtime CPU, x86-cpu profile)", "",
        f"{_env_line(results, runs)}", "",
        f"Measuring pass {len(results['measure'])} ({last['timed']}): every network {last['calls']} calls in each of "
        f"{last['rounds']} rounds, all alternating in one process; dense start p50 {dense_p50:.4f} ms. Top-1 on the "
        f"{held_out} (held out; no choice is made on it). Each peer's ratio was matched on measured "
        "latency to that seed's HiAP network in an earlier pass (benchmarks/latency_peers.py); 'p50 vs HiAP' is "
        "what is left of the difference in this pass (+: the peer is slower, it had more time). A method missing at a "
        "target has no candidate within 5 % of that latency (l1 FFN-only cannot cut attention; steady ms of the "
        f"coarse matching pass): {_unreached(results)}.", "",
        "| target (of dense table ms) | method | seeds | top-1 % (mean +- sd) | p50 ms (mean) | p50 vs HiAP per seed | "
        "speed-up (p50) | MACs (of dense) | top-1 vs HiAP per seed (pp) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    points = []
    for target in sorted({r["target"] for r in runs}, reverse=True):
        hiap = {r["seed"]: r for r in runs if (r["method"], r["target"]) == ("hiap", target)}
        for method in ("hiap", *PEERS):
            rs = sorted((r for r in runs if (r["method"], r["target"]) == (method, target)), key=lambda r: r["seed"])
            if not rs:
                continue
            accs = [100 * r["val_acc"] for r in rs]
            ms = [p50[r["onnx"]] for r in rs if r["onnx"] in p50]
            vs = [p50[r["onnx"]] / p50[hiap[r["seed"]]["onnx"]] - 1 for r in rs if r["seed"] in hiap]
            diff = [100 * (r["val_acc"] - hiap[r["seed"]]["val_acc"]) for r in rs if r["seed"] in hiap]
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            lines.append(
                f"| {target} | {method} | {len(rs)} | {statistics.mean(accs):.2f} +- {sd:.2f} | "
                f"{statistics.mean(ms):.4f} | {' / '.join(f'{v:+.1%}' for v in vs)} | "
                f"{dense_p50 / statistics.mean(ms):.2f}x | "
                f"{statistics.mean(r['mac_fraction'] for r in rs):.3f} | "
                f"{' / '.join(f'{d:+.2f}' for d in diff) if method != 'hiap' else '-'} |"
            )
            points += [(method, target, p50[r["onnx"]] / dense_p50, 100 * r["val_acc"]) for r in rs]
    lines += ["", *choice]
    lines += ["", "Steady latency (median of the fastest round, as the tables use) of the same pass, ms:", "",
              "| network | p50 | steady |", "|---|---|---|"]  # fmt: skip
    lines += [f"| {k[: -len('.onnx')] if k.endswith('.onnx') else k} | {p50[k]:.4f} | {steady[k]:.4f} |"
              for k in sorted(p50)]  # fmt: skip
    md.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(points, None, results_dir() / f"{s.stem}.png",
         f"{TITLES[s.name]} at equal measured latency: dots are seeds", f"{held_out.split(' split')[0]} top-1 (%)",
         xlabel="measured p50 latency (of the dense start's)")  # fmt: skip


def _env_line(results: dict[str, Any], runs: list[dict[str, Any]]) -> str:
    env = results["environment"]
    threads = "/".join(str(t) for t in sorted({r["threads"] for r in runs}))
    return (f"{env['machine']}, CPU {env['cpu']['model']} ({' '.join(env['cpu']['flags'])}), torch {env['torch']}, "
            f"onnxruntime {env['onnxruntime']}, hiap {env['hiap']}, {threads} torch thread(s) per training run, "
            f"latency on 2 ONNX Runtime threads, {env['date']}; {env['recipe']}.")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parts = ("table", "choose", "train", "match", "finetune", "measure", "report")
    parser.add_argument("--task", choices=tuple(TITLES), default="builtin")
    parser.add_argument("--part", choices=(*parts, "all"), default="all")
    parser.add_argument("--targets", type=float, nargs="+", default=[0.65, 0.45],
                        help="latency targets, fractions of the table's dense latency")  # fmt: skip
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--choose-targets", type=float, nargs="+", default=[0.45],
                        help="choose: latency targets of the search-split comparison")  # fmt: skip
    parser.add_argument("--threads", type=int, default=0, help="torch threads while training (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    s = setup(args.task)
    log = results_dir() / f"{s.stem}.jsonl"
    path = results_dir() / f"{s.stem}.json"
    results: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    if "environment" not in results:
        images = "12,000" if s.name == "builtin" else "45,000"
        recipe = f"{s.task.epochs} epochs x {images} images per method, KD from the dense start, seeds {args.seeds}"
        env = environment(recipe)
        env["onnxruntime"] = __import__("onnxruntime").__version__
        results["environment"] = env
    for part in parts if args.part == "all" else (args.part,):
        if part == "table":
            part_table(s)
        elif part == "choose":
            if s.name != "builtin":
                print("choose: the recipe is chosen on the built-in data's search-3k split only", flush=True)
                continue
            part_choose(s, args.choose_targets, args.seeds, results_dir() / "latency_peers_choice.jsonl")
        elif part == "train":
            part_train(s, args.targets, args.seeds, log)
        elif part == "match":
            part_match(s, args.targets, args.seeds, log, results)
        elif part == "finetune":
            part_finetune(s, args.targets, args.seeds, log, results)
        elif part == "measure":
            part_measure(s, log, results)
        else:
            part_report(s, log, results)


if __name__ == "__main__":
    main()
