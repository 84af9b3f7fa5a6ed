"""The built-in data's search split: its own dense start, trained without the carved images, so recipes are chosen
on images no network in the comparison has seen.

    python benchmarks/search_split.py      # trains the start once (~15 min on 2 cores), then reports it

The search split carves the last 120 training images of each class (1,200 of 12,000) as its validation set and
trains on the other 10,800 (`hiap.data.BuiltinData(split="search")`). The shipped dense checkpoint was trained on
all 12,000, so it cannot start a comparison judged on the carved images; this start is made with the shipped
checkpoint's own recipe (`configs/builtin_dense.yaml`) on the 10,800 and committed to
`results/builtin_search_dense/` (4.8 MB).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.console import Console

from devices.host import detect_host
from hiap.checkpoint import export_weights
from hiap.config import TrainConfig
from hiap.data import BuiltinData, Dataset
from hiap.train import Trainer

REPO = Path(__file__).resolve().parent.parent
START_DIR = Path(__file__).resolve().parent / "results" / "builtin_search_dense"
WEIGHTS = START_DIR / "dense-search.safetensors"
INFO = START_DIR / "dense-search.json"


def search_data(data_cfg: dict[str, Any]) -> Dataset:
    """The built-in data's search split for a model's data config (Trainer's `make_data`)."""
    return BuiltinData(data_cfg["input_size"], data_cfg["mean"], data_cfg["std"], split="search")


def val_data(data_cfg: dict[str, Any]) -> Dataset:
    """The built-in data as shipped (the reported validation split)."""
    return BuiltinData(data_cfg["input_size"], data_cfg["mean"], data_cfg["std"])


def dense_start(cache: Path) -> Path:
    """The committed search-split start, trained here (resumably, in `cache`) when it is missing."""
    if WEIGHTS.is_file() and INFO.is_file():
        return WEIGHTS
    recipe = yaml.safe_load((REPO / "configs" / "builtin_dense.yaml").read_text())
    run = cache / "builtin-search-dense"
    resume = (run / "checkpoint.safetensors").is_file()
    cfg = TrainConfig(**recipe | {"out": str(run)})
    t0 = time.perf_counter()
    summary = Trainer(cfg, Console(), resume=resume, make_data=search_data).run()
    host = detect_host()
    curve = [json.loads(line)["val_acc"] for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    START_DIR.mkdir(parents=True, exist_ok=True)
    export_weights(run / "checkpoint.safetensors", WEIGHTS)
    info = {"config": cfg.to_dict(), "data": summary["data"], "val_acc_carved": summary["val_acc"],
            "val_curve": curve, "train_seconds": summary["seconds"], "seconds_this_sitting": time.perf_counter() - t0,
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "cpu": {"model": host.cpu, "flags": host.cpu_flags}}  # fmt: skip
    INFO.write_text(json.dumps(info, indent=1) + "\n")
    return WEIGHTS


if __name__ == "__main__":
    cache = Path("/tmp/hiap-search-split")
    cache.mkdir(exist_ok=True)
    print(dense_start(cache), json.loads(INFO.read_text())["val_acc_carved"])
