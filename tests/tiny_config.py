"""The tiny training config the tests share: the 28x28 built-in model from random weights, a few hundred images,
gates that can close within a few steps (gate_lr 1: the schedule check needs gate_init / gate_lr / 0.4 = 8 steps),
and any distance from the target counted as landed (these runs test plumbing, not landing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TINY = {"model": "hiap_vit_fmnist_tiny", "pretrained": "none", "epochs": 2, "train_images": 512, "batch_size": 32,
        "gate_lr": 1.0, "target_tolerance": 1.0}  # fmt: skip


def tiny_config(out: Path | str, **overrides: Any) -> Any:
    """A TrainConfig writing to `out`, with `overrides` on the tiny values."""
    from hiap.config import TrainConfig

    return TrainConfig(**(TINY | {"out": str(out)} | overrides))
