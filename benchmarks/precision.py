"""Trained networks on every runtime x precision this CPU offers: top-1, fidelity and speed, as `hiap bench --sweep`
reports them (one result file per CPU class).

    python benchmarks/precision.py [--part train|export|sweep|report|all] [--tasks builtin cifar10]

Per task, one HiAP run to half the dense MACs (the default recipe) and the dense network it started from:
- builtin: `hiap train`'s defaults on the built-in data (the run `python -m hiap pipeline` makes);
- cifar10: the CIFAR-10 CPU setting of cifar10.py (its committed dense start, 2 epochs x 45,000 images, seed 0),
  validated on the official test split.
Each network is exported the way a user does (`hiap export RUN [--dense] [--precision int8]`: FP32, and INT8 with
the default recipe for ONNX Runtime, calibrated on 512 training images) and swept with `hiap bench FILE --sweep
--int8 INT8 --compare DENSE --data DATA` on the x86-cpu profile: every runtime x precision the profile allows and
this CPU supports (ONNX Runtime fp32 / int8, OpenVINO f32 / bf16 / fp16 / int8), each timed alternating with the
dense FP32 file on ONNX Runtime, its top-1 on every held-out image, its fidelity to the FP32 file's golden logits.
The sweep part times: run it on a quiet machine. Runs and exports live in a cache folder (resumable); every sweep's
JSON is kept in results/precision-CLASS.json, and the table in results/precision-CLASS.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml
from common import environment, results_dir
from quantization import cpu_class
from rich.console import Console
from tasks import cifar_task

from hiap.config import TrainConfig
from hiap.train import Trainer

CACHE = Path(tempfile.gettempdir()) / "hiap-precision"
TASKS = ("builtin", "cifar10")
NETWORKS = ("dense", "hiap 0.5")


def run_dir(task: str) -> Path:
    return CACHE / task / "run"


def data_of(task: str) -> str:
    """What `hiap bench --data` evaluates: the run's own data (its held-out split)."""
    return str(yaml.safe_load((run_dir(task) / "config.yaml").read_text())["data"])


def part_train(task: str) -> None:
    """The task's HiAP run to 0.5 of the dense MACs (resumed where a sitting stopped)."""
    run = run_dir(task)
    if (run / "summary.json").is_file():
        return
    keys = cifar_task("test").train if task == "cifar10" else {}  # built-in: hiap train's defaults
    cfg = TrainConfig(target_macs="0.5", seed=0, out=str(run), **keys)
    summary = Trainer(cfg, Console(), resume=(run / "checkpoint.safetensors").is_file()).run()
    print(f"{task}: trained to {summary['pruned_gmacs'] / summary['dense_gmacs']:.3f} of the dense MACs", flush=True)


def export_dir(task: str, network: str, precision: str) -> Path:
    return run_dir(task) / (("export-dense" if network == "dense" else "export") + ("-int8" if precision else ""))


def hiap(*args: str) -> subprocess.CompletedProcess[str]:
    """The hiap CLI as a user runs it (its exit code is the caller's to judge)."""
    return subprocess.run([sys.executable, "-m", "hiap", *args], capture_output=True, text=True, check=False)


def part_export(task: str) -> None:
    """FP32 and INT8 exports of the pruned and the dense network (skipped where the folder holds one)."""
    run = run_dir(task)
    for network in NETWORKS:
        for precision in ("", "int8"):
            out = export_dir(task, network, precision)
            if (out / "export_report.json").is_file():
                continue
            args = [str(run), *(["--dense"] if network == "dense" else []),
                    *(["--precision", precision] if precision else [])]  # fmt: skip
            done = hiap("export", *args)
            if done.returncode != 0:
                raise SystemExit(f"hiap export {' '.join(args)} failed ({done.returncode}): {done.stderr[-800:]}")
            print(f"{task}: exported {out}", flush=True)


def part_sweep(task: str, results: dict[str, Any]) -> None:
    """`hiap bench --sweep` of both networks, the dense FP32 file on ONNX Runtime as the reference speed."""
    dense = export_dir(task, "dense", "") / "model.onnx"
    for network in NETWORKS:
        with tempfile.TemporaryDirectory() as tmp:
            report = Path(tmp) / "sweep.json"
            args = [str(export_dir(task, network, "") / "model.onnx"), "--sweep", "--device", "x86-cpu",
                    "--int8", str(export_dir(task, network, "int8") / "model.onnx"), "--compare", str(dense),
                    "--data", data_of(task), "--json", str(report)]  # fmt: skip
            done = hiap("bench", *args)
            if not report.is_file():
                raise SystemExit(f"hiap bench {' '.join(args)} wrote no report ({done.returncode}): {done.stderr}")
            results.setdefault("sweeps", {}).setdefault(task, {})[network] = {
                "command": "hiap bench " + " ".join(args), "exit_code": done.returncode,
                "sweep": json.loads(report.read_text()),
            }  # fmt: skip
        print(f"{task} {network}: sweep exit {done.returncode}", flush=True)


def _row_cells(row: dict[str, Any], fp32_top1: float | None) -> list[str] | None:
    """One sweep row as table cells: size, top-1, change vs the network's FP32 on ONNX Runtime, fidelity, p50,
    speed-up over the dense FP32 file on ONNX Runtime, verdict."""
    report = row.get("report")
    if report is None:
        return None
    acc = report["accuracy"]["model"]
    top1 = acc["top1"] if acc else None
    fid = report.get("fidelity") or {}
    compare = report.get("compare") or {}
    failed = [b["budget"] for b in report["budgets"] if b["passed"] is False]
    return [
        f"{report['size_mb']:.2f}",
        f"{top1:.2f}" if top1 is not None else "-",
        f"{top1 - fp32_top1:+.2f}" if top1 is not None and fp32_top1 is not None else "-",
        f"{fid['max_abs_diff']:.1e}" if fid.get("max_abs_diff") is not None else "-",
        f"{report['latency']['model']['p50']:.3f}",
        f"{compare['speedup_p50']:.2f}x" if compare.get("speedup_p50") else "-",
        report["verdict"] + (f" ({', '.join(failed)})" if failed else ""),
    ]


def part_report(results: dict[str, Any]) -> list[str]:
    env = results["environment"]
    lines = [
        f"# Trained networks per runtime x precision on the {results['cpu_class']} CPU class (`hiap bench --sweep`)",
        "",
        f"{env['machine']}, CPU {env['cpu']['model']} ({' '.join(env['cpu']['flags'])}), x86-cpu profile (2 "
        f"threads, batch 1), onnxruntime {env['onnxruntime']}, openvino {env['openvino']}, torch {env['torch']}, "
        f"hiap {env['hiap']}, {env['date']}. Made by `python benchmarks/precision.py`. Each row is one `hiap bench` "
        "of the sweep: top-1 on every held-out image (built-in: the 3,000 validation images; CIFAR-10: the official "
        "10,000 test images), 'vs FP32' the change against the same network's FP32 file on ONNX Runtime, fidelity "
        "the largest |logit difference| to the FP32 file's golden outputs (an INT8 file's golden are its own: "
        "judged against its own export), p50 of all calls, speed-up over the dense FP32 file on ONNX Runtime timed "
        "alternating with it in the same bench, and the verdict on the profile's budgets (accuracy drop against "
        "the dense network, fidelity per precision, latency).",
        "",
        "| task | network | runtime | precision | MB | top-1 % | vs FP32 (pp) | fidelity max abs | p50 ms | "
        "speed-up vs dense FP32 (ORT) | budgets |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for task, sweeps in results.get("sweeps", {}).items():
        for network, entry in sweeps.items():
            rows = entry["sweep"]["rows"]
            base = next((r for r in rows if (r["runtime"], r["precision"]) == ("onnxruntime", "fp32")), None)
            fp32 = (base or {}).get("report", {}).get("accuracy", {}).get("model")
            fp32_top1 = fp32["top1"] if fp32 else None
            for row in rows:
                cells = _row_cells(row, fp32_top1)
                if cells is None:
                    cells = ["not run: " + row["skipped"].replace("|", "/"), "", "", "", "", "", ""]
                lines.append(f"| {task} | {network} | {row['runtime']} | {row['precision']} | {' | '.join(cells)} |")
            fastest = entry["sweep"]["fastest"]
            lines.append(f"| {task} | {network} | fastest meeting every budget: "
                         f"{fastest['runtime'] + ' ' + fastest['precision'] if fastest else entry['sweep']['why_none']}"
                         " | | | | | | | | |")  # fmt: skip
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("train", "export", "sweep", "report", "all"), default="all")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--threads", type=int, default=0, help="torch threads while training (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    name = f"precision-{cpu_class()}"
    path = results_dir() / f"{name}.json"
    results: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    if args.part in ("sweep", "all"):
        env = environment("hiap bench --sweep, x86-cpu profile")
        env["onnxruntime"] = __import__("onnxruntime").__version__
        try:
            env["openvino"] = __import__("openvino").__version__
        except ImportError:
            env["openvino"] = None
        results |= {"environment": env, "cpu_class": cpu_class()}
    for task in args.tasks:
        if args.part in ("train", "all"):
            part_train(task)
        if args.part in ("export", "all"):
            part_export(task)
        if args.part in ("sweep", "all"):
            part_sweep(task, results)
            path.write_text(json.dumps(results, indent=1) + "\n")
    if results.get("sweeps"):
        lines = part_report(results)
        (results_dir() / f"{name}.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))


if __name__ == "__main__":
    main()
