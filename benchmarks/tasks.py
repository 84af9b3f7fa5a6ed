"""The two tasks the pruning benchmarks run on: the built-in data and the CIFAR-10 CPU setting (dense start, data,
hiap train's settings)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import torch
from peers import MODEL
from search_split import dense_start, search_data, val_data

from hiap.data import Augment, ImageFolderData
from hiap.models import create_model, data_config, load_pretrained


class Task(NamedTuple):
    """What every network of a comparison shares: the dense start, its data, and hiap train's settings."""

    dense: torch.nn.Module
    data: Any
    train: dict[str, Any]  # TrainConfig keys of every HiAP run
    make_data: Any  # Trainer's make_data (None: the config's data)
    epochs: int
    model: str
    model_kwargs: dict[str, Any]


def describe(task: str, split: str, epochs: int) -> str:
    """The model, data, split and epochs of a comparison, for its report."""
    if task == "cifar10":
        where = (
            "search split (5,000 images carved from the training set)" if split == "search" else "official test split"
        )
        return f"CIFAR-10 CPU setting (cifar10.py), {where}, {epochs} epochs x 45,000 images per network"
    carved = {"search": "1,200", "search-3k": "3,000"}.get(split)
    where = f"search split ({carved} images carved from the training set)" if carved else "validation split"
    return f"{MODEL}, built-in data, {where}, {epochs} epochs per network"


def builtin_task(split: str, epochs: int) -> Task:
    """The built-in data: `val` is the shipped checkpoint and validation split, the others a carved split with the
    dense start trained without it (search_split.py)."""
    cache = Path(tempfile.gettempdir()) / "hiap-search-split"
    cache.mkdir(exist_ok=True)
    start = None if split == "val" else dense_start(cache, split)
    dense = create_model(MODEL, num_classes=10).eval()
    load_pretrained(dense, MODEL, str(start) if start else "auto")
    make = val_data if split == "val" else lambda c: search_data(c, split)
    train = {"epochs": epochs, "pretrained": str(start) if start else "auto"}
    return Task(dense, make(data_config(dense)), train, make, epochs, MODEL, {})


def cifar_task(split: str) -> Task:
    """The CIFAR-10 CPU setting of cifar10.py: `search` (5,000 images carved from training) or `test` (official)."""
    import cifar10

    spec = cifar10.SETTINGS["cpu"]
    cache = Path.home() / ".cache" / "hiap" / "cifar10"
    roots = cifar10.prepare(cifar10.DEFAULT_ARCHIVE, cache)
    weights, _ = cifar10.dense_start("cpu", roots, cache)
    dense = create_model(spec["model"], num_classes=10, model_kwargs=spec["model_kwargs"]).eval()
    load_pretrained(dense, spec["model"], str(weights))
    data = ImageFolderData(roots[split], data_config(dense), workers=0, augment=Augment())
    train = {"model": spec["model"], "model_kwargs": spec["model_kwargs"], "data": str(roots[split]),
             "pretrained": str(weights), "workers": 0, **spec["prune"]}  # fmt: skip
    return Task(dense, data, train, None, spec["prune"]["epochs"], spec["model"], spec["model_kwargs"])
