"""Training and validation data: the built-in Fashion-MNIST subset (in memory) and ImageFolder trees."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from hiap.base.builtin_data import load_builtin_arrays
from hiap.base.errors import HiapError
from hiap.base.tree import walk_files

Batch = tuple[torch.Tensor, torch.Tensor]


class Dataset(Protocol):
    classes: list[str]
    num_train: int
    num_val: int
    description: str

    def train_batches(
        self, epoch: int, batch_size: int, seed: int, rank: int = 0, world: int = 1
    ) -> Iterator[Batch]: ...

    def val_batches(self, batch_size: int, rank: int = 0, world: int = 1) -> Iterator[Batch]:
        """Batch i of the fixed validation order goes to rank i % world (so each rank decodes only its batches)."""
        ...


SEARCH_PER_CLASS = 120  # 10 % of the built-in training images of each class
# The search splits by name and the training images they carve per class: 'search' (1,200 images: a run's top-1
# moves by about 1 pp from image noise alone) and 'search-3k' (3,000, as many as the reported validation split).
SEARCH_SPLITS = {"search": SEARCH_PER_CLASS, "search-3k": 300}


def search_carve(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Boolean mask of the last `per_class` images of each class in `labels` (the order of the file)."""
    carved = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        carved[np.flatnonzero(labels == c)[-per_class:]] = True
    return carved


@dataclass
class BuiltinData:
    """Fashion-MNIST subset held in memory; batches are resized and normalised for the model's input."""

    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool = True
    path: Path | None = None
    # 'val': the shipped validation split. 'search' / 'search-3k': the last SEARCH_SPLITS[split] training images of
    # each class become the validation set and the rest the training set, so recipes are chosen without the
    # reported split.
    split: str = "val"

    def __post_init__(self) -> None:
        arrays = load_builtin_arrays(self.path)
        x_train, y_train = arrays["x_train"], arrays["y_train"].astype(np.int64)
        x_val, y_val = arrays["x_val"], arrays["y_val"].astype(np.int64)
        if self.split in SEARCH_SPLITS:
            carved = search_carve(y_train, SEARCH_SPLITS[self.split])
            x_train, y_train, x_val, y_val = x_train[~carved], y_train[~carved], x_train[carved], y_train[carved]
        elif self.split != "val":
            raise HiapError(f"Unknown built-in split '{self.split}': use 'val', {', '.join(map(repr, SEARCH_SPLITS))}.")
        self.x_train, self.y_train = torch.from_numpy(x_train), torch.from_numpy(y_train)
        self.x_val, self.y_val = torch.from_numpy(x_val), torch.from_numpy(y_val)
        self.classes = [str(c) for c in arrays["classes"]]
        self.provenance = str(arrays["provenance"])
        self.num_train, self.num_val = len(self.y_train), len(self.y_val)
        what = f"{self.split} split: val carved from train" if self.split in SEARCH_SPLITS else "val"
        self.description = f"builtin Fashion-MNIST subset ({self.num_train} train / {self.num_val} {what})"
        self.augmentation = "random crop of the image padded by 2, hflip 0.5" if self.augment else "none"
        c = self.input_size[0]
        if len(self.mean) != c or len(self.std) != c:
            raise HiapError(f"Model normalisation has {len(self.mean)} channels but its input has {c}.")
        self._mean = torch.tensor(self.mean).view(1, c, 1, 1)
        self._std = torch.tensor(self.std).view(1, c, 1, 1)

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 28, 28] -> float [B, C, H, W], resized and normalised with the model's statistics."""
        x = images.unsqueeze(1).float().div_(255.0)
        c, h, w = self.input_size
        if (h, w) != tuple(x.shape[-2:]):
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        if c != 1:
            x = x.expand(-1, c, -1, -1)
        return (x - self._mean) / self._std

    @staticmethod
    def _augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Random 28x28 crop of the image padded by 2, and horizontal flip (standard for Fashion-MNIST)."""
        return crop_flip(images.unsqueeze(1), 2, 0.5, generator).squeeze(1)

    def train_batches(self, epoch: int, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> Iterator[Batch]:
        """Global batches of `batch_size`; under DDP each rank gets its contiguous 1/world share of every one.

        The order and augmentation of an epoch depend only on (seed, epoch): resume replays them exactly, and a
        2-rank run sees the same images per step as a 1-rank run with the same global batch. Every rank draws the
        whole batch's augmentation (cheap for in-memory 28x28 images) so the generator stays in step."""
        gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(self.num_train, generator=gen)
        share = batch_size // world
        for start in range(0, self.num_train - batch_size + 1, batch_size):  # drop the last partial batch
            idx = order[start : start + batch_size]
            images = self.x_train[idx]
            if self.augment:
                images = self._augment(images, gen)
            if world > 1:
                images, idx = images[rank * share : (rank + 1) * share], idx[rank * share : (rank + 1) * share]
            yield self._prepare(images), self.y_train[idx]

    def val_batches(self, batch_size: int, rank: int = 0, world: int = 1) -> Iterator[Batch]:
        for start in range(rank * batch_size, self.num_val, world * batch_size):
            yield self._prepare(self.x_val[start : start + batch_size]), self.y_val[start : start + batch_size]


@dataclass(frozen=True)
class Augment:
    """Training augmentation of ImageFolder data (TrainConfig's keys, timm's names)."""

    crop_pad: int = -1
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (0.75, 4 / 3)
    hflip: float = 0.5
    color_jitter: float = 0.0
    auto_augment: str = ""

    @classmethod
    def from_config(cls, cfg: Any) -> Augment:
        """The augmentation a TrainConfig asks for (its keys have these names)."""
        values = {f.name: getattr(cfg, f.name) for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    def resolved_pad(self, input_size: tuple[int, int, int]) -> int:
        """Pixels of padding for the random crop; 0 means timm's random-resized-crop."""
        if self.crop_pad >= 0:
            return self.crop_pad
        return max(input_size[1:]) // 8 if max(input_size[1:]) <= 64 else 0

    def describe(self, input_size: tuple[int, int, int]) -> str:
        pad = self.resolved_pad(input_size)
        crop = f"random crop, padding {pad}" if pad else f"random-resized-crop scale {list(self.scale)} ratio " + (
            f"[{self.ratio[0]:.3g}, {self.ratio[1]:.3g}]")  # fmt: skip
        extra = [f"hflip {self.hflip:g}"]
        if self.color_jitter:
            extra.append(f"color jitter {self.color_jitter:g}")
        if self.auto_augment:
            extra.append(f"auto-augment {self.auto_augment}")
        return ", ".join([crop, *extra])


def train_transform(data_cfg: dict[str, Any], aug: Augment) -> Any:
    """timm's training transform with `aug`; with padding, a random crop of the padded image replaces the
    random-resized-crop (images are first brought to the input size, as the eval transform does)."""
    from timm.data import create_transform
    from torchvision import transforms

    size = tuple(data_cfg["input_size"][1:])
    try:
        primary, secondary, final = create_transform(
            **data_cfg, is_training=True, scale=aug.scale, ratio=aug.ratio, hflip=aug.hflip,
            color_jitter=aug.color_jitter or None, auto_augment=aug.auto_augment or None, separate=True,
        )  # fmt: skip
    except (AssertionError, ValueError, KeyError, IndexError) as exc:
        raise HiapError(f"Augmentation auto_augment '{aug.auto_augment}' is not a timm policy ({exc or 'rejected'}): "
                        "use e.g. 'rand-m9-mstd0.5-inc1', 'augmix-m5-w4-d2' or ''.") from None  # fmt: skip
    pad = aug.resolved_pad(tuple(data_cfg["input_size"]))
    if pad:
        flips = [transforms.RandomHorizontalFlip(aug.hflip)] if aug.hflip > 0 else []
        primary = transforms.Compose([transforms.Resize(min(size)), transforms.CenterCrop(size),
                                      transforms.RandomCrop(size, padding=pad), *flips])  # fmt: skip
    return transforms.Compose([primary, secondary, final])


class DecodedImages(torch.utils.data.Dataset):
    """Every image of an ImageFolder split decoded once into memory (uint8), transformed per access.

    For small images the per-epoch cost of opening and decoding 50,000 files dominates a step; decoded they cost
    H*W*C bytes each (CIFAR-10: 150 MB for 50,000). The transform runs on the same PIL image a file would give,
    so results equal the file-backed path."""

    def __init__(self, folder: Any, mode: str) -> None:
        from PIL import Image

        self.transform = folder.transform
        self.classes, self.targets = folder.classes, list(folder.targets)
        read = _image_loader(mode)
        images = [np.asarray(read(path)) for path, _ in folder.samples]
        # One array when every image has one size: a single buffer that DataLoader workers share after fork.
        same = all(im.shape == images[0].shape for im in images)
        self.images: Any = np.stack(images) if same else images
        self._fromarray = Image.fromarray

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return self.transform(self._fromarray(self.images[i])), self.targets[i]


def crop_flip(images: torch.Tensor, pad: int, hflip: float, generator: torch.Generator) -> torch.Tensor:
    """A random crop of each image [B, C, H, W] padded by `pad` zeros (as torchvision's RandomCrop(padding=pad)),
    then a horizontal flip with probability `hflip`, as batched tensor ops; draws offsets y, x, then flips."""
    b, c, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    rows = (oy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(w))[:, None, None, :]
    out = padded[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    flip = torch.rand(b, generator=generator) < hflip
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


class BatchedCropFlip:
    """The padded-random-crop and flip augmentation on a whole batch of in-memory images at the model's size, as
    tensor ops: per image through PIL it cost 0.5 ms (13 % of a CIFAR-10 CPU-setting step waiting for data with no
    workers; workers take the cores from training instead, benchmarks/results/data_loading.md).

    Order and augmentation of an epoch depend only on (seed, epoch), as for the built-in data; under DDP every rank
    draws the whole batch's augmentation and keeps its contiguous share."""

    def __init__(self, images: np.ndarray, targets: list[int], pad: int, hflip: float, mean: tuple[float, ...],
                 std: tuple[float, ...]) -> None:  # fmt: skip
        x = torch.from_numpy(images)
        self.images = (x.unsqueeze(-1) if x.ndim == 3 else x).permute(0, 3, 1, 2).contiguous()  # uint8 [N, C, H, W]
        self.targets = torch.tensor(targets, dtype=torch.int64)
        self.pad, self.hflip = pad, hflip
        c = self.images.shape[1]
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1)

    def batches(self, epoch: int, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> Iterator[Batch]:
        gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
        n, p = len(self.targets), self.pad
        order = torch.randperm(n, generator=gen)
        share = batch_size // world
        for start in range(0, n - batch_size + 1, batch_size):  # drop the last partial batch
            idx = order[start : start + batch_size]
            out = crop_flip(self.images[idx], p, self.hflip, gen)
            if world > 1:
                out, idx = out[rank * share : (rank + 1) * share], idx[rank * share : (rank + 1) * share]
            yield (out.float().div_(255.0) - self.mean) / self.std, self.targets[idx]


# Decode ImageFolder splits into memory ('auto') when their images are at most this many pixels on a side and the
# decoded splits fit this many bytes.
CACHE_MAX_SIDE = 64
CACHE_MAX_BYTES = 2 << 30


class ImageFolderData:
    """An ImageFolder tree (`train/<class>/*`, `val/<class>/*`) with timm transforms from the model's config."""

    def __init__(self, root: Path, data_cfg: dict[str, Any], workers: int = 2, augment: Augment | None = None,
                 cache: str = "auto") -> None:  # fmt: skip
        from timm.data import create_transform
        from torchvision.datasets import ImageFolder

        root = Path(root)
        if not root.is_dir():
            raise HiapError(f"Data path '{root}' does not exist: pass --data builtin or an ImageFolder tree.")
        augment = augment or Augment()
        splits = {}
        channels = data_cfg["input_size"][0]
        mode = "RGB" if channels == 3 else "L"
        for split in ("train", "val"):
            d = root / split
            if not d.is_dir():
                raise HiapError(
                    f"Data path '{root}' has no '{split}/' folder: expected {root}/{split}/<class>/<image>."
                )
            transform = train_transform(data_cfg, augment) if split == "train" else create_transform(**data_cfg)
            walk_files(d)  # refuses link loops, which ImageFolder would follow
            try:
                ds = ImageFolder(str(d), transform=transform, loader=_image_loader(mode))
            except FileNotFoundError as exc:
                raise HiapError(f"Data split '{d}' has no classes with images ({exc}).") from None
            if len(ds) == 0:
                raise HiapError(f"Data split '{d}' is empty: put images under {d}/<class>/.")
            splits[split] = ds
        if splits["train"].classes != splits["val"].classes:
            raise HiapError(f"Data path '{root}': train/ and val/ have different class folders.")
        self.cached = _should_cache(cache, splits["train"], mode)
        self.batched: BatchedCropFlip | None = None
        if self.cached:
            splits = {k: DecodedImages(v, mode) for k, v in splits.items()}
            self.batched = _batched_augmentation(splits["train"], data_cfg, augment)
        self.train_set, self.val_set = splits["train"], splits["val"]
        self.classes = list(self.train_set.classes)
        self.num_train, self.num_val = len(self.train_set), len(self.val_set)
        self.workers = workers
        self.augmentation = augment.describe(tuple(data_cfg["input_size"]))
        self.description = (f"ImageFolder {root} ({self.num_train} train / {self.num_val} val"
                            f"{', decoded in memory' if self.cached else ''})")  # fmt: skip

    def _loader(self, ds: Any, batch_size: int, shuffle: bool, seed: int) -> Iterator[Batch]:
        gen = torch.Generator().manual_seed(seed)
        loader = torch.utils.data.DataLoader(
            ds, batch_size=batch_size, shuffle=shuffle, drop_last=shuffle, num_workers=self.workers, generator=gen
        )
        yield from loader

    def train_batches(self, epoch: int, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> Iterator[Batch]:
        if self.batched is not None:
            return self.batched.batches(epoch, batch_size, seed, rank, world)
        if world == 1:
            return self._loader(self.train_set, batch_size, True, seed * 100_003 + epoch)
        # DDP: each rank reads only its shard (DistributedSampler), batch_size / world images per step.
        sampler = torch.utils.data.distributed.DistributedSampler(
            self.train_set, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        sampler.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(
            self.train_set, batch_size=batch_size // world, sampler=sampler, drop_last=True,
            num_workers=self.workers,
        )  # fmt: skip
        return iter(loader)

    def val_batches(self, batch_size: int, rank: int = 0, world: int = 1) -> Iterator[Batch]:
        if world == 1:
            return self._loader(self.val_set, batch_size, False, 0)
        # This rank's batches of the unsharded order, concatenated: only the last one can be short, so the loader
        # cuts them at the same boundaries and sums over ranks equal the single-process sums.
        n = len(self.val_set)
        mine = [j for i in range(rank * batch_size, n, world * batch_size) for j in range(i, min(i + batch_size, n))]
        return self._loader(torch.utils.data.Subset(self.val_set, mine), batch_size, False, 0)


class _image_loader:
    """ImageFolder loader that names the file it cannot read (a picklable class, for DataLoader workers)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __call__(self, path: str) -> Any:
        from PIL import Image

        try:
            with open(path, "rb") as f, Image.open(f) as img:
                return img.convert(self.mode)
        except Exception as exc:
            raise HiapError(f"Image '{path}' could not be read ({type(exc).__name__}): remove or replace it.") from None


def _batched_augmentation(train: DecodedImages, data_cfg: dict[str, Any], aug: Augment) -> BatchedCropFlip | None:
    """The batched path when it computes what the PIL transform would: images already at the model's size (so no
    resize), padded crop and flip only (color jitter and auto-augment are PIL operations)."""
    c, h, w = data_cfg["input_size"]
    pad = aug.resolved_pad((c, h, w))
    images = train.images
    if not pad or aug.color_jitter or aug.auto_augment or not isinstance(images, np.ndarray):
        return None
    if images.shape[1:3] != (h, w) or (images.shape[3] if images.ndim == 4 else 1) != c:
        return None
    return BatchedCropFlip(images, train.targets, pad, aug.hflip, data_cfg["mean"], data_cfg["std"])


def _should_cache(cache: str, train: Any, mode: str) -> bool:
    """'on'/'off' as given; 'auto' decodes into memory when the first image is small and the split would fit."""
    if cache != "auto":
        return cache == "on"
    from PIL import Image

    with Image.open(train.samples[0][0]) as img:
        w, h = img.size
    per_image = w * h * (3 if mode == "RGB" else 1)
    return max(w, h) <= CACHE_MAX_SIDE and per_image * len(train.samples) * 1.25 <= CACHE_MAX_BYTES


def create_data(spec: str, data_cfg: dict[str, Any], workers: int = 2, augment: Augment | None = None,
                cache: str = "auto") -> Dataset:  # fmt: skip
    if spec == "builtin":
        return BuiltinData(input_size=data_cfg["input_size"], mean=data_cfg["mean"], std=data_cfg["std"])
    return ImageFolderData(Path(spec), data_cfg, workers=workers, augment=augment, cache=cache)
