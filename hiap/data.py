"""Training and validation data: the built-in Fashion-MNIST subset (in memory) and ImageFolder trees."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from hiap.errors import HiapError
from runtime.data import load_builtin_arrays

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


@dataclass
class BuiltinData:
    """Fashion-MNIST subset held in memory; batches are resized and normalised for the model's input."""

    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool = True
    path: Path | None = None

    def __post_init__(self) -> None:
        arrays = load_builtin_arrays(self.path)
        self.x_train = torch.from_numpy(arrays["x_train"])
        self.y_train = torch.from_numpy(arrays["y_train"].astype(np.int64))
        self.x_val = torch.from_numpy(arrays["x_val"])
        self.y_val = torch.from_numpy(arrays["y_val"].astype(np.int64))
        self.classes = [str(c) for c in arrays["classes"]]
        self.provenance = str(arrays["provenance"])
        self.num_train, self.num_val = len(self.y_train), len(self.y_val)
        self.description = f"builtin Fashion-MNIST subset ({self.num_train} train / {self.num_val} val)"
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
        b = images.shape[0]
        padded = F.pad(images, (2, 2, 2, 2))
        oy = torch.randint(0, 5, (b,), generator=generator)
        ox = torch.randint(0, 5, (b,), generator=generator)
        ar = torch.arange(28)
        rows = (oy[:, None] + ar)[:, :, None]
        cols = (ox[:, None] + ar)[:, None, :]
        out = padded[torch.arange(b)[:, None, None], rows, cols]
        flip = torch.rand(b, generator=generator) < 0.5
        return torch.where(flip[:, None, None], out.flip(-1), out)

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


class ImageFolderData:
    """An ImageFolder tree (`train/<class>/*`, `val/<class>/*`) with timm transforms from the model's config."""

    def __init__(self, root: Path, data_cfg: dict[str, Any], workers: int = 2) -> None:
        from timm.data import create_transform
        from torchvision.datasets import ImageFolder

        root = Path(root)
        if not root.is_dir():
            raise HiapError(f"Data path '{root}' does not exist: pass --data builtin or an ImageFolder tree.")
        splits = {}
        channels = data_cfg["input_size"][0]
        for split in ("train", "val"):
            d = root / split
            if not d.is_dir():
                raise HiapError(
                    f"Data path '{root}' has no '{split}/' folder: expected {root}/{split}/<class>/<image>."
                )
            try:
                ds = ImageFolder(
                    str(d),
                    transform=create_transform(**data_cfg, is_training=split == "train"),
                    loader=_image_loader("RGB" if channels == 3 else "L"),
                )
            except FileNotFoundError as exc:
                raise HiapError(f"Data split '{d}' has no classes with images ({exc}).") from None
            if len(ds) == 0:
                raise HiapError(f"Data split '{d}' is empty: put images under {d}/<class>/.")
            splits[split] = ds
        if splits["train"].classes != splits["val"].classes:
            raise HiapError(f"Data path '{root}': train/ and val/ have different class folders.")
        self.train_set, self.val_set = splits["train"], splits["val"]
        self.classes = list(self.train_set.classes)
        self.num_train, self.num_val = len(self.train_set), len(self.val_set)
        self.workers = workers
        self.description = f"ImageFolder {root} ({self.num_train} train / {self.num_val} val)"

    def _loader(self, ds: Any, batch_size: int, shuffle: bool, seed: int) -> Iterator[Batch]:
        gen = torch.Generator().manual_seed(seed)
        loader = torch.utils.data.DataLoader(
            ds, batch_size=batch_size, shuffle=shuffle, drop_last=shuffle, num_workers=self.workers, generator=gen
        )
        yield from loader

    def train_batches(self, epoch: int, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> Iterator[Batch]:
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


def create_data(spec: str, data_cfg: dict[str, Any], workers: int = 2) -> Dataset:
    if spec == "builtin":
        return BuiltinData(input_size=data_cfg["input_size"], mean=data_cfg["mean"], std=data_cfg["std"])
    return ImageFolderData(Path(spec), data_cfg, workers=workers)
