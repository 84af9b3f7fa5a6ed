"""Evaluation data for the device, in numpy only: the built-in validation split and ImageFolder trees (Pillow).

Preprocessing follows the model's own metadata (input size, mean/std, interpolation, crop_pct), so a board needs
only the .onnx and this package.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from hiap.errors import HiapError

BUILTIN_FILE = "fashion_mnist_subset.npz"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")


def builtin_path() -> Path:
    return Path(str(resources.files("hiap") / "assets" / BUILTIN_FILE))


def load_builtin_arrays(path: Path | None = None) -> dict[str, Any]:
    """The built-in split as numpy arrays: x_train/x_val uint8 [n, 28, 28], y_* uint8, classes, provenance."""
    path = path or builtin_path()
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


@dataclass(frozen=True)
class Preprocessing:
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"
    crop_pct: float = 1.0
    class_names: tuple[str, ...] = ()

    @classmethod
    def from_metadata(cls, meta: dict[str, str], source: str) -> Preprocessing:
        """Read what hiap export wrote into metadata_props (or an engine's sidecar)."""

        def field(key: str, default: Any = None) -> Any:
            if key not in meta:
                if default is not None:
                    return default
                raise HiapError(f"'{source}' carries no '{key}' in its metadata: export it with hiap export.")
            try:
                return json.loads(meta[key]) if isinstance(meta[key], str) else meta[key]
            except json.JSONDecodeError:
                return meta[key]

        size = tuple(int(v) for v in field("input_size"))
        if len(size) != 3:
            raise HiapError(f"'{source}' metadata input_size must be [C, H, W], got {list(size)}.")
        return cls(
            input_size=size,  # type: ignore[arg-type]
            mean=tuple(float(v) for v in field("mean")),
            std=tuple(float(v) for v in field("std")),
            interpolation=str(field("interpolation", "bicubic")),
            crop_pct=float(field("crop_pct", 1.0)),
            class_names=tuple(str(c) for c in field("class_names", [])),
        )

    def normalise(self, x: np.ndarray) -> np.ndarray:
        """float [B, C, H, W] in 0..1 -> normalised with the model's statistics."""
        c = self.input_size[0]
        mean = np.asarray(self.mean, dtype=np.float32).reshape(1, c, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(1, c, 1, 1)
        return ((x - mean) / std).astype(np.float32)


def resize_bilinear(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """[B, C, H0, W0] -> [B, C, h, w]; the same sampling as torch's F.interpolate(bilinear, align_corners=False)."""
    h0, w0 = x.shape[-2:]
    if (h0, w0) == (h, w):
        return x

    def axis(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
        lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, (src - lo).astype(np.float32)

    y0, y1, fy = axis(h, h0)
    x0, x1, fx = axis(w, w0)
    top = x[..., y0, :] * (1 - fy)[:, None] + x[..., y1, :] * fy[:, None]
    return (top[..., x0] * (1 - fx) + top[..., x1] * fx).astype(np.float32)


def builtin_val_batches(pre: Preprocessing, batch_size: int = 64, limit: int | None = None,
                        path: Path | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:  # fmt: skip
    """The built-in validation split (3,000 Fashion-MNIST images) prepared exactly as training validated it."""
    arrays = load_builtin_arrays(path)
    x_all, y_all = arrays["x_val"], arrays["y_val"].astype(np.int64)
    if limit is not None:
        x_all, y_all = x_all[:limit], y_all[:limit]
    c, h, w = pre.input_size
    for i in range(0, len(y_all), batch_size):
        x = x_all[i : i + batch_size, None].astype(np.float32) / 255.0
        x = resize_bilinear(x, h, w)
        if c != 1:
            x = np.repeat(x, c, axis=1)
        yield pre.normalise(x), y_all[i : i + batch_size]


def _pil_resample(name: str) -> Any:
    from PIL import Image

    return {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST,
            "lanczos": Image.LANCZOS}.get(name, Image.BICUBIC)  # fmt: skip


def load_image(path: Path, pre: Preprocessing) -> np.ndarray:
    """timm's eval transform: resize the short side to size / crop_pct, centre crop, to float, [C, H, W]."""
    from PIL import Image, UnidentifiedImageError

    c, h, w = pre.input_size
    try:
        with Image.open(path) as img:
            img = img.convert("L" if c == 1 else "RGB")
            scale = max(h, w) / pre.crop_pct
            short = math.floor(scale)
            iw, ih = img.size
            size = (short, max(1, round(ih * short / iw))) if iw <= ih else (max(1, round(iw * short / ih)), short)
            img = img.resize(size, _pil_resample(pre.interpolation))
            left, top = (size[0] - w) // 2, (size[1] - h) // 2
            img = img.crop((left, top, left + w, top + h))
            arr = np.asarray(img, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as exc:
        raise HiapError(f"Image '{path}' cannot be read ({type(exc).__name__}): remove or replace it.") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def image_folder_batches(root: Path, pre: Preprocessing, batch_size: int = 32,
                         limit: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:  # fmt: skip
    """An ImageFolder (one sub-folder per class); classes map by the model's class names when it has them."""
    if not root.is_dir():
        raise HiapError(f"Data '{root}' is not a folder: pass 'builtin' or an ImageFolder root (one folder per class).")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise HiapError(f"Data '{root}' has no class folders: expected ROOT/<class>/<image>.")
    names = [p.name for p in folders]
    if pre.class_names:
        # Folder names cannot hold '/', so 't-shirt/top' matches a folder 't-shirt_top'.
        known = {c.replace("/", "_"): i for i, c in enumerate(pre.class_names)}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise HiapError(f"Data '{root}' has class folders the model does not know: {unknown[:5]} (the model's "
                            f"classes: {list(pre.class_names)[:10]}); name the folders after them.")  # fmt: skip
        index = {n: known[n] for n in names}
    else:  # no names in the metadata: the training convention, sorted folder order
        index = {n: i for i, n in enumerate(names)}
    files = [(f, index[d.name]) for d in folders for f in sorted(d.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if limit is not None:
        files = files[:limit]
    if not files:
        raise HiapError(f"Data '{root}' has no images ({', '.join(IMAGE_SUFFIXES)}).")
    for i in range(0, len(files), batch_size):
        chunk = files[i : i + batch_size]
        x = np.stack([load_image(f, pre) for f, _ in chunk])
        yield pre.normalise(x), np.asarray([y for _, y in chunk], dtype=np.int64)
