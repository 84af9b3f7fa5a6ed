"""Shared test setup: offline hub, seeded torch where it is installed, and a tiny exported model pair.

Nothing here needs torch to load: the device-side tests (tests/runtime, tests/devices, tests/test_layers.py) run on
the base install, where every test that needs torch skips itself (importorskip).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a hub lookup would hang ~50 s before failing

import pytest
from tiny_config import tiny_config


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked `openvino` skip where it is not installed (the README's install has no openvino extra), so
    `python -m pytest` passes there; CI installs the extra and runs them with -m openvino."""
    if item.get_closest_marker("openvino") and importlib.util.find_spec("openvino") is None:
        pytest.skip("needs OpenVINO, which is not installed: pip install -e '.[openvino]'")


@pytest.fixture(autouse=True)
def _deterministic_torch() -> None:
    try:
        import torch
    except ImportError:  # the base install: nothing to seed
        return
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-epoch `hiap train` run of the tiny built-in model (read only: tests copy what they change)."""
    pytest.importorskip("torch")
    from hiap.train import Trainer

    run = tmp_path_factory.mktemp("run") / "run"
    Trainer(tiny_config(run, epochs=1, train_images=128, batch_size=16)).run()
    return run


@pytest.fixture(scope="session")
def exported_pair(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A pruned and a dense export of the tiny built-in model (random weights): model.onnx, golden.npz, plan."""
    import json

    torch = pytest.importorskip("torch")  # before the imports below, which need it: skipped on the base install

    from hiap.cost import BlockStructure, Structure
    from hiap.export.artifact import export_source
    from hiap.export.plan import make_plan
    from hiap.export.source import source_from_plan
    from hiap.gated import GatedViT
    from hiap.models import create_model, data_config

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("exported")
    vit = create_model("hiap_vit_fmnist_tiny", num_classes=10).eval()
    geom = GatedViT(vit).geometry
    hd, k = geom.head_dim, geom.hidden
    blocks = []
    for i in range(geom.depth):
        heads = (0, 2, 3) if i % 2 == 0 else (1,)
        blocks.append(BlockStructure(heads=heads, value_dims=tuple(tuple(range(hd - 4 * j)) for j in range(len(heads))),
                                     ffn=i != 1, neurons=tuple(range(0, k, 3)) if i != 1 else ()))  # fmt: skip
    out = {}
    for name, structure in (("pruned", Structure(blocks=tuple(blocks))), ("dense", None)):
        structure = structure or geom.dense_structure()
        plan = make_plan("hiap_vit_fmnist_tiny", geom, structure, data_config(vit), 10)
        plan_path = root / f"{name}-plan.json"
        plan_path.write_text(json.dumps(plan.to_dict()))
        torch.manual_seed(0)  # the same random weights for both
        src = source_from_plan("hiap_vit_fmnist_tiny", plan_path, pretrained="none")
        export_source(src, root / name, simplify=False)
        out[name] = root / name / "model.onnx"
    return out
