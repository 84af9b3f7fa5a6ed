"""Evaluation data for the device, in numpy only: the built-in validation split and ImageFolder trees (Pillow).

Preprocessing follows the model's own metadata (input size, mean/std, interpolation, crop_pct), so a board needs
only the .onnx and this package.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hiap.base.builtin_data import load_builtin_arrays
from hiap.base.errors import HiapError
from hiap.base.jsonfile import parse_json
from hiap.base.tree import walk_files

# What a device input can be: far beyond any ViT's (DeiT 3x224x224, 518-pixel DINOv2), far below a size whose
# batch alone would exhaust a board's memory.
MAX_CHANNELS, MAX_SIDE = 16, 4096
INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "lanczos")  # what _pil_resample maps

# torchvision's IMG_EXTENSIONS: the files `hiap train` reads from an ImageFolder are the files the bench reads.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


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
        """Read what hiap export wrote into metadata_props (or an engine's sidecar), each value checked: a wrong
        one would otherwise show up only as a low top-1 (a std of 0) or a crash far from its cause."""

        def field(key: str, default: Any = None) -> Any:
            if key not in meta:
                if default is not None:
                    return default
                raise HiapError(f"'{source}' carries no '{key}' in its metadata: export it with hiap export.")
            value = meta[key]
            if not isinstance(value, str):
                return value
            try:
                return parse_json(value, f"'{source}' metadata '{key}'")
            except HiapError:
                return value  # a bare string (interpolation); the checks below say what is wrong with anything else

        def bad(key: str, want: str) -> HiapError:
            return HiapError(f"'{source}' metadata '{key}' must be {want}, got {str(meta.get(key))[:60]!r}: "
                             "re-export the model with hiap export.")  # fmt: skip

        def numbers(key: str, count: int) -> tuple[float, ...]:
            value = field(key)
            ok = isinstance(value, list) and len(value) == count
            if not ok or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                raise bad(key, f"a list of {count} numbers (one per input channel)")
            if not all(math.isfinite(v) for v in value):
                raise bad(key, "finite numbers")
            return tuple(float(v) for v in value)

        size = field("input_size")
        if not (isinstance(size, list) and len(size) == 3 and all(type(v) is int and v > 0 for v in size)):
            raise bad("input_size", "[C, H, W] of positive integers")
        if size[0] > MAX_CHANNELS or max(size[1:]) > MAX_SIDE:
            raise bad("input_size", f"at most {MAX_CHANNELS} channels and {MAX_SIDE} pixels a side")
        std = numbers("std", size[0])
        if not all(v > 0 for v in std):
            raise bad("std", "positive numbers (the images are divided by them)")
        interpolation = field("interpolation", "bicubic")
        if interpolation not in INTERPOLATIONS:
            raise bad("interpolation", f"one of {', '.join(INTERPOLATIONS)}")
        crop_pct = field("crop_pct", 1.0)
        if not (isinstance(crop_pct, (int, float)) and not isinstance(crop_pct, bool) and 0 < crop_pct <= 1):
            raise bad("crop_pct", "a number in (0, 1]")
        names = field("class_names", [])
        if not (isinstance(names, list) and all(isinstance(c, str) for c in names)):
            raise bad("class_names", "a list of strings")
        return cls(
            input_size=tuple(size),  # type: ignore[arg-type]
            mean=numbers("mean", size[0]),
            std=std,
            interpolation=interpolation,
            crop_pct=float(crop_pct),
            class_names=tuple(names),
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


def _prepare_builtin(x: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """uint8 [n, 28, 28] -> the model's input, as training prepared it (resized, channels, normalised)."""
    c, h, w = pre.input_size
    out = resize_bilinear(x[:, None].astype(np.float32) / 255.0, h, w)
    return pre.normalise(np.repeat(out, c, axis=1) if c != 1 else out)


def builtin_images(pre: Preprocessing, split: str = "val", indices: np.ndarray | None = None,
                   path: Path | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Images of a built-in split ('train': 12,000, 'val': 3,000 Fashion-MNIST images; `indices` picks some of them)
    and their labels, prepared exactly as training validated."""
    arrays = load_builtin_arrays(path)
    x, y = arrays[f"x_{split}"], arrays[f"y_{split}"].astype(np.int64)
    if indices is not None:
        x, y = x[indices], y[indices]
    return _prepare_builtin(x, pre), y


# How `limit` picks its images, as the bench report records it: the splits are stored class by class, so the
# first N images would be one or two classes only.
SUBSET_SELECTION = "round-robin over the classes in class order, each class's images in split order"


def balanced_subset(labels: np.ndarray | list[int], limit: int | None) -> np.ndarray:
    """Indices of `limit` of the items whose classes are `labels`, class-balanced and deterministic: the k-th item of
    every class (in class order) before the (k+1)-th of any, so each class gets floor or ceil(limit / classes) of
    them (a class with fewer gives all it has, the others fill in). Sorted, so the items keep the split's order;
    every item when `limit` is None or not below their count."""
    y = np.asarray(labels, dtype=np.int64)
    if limit is None or limit >= len(y):
        return np.arange(len(y))
    seen: dict[int, int] = {}
    rank = np.empty(len(y), dtype=np.int64)  # how many items of its class come before each item
    for i, c in enumerate(y.tolist()):
        rank[i] = seen.get(c, 0)
        seen[c] = int(rank[i]) + 1
    return np.sort(np.lexsort((y, rank))[:limit])  # by rank, then class


def builtin_val_batches(pre: Preprocessing, batch_size: int = 64, limit: int | None = None,
                        path: Path | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:  # fmt: skip
    """The built-in validation split (3,000 Fashion-MNIST images) prepared exactly as training validated it; `limit`
    of them picked by `balanced_subset`."""
    arrays = load_builtin_arrays(path)
    keep = balanced_subset(arrays["y_val"], limit)
    x_all, y_all = arrays["x_val"][keep], arrays["y_val"][keep].astype(np.int64)
    for i in range(0, len(y_all), batch_size):
        yield _prepare_builtin(x_all[i : i + batch_size], pre), y_all[i : i + batch_size]


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
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        # DecompressionBombError: a small file declaring a vast image (PIL refuses to decode it); SyntaxError and
        # ValueError: what some of PIL's decoders raise for a damaged file
        raise HiapError(f"Image '{path}' cannot be read ({type(exc).__name__}): remove or replace it.") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def image_folder_files(root: Path) -> tuple[list[str], list[tuple[Path, str]]]:
    """The class folders of `root` and its (image, class folder) pairs in torchvision ImageFolder's order (classes
    sorted, each walked recursively, sorted), so the bench evaluates exactly the images training validated on."""
    if not root.is_dir():
        raise HiapError(f"Data '{root}' is not a folder: pass 'builtin' or an ImageFolder root (one folder per class).")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    if not classes:
        raise HiapError(f"Data '{root}' has no class folders: expected ROOT/<class>/<image>.")
    files = [(Path(d) / name, cls) for cls in classes for d, names in walk_files(root / cls)
             for name in sorted(names) if name.lower().endswith(IMAGE_SUFFIXES)]  # fmt: skip
    return classes, files


def _limited(classes: list[str], files: list[tuple[Path, str]], limit: int | None) -> list[tuple[Path, str]]:
    """`limit` of an ImageFolder's (image, class folder) pairs, class-balanced by `balanced_subset`."""
    if limit is None:
        return files
    order = {c: i for i, c in enumerate(classes)}
    return [files[i] for i in balanced_subset([order[c] for _, c in files], limit)]


def is_training_root(root: Path) -> bool:
    """True for what `hiap train --data` takes (ROOT/val/<class>/..., usually with ROOT/train/): a val/ folder
    holding class folders and no images of its own. A class-folder tree with a class named 'val' holds images."""
    val = root / "val"
    if not val.is_dir() or ((root / "train").exists() and not (root / "train").is_dir()):
        return False
    children = list(os.scandir(val))
    return any(e.is_dir() for e in children) and not any(
        e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES) for e in children
    )


def resolve_image_folder(root: Path) -> Path:
    """The class-folder tree to evaluate: ROOT/val for a training root, else ROOT itself."""
    return root / "val" if is_training_root(root) else root


def split_fingerprint(root: Path, limit: int | None = None) -> dict[str, Any]:
    """Identity of an ImageFolder split without decoding it: image count, class folders and a sha256 over the
    relative paths and sizes of its images (with `limit`, of the ones `balanced_subset` picks, as the bench
    evaluates them). Paths are relative, so the same split copied to a board elsewhere has the same fingerprint."""
    classes, files = image_folder_files(root)
    files = _limited(classes, files, limit)
    digest = hashlib.sha256(json.dumps(classes).encode())
    for path, _ in files:
        digest.update(f"{path.relative_to(root).as_posix()}\0{path.stat().st_size}\n".encode())
    return {"data": "image_folder", "images": len(files), "classes": classes, "sha256": digest.hexdigest()}


def builtin_fingerprint(limit: int | None = None, path: Path | None = None) -> dict[str, Any]:
    """The same for the built-in validation split (over its pixels and labels: it is one file, not a tree)."""
    arrays = load_builtin_arrays(path)
    keep = balanced_subset(arrays["y_val"], limit)
    x, y = arrays["x_val"][keep], arrays["y_val"][keep]
    digest = hashlib.sha256(np.ascontiguousarray(x).tobytes())
    digest.update(np.ascontiguousarray(y).tobytes())
    classes = [str(c) for c in arrays["classes"]]
    return {"data": "builtin", "images": len(y), "classes": classes, "sha256": digest.hexdigest()}


def image_folder_batches(root: Path, pre: Preprocessing, batch_size: int = 32,
                         limit: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:  # fmt: skip
    """An ImageFolder (one sub-folder per class); classes map by the model's class names when it has them. `limit`
    of its images picked by `balanced_subset` (over the class folders, in sorted order)."""
    names, listed = image_folder_files(root)
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
    files = [(f, index[cls]) for f, cls in _limited(names, listed, limit)]
    if not files:
        raise HiapError(f"Data '{root}' has no images ({', '.join(IMAGE_SUFFIXES)}).")
    for i in range(0, len(files), batch_size):
        chunk = files[i : i + batch_size]
        x = np.stack([load_image(f, pre) for f, _ in chunk])
        yield pre.normalise(x), np.asarray([y for _, y in chunk], dtype=np.int64)


def sample_image_folder(root: Path, pre: Preprocessing, n: int, seed: int = 0) -> tuple[np.ndarray, int]:
    """`n` images drawn without replacement (seeded) from every class folder of `root`, prepared by the eval
    transform, and how many images the folder holds: calibration data that covers the classes, not the first one."""
    _, files = image_folder_files(root)
    if not files:
        raise HiapError(f"Data '{root}' has no images ({', '.join(IMAGE_SUFFIXES)}).")
    picked = np.sort(np.random.default_rng(seed).choice(len(files), size=min(n, len(files)), replace=False))
    return pre.normalise(np.stack([load_image(files[i][0], pre) for i in picked])), len(files)
