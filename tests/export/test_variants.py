"""Every model feature hiap claims to support, pruned and exported end to end through export_source."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from vit_zoo import make_distilled, make_timm, make_vit

from hiap.cost import BlockStructure, Geometry, Structure
from hiap.export.artifact import PARITY_TOL, export_source
from hiap.export.onnx_io import load_shaped, ort_run
from hiap.export.source import Source
from hiap.gated import GatedViT, structure_to_masks

# One model per feature of hiap.gated.SUPPORTED (and per token layout describe_vit accepts); unfused attention
# unless the variant is about fused attention, so each id changes one thing against "cls_token".
MODELS: dict[str, Callable[[], torch.nn.Module]] = {
    "cls_token": lambda: make_vit("plain", fused=False),
    "fused_attn": lambda: make_vit("plain", fused=True),
    "no_qkv_bias": lambda: make_vit("no_qkv_bias", fused=False),
    "avg_pool_no_cls_fc_norm": lambda: make_vit("avg_pool_no_cls", fused=False),
    "registers": lambda: make_vit("registers", fused=False),
    "layerscale": lambda: make_vit("layerscale", fused=False),
    "qk_norm": lambda: make_vit("qk_norm", fused=False),
    "pre_norm": lambda: make_vit("pre_norm", fused=False),
    "distilled": make_distilled,
    "no_embed_class": lambda: make_vit("no_embed_class", fused=False),
    "no_embed_class_fused": lambda: make_vit("no_embed_class", fused=True),
    "no_embed_class_registers": lambda: make_vit("no_embed_class_registers", fused=False),
    "no_embed_class_one_register_no_cls": lambda: make_vit(
        "no_embed_class", fused=False, class_token=False, reg_tokens=1, global_pool="avg"
    ),
    "no_pos_embed": lambda: make_vit("no_pos_embed", fused=False),
    "deit3_create_model": lambda: make_timm("deit3_small_patch16_224", fused=True),
}


def _pruning_plan(geom: Geometry) -> Structure:
    """Block 0 loses head 1, value dims of both kept heads and two thirds of its neurons; the other blocks lose
    value dim 0 of head 0 and their whole FFN."""
    hd, k = geom.head_dim, geom.hidden
    first = BlockStructure(heads=(0, 2), value_dims=(tuple(range(0, hd, 2)), tuple(range(5))), ffn=True,
                           neurons=tuple(range(0, k, 3)))  # fmt: skip
    dims = (tuple(range(1, hd)),) + (tuple(range(hd)),) * (geom.num_heads - 1)
    rest = BlockStructure(heads=tuple(range(geom.num_heads)), value_dims=dims, ffn=False, neurons=())
    return Structure(blocks=(first,) + (rest,) * (geom.depth - 1))


def _source(vit: torch.nn.Module, name: str) -> Source:
    gated = GatedViT(vit).eval()
    structure = _pruning_plan(gated.geometry)
    c, (h, w) = vit.patch_embed.proj.in_channels, vit.patch_embed.img_size
    dcfg = {"input_size": (c, h, w), "mean": (0.5,) * c, "std": (0.5,) * c, "interpolation": "bicubic",
            "crop_pct": 1.0}  # fmt: skip
    masks = structure_to_masks(structure, gated.open_masks())
    return Source(vit=vit, gated=gated, masks=masks, structure=structure, model=f"test/{name}",
                  num_classes=vit.num_classes, classes=[], data_config=dcfg, val_acc=None, builtin_data=False,
                  origin=name)  # fmt: skip


def _check_export(src: Source, out: Path, **options: Any) -> dict[str, Any]:
    report = export_source(src, out, **options)
    assert report["parity"]["passed"] and report["parity"]["max_abs_diff"] <= PARITY_TOL
    assert report["counts_match"] and report["onnx_gmacs"] == report["gmacs"]
    assert report["params"] < report["dense_params"] and report["gmacs"] < report["dense_gmacs"]
    # Static shapes everywhere, not only around the counted MatMul/Gemm/Conv nodes (0 is an unknown dim).
    _, shapes = load_shaped(out / "model.onnx")
    assert not {name: s for name, s in shapes.items() if 0 in s}
    x = np.random.default_rng(7).standard_normal((3, *src.data_config["input_size"])).astype(np.float32)
    with torch.no_grad():
        ref = src.gated(torch.from_numpy(x), src.masks).numpy()
    path = out / "model.onnx"
    got = ort_run(path, x) if options.get("dynamic_batch") else np.concatenate([ort_run(path, xi[None]) for xi in x])
    assert np.abs(got - ref).max() <= 1e-4 and (got.argmax(-1) == ref.argmax(-1)).all()
    return report


@pytest.mark.parametrize("name", sorted(MODELS))
def test_pruned_variant_exports_with_parity_and_counts(tmp_path: Path, name: str) -> None:
    _check_export(_source(MODELS[name](), name), tmp_path)


@pytest.mark.parametrize(
    "options",
    [dict(dynamic_batch=True), dict(opset=16), dict(align=1, simplify=False)],
    ids=["dynamic_batch", "opset16", "align1_unsimplified"],
)
def test_no_embed_class_export_options(tmp_path: Path, options: dict[str, Any]) -> None:
    _check_export(_source(make_vit("no_embed_class", fused=False), "no_embed_class"), tmp_path, **options)


def test_deit3_variant_is_the_no_embed_class_layout() -> None:
    vit = MODELS["deit3_create_model"]()
    assert vit.no_embed_class and vit.has_class_token and vit.pos_embed.shape[1] == vit.patch_embed.num_patches
