"""The built-in Fashion-MNIST subset as numpy arrays: part of the torch-free base, read by training and the bench."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

BUILTIN_FILE = "fashion_mnist_subset.npz"


def builtin_path() -> Path:
    return Path(str(resources.files("hiap") / "assets" / BUILTIN_FILE))


def load_builtin_arrays(path: Path | None = None) -> dict[str, Any]:
    """The built-in split as numpy arrays: x_train/x_val uint8 [n, 28, 28], y_* uint8, classes, provenance."""
    path = path or builtin_path()
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}
