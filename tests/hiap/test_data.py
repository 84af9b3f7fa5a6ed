"""Training data: built-in batches (order, augmentation, DDP shares, preprocessing) and ImageFolder tree errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from hiap.base.errors import HiapError
from hiap.data import BuiltinData, ImageFolderData

N_TRAIN, N_VAL = 14, 5
IDENTITY = ((1, 28, 28), (0.0,), (1.0,))  # no resize, no normalisation: batches are the pixels / 255


@pytest.fixture(scope="module")
def npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A built-in-format file in miniature; label i is image i, so every batch says where its images came from."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("builtin") / "subset.npz"
    np.savez(path, x_train=rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8),
             y_train=np.arange(N_TRAIN, dtype=np.uint8), x_val=rng.integers(0, 256, (N_VAL, 28, 28), dtype=np.uint8),
             y_val=np.arange(N_VAL, dtype=np.uint8)[::-1].copy(), classes=np.array([f"c{i}" for i in range(N_TRAIN)]),
             provenance=np.array("test"))  # fmt: skip
    return path


def _data(npz: Path, input_size=IDENTITY[0], mean=IDENTITY[1], std=IDENTITY[2], augment: bool = True) -> BuiltinData:
    return BuiltinData(input_size, mean, std, augment=augment, path=npz)


def _epoch(data: BuiltinData, epoch: int, seed: int, batch: int = 4, rank: int = 0, world: int = 1) -> list:
    return list(data.train_batches(epoch, batch, seed, rank, world))


def test_counts_classes_and_description(npz: Path) -> None:
    data = _data(npz)
    assert (data.num_train, data.num_val, data.classes[:2], data.provenance) == (N_TRAIN, N_VAL, ["c0", "c1"], "test")
    assert data.description == f"builtin Fashion-MNIST subset ({N_TRAIN} train / {N_VAL} val)"
    assert data.augmentation == "random crop of the image padded by 2, hflip 0.5"
    assert _data(npz, augment=False).augmentation == "none"


def test_an_epoch_is_a_permutation_in_full_batches_and_replays_by_seed_and_epoch(npz: Path) -> None:
    data = _data(npz)
    batches = _epoch(data, epoch=2, seed=5)
    assert [tuple(x.shape) for x, _ in batches] == [(4, 1, 28, 28)] * 3  # 14 images: the last 2 are dropped
    assert all(x.dtype == torch.float32 and y.dtype == torch.int64 for x, y in batches)
    labels = torch.cat([y for _, y in batches])
    assert len(set(labels.tolist())) == 12  # no image twice in an epoch
    for again in (_epoch(data, 2, 5), _epoch(_data(npz), 2, 5)):  # the same object or a fresh one
        assert all(torch.equal(a, b) for (a, _), (b, _) in zip(batches, again, strict=True))
        assert torch.equal(torch.cat([y for _, y in again]), labels)
    for epoch, seed in ((3, 5), (2, 6)):
        assert not torch.equal(torch.cat([y for _, y in _epoch(data, epoch, seed)]), labels)


def test_augmented_images_are_padded_crops_of_their_source_maybe_flipped(npz: Path) -> None:
    data = _data(npz)
    flipped = shifted = 0
    for epoch in range(3):
        for x, y in _epoch(data, epoch, seed=1):
            for img, label in zip(x, y.tolist(), strict=True):
                pixels = torch.round(img[0] * 255).to(torch.uint8)
                padded = F.pad(data.x_train[label], (2, 2, 2, 2))
                crops = {(oy, ox): padded[oy : oy + 28, ox : ox + 28] for oy in range(5) for ox in range(5)}
                windows = {(*k, f): c.flip(-1) if f else c for k, c in crops.items() for f in (0, 1)}
                match = [k for k, w in windows.items() if torch.equal(pixels, w)]
                assert match, f"image {label} is no padded crop of its source"
                flipped += match[0][2]
                shifted += match[0][:2] != (2, 2)
    assert 0 < flipped < 36 and shifted > 18  # both flips occur; most crops move off the centre


def test_without_augmentation_batches_are_the_normalised_pixels(npz: Path) -> None:
    data = _data(npz, mean=(0.25,), std=(0.5,), augment=False)
    for x, y in _epoch(data, 0, seed=0):
        expected = (data.x_train[y].float().unsqueeze(1) / 255 - 0.25) / 0.5
        assert torch.allclose(x, expected, atol=1e-6, rtol=0)
    val = list(data.val_batches(2))
    assert [len(y) for _, y in val] == [2, 2, 1] and torch.cat([y for _, y in val]).tolist() == [4, 3, 2, 1, 0]
    assert torch.allclose(val[0][0], (data.x_val[:2].float().unsqueeze(1) / 255 - 0.25) / 0.5, atol=1e-6, rtol=0)


def test_other_input_sizes_are_resized_and_normalised_per_channel(npz: Path) -> None:
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 0.125)
    data = _data(npz, (3, 32, 40), mean, std, augment=False)
    x, _ = next(data.val_batches(3))
    assert x.shape == (3, 3, 32, 40)
    resized = F.interpolate(data.x_val[:3].float().unsqueeze(1) / 255, size=(32, 40), mode="bilinear",
                            align_corners=False)  # fmt: skip
    for c in range(3):  # one grey image in every channel, each with its own statistics
        assert torch.allclose(x[:, c : c + 1] * std[c] + mean[c], resized, atol=1e-5, rtol=0)


def test_ranks_get_contiguous_shares_of_the_same_global_batch(npz: Path) -> None:
    data = _data(npz)
    whole = _epoch(data, 1, seed=3, batch=4)
    shares = [_epoch(data, 1, seed=3, batch=4, rank=r, world=2) for r in range(2)]
    assert [len(s) for s in shares] == [3, 3] and all(x.shape[0] == 2 for s in shares for x, _ in s)
    for step, (x, y) in enumerate(whole):
        assert torch.equal(torch.cat([shares[0][step][0], shares[1][step][0]]), x)
        assert torch.equal(torch.cat([shares[0][step][1], shares[1][step][1]]), y)


def test_normalisation_of_another_channel_count_is_refused(npz: Path) -> None:
    with pytest.raises(HiapError) as err:
        _data(npz, (3, 28, 28), (0.5,), (0.5,))
    assert str(err.value) == "Model normalisation has 1 channels but its input has 3."


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)


DCFG = {"input_size": (1, 8, 8), "mean": (0.5,), "std": (0.5,), "interpolation": "bilinear", "crop_pct": 1.0}


def test_image_folder_trees_that_cannot_work_are_one_line_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(HiapError) as err:
        ImageFolderData(missing, DCFG, workers=0)
    assert str(err.value) == f"Data path '{missing}' does not exist: pass --data builtin or an ImageFolder tree."
    root = tmp_path / "data"
    _image(root / "train" / "cat" / "0.png")
    with pytest.raises(HiapError) as err:
        ImageFolderData(root, DCFG, workers=0)
    assert str(err.value) == f"Data path '{root}' has no 'val/' folder: expected {root}/val/<class>/<image>."
    _image(root / "val" / "dog" / "0.png")
    with pytest.raises(HiapError) as err:
        ImageFolderData(root, DCFG, workers=0)
    assert str(err.value) == f"Data path '{root}': train/ and val/ have different class folders."
    (root / "val" / "cat").mkdir()
    (root / "val" / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(HiapError) as err:
        ImageFolderData(root, DCFG, workers=0)
    assert str(err.value).startswith(f"Data split '{root / 'val'}' has no classes with images (")
    assert "\n" not in str(err.value)
    _image(root / "val" / "cat" / "1.png")
    _image(root / "train" / "dog" / "0.png")
    data = ImageFolderData(root, DCFG, workers=0)  # now a valid tree: 2 classes, 2 + 2 images
    assert (data.classes, data.num_train, data.num_val, data.cached) == (["cat", "dog"], 2, 2, True)
