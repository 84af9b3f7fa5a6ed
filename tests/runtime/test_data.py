"""The device's numpy preprocessing against training's torch one, and ImageFolder class mapping."""

import numpy as np
import pytest
from PIL import Image

from runtime.data import Preprocessing, builtin_val_batches, image_folder_batches, resize_bilinear


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
