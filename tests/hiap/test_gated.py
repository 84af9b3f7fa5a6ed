import pytest
import torch
from timm.layers import SwiGLUPacked
from timm.models.vision_transformer import ResPostBlock, VisionTransformer
from vit_zoo import VARIANTS, make_distilled, make_vit

from hiap.base.errors import UnsupportedModelError
from hiap.gated import SUPPORTED, Floors, GatedViT, masks_to_structure


def _parity(vit: torch.nn.Module) -> float:
    x = torch.randn(3, *vit.pretrained_cfg.get("input_size", (3, 32, 32))) if False else None
    c = vit.patch_embed.proj.in_channels
    h, w = vit.patch_embed.img_size
    x = torch.randn(3, c, h, w)
    gated = GatedViT(vit).eval()
    with torch.no_grad():
        ref = vit(x)
        out = gated(x)  # eval: hard rule, every logit starts at +3 so every gate is open
        out_open = gated(x, gated.open_masks())
    assert torch.equal(out, out_open)
    return float((out - ref).abs().max())


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("fused", [True, False])
def test_open_gates_reproduce_timm(variant: str, fused: bool) -> None:
    assert _parity(make_vit(variant, fused=fused)) <= 1e-6


def test_open_gates_reproduce_timm_distilled() -> None:
    assert _parity(make_distilled()) <= 1e-6


def _reference_forward(gated: GatedViT, x: torch.Tensor, masks) -> torch.Tensor:
    """The gates as activation multipliers, written out from timm's modules: what the weight-folded forward in
    hiap.gated must equal (value/head gates on the attention output, neuron gates on the hidden activations, the
    FFN gate on the block's FFN output)."""
    vit = gated.vit
    x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
    for i, blk in enumerate(vit.blocks):
        attn, mlp = blk.attn, blk.mlp
        h = blk.norm1(x)
        b, n, _ = h.shape
        q, k, v = attn.qkv(h).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        a = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(-1) @ v
        a = a * (masks.head[i].unsqueeze(-1) * masks.value[i])[None, :, None, :]
        x = x + blk.ls1(attn.proj(a.transpose(1, 2).reshape(b, n, -1)))
        hidden = mlp.act(mlp.fc1(blk.norm2(x))) * masks.neuron[i]
        x = x + blk.ls2(mlp.fc2(hidden) * masks.ffn[i])
    return vit.forward_head(vit.norm(x))


@pytest.mark.parametrize("variant", ["plain", "layerscale"])
def test_weight_folded_gates_equal_activation_gates_with_gradients(variant: str) -> None:
    """Folding the gates into proj/fc2 weights is exact: outputs and every gradient (weights and gate logits) match
    the activation-masked formulation in float64, for soft masks strictly between 0 and 1."""
    torch.manual_seed(0)
    vit = make_vit(variant, fused=False).double().train()
    gated = GatedViT(vit).double().train()
    with torch.no_grad():
        for logits in gated.gates.as_dict().values():
            logits.normal_(0.0, 1.5)
    x = torch.randn(2, vit.patch_embed.proj.in_channels, *vit.patch_embed.img_size, dtype=torch.float64)
    grads = []
    for forward in (lambda m: gated(x, m), lambda m: _reference_forward(gated, x, m)):
        gated.zero_grad(set_to_none=True)
        masks = gated.sample_masks(0.7, torch.Generator().manual_seed(3), hard=False)
        out = forward(masks)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)).sum().backward()
        grads.append((out.detach(), {n: p.grad.clone() for n, p in gated.named_parameters() if p.grad is not None}))
    (out_a, g_a), (out_b, g_b) = grads
    assert torch.allclose(out_a, out_b, rtol=1e-10, atol=1e-12)
    assert g_a.keys() == g_b.keys() and {"gates.head", "gates.value", "gates.ffn", "gates.neuron"} <= g_a.keys()
    for name in g_a:
        assert torch.allclose(g_a[name], g_b[name], rtol=1e-9, atol=1e-12), name


def test_block_with_every_head_closed_contributes_nothing_in_eval() -> None:
    """A hand-edited plan may close all heads of a block: in eval its attention branch, proj bias included, is gone
    (as in the exported network); in training the branch still runs (its output is then proj's bias)."""
    vit = make_vit("plain")
    gated = GatedViT(vit).eval()
    x = torch.randn(2, vit.patch_embed.proj.in_channels, *vit.patch_embed.img_size)
    masks = gated.open_masks()
    masks.head[1] = 0.0
    with torch.no_grad():
        out = gated(x, masks)
        vit.blocks[1].attn.forward = lambda t, **_: torch.zeros_like(t)  # the reference: branch removed
        ref = vit(x)
    assert torch.allclose(out, ref, atol=1e-6)
    assert float(vit.blocks[1].attn.proj.bias.detach().abs().max()) > 0  # so a kept bias would have shown


def test_state_dict_keeps_timm_names_and_round_trips() -> None:
    vit = make_vit("layerscale")
    names = list(vit.state_dict())
    gated = GatedViT(vit)
    assert list(gated.vit.state_dict()) == names
    assert {n for n in gated.state_dict() if not n.startswith("vit.")} == {
        "gates.head",
        "gates.value",
        "gates.ffn",
        "gates.neuron",
        "gates.qk",
    }
    other = make_vit("layerscale")
    gated.vit.load_state_dict(other.state_dict())
    for k, v in other.state_dict().items():
        assert torch.equal(gated.vit.state_dict()[k], v)


def test_closed_head_equals_zeroed_proj_columns() -> None:
    vit = make_vit("plain", fused=False)
    gated = GatedViT(vit).eval()
    dh = vit.blocks[0].attn.head_dim
    with torch.no_grad():
        gated.gates.head[1, 2] = -5.0  # close head 2 of block 1
        gated.gates.value[0, 0, :5] = -5.0  # close 5 value dims of head 0 in block 0 (floor 25% of 16 = 4)
        gated.gates.neuron[0, 10:20] = -5.0
        gated.gates.ffn[1] = -5.0  # remove FFN of block 1
    ref = make_vit("plain", fused=False)
    ref.load_state_dict(vit.state_dict())
    with torch.no_grad():
        ref.blocks[1].attn.proj.weight[:, 2 * dh : 3 * dh] = 0
        ref.blocks[0].attn.proj.weight[:, :5] = 0
        ref.blocks[0].mlp.fc2.weight[:, 10:20] = 0
        ref.blocks[1].mlp.fc2.weight.zero_()
        ref.blocks[1].mlp.fc2.bias.zero_()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(gated(x), ref(x), atol=1e-5)
    s = masks_to_structure(gated.hard_masks())
    assert s.blocks[1].heads == (0, 1) and not s.blocks[1].ffn and s.blocks[1].neurons == ()
    assert s.blocks[0].value_dims[0] == tuple(range(5, dh))
    assert len(s.blocks[0].neurons) == vit.blocks[0].mlp.fc1.out_features - 10


def test_hard_masks_enforce_floors() -> None:
    vit = make_vit("wide_heads")  # 8 heads of 8 dims, hidden 256
    gated = GatedViT(vit, floors=Floors(k_min=2, min_value_frac=0.5, min_neuron_frac=0.25))
    with torch.no_grad():
        for p in gated.gates.parameters():
            p.fill_(-4.0)
        gated.gates.head[0, 5] = -1.0  # the two highest logits are kept
        gated.gates.head[0, 3] = -2.0
        gated.gates.ffn.fill_(1.0)  # FFN kept, so its neuron floor applies
    s = masks_to_structure(gated.hard_masks())
    block = s.blocks[0]
    assert block.heads == (3, 5)
    assert [len(v) for v in block.value_dims] == [4, 4]
    assert block.ffn and len(block.neurons) == 64


def test_sampled_masks_are_shared_by_the_batch_and_reproducible() -> None:
    gated = GatedViT(make_vit("plain"))
    m1 = gated.sample_masks(1.0, torch.Generator().manual_seed(5))
    m2 = gated.sample_masks(1.0, torch.Generator().manual_seed(5))
    for k in ("head", "value", "ffn", "neuron"):
        assert torch.equal(getattr(m1, k), getattr(m2, k))
    assert m1.head.shape == (2, 3) and m1.value.shape == (2, 3, 16) and m1.neuron.shape == (2, 192)


def _res_post() -> VisionTransformer:
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, block_fn=ResPostBlock)


@pytest.mark.parametrize(
    "build, what",
    [
        (_res_post, "Unsupported model: block 0 has a block of type ResPostBlock, expected Block."),
        (lambda: torch.nn.Sequential(torch.nn.Linear(3, 3)), "Unsupported model of type Sequential."),
        (
            lambda: VisionTransformer(
                img_size=32, patch_size=8, embed_dim=48, depth=1, num_heads=3, mlp_layer=SwiGLUPacked, mlp_ratio=2
            ),
            "Unsupported model: block 0 has an MLP of type GluMlp, expected Mlp.",
        ),
        (
            lambda: VisionTransformer(
                img_size=32, patch_size=8, embed_dim=48, depth=1, num_heads=3, scale_attn_norm=True
            ),
            "Unsupported model: block 0 uses gated or scale-normed attention, whose output cannot be pruned per value"
            " dim.",
        ),
        (
            lambda: VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=1, num_heads=3, global_pool="map"),
            "Unsupported model: attention pooling ('map'/'prr') is not gated.",
        ),
    ],
    ids=["res-post-block", "not-a-vit", "glu-mlp", "scale-normed-attention", "map-pooling"],
)
def test_unsupported_models_fail_early_naming_what_is_supported(build, what: str) -> None:
    """The message is what was found (the offending block, type and expected type) followed by what is supported."""
    with pytest.raises(UnsupportedModelError) as err:
        GatedViT(build())
    assert str(err.value) == f"{what} {SUPPORTED}."


def test_importance_init_orders_micro_gates_by_magnitude_and_leaves_macro_gates() -> None:
    from hiap.models import create_model

    torch.manual_seed(0)
    vit = create_model("hiap_vit_fmnist_tiny", num_classes=10)
    with torch.no_grad():
        vit.blocks[0].mlp.fc1.weight[5] *= 10.0  # neuron 5 of block 0: the strongest unit
        vit.blocks[0].mlp.fc2.weight[:, 7] *= 0.01  # neuron 7: the weakest
        width = vit.blocks[1].attn.num_heads * vit.blocks[1].attn.head_dim
        vit.blocks[1].attn.qkv.weight[2 * width + 3] *= 10.0  # value dim 3 of head 0 in block 1
    gated = GatedViT(vit, gate_init=3.0)
    gated.init_from_importance(1.0)
    neuron, value = gated.gates.neuron.detach(), gated.gates.value.detach()
    assert int(neuron[0].argmax()) == 5 and int(neuron[0].argmin()) == 7
    assert int(value[1].flatten().argmax()) == 3
    assert float(neuron.min()) >= 1.0 - 1e-6 and float(neuron.max()) <= 5.0 + 1e-6  # gate_init +- 2 * spread
    assert torch.equal(gated.gates.head.detach(), torch.full_like(gated.gates.head, 3.0))
    assert torch.equal(gated.gates.ffn.detach(), torch.full_like(gated.gates.ffn, 3.0))
