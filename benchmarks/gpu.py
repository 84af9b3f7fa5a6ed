"""CUDA benchmarks for a lent GPU: gated vs plain training steps, the default `hiap train` end to end, and PyTorch
inference latency of dense vs pruned networks (eager and CUDA graphs, float32 and float16).

    python benchmarks/gpu.py            # on a machine with a CUDA GPU (~5 min on an H100)
    python benchmarks/gpu.py --quick --device cpu    # a smoke run of the same code path anywhere

1. Training: the trainer's own step in three modes (plain timm + cross-entropy, gated, gated + KD: the default)
   on one fixed batch per model, bfloat16 autocast (the CUDA default) and float32, alternating modes within one
   process; step time from synchronised wall clocks (the step reads its loss back, which synchronises anyway).
   Peak memory: torch.cuda.max_memory_allocated of one mode at a time, minus what was allocated before that mode's
   trainer existed.
2. End to end: `hiap train` with every default (built-in model, data and budget) on this device: wall time,
   accuracy and MACs, to set against the CPU run in results/default_run.
3. Inference: DeiT-Tiny/Small shapes, random weights, learned-like plans at 0.8/0.65/0.5 of dense MACs exported
   with --align 1 and 8 (hiap.export.compact, the module hiap exports), batch 1/8/64; every model of a group alternates
   with the others, timed with CUDA events; realisation = speedup / MAC reduction.
Writes <results>/gpu.json / .md (results dir: see common.results_dir).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from common import environment, learned_like_plan, results_dir, train_run, write_results
from train_overhead import MODES, make_trainer

from hiap.cost import structure_macs
from hiap.export.compact import build_compact, padded_structure
from hiap.gated import describe_vit
from hiap.models import create_model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training(device: torch.device, models: list[tuple[str, int]], rounds: int, steps: int) -> list[dict]:
    runs: list[dict] = []
    for model, batch in models:
        for amp in (True, False):
            extra = {"device": str(device), "amp": amp}
            with tempfile.TemporaryDirectory() as tmp:
                memory: dict[str, float] = {}
                for mode in MODES:  # memory: one mode's trainer alive at a time
                    gc.collect()
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
                    t = make_trainer(model, batch, mode, Path(tmp) / f"m-{mode}", **extra)
                    x, y = (v.to(device) for v in next(t.data.train_batches(0, batch, 0)))
                    t._train_step(x, y)
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(device)
                    t._train_step(x, y)
                    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
                    memory[mode] = (peak - before) / 2**20
                    del t
                torch.manual_seed(0)
                trainers = {m: make_trainer(model, batch, m, Path(tmp) / m, **extra) for m in MODES}
                x, y = (v.to(device) for v in next(trainers["plain"].data.train_batches(0, batch, 0)))
                for t in trainers.values():
                    for _ in range(3):  # warm-up: cuBLAS handles, autotuning, allocator
                        t._train_step(x, y)
                times: dict[str, list[float]] = {m: [] for m in MODES}
                for _ in range(rounds):
                    for m, t in trainers.items():
                        sync(device)
                        t0 = time.perf_counter()
                        for _ in range(steps):
                            t._train_step(x, y)
                        sync(device)
                        times[m].append((time.perf_counter() - t0) / steps * 1e3)
                busy = {m: gpu_busy_ms(t, x, y) for m, t in trainers.items()} if device.type == "cuda" else {}
                del trainers
            for m in MODES:
                ms = statistics.median(times[m])
                runs.append({"part": "training", "model": model, "batch": batch, "amp_bf16": amp, "mode": m,
                             "step_ms": times[m], "step_ms_median": ms,
                             "ratio_to_plain": ms / statistics.median(times["plain"]),
                             "gpu_busy_ms": busy.get(m), "peak_mb": memory[m],
                             "peak_ratio_to_plain": memory[m] / (memory["plain"] or float("nan"))})  # fmt: skip
            print(runs[-1], flush=True)
    return runs


def gpu_busy_ms(trainer: Any, x: torch.Tensor, y: torch.Tensor, steps: int = 3) -> float | None:
    """Milliseconds of GPU kernel time per step (torch.profiler): against the step's wall time it tells whether a
    step is bound by the GPU's arithmetic or by the host launching kernels one by one."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    try:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                trainer._train_step(x, y)
            torch.cuda.synchronize()
        kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
        return sum(e.time_range.elapsed_us() for e in kernels) / steps / 1e3
    except Exception as e:
        print("profiler failed:", e, flush=True)
        return None


def timer(device: torch.device) -> Callable[[Callable[[], Any], int], float]:
    """Milliseconds per call of fn over `iters` calls: CUDA events on a GPU, wall clock elsewhere."""

    def run(fn: Callable[[], Any], iters: int) -> float:
        if device.type != "cuda":
            t0 = time.perf_counter()
            for _ in range(iters):
                fn()
            return (time.perf_counter() - t0) / iters * 1e3
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / iters

    return run


def callable_for(module: torch.nn.Module, x: torch.Tensor, graph: bool) -> Callable[[], Any]:
    """The module's forward on x, or the replay of a CUDA graph captured from it (no per-kernel launch cost)."""
    if not graph:
        return lambda: module(x)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            module(x)
    torch.cuda.current_stream().wait_stream(stream)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        module(x)
    return g.replay


def inference(device: torch.device, shapes: list[str], batches: list[int], levels: list[float], rounds: int,
              iters: int) -> list[dict]:  # fmt: skip
    runs: list[dict] = []
    run = timer(device)
    graphs = [False, True] if device.type == "cuda" else [False]
    for shape in shapes:
        torch.manual_seed(0)
        vit = create_model(shape).eval()
        geom = describe_vit(vit)
        size = vit.patch_embed.img_size
        cpu_models = {"dense": (build_compact(vit, geom.dense_structure(), 1), geom.dense_macs)}
        for level in levels:
            plan = learned_like_plan(geom, 0, level * geom.dense_macs / 1e9)
            for align in (1, 8):
                macs = structure_macs(geom, padded_structure(plan, geom.head_dim, align))
                cpu_models[f"{level:.2f} align {align}"] = (build_compact(vit, plan, align), macs)
        for dtype in (torch.float32, torch.float16):
            if dtype == torch.float16 and device.type != "cuda":
                continue
            models = {n: copy.deepcopy(m).to(device, dtype).eval() for n, (m, _) in cpu_models.items()}
            for batch in batches:
                x = torch.randn(batch, 3, *size, device=device, dtype=dtype)
                for graph in graphs:
                    with torch.inference_mode():
                        try:
                            fns = {n: callable_for(m, x, graph) for n, m in models.items()}
                        except RuntimeError as e:  # a capture failure should not cost the rest of a device run
                            runs.append({"part": "inference", "shape": shape, "batch": batch, "cuda_graph": graph,
                                         "error": str(e).splitlines()[0]})  # fmt: skip
                            continue
                        for fn in fns.values():
                            run(fn, 3)  # warm-up
                        times: dict[str, list[float]] = {n: [] for n in fns}
                        for _ in range(rounds):
                            for n, fn in fns.items():
                                times[n].append(run(fn, iters))
                    dense_ms = statistics.median(times["dense"])
                    for n, (_, macs) in cpu_models.items():
                        ms = statistics.median(times[n])
                        mac_ratio = geom.dense_macs / macs
                        runs.append({"part": "inference", "shape": shape, "dtype": str(dtype).split(".")[1],
                                     "batch": batch, "cuda_graph": graph, "model": n, "gmacs": macs / 1e9,
                                     "ms": times[n], "ms_median": ms, "dense_ms": dense_ms,
                                     "speedup": dense_ms / ms, "mac_ratio": mac_ratio,
                                     "realisation": dense_ms / ms / mac_ratio})  # fmt: skip
                    speedups = {n: round(dense_ms / statistics.median(v), 2) for n, v in times.items()}
                    print(shape, dtype, batch, "graph" if graph else "eager", f"{dense_ms:.3f}", speedups, flush=True)
            del models
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny settings: checks the code path, not the numbers")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument(
        "--parts",
        nargs="+",
        default=["training", "end_to_end", "inference"],
        choices=["training", "end_to_end", "inference"],
    )
    parser.add_argument(
        "--train-models",
        nargs="+",
        metavar="MODEL:BATCH",
        help="training part's models (default: the built-in at 128, DeiT-Tiny 128, DeiT-Small 64)",
    )
    parser.add_argument("--name", default="gpu", help="results file name (<results>/<name>.json / .md)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run on a GPU machine, or pass --quick --device cpu for a smoke run")
    if args.quick:
        train_models, shapes, batches, levels = [("hiap_vit_fmnist_tiny", 16)], ["deit_tiny_patch16_224"], [1], [0.5]
        rounds, iters = 1, 1
    else:
        train_models = [("hiap_vit_fmnist", 128), ("deit_tiny_patch16_224", 128), ("deit_small_patch16_224", 64)]
        shapes, batches, levels = ["deit_tiny_patch16_224", "deit_small_patch16_224"], [1, 8, 64], [0.8, 0.65, 0.5]
        rounds, iters = args.rounds, args.iters
    if args.train_models:
        train_models = [(m.rsplit(":", 1)[0], int(m.rsplit(":", 1)[1])) for m in args.train_models]
    recipe = [f"device {device}"]
    if "training" in args.parts:
        recipe.append(f"training: {train_models}")
    if "inference" in args.parts:
        recipe.append(f"inference: {shapes} x batches {batches} x plans {levels}, {rounds} rounds x {iters} calls "
                      "alternating")  # fmt: skip
    env = environment(", ".join(recipe))
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(), tf32_matmul=torch.backends.cuda.matmul.allow_tf32)  # fmt: skip
    runs: list[dict] = []
    partial = results_dir() / f"{args.name}.partial.json"  # what a run cut off by a device lease leaves behind
    if "training" in args.parts:
        runs += training(device, train_models, max(rounds, 2) if args.quick else 5, 2 if args.quick else 10)
        partial.write_text(json.dumps({"environment": env, "runs": runs}, indent=1))
    if "end_to_end" in args.parts:
        t0 = time.perf_counter()
        if args.quick:
            e2e = train_run(device=str(device), model="hiap_vit_fmnist_tiny", pretrained="none", epochs=1,
                            train_images=256, batch_size=64)  # fmt: skip
        else:
            e2e = train_run(device=str(device))
        keys = ("val_acc", "pruned_gmacs", "target_gmacs", "dense_gmacs", "epochs")
        runs.append({"part": "end_to_end", "seconds": time.perf_counter() - t0, **{k: e2e.get(k) for k in keys}})
        print(runs[-1], flush=True)
        partial.write_text(json.dumps({"environment": env, "runs": runs}, indent=1))
    if "inference" in args.parts:
        runs += inference(device, shapes, batches, levels, rounds, iters)
    partial.unlink(missing_ok=True)
    table: list[str] = []
    if "training" in args.parts:
        table += ["## Training step (trainer's own step, one fixed batch)", "",
                  "| model | batch | autocast bf16 | mode | step ms | ratio to plain | GPU kernel ms | peak MB "
                  "| ratio to plain |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in (r for r in runs if r["part"] == "training"):
        ratio = f"{r['peak_ratio_to_plain']:.2f}" if r["peak_mb"] else "-"
        busy = f"{r['gpu_busy_ms']:.2f}" if r.get("gpu_busy_ms") is not None else "-"
        table.append(f"| {r['model']} | {r['batch']} | {r['amp_bf16']} | {r['mode']} | {r['step_ms_median']:.2f} | "
                     f"{r['ratio_to_plain']:.2f} | {busy} | {r['peak_mb']:.0f} | {ratio} |")  # fmt: skip
    for e in (r for r in runs if r["part"] == "end_to_end"):
        table += ["", "## `hiap train` with every default", "",
                  f"{e['seconds']:.0f} s wall, val top-1 {100 * e['val_acc']:.2f} %, {1e3 * e['pruned_gmacs']:.2f} "
                  f"MMACs (target {1e3 * e['target_gmacs']:.2f}), {e['epochs']} epochs."]  # fmt: skip
    if "inference" in args.parts:
        table += ["", "## Inference latency, PyTorch (median ms per call; speedup and realisation vs dense in the "
                  "same group)", "", "| shape | dtype | batch | CUDA graph | plan | GMACs | dense ms | ms | speedup "
                  "| MAC ratio | realisation |", "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in (r for r in runs if r["part"] == "inference" and r.get("model", "dense") != "dense"):
        table.append(f"| {r['shape'].split('_')[1]} | {r['dtype']} | {r['batch']} | {r['cuda_graph']} | {r['model']} "
                     f"| {r['gmacs']:.3f} | {r['dense_ms']:.3f} | {r['ms_median']:.3f} | {r['speedup']:.2f} | "
                     f"{r['mac_ratio']:.2f} | {r['realisation']:.2f} |")  # fmt: skip
    write_results(args.name, f"GPU benchmarks ({env.get('gpu', device)})", env, runs, table)


if __name__ == "__main__":
    main()
