"""The discriminating CIFAR-10 setting: the CPU geometry's dense start trained to its plateau, then every method at
budgets where pruning costs accuracy.

    python benchmarks/plateau.py --part dense [--data ARCHIVE_OR_ROOT] [--cache DIR]   # resumable, hours
    python benchmarks/plateau.py --part status                                          # the curve so far

`--part dense` trains the start of cifar10.py's 'plateau' setting (a 150-epoch cosine at batch 256 on the 45,000
training images, validated every epoch on the 5,000 carved from them) in `--cache`, one checkpoint per epoch, and
resumes where a previous sitting stopped. Every finished epoch is mirrored into `results/plateau_dense/` (the
curve, and the resume state: weights, AdamW moments and schedule position, ~15 MB), so a later sitting on a fresh
machine resumes from the committed state instead of epoch 0. When the cosine has run to its end the start's weights
(`dense-plateau.safetensors`, its sha256 in `dense-plateau.json`) are written there, and the resume state is
removed.

The plateau rule: the last fifth of the epochs gains < 0.3 pp on the carved split (`status` reports it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import cifar10
import torch
from common import results_dir
from rich.console import Console

from hiap.checkpoint import export_weights
from hiap.config import TrainConfig
from hiap.train import Trainer

SETTING = "plateau"
PLATEAU_GAIN_PP = 0.3  # the last fifth of the epochs may gain less than this on the carved split
RESUME_FILES = ("checkpoint.safetensors", "metrics.jsonl", "config.yaml")


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
            "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}  # fmt: skip
    (out / f"dense-{SETTING}.json").write_text(json.dumps(info, indent=1) + "\n")
    shutil.rmtree(out / "resume", ignore_errors=True)
    return info


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
    parser.add_argument("--part", choices=["dense", "status"], required=True)
    parser.add_argument("--data", type=Path, default=cifar10.DEFAULT_ARCHIVE, help="CIFAR-10 archive or root")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "hiap" / "cifar10")
    args = parser.parse_args()
    if args.part == "status":
        status(args.cache)
        return
    if not args.data.exists():
        sys.exit(f"--data '{args.data}' does not exist: give the CIFAR-10 archive or an unpacked root.")
    roots = cifar10.prepare(args.data, args.cache)
    info = train_dense(roots, args.cache)
    print(json.dumps({k: v for k, v in info.items() if k != "curve"}, indent=1))


if __name__ == "__main__":
    main()
