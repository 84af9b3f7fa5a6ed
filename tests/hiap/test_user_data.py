"""A user's own model geometry, resolution, augmentation and ImageFolder data through `hiap train` and back."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_config import tiny_config
from typer.testing import CliRunner

from hiap.base.errors import HiapError
from hiap.cli import app, spread_multi_value_flags
from hiap.config import resolve_config
from hiap.data import Augment, ImageFolderData, train_transform
from hiap.models import create_model, data_config, load_weights, parse_model_kwargs

runner = CliRunner()
# A 2-block ViT for 16x16 RGB images, built from a timm name by constructor arguments (as a CIFAR user would).
KWARGS = {"img_size": 16, "patch_size": 4, "depth": 2, "embed_dim": 32, "num_heads": 2}
KWARG_ARGS = [f"{k}={v}" for k, v in KWARGS.items()]


def _rgb_tree(root: Path, counts: dict[str, int], size: int = 16) -> None:
    rng = np.random.default_rng(0)
    for split, n in counts.items():
        for cls in ("cat", "dog", "frog"):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(d / f"{i}.png")


def test_model_kwargs_parse_like_timm() -> None:
    assert parse_model_kwargs(["img_size=32", "patch_size=4", "global_pool=avg", "qkv_bias=False", "scale=(1, 2)"]) == {
        "img_size": 32, "patch_size": 4, "global_pool": "avg", "qkv_bias": False, "scale": [1, 2]}  # fmt: skip
    with pytest.raises(HiapError, match="expected KEY=VALUE"):
        parse_model_kwargs(["img_size"])
    with pytest.raises(HiapError, match="set by hiap"):
        create_model("vit_tiny_patch16_224", model_kwargs={"num_classes": 3})
    with pytest.raises(HiapError, match="does not accept"):
        create_model("vit_tiny_patch16_224", model_kwargs={"no_such_argument": 1})


def test_several_values_after_one_flag_become_repeated_flags() -> None:
    argv = ["train", "--model-kwargs", "img_size=32", "patch_size=4", "--epochs", "3", "--model-kwargs", "depth=6"]
    assert spread_multi_value_flags(argv) == ["train", "--model-kwargs", "img_size=32", "--model-kwargs",
                                              "patch_size=4", "--epochs", "3", "--model-kwargs", "depth=6"]  # fmt: skip


def test_geometry_and_preprocessing_follow_the_kwargs() -> None:
    vit = create_model(
        "vit_tiny_patch16_224", num_classes=10, model_kwargs={"img_size": 32, "patch_size": 4, "depth": 6}
    )
    assert len(vit.blocks) == 6 and vit.patch_embed.grid_size == (8, 8) and vit.embed_dim == 192
    cfg = data_config(vit)
    # timm's pretrained_cfg still says 224 and crop_pct 0.9: the built geometry wins, evaluated uncropped.
    assert cfg["input_size"] == (3, 32, 32) and cfg["crop_pct"] == 1.0


def test_weights_of_another_resolution_are_resampled_and_another_patch_size_refused() -> None:
    src = create_model("vit_tiny_patch16_224", num_classes=3, model_kwargs=KWARGS | {"img_size": 32}).state_dict()
    vit = create_model("vit_tiny_patch16_224", num_classes=3, model_kwargs=KWARGS)
    notes = load_weights(vit, src, "src")
    assert vit.pos_embed.shape == (1, 1 + 16, 32) and any("resampled" in n for n in notes)
    assert torch.equal(vit.blocks[0].attn.qkv.weight, src["blocks.0.attn.qkv.weight"])
    other_patch = create_model("vit_tiny_patch16_224", num_classes=3, model_kwargs=KWARGS | {"patch_size": 8})
    with pytest.raises(HiapError, match="patch size"):
        load_weights(other_patch, src, "src")


def test_augmentation_keys_are_validated_and_recorded(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("scale: [0.5, 1]\ncrop_pad: 0\nhflip: 0.0\ncolor_jitter: 0.3\nmodel_kwargs: {img_size: 32}\n")
    cfg = resolve_config(f, {})
    assert cfg.scale == (0.5, 1.0) and cfg.crop_pad == 0 and cfg.model_kwargs == {"img_size": 32}
    assert cfg.to_dict()["scale"] == [0.5, 1.0]  # a list: the same value after a YAML or JSON round trip
    for text, message in (("scale: [1, 0.5]\n", "'scale' must be two numbers"), ("scale: 0.5\n", "must be 2 numbers"),
                          ("crop_pad: -2\n", "crop_pad"), ("data_cache: maybe\n", "data_cache")):  # fmt: skip
        f.write_text(text)
        with pytest.raises(HiapError, match=message):
            resolve_config(f, {})
    dcfg = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bicubic",
            "crop_pct": 1.0}  # fmt: skip
    with pytest.raises(HiapError, match="not a timm policy"):
        train_transform(dcfg, Augment(auto_augment="nonsense-policy"))


def test_small_images_get_padded_random_crops_not_random_resized_crops() -> None:
    """timm's ImageNet default crops down to 8 % of the image; on 32x32 that leaves 9x9 pixels blown up. The auto
    rule pads by size/8 and crops at full size, so every crop keeps the whole scale of the image."""
    aug = Augment()
    assert aug.resolved_pad((3, 32, 32)) == 4 and aug.resolved_pad((3, 224, 224)) == 0
    dcfg = {"input_size": (1, 32, 32), "mean": (0.0,), "std": (1.0,), "interpolation": "bicubic", "crop_pct": 1.0}
    img = np.zeros((32, 32), dtype=np.uint8)
    img[:, 16:] = 255  # left half black, right half white
    t = train_transform(dcfg, Augment(hflip=0.0))
    torch.manual_seed(0)
    for _ in range(20):
        x = t(Image.fromarray(img, mode="L"))
        assert x.shape == (1, 32, 32)
        # A shift of at most 4 px: the white area stays between 12 and 20 columns wide (a resized crop would not).
        white_cols = int((x[0].mean(0) > 0.5).sum())
        assert 12 <= white_cols <= 20


def test_images_decoded_in_memory_give_the_same_batches_as_files(tmp_path: Path) -> None:
    _rgb_tree(tmp_path, {"train": 4, "val": 3})
    cfg = data_config(create_model("vit_tiny_patch16_224", num_classes=3, model_kwargs=KWARGS))
    rrc = Augment(crop_pad=0)  # timm's random-resized-crop: through PIL on both paths
    files = ImageFolderData(tmp_path, cfg, workers=0, cache="off", augment=rrc)
    memory = ImageFolderData(tmp_path, cfg, workers=0, cache="auto", augment=rrc)  # 16x16 images: in memory
    assert not files.cached and memory.cached and "decoded in memory" in memory.description
    for (xa, ya), (xb, yb) in zip(files.val_batches(4), memory.val_batches(4), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    torch.manual_seed(0), random.seed(0)  # timm's random-resized-crop draws from Python's random
    a = [x for x, _ in files.train_batches(0, 4, seed=1)]
    torch.manual_seed(0), random.seed(0)
    b = [x for x, _ in memory.train_batches(0, 4, seed=1)]
    assert len(a) == 3 and all(torch.equal(p, q) for p, q in zip(a, b, strict=True))


def test_batched_crop_and_flip_is_a_padded_crop_of_each_image_and_replays_by_seed(tmp_path: Path) -> None:
    """In memory at the model's size, padded crop + flip run on whole batches: every output is one of the
    (2p+1)^2 crops of its zero-padded image, maybe flipped, and (seed, epoch) replay the same batches."""
    _rgb_tree(tmp_path, {"train": 4, "val": 1})
    cfg = data_config(create_model("vit_tiny_patch16_224", num_classes=3, model_kwargs=KWARGS))
    data = ImageFolderData(tmp_path, cfg, workers=0, augment=Augment(hflip=0.5))
    assert data.batched is not None and data.batched.pad == 2
    mean, std = torch.tensor(cfg["mean"]).view(3, 1, 1), torch.tensor(cfg["std"]).view(3, 1, 1)
    originals = {int(i): data.batched.images[i] for i in range(12)}
    batches = list(data.train_batches(epoch=3, batch_size=4, seed=7))
    assert len(batches) == 3
    seen = 0
    for x, y in batches:
        for img in x:
            pixels = torch.round((img * std + mean) * 255).to(torch.uint8)
            candidates = [i for i, o in originals.items() if data.batched.targets[i] in y]
            padded = {i: torch.nn.functional.pad(originals[i], (2, 2, 2, 2)) for i in candidates}
            windows = [p[:, oy : oy + 16, ox : ox + 16] for p in padded.values() for oy in range(5) for ox in range(5)]
            crops = windows + [c.flip(-1) for c in windows]
            assert any(torch.equal(pixels, c) for c in crops)
            seen += 1
    assert seen == 12
    again = list(data.train_batches(epoch=3, batch_size=4, seed=7))
    other = list(data.train_batches(epoch=4, batch_size=4, seed=7))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(batches, other, strict=True))
    # Color jitter is a PIL operation: then every image goes through timm's transform.
    assert ImageFolderData(tmp_path, cfg, workers=0, augment=Augment(color_jitter=0.4)).batched is None


def test_a_users_geometry_trains_exports_and_inspects_from_the_run_alone(tmp_path: Path) -> None:
    """`--model-kwargs` on the command line (timm's nargs form, through the real entry point), then every later
    command rebuilds the same 16x16, 2-block geometry from the run."""
    data, run = tmp_path / "data", tmp_path / "run"
    _rgb_tree(data, {"train": 6, "val": 2})
    cmd = [sys.executable, "-m", "hiap", "train", "--model", "vit_tiny_patch16_224", "--model-kwargs", *KWARG_ARGS,
           "--pretrained", "none", "--data", str(data), "--batch-size", "2", "--epochs", "1", "--gate-lr", "1.0",
           "--target-tolerance", "1", "--target-macs", "0.7", "--out", str(run)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=os.environ | {"HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["model_kwargs"] == KWARGS and summary["augmentation"].startswith("random crop, padding 2")
    assert "model_kwargs:" in (run / "config.yaml").read_text()
    result = runner.invoke(app, ["export", str(run), "--no-simplify"])
    assert result.exit_code == 0, result.output
    plan = json.loads((run / "export" / "plan.json").read_text())
    assert plan["model_kwargs"] == KWARGS and plan["input_size"] == [3, 16, 16] and len(plan["blocks"]) == 2
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(run / "export" / "model.onnx")).metadata_props}
    assert json.loads(meta["model_kwargs"]) == KWARGS and json.loads(meta["input_size"]) == [3, 16, 16]
    inspected = json.loads(runner.invoke(app, ["inspect", str(run), "--json"]).output)
    assert len(inspected["blocks"]) == 2 and inspected["gmacs"] == pytest.approx(summary["pruned_gmacs"])
    plan_report = json.loads(runner.invoke(app, ["inspect", str(run / "export" / "plan.json"), "--json"]).output)
    assert plan_report["dense_gmacs"] == pytest.approx(summary["dense_gmacs"])
    reported = runner.invoke(app, ["report", str(run)])
    assert reported.exit_code == 0 and (run / "report" / "topology.png").is_file(), reported.output


def test_a_schedule_too_short_for_the_target_is_refused_before_training(tmp_path: Path) -> None:
    args = ["train", "--model", "hiap_vit_fmnist_tiny", "--pretrained", "none", "--epochs", "1", "--batch-size", "64",
            "--out", str(tmp_path / "r")]  # fmt: skip
    f = tmp_path / "c.yaml"
    f.write_text("train_images: 1984\n")  # 31 steps of 64
    result = runner.invoke(app, [*args, "--config", str(f)])
    assert result.exit_code == 2
    assert (
        "has 31 steps" in result.output and "at least 150 steps" in result.output and "--epochs to 5" in result.output
    )
    assert not (tmp_path / "r" / "checkpoint.safetensors").exists()


def test_a_run_that_misses_its_target_ends_loudly_with_exit_3(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("train_images: 512\n")
    # 8 steps at gate_lr 1.0: long enough to start, too short to land exactly, and a tolerance of 0 counts any miss.
    result = runner.invoke(app, ["train", "--model", "hiap_vit_fmnist_tiny", "--pretrained", "none", "--epochs", "1",
                                 "--batch-size", "64", "--gate-lr", "1.0", "--target-tolerance", "0", "--config",
                                 str(f), "--out", str(tmp_path / "r")])  # fmt: skip
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["target_error"] != 0 and summary["target_met"] is False
    assert result.exit_code == 3 and "off the target" in result.output and "MISSED" in result.output


def test_after_the_search_share_the_structure_is_fixed_and_only_weights_train(tmp_path: Path) -> None:
    """search_fraction 0.5 of 2 epochs: every gate logit stays as it was when the search ended, the network trained
    afterwards is the exported one, and its weights keep learning (no landing fill or shift here: value_align 0 and
    a tolerance every structure meets; tests/hiap/test_short_search.py tests the landing)."""
    from hiap.train import Trainer

    snapshots: list[dict[str, torch.Tensor]] = []
    cfg = tiny_config(tmp_path / "r", search_fraction=0.5, value_align=0)
    trainer = Trainer(cfg)
    original = trainer._write_epoch

    def snapshot(record: dict, epoch: int, val_acc: float) -> None:
        snapshots.append({k: v.detach().clone() for k, v in trainer.gated.gates.as_dict().items()}
                         | {"w": trainer.vit.blocks[0].mlp.fc1.weight.detach().clone()})  # fmt: skip
        original(record, epoch, val_acc)

    trainer._write_epoch = snapshot  # type: ignore[method-assign]
    sampled = []
    original_setup = trainer.setup

    def setup() -> None:  # count the noisy mask samples: one per search step, none after
        original_setup()
        sample = trainer.gated.sample_masks
        trainer.gated.sample_masks = lambda *a, **k: sampled.append(1) or sample(*a, **k)  # type: ignore[method-assign]

    trainer.setup = setup  # type: ignore[method-assign]
    summary = trainer.run()
    assert trainer.pruner.search_steps == 16 and trainer.step == 32 and len(sampled) == 16
    first, last = snapshots
    for kind in ("head", "value", "ffn", "neuron"):
        assert torch.equal(first[kind], last[kind]), kind
    assert not torch.equal(first["w"], last["w"])
    assert summary["pruned_gmacs"] < summary["dense_gmacs"]
    records = [json.loads(ln) for ln in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["kept_neurons"] == records[1]["kept_neurons"] and records[1]["tau"] == pytest.approx(0.5)


def test_augment_from_config_takes_every_augmentation_key() -> None:
    from hiap.config import TrainConfig

    cfg = TrainConfig(crop_pad=3, scale=[0.3, 0.9], ratio=[0.5, 2.0], hflip=0.0, color_jitter=0.2,
                      auto_augment="rand-m9-mstd0.5")  # fmt: skip
    assert Augment.from_config(cfg) == Augment(3, (0.3, 0.9), (0.5, 2.0), 0.0, 0.2, "rand-m9-mstd0.5")
    assert Augment.from_config(TrainConfig()) == Augment()  # the same defaults on both sides
