"""The device's numpy preprocessing against training's torch one, and ImageFolder class mapping."""

import numpy as np
import pytest
from PIL import Image

from hiap.runtime.data import (
    Preprocessing,
    balanced_subset,
    builtin_val_batches,
    image_folder_batches,
    resize_bilinear,
    split_fingerprint,
)


@pytest.mark.parametrize("size", [(28, 28), (32, 32), (56, 40), (14, 14)])
def test_resize_matches_torch(size: tuple[int, int]) -> None:
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    x = np.random.default_rng(0).random((2, 1, 28, 28)).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(x), size=size, mode="bilinear", align_corners=False).numpy()
    assert np.abs(resize_bilinear(x, *size) - ref).max() < 1e-5


@pytest.mark.parametrize("input_size", [(1, 28, 28), (3, 32, 32)])
def test_builtin_batches_equal_training_validation(input_size: tuple[int, int, int]) -> None:
    pytest.importorskip("torch")
    from hiap.data import BuiltinData

    c = input_size[0]
    pre = Preprocessing(input_size, (0.3,) * c, (0.4,) * c)
    ours_x, ours_y = next(builtin_val_batches(pre, batch_size=16))
    data = BuiltinData(input_size, (0.3,) * c, (0.4,) * c, augment=False)
    ref_x, ref_y = next(data.val_batches(16))
    assert np.abs(ours_x - ref_x.numpy()).max() < 1e-5
    assert (ours_y == ref_y.numpy()).all()


def test_image_folder_maps_classes_by_model_names(tmp_path) -> None:
    for name, value in (("b", 200), ("a", 10)):
        (tmp_path / name).mkdir()
        Image.fromarray(np.full((40, 30), value, np.uint8)).save(tmp_path / name / "x.png")
    pre = Preprocessing((1, 16, 16), (0.0,), (1.0,), "bilinear", 0.875, class_names=("b", "a"))
    x, y = next(image_folder_batches(tmp_path, pre))
    assert x.shape == (2, 1, 16, 16)
    assert list(y) == [1, 0]  # folder 'a' is the model's class 1
    assert x[0].mean() == pytest.approx(10 / 255, abs=1e-3) and x[1].mean() == pytest.approx(200 / 255, abs=1e-3)


def test_limit_is_class_balanced_round_robin(tmp_path) -> None:
    """The splits are stored class by class: --limit must not evaluate the first class only."""
    for cls in ("a", "b", "c"):
        (tmp_path / cls).mkdir()
        for i in range(4):
            Image.fromarray(np.full((28, 28), 60 * i, np.uint8)).save(tmp_path / cls / f"{i}.png")
    pre = Preprocessing((1, 28, 28), (0.0,), (1.0,), "bilinear")
    labels = [int(v) for _, y in image_folder_batches(tmp_path, pre, batch_size=2, limit=5) for v in y]
    assert labels == [0, 0, 1, 1, 2]  # 2, 2, 1: round-robin in class order, each class's first images
    assert [int(v) for v in next(image_folder_batches(tmp_path, pre, limit=3))[1]] == [0, 1, 2]
    subset = split_fingerprint(tmp_path, 5)
    assert subset["images"] == 5 and subset == split_fingerprint(tmp_path, 5)  # the same subset every time
    assert subset["sha256"] != split_fingerprint(tmp_path, 4)["sha256"]
    assert split_fingerprint(tmp_path, 12) == split_fingerprint(tmp_path) != subset
    assert list(balanced_subset([0, 0, 0, 1, 2, 2], 5)) == [0, 1, 3, 4, 5]  # class 1 has one: the others fill in
    assert list(balanced_subset([1, 1, 0, 0], None)) == [0, 1, 2, 3]
    builtin = np.concatenate([y for _, y in builtin_val_batches(pre, limit=25)])
    assert np.bincount(builtin).tolist() == [3, 3, 3, 3, 3, 2, 2, 2, 2, 2]  # the built-in split is class-sorted too
