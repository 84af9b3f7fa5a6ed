"""INT8 on the CPU: which quantization recipe keeps the accuracy (trained models), and how much faster INT8 runs
(DeiT-Tiny/Small-shaped models, dense and pruned to half the MACs), on ONNX Runtime and OpenVINO.

    python benchmarks/quantization.py [--run RUN] [--cifar-onnx FILE --cifar-data ROOT] [--part accuracy|latency|all]

Accuracy: each recipe (calibration method x operator set x activation type, and dynamic quantization) quantizes the
trained model's FP32 file with 512 calibration images drawn from its training split (seed 0). The recipe is chosen on
2,000 other training images (seed 1, none of them calibration images), then every recipe is reported on the
validation split (the built-in 3,000; CIFAR-10's official 10,000 test images). RUN is a `hiap train` run on the
built-in data (default runs/hiap_vit_fmnist-macs0.5, which `python -m hiap pipeline` writes); the CIFAR-10 model is
the HiAP 50 % network of benchmarks/cifar10.py (its ONNX file and the ImageFolder root it trained on).

Latency: random weights (latency does not depend on them), batch 1 and 8, every model/precision/runtime alternating
round by round in one process, median of the rounds. Writes benchmarks/results/quantization.json / .md.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from common import environment, onnx_latency, results_dir

from hiap.base.errors import HiapError
from hiap.base.precision import BF16, FP16, FP32, OPENVINO_HINTS
from hiap.cost import BlockStructure, Structure, structure_macs
from hiap.export.compact import build_compact
from hiap.export.onnx_io import simplify_onnx, torch2onnx
from hiap.export.quantize import Recipe, quantize_file
from hiap.gated import describe_vit
from hiap.models import create_model
from hiap.runtime.base import Runner
from hiap.runtime.data import Preprocessing, builtin_images, image_folder_files, load_image
from hiap.runtime.harness import interleaved_latency, random_feeds
from hiap.runtime.ort_runner import OrtRunner
from hiap.runtime.ov_runner import OvRunner, import_openvino

CALIBRATION, SELECTION = 512, 2000
# Every recipe measured: (name, Recipe). The default ONNX Runtime recipe and the TensorRT one are among them.
RECIPES = [
    (f"static {cal} {ops} {act}", Recipe("int8", cal, ops, act))
    for act in ("u8",)
    for ops in ("matmul", "matmul+attention", "all")
    for cal in ("minmax", "entropy", "percentile")
] + [
    (
        "static minmax matmul+attention u8, full 8-bit weights",
        Recipe("int8", "minmax", "matmul+attention", "u8", False),
    ),
    ("static minmax matmul+attention s8 (TensorRT)", Recipe("int8", "minmax", "matmul+attention", "s8", False)),
    ("dynamic matmul", Recipe("int8-dynamic", "minmax", "matmul")),
]


def cpu_flags() -> list[str]:
    """The CPU's features that decide its int8 and bf16/fp16 kernels (hiap.base.cpu.CPU_FLAGS)."""
    from hiap.devices.host import detect_host

    return detect_host().cpu_flags


def cpu_class() -> str:
    """The class of CPU a latency result belongs to: its best matrix instructions."""
    flags = set(cpu_flags())
    if "amx_int8" in flags:
        return "amx"
    return "avx512-vnni" if "avx512_vnni" in flags else "avx2" if "avx2" in flags else "other"


def session(path: Path, threads: int = 2) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def logits(sess: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    name = sess.get_inputs()[0].name
    fixed = sess.get_inputs()[0].shape[0]
    step = fixed if isinstance(fixed, int) else 64
    return np.concatenate([sess.run(None, {name: x[i : i + step]})[0] for i in range(0, len(x), step)])


# -- accuracy on trained models --


def builtin_model(run: Path, tmp: Path) -> dict[str, Any]:
    """The built-in run exported to FP32 ONNX, its calibration, selection and validation images."""
    from hiap.export.artifact import export_source
    from hiap.export.source import source_from_run

    if not (run / "checkpoint.safetensors").is_file():
        raise SystemExit(f"{run} is not a hiap run: run `python -m hiap pipeline` first, or pass --run")
    report = export_source(source_from_run(run), tmp / "builtin")
    pre = Preprocessing.from_metadata(report["metadata"], str(run))
    n_train = 12_000
    order = np.random.default_rng(0).choice(n_train, size=CALIBRATION, replace=False)
    rest = np.setdiff1d(np.arange(n_train), order)
    select = np.random.default_rng(1).choice(rest, size=SELECTION, replace=False)
    return {
        "name": "built-in (Fashion-MNIST, HiAP 50 %)",
        "fp32": tmp / "builtin" / "model.onnx",
        "calibration": builtin_images(pre, "train", np.sort(order))[0],
        "selection": builtin_images(pre, "train", np.sort(select)),
        "validation": builtin_images(pre, "val"),
    }


def folder_images(files: list[tuple[Path, int]], pre: Preprocessing) -> tuple[np.ndarray, np.ndarray]:
    return pre.normalise(np.stack([load_image(f, pre) for f, _ in files])), np.asarray([y for _, y in files])


def cifar_model(onnx_path: Path, root: Path) -> dict[str, Any]:
    """The CIFAR-10 HiAP network (mean/std 0.5, 32x32, as benchmarks/cifar10.py trains it)."""
    pre = Preprocessing((3, 32, 32), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic", 1.0)
    classes, train = image_folder_files(root / "train")
    index = {c: i for i, c in enumerate(classes)}
    train_l = [(f, index[c]) for f, c in train]
    picked = np.random.default_rng(0).choice(len(train_l), size=CALIBRATION + SELECTION, replace=False)
    _, val = image_folder_files(root / "val")
    return {
        "name": "CIFAR-10 (CPU setting, HiAP 50 %)",
        "fp32": onnx_path,
        "calibration": folder_images([train_l[i] for i in picked[:CALIBRATION]], pre)[0],
        "selection": folder_images([train_l[i] for i in picked[CALIBRATION:]], pre),
        "validation": folder_images([(f, index[c]) for f, c in val], pre),
    }


def accuracy_part(models: list[dict[str, Any]], tmp: Path) -> list[dict[str, Any]]:
    rows = []
    for m in models:
        ref = session(m["fp32"])
        base = {split: 100 * float((logits(ref, m[split][0]).argmax(-1) == m[split][1]).mean())
                for split in ("selection", "validation")}  # fmt: skip
        rows.append({"model": m["name"], "recipe": "fp32", "selection_top1": base["selection"],
                     "val_top1": base["validation"], "file_bytes": m["fp32"].stat().st_size})  # fmt: skip
        print(rows[-1], flush=True)
        for name, recipe in RECIPES:
            out = tmp / f"{abs(hash((m['name'], name)))}.onnx"
            done = quantize_file(m["fp32"], out, recipe, m["calibration"], {})
            sess = session(out)
            row = {"model": m["name"], "recipe": name, "quantize_seconds": done["seconds"],
                   "file_bytes": out.stat().st_size}  # fmt: skip
            for split in ("selection", "validation"):
                x, y = m[split]
                out_logits, ref_logits = logits(sess, x), logits(ref, x)
                row[f"{split}_top1" if split == "selection" else "val_top1"] = 100 * float(
                    (out_logits.argmax(-1) == y).mean()
                )
                if split == "validation":
                    row["val_top1_agreement"] = float((out_logits.argmax(-1) == ref_logits.argmax(-1)).mean())
                    row["val_max_abs_diff"] = float(np.abs(out_logits - ref_logits).max())
            row["val_drop_pp"] = base["validation"] - row["val_top1"]
            rows.append(row)
            print(row, flush=True)
    return rows


# -- latency on DeiT-shaped models --


def half_plan(geom: Any) -> Structure:
    """Every head kept with value dims at 3/4, FFN neurons trimmed uniformly to <= half the dense MACs."""
    heads = tuple(range(geom.num_heads))
    dims = tuple(tuple(range(geom.head_dim * 3 // 4)) for _ in heads)
    for k in range(geom.hidden, 0, -8):
        s = Structure(blocks=(BlockStructure(heads, dims, True, tuple(range(k))),) * geom.depth)
        if structure_macs(geom, s) <= 0.5 * geom.dense_macs:
            return s
    raise SystemExit("no plan reaches half the MACs")


# The INT8 files the latency part times: the default static recipe, the attention matmuls left in float, dynamic.
LATENCY_RECIPES = (
    ("int8", Recipe.for_runtime("int8")),
    ("int8 weight matmuls only", Recipe("int8", "minmax", "matmul")),
    ("int8-dynamic", Recipe.for_runtime("int8-dynamic")),
)


def latency_models(tmp: Path, archs: tuple[str, ...] = ("deit_tiny_patch16_224", "deit_small_patch16_224"),
                   kinds: tuple[str, ...] = ("dense", "pruned 0.5"),
                   recipes: tuple[tuple[str, Recipe], ...] = LATENCY_RECIPES,
                   ) -> dict[tuple[str, str, str], Path]:  # fmt: skip
    """(arch, dense|pruned 0.5, precision) -> file: FP32 and one INT8 file per recipe of DeiT-Tiny/Small, all with
    a dynamic batch axis."""
    files = {}
    rng = np.random.default_rng(0)
    for arch in archs:
        torch.manual_seed(0)
        vit = create_model(arch).eval()
        geom = describe_vit(vit)
        calib = rng.standard_normal((32, 3, 224, 224)).astype(np.float32)
        short = "-".join(arch.split("_")[:2])
        for kind in kinds:
            model = vit if kind == "dense" else build_compact(vit, half_plan(geom), align=8)
            fp32 = tmp / f"{arch}-{kind.split()[0]}.onnx"
            torch2onnx(model.eval(), (3, 224, 224), fp32, dynamic_batch=True)
            simplify_onnx(fp32)
            files[(short, kind, "fp32")] = fp32
            for name, recipe in recipes:
                out = tmp / f"{fp32.stem}-{len(files)}.onnx"
                quantize_file(fp32, out, recipe, calib, {})
                files[(short, kind, name)] = out
    return files


def runners_of(files: dict[tuple[str, str, str], Path], batch: int, stack: ExitStack) -> dict[str, Runner]:
    """hiap bench's runners of every file, opened in `stack`, named 'arch|model|precision|runtime': ONNX Runtime,
    and OpenVINO where it is installed, compiled for a static batch, every file computed in f32 (pinned) and FP32
    files also at bf16 and fp16 ('openvino bf16' / 'openvino fp16') where the compiled model confirms it. A file
    OpenVINO cannot compile is reported and left out."""
    runners: dict[str, Runner] = {}
    for key, path in files.items():
        runners["|".join((*key, "onnxruntime"))] = stack.enter_context(
            OrtRunner(path, intra_op_threads=2, allow_spinning=False)
        )
    if import_openvino() is None:
        print("openvino not installed: ONNX Runtime only")
        return runners
    for key, path in files.items():
        hints = [("openvino", FP32)] + ([("openvino bf16", BF16), ("openvino fp16", FP16)] if key[2] == FP32 else [])
        for runtime, precision in hints:
            try:
                runner = stack.enter_context(OvRunner(path, threads=2, precision=precision, static_batch=batch))
            except HiapError as exc:
                print(f"openvino cannot compile {key} at batch {batch}: {exc}")
                continue
            if runner.inference_precision != OPENVINO_HINTS[precision]:
                print(f"openvino computes {key} in {runner.inference_precision}, not {precision}, here: left out")
                continue
            runners["|".join((*key, runtime))] = runner
    return runners


def latency_part(files: dict[tuple[str, str, str], Path], rounds: int, iters: int) -> list[dict[str, Any]]:
    """Every file on every runtime at batch 1 and 8, all alternating in one process by hiap bench's harness
    (`rounds` rounds of `iters` consecutive calls each; ms = p50 of every call)."""
    rows = []
    for batch in (1, 8):
        with ExitStack() as stack:
            runners = runners_of(files, batch, stack)
            feeds = {k: random_feeds(r, batch, seed=1) for k, r in runners.items()}
            latency = interleaved_latency(runners, feeds, 2, rounds * iters, calls_per_turn=iters)
        for name, lat in latency.items():
            arch, kind, precision, runtime = name.split("|")
            rows.append({"arch": arch, "model": kind, "precision": precision, "runtime": runtime, "batch": batch,
                         "ms": lat.p50, "latency": lat.to_dict(),
                         "file_bytes": files[(arch, kind, precision)].stat().st_size})  # fmt: skip
            print(arch, kind, precision, runtime, batch, round(lat.p50, 2), flush=True)
    return rows


def breakdown_part(files: dict[tuple[str, str, str], Path], calls: int = 30) -> list[dict[str, Any]]:
    """Where ONNX Runtime spends a batch-1 call of each file: kernel time per operator type (its profiler, after
    warm-up), and the wall time of the same calls. Shares, not absolute times, are what this part reports."""
    import collections

    rows = []
    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    for (arch, kind, precision), path in files.items():
        with tempfile.TemporaryDirectory() as tmp:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = 2, 1
            opts.log_severity_level = 3
            opts.enable_profiling = True
            opts.profile_file_prefix = str(Path(tmp) / "profile")
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            feed = {sess.get_inputs()[0].name: x}
            for _ in range(5):
                sess.run(None, feed)
            t0 = time.perf_counter()
            for _ in range(calls):
                sess.run(None, feed)
            ms = (time.perf_counter() - t0) / calls * 1e3
            events = json.loads(Path(sess.end_profiling()).read_text())
        by_op: collections.Counter[str] = collections.Counter()
        for e in events:
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                by_op[e["args"]["op_name"]] += e["dur"]
        total = sum(by_op.values())
        rows.append({"arch": arch, "model": kind, "precision": precision, "ms": ms, "calls": calls,
                     "share": {op: us / total for op, us in by_op.most_common()}})  # fmt: skip
        print(arch, kind, precision, f"{ms:.2f} ms", {k: round(v, 3) for k, v in list(rows[-1]["share"].items())[:8]})
    return rows


def breakdown_table(rows: list[dict[str, Any]]) -> list[str]:
    """Per file, the operator types by share of kernel time; matrix products (float or integer) summed apart."""
    gemm = ("Gemm", "MatMul", "FusedMatMul", "QGemm", "QLinearMatMul", "MatMulIntegerToFloat", "MatMulInteger",
            "DynamicQuantizeMatMul", "Conv", "QLinearConv", "ConvInteger")  # fmt: skip
    lines = ["| file | ms per call | x FP32 | matrix products (incl. patch Conv) | everything else | largest operator "
             "types (profiled) |", "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        mm = sum(v for k, v in r["share"].items() if k in gemm)
        top = ", ".join(f"{k} {v:.0%}" for k, v in list(r["share"].items())[:8])
        lines.append(f"| {r['arch']} {r['model']} {r['precision']} | {r['ms_unprofiled']:.2f} | {r['speedup']:.2f}x | "
                     f"{mm:.0%} | {1 - mm:.0%} | {top} |")  # fmt: skip
    return lines


def table(acc: list[dict[str, Any]], lat: list[dict[str, Any]]) -> list[str]:
    lines = []
    if acc:
        lines += ["## Accuracy: FP32 vs INT8 recipes (top-1 %)", "",
                  "| model | recipe | selection (2,000 train images) | validation | drop vs FP32 (pp) | "
                  "top-1 agreement | file MB |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in acc:
            drop = f"{r['val_drop_pp']:+.2f}" if "val_drop_pp" in r else ""
            agree = f"{r['val_top1_agreement']:.4f}" if "val_top1_agreement" in r else ""
            lines.append(f"| {r['model']} | {r['recipe']} | {r['selection_top1']:.2f} | {r['val_top1']:.2f} | {drop} "
                         f"| {agree} | {r['file_bytes'] / 1e6:.2f} |")  # fmt: skip
    if lat:
        lines += ["", "## Latency (ms, median of rounds); x: speedup over the dense FP32 model on ONNX Runtime "
                  "(same architecture, same batch)", "",
                  "| architecture | model | precision | runtime | batch 1 | x | batch 8 | x |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        by = {(r["arch"], r["model"], r["precision"], r["runtime"], r["batch"]): r["ms"] for r in lat}
        for arch, kind, precision, runtime, batch in by:
            if batch != 1:
                continue
            ref = [by[(arch, "dense", "fp32", "onnxruntime", b)] for b in (1, 8)]
            cells = []
            for i, b in enumerate((1, 8)):
                ms = by.get((arch, kind, precision, runtime, b))
                cells += [f"{ms:.2f}", f"{ref[i] / ms:.2f}"] if ms else ["fails to compile", ""]
            lines.append(f"| {arch} | {kind} | {precision} | {runtime} | {' | '.join(cells)} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/hiap_vit_fmnist-macs0.5"))
    parser.add_argument("--cifar-onnx", type=Path, default=None)
    parser.add_argument("--cifar-data", type=Path, default=None)
    parser.add_argument("--part", choices=("accuracy", "latency", "breakdown", "all", "report"), default="all",
                        help="report: rewrite the .md from the .json only")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iters", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.part == "breakdown":
        breakdown_main()
        return
    # The committed quantization.* were measured on an AVX2-only CPU; a latency run on another CPU class is kept
    # beside them, named by its class.
    name = "quantization" if args.part != "latency" else f"quantization-latency-{cpu_class()}"
    out = results_dir() / f"{name}.json"
    previous = json.loads(out.read_text()) if out.is_file() else {}
    acc, lat = previous.get("accuracy", []), previous.get("latency", [])
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.part in ("accuracy", "all"):
            models = [builtin_model(args.run, tmp)]
            if args.cifar_onnx is not None:
                models.append(cifar_model(args.cifar_onnx, args.cifar_data))
            acc = accuracy_part(models, tmp)
        if args.part in ("latency", "all"):
            lat = latency_part(latency_models(tmp), args.rounds, args.iters)
    env = environment("ONNX Runtime quantization, 2 threads") | {
        "onnxruntime": ort.__version__, "cpu_flags": cpu_flags(), "cpu": platform.processor()}  # fmt: skip
    if args.part == "report":
        env = previous["environment"]
    try:
        import openvino

        env["openvino"] = openvino.__version__
    except ImportError:
        env["openvino"] = None
    out.write_text(json.dumps({"environment": env, "accuracy": acc, "latency": lat}, indent=2) + "\n")
    head = ["# INT8: recipes and speed on this CPU", "",
            f"{env['machine']}, CPU flags {env['cpu_flags']}, 2 threads, onnxruntime {env['onnxruntime']}, "
            f"openvino {env['openvino']}, torch {env['torch']}, hiap {env['hiap']}, {env['date']}. INT8 speed depends "
            "on the CPU's int8 instructions: without VNNI/AMX (AVX2 only) int8 GEMM is far less ahead of FP32 than "
            "with them, so read every speedup with the flags above.", "",
            "How the default recipe was chosen: by the selection columns (2,000 training images, none used for "
            "calibration; the validation columns come out of the same run). First, the u8 recipes keep weights to 7 "
            "bits: on this CPU (no VNNI) full 8-bit weights made x86 ONNX Runtime classify differently from the "
            "aarch64 ONNX Runtime and from OpenVINO (scripts/arm_check.sh; the 'full 8-bit weights' row), which a "
            "file meant for every CPU must not do. Among the 7-bit static recipes the best mean selection top-1 over "
            "both models was percentile calibration with every matmul quantized, attention included (88.85 / 62.95, "
            "mean 75.90 %; min-max 75.78, ONNX Runtime's default operator set with percentile 75.85, the weight "
            "matmuls alone with percentile 75.85): differences of 1-3 images per model, so the choice is weakly "
            "determined, and every recipe stays within 0.15 pp of FP32 on validation. Entropy calibration gave "
            "exactly the min-max ranges in this ONNX Runtime. Latency does not depend on the calibration; the "
            "default and the weight-matmuls-only file are within run-to-run noise on the pruned models. The latency "
            "rows below were measured on files quantized with min-max and 8-bit weights, before the default "
            "moved to percentile and 7 bits: the same operators and kernels, not re-timed.", ""]  # fmt: skip
    if name != "quantization":  # a latency run on another CPU class: its own short header
        head = [f"# FP32, bf16, fp16 and INT8 speed on the {cpu_class()} CPU class", "",
                f"{env['machine']}, CPU flags {env['cpu_flags']}, 2 threads, batch 1 and 8, onnxruntime "
                f"{env['onnxruntime']}, openvino {env['openvino']}, torch {env['torch']}, hiap {env['hiap']}, "
                f"{env['date']}. Random weights (speed does not depend on them); every model, precision and runtime "
                f"alternating round by round in one process ({args.rounds} rounds x {args.iters} calls, median). "
                "'openvino' runs every file with inference precision f32 pinned (Q/DQ files still in int8); "
                "'openvino bf16' / 'openvino fp16' run the FP32 file at that precision, confirmed by the compiled "
                "model. Made by `python benchmarks/quantization.py --part latency`.", ""]  # fmt: skip
    (results_dir() / f"{name}.md").write_text(
        "\n".join(head + table(acc if name == "quantization" else [], lat)) + "\n"
    )
    print("\n".join(head + table(acc, lat)))


# The breakdown's INT8 files: the default and dynamic, and beside them more operators quantized, full 8-bit weights,
# s8 activations.
BREAKDOWN_RECIPES = (
    LATENCY_RECIPES[0],
    LATENCY_RECIPES[2],
    ("int8 every operator", Recipe("int8", "percentile", "all", "u8")),
    ("int8 8-bit weights", Recipe("int8", "percentile", "matmul+attention", "u8", False)),
    ("int8 s8 activations", Recipe("int8", "percentile", "matmul+attention", "s8", False)),
)


def recipe_speed(files: dict[tuple[str, str, str], Path], rounds: int = 7, iters: int = 5) -> dict[str, float]:
    """Batch-1 ms of every file on ONNX Runtime, all alternating round by round (hiap bench's harness: p50 of every
    call)."""
    return {k: v.p50 for k, v in onnx_latency({key[2]: p for key, p in files.items()}, rounds, iters).items()}


def breakdown_main() -> None:
    """DeiT-Small dense at FP32, INT8 static (the default recipe and three others) and INT8 dynamic: where each
    call's time goes, and how fast each runs."""
    with tempfile.TemporaryDirectory() as tmp_name:
        files = latency_models(Path(tmp_name), ("deit_small_patch16_224",), ("dense",), BREAKDOWN_RECIPES)
        speed = recipe_speed(files)
        rows = breakdown_part(files)
    for r in rows:
        r["ms_unprofiled"] = speed[r["precision"]]
        r["speedup"] = speed["fp32"] / speed[r["precision"]]
    env = environment("ONNX Runtime profiler, 2 threads, batch 1") | {"onnxruntime": ort.__version__,
                                                                     "cpu_flags": cpu_flags()}  # fmt: skip
    name = f"quantization-breakdown-{cpu_class()}"
    (results_dir() / f"{name}.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=1) + "\n")
    head = [f"# Where an INT8 call's time goes: DeiT-Small on ONNX Runtime, the {cpu_class()} CPU class", "",
            f"{env['machine']}, CPU flags {env['cpu_flags']}, 2 threads, batch 1, onnxruntime {env['onnxruntime']}, "
            f"torch {env['torch']}, hiap {env['hiap']}, {env['date']}. Random weights; each file's kernel time per "
            "operator type from ONNX Runtime's profiler over the timed calls (profiling adds its own overhead: the "
            "shares are what to read), and the speed of every file without the profiler, all alternating in one "
            "process (7 rounds x 5 calls, p50 of every call). Made by `python benchmarks/quantization.py --part "
            "breakdown`.",
            ""]  # fmt: skip
    lines = head + breakdown_table(rows)
    (results_dir() / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
