"""Tiny timm ViT variants used across the tests (built in-process, random weights)."""

from __future__ import annotations

from typing import Any

import timm
import torch
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer

BASE: dict[str, Any] = dict(img_size=32, patch_size=8, in_chans=3, num_classes=7, embed_dim=48, depth=2, num_heads=3)

VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {},
    "avg_pool_no_cls": dict(class_token=False, global_pool="avg", fc_norm=True),
    "registers": dict(reg_tokens=4),
    "layerscale": dict(init_values=0.1),
    "qk_norm": dict(qk_norm=True),
    "pre_norm": dict(pre_norm=True, qkv_bias=False),
    "no_qkv_bias": dict(qkv_bias=False, mlp_ratio=2.0),
    "rect_image_patch4": dict(img_size=(24, 40), patch_size=4, depth=3, num_heads=4, embed_dim=64),
    "gray_deep": dict(in_chans=1, img_size=28, patch_size=7, depth=5, num_heads=2, embed_dim=32),
    "wide_heads": dict(embed_dim=64, num_heads=8, depth=1),
    # DeiT-III layout: the prefix tokens are joined after the position embedding is added
    "no_embed_class": dict(no_embed_class=True),
    "no_embed_class_registers": dict(no_embed_class=True, reg_tokens=2),
    "no_pos_embed": dict(pos_embed="none"),
}


def make_vit(variant: str = "plain", fused: bool | None = None, **overrides: Any) -> VisionTransformer:
    kwargs = {**BASE, **VARIANTS.get(variant, {}), **overrides}
    model = VisionTransformer(**kwargs)
    _randomize(model)
    _set_fused(model, fused)
    return model.eval()


def make_timm(name: str, fused: bool | None = None, **overrides: Any) -> VisionTransformer:
    """A registered timm model shrunk to BASE's tiny geometry (pretrained=False: nothing is downloaded)."""
    model = timm.create_model(name, pretrained=False, **{**BASE, **overrides})
    _randomize(model)
    _set_fused(model, fused)
    return model.eval()


def make_distilled() -> VisionTransformerDistilled:
    model = VisionTransformerDistilled(**BASE)
    _randomize(model)
    return model.eval()


def _set_fused(model: VisionTransformer, fused: bool | None) -> None:
    if fused is not None:
        for blk in model.blocks:
            blk.attn.fused_attn = fused


def _randomize(model: torch.nn.Module) -> None:
    # timm zero-initialises tokens and some biases; random values make parity tests meaningful.
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
