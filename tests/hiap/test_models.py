"""Model creation, preprocessing facts and weight loading: what is built, what is read, what is refused."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

from hiap.base.errors import HiapError
from hiap.models import (
    check_model_kwargs,
    check_model_name,
    create_model,
    data_config,
    load_pretrained,
    load_weights,
    parse_model_kwargs,
    read_state_dict,
)

TINY = "hiap_vit_fmnist_tiny"
SMALL = {"embed_dim": 16, "depth": 1, "num_heads": 2}  # the built-in layout at a fraction of the size


def test_parse_model_kwargs_keeps_everything_after_the_first_equals_sign() -> None:
    assert parse_model_kwargs([" depth =2", "act=a=b", "img_size=[32, 24]", "norm={'eps': 1e-6}", "name="]) == {
        "depth": 2, "act": "a=b", "img_size": [32, 24], "norm": {"eps": 1e-6}, "name": ""}  # fmt: skip
    for bad in ("=3", "1x=3", "a-b=1", "a b=1"):
        with pytest.raises(HiapError) as err:
            parse_model_kwargs([bad])
        assert str(err.value) == f"--model-kwargs '{bad}': expected KEY=VALUE such as img_size=32 or patch_size=4."


def test_reserved_and_non_name_kwargs_are_refused_naming_the_fix() -> None:
    with pytest.raises(HiapError, match=r"^Model kwarg 'drop_path_rate' is set by hiap \(use the drop_path key\)"):
        check_model_kwargs({"drop_path_rate": 0.1})
    with pytest.raises(HiapError, match=r"^Model kwarg 'pretrained' is set by hiap \(use --pretrained\); remove it"):
        check_model_kwargs({"pretrained": True})
    with pytest.raises(HiapError, match=r"^Model kwarg 3 is not a name"):
        check_model_kwargs({3: 1})
    check_model_kwargs({"img_size": 32, "depth": 2})  # accepted: returns without error


def test_unknown_model_name_suggests_the_closest() -> None:
    with pytest.raises(HiapError) as err:
        check_model_name("hiap_vit_fmnist_tin")
    assert str(err.value).startswith("Unknown model 'hiap_vit_fmnist_tin': expected 'hiap_vit_fmnist' or a timm ViT")
    assert str(err.value).endswith(" Did you mean 'hiap_vit_fmnist_tiny'?")


def test_builtin_model_with_kwargs_builds_the_geometry_asked_and_its_preprocessing() -> None:
    vit = create_model(TINY, num_classes=3, model_kwargs={"img_size": [32, 24], "patch_size": 8, "depth": 2})
    assert len(vit.blocks) == 2 and vit.patch_embed.grid_size == (4, 3) and vit.embed_dim == 64
    assert vit.pos_embed.shape == (1, 1 + 12, 64) and vit.head.out_features == 3
    assert vit.hiap_model_name == TINY and vit.hiap_model_kwargs == {"img_size": [32, 24], "patch_size": 8, "depth": 2}
    assert data_config(vit) == {"input_size": (1, 32, 24), "mean": (0.2860,), "std": (0.3530,),
                                "interpolation": "bilinear", "crop_pct": 1.0}  # fmt: skip
    assert vit.pretrained_cfg["num_classes"] == 3 and vit.pretrained_cfg["architecture"] == TINY


def test_meta_models_have_shapes_but_no_storage() -> None:
    vit = create_model(TINY, meta=True)
    assert {p.device.type for p in vit.parameters()} == {"meta"}
    assert sum(p.numel() for p in vit.parameters()) == 205_066  # the dense count of the exported tiny model
    assert data_config(vit)["input_size"] == (1, 28, 28)


def test_load_weights_resamples_position_embeddings_as_timm_and_leaves_the_input_alone() -> None:
    src = create_model(TINY, model_kwargs=SMALL | {"img_size": 56}).state_dict()  # 8x8 grid
    original = src["pos_embed"].clone()
    vit = create_model(TINY, model_kwargs=SMALL)  # 4x4 grid
    notes = load_weights(vit, src, "src")
    assert notes == ["position embedding of 'src' resampled from (1, 65, 16) to the (4, 4) grid"]
    expected = resample_abs_pos_embed(original, [4, 4], num_prefix_tokens=1, verbose=False)
    assert torch.equal(vit.pos_embed.detach(), expected)
    assert torch.equal(vit.pos_embed[0, 0].detach(), original[0, 0])  # the class token's embedding is kept as is
    assert torch.equal(src["pos_embed"], original)  # the caller's state dict is not modified


def test_load_weights_refuses_another_patch_size_naming_both() -> None:
    src = create_model(TINY, model_kwargs=SMALL | {"patch_size": 4}).state_dict()
    with pytest.raises(HiapError) as err:
        load_weights(create_model(TINY, model_kwargs=SMALL), src, "w.pt")
    assert str(err.value).startswith("Weights 'w.pt' use patch size (4, 4) but the model is built with (7, 7): keep")


def test_another_class_count_starts_a_fresh_head_and_anything_else_must_fit() -> None:
    src = create_model(TINY, num_classes=4, model_kwargs=SMALL).state_dict()
    vit = create_model(TINY, num_classes=10, model_kwargs=SMALL)
    fresh_head = vit.head.weight.detach().clone()
    assert load_weights(vit, src, "s") == ["classifier of 's' has another class count; it starts fresh (head.weight, "
                                           "head.bias)"]  # fmt: skip
    assert torch.equal(vit.head.weight.detach(), fresh_head)
    assert torch.equal(vit.blocks[0].mlp.fc1.weight.detach(), src["blocks.0.mlp.fc1.weight"])
    broken = {k: v for k, v in src.items() if k != "norm.bias"} | {"extra.w": torch.zeros(1)}
    broken["blocks.0.mlp.fc1.weight"] = torch.zeros(3, 16)
    with pytest.raises(HiapError) as err:
        load_weights(vit, broken, "s")
    assert str(err.value) == (f"Weights 's' do not fit model '{TINY}' (wrong shape: blocks.0.mlp.fc1.weight; "
                              "missing: norm.bias; unexpected: extra.w).")  # fmt: skip


class _Opens:
    """Unpickling this calls open(marker, 'w'): what a malicious .pt would do with os.system instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


def test_read_state_dict_refuses_pickles_that_are_not_tensor_only_state_dicts(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(1), "x": _Opens(marker)}, evil)
    with pytest.raises(HiapError) as err:
        read_state_dict(evil)
    assert str(err.value) == (f"Weights file '{evil}' could not be read as a tensor-only state dict (UnpicklingError);"
                              " convert it to .safetensors.")  # fmt: skip
    assert not marker.exists()
    numbers = tmp_path / "numbers.pt"
    torch.save({"w": torch.ones(1), "epoch": 3}, numbers)  # loads under weights_only, but is not all tensors
    with pytest.raises(HiapError, match=r"does not hold a state dict of tensors\.$"):
        read_state_dict(numbers)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {"w": torch.arange(3)}, "epoch": 3}, wrapped)  # a training script's checkpoint
    state, meta = read_state_dict(wrapped)
    assert list(state) == ["w"] and torch.equal(state["w"], torch.arange(3)) and meta == {}


def test_read_state_dict_of_safetensors_files(tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoint.safetensors"
    save_file({"model.a": torch.ones(2), "gates.head": torch.zeros(1), "optim.0.exp_avg": torch.zeros(2)}, str(ckpt),
              metadata={"format": "hiap-checkpoint"})  # fmt: skip
    state, meta = read_state_dict(ckpt)
    assert list(state) == ["a"] and meta == {"format": "hiap-checkpoint"}  # a run's checkpoint gives its weights
    plain = tmp_path / "w.safetensors"
    save_file({"model.a": torch.ones(2)}, str(plain))
    assert list(read_state_dict(plain)[0]) == ["model.a"]  # any other file: names as written
    garbage = tmp_path / "g.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    with pytest.raises(HiapError, match=r"^Weights file '.*g\.safetensors' is not a readable safetensors file"):
        read_state_dict(garbage)
    with pytest.raises(HiapError, match=r"does not exist: pass a \.safetensors or \.pt/\.pth state dict\.$"):
        read_state_dict(tmp_path / "none.pt")


def test_load_pretrained_sources() -> None:
    assert load_pretrained(create_model(TINY, meta=True), TINY, "none") == ("random init", [])
    desc, notes = load_pretrained(create_model(TINY, meta=True), TINY, "auto")  # no shipped weights for tiny
    assert desc == "random init" and notes[0].startswith(f"no pretrained weights for '{TINY}' (pass --pretrained")
    vit = create_model("hiap_vit_fmnist", num_classes=10)
    desc, notes = load_pretrained(vit, "hiap_vit_fmnist", "auto")
    assert re.fullmatch(r"built-in dense checkpoint \(hiap_vit_fmnist_dense\.safetensors, val acc 0\.\d{4}\)", desc)
    assert notes == []
