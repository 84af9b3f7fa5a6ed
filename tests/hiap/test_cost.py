import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from timm.models.vision_transformer import VisionTransformer
from torch.utils.flop_counter import FlopCounterMode
from vit_zoo import make_distilled, make_vit

from hiap.cost import (
    BlockStructure,
    Structure,
    block_macs,
    expected_cost,
    paper_block_macs,
    structure_macs,
    structure_params,
)
from hiap.gated import GatedViT, describe_vit, masks_to_structure
from hiap.models import create_model


@pytest.mark.parametrize(
    "name, published",
    [("deit_tiny_patch16_224", 1.25), ("deit_small_patch16_224", 4.60), ("deit_base_patch16_224", 17.56)],
)
def test_dense_macs_match_published_deit(name: str, published: float) -> None:
    geom = describe_vit(create_model(name, meta=True))
    assert geom.dense_macs / 1e9 == pytest.approx(published, rel=0.02)


def _counted_macs(vit: torch.nn.Module) -> int:
    c = vit.patch_embed.proj.in_channels
    h, w = vit.patch_embed.img_size
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        vit(torch.randn(1, c, h, w))
    return counter.get_total_flops() // 2


@pytest.mark.parametrize("variant", ["plain", "registers", "avg_pool_no_cls", "rect_image_patch4", "gray_deep"])
def test_dense_macs_equal_an_independent_flop_count(variant: str) -> None:
    vit = make_vit(variant, fused=False)
    assert describe_vit(vit).dense_macs == _counted_macs(vit)


def test_distilled_macs_count_both_heads_and_tokens() -> None:
    vit = make_distilled()
    for blk in vit.blocks:
        blk.attn.fused_attn = False
    assert describe_vit(vit).dense_macs == _counted_macs(vit)


@pytest.mark.parametrize("kept_heads, kept_neurons", [(1, 40), (2, 96), (3, 7)])
def test_pruned_structure_equals_a_constructed_smaller_model(kept_heads: int, kept_neurons: int) -> None:
    """Keeping h of 3 heads (all value dims) and k neurons costs what a timm model of that size costs."""
    big = make_vit("plain", fused=False)
    geom = describe_vit(big)
    block = BlockStructure(
        heads=tuple(range(kept_heads)),
        value_dims=tuple(tuple(range(geom.head_dim)) for _ in range(kept_heads)),
        ffn=True,
        neurons=tuple(range(kept_neurons)),
    )
    structure = Structure(blocks=(block,) * geom.depth)
    small = VisionTransformer(
        img_size=32,
        patch_size=8,
        num_classes=7,
        embed_dim=48,
        depth=2,
        num_heads=kept_heads,
        mlp_ratio=kept_neurons / 48,
    )
    for blk in small.blocks:
        blk.attn.fused_attn = False
    # timm derives head_dim from embed_dim / num_heads; rebuild attention with the big model's head size.
    from timm.layers import Attention

    for blk in small.blocks:
        blk.attn = Attention(48, num_heads=kept_heads, attn_head_dim=geom.head_dim, qkv_bias=True)
        blk.attn.fused_attn = False
    assert structure_macs(geom, structure) == _counted_macs(small)
    assert structure_params(geom, structure) == sum(p.numel() for p in small.parameters())


def test_removed_ffn_and_removed_heads_cost_nothing() -> None:
    geom = describe_vit(make_vit("plain"))
    empty = BlockStructure(heads=(), value_dims=(), ffn=False, neurons=())
    assert block_macs(geom, empty) == 0
    assert structure_macs(geom, Structure(blocks=(empty,) * geom.depth)) == geom.fixed_macs


def test_dense_params_equal_parameter_count() -> None:
    for variant in ("plain", "layerscale", "qk_norm", "registers", "no_qkv_bias"):
        vit = make_vit(variant)
        assert describe_vit(vit).dense_params == sum(p.numel() for p in vit.parameters())


def test_expected_cost_of_hard_masks_equals_structure_macs() -> None:
    gated = GatedViT(make_vit("plain"))
    with torch.no_grad():
        for p in gated.gates.parameters():
            p.copy_(torch.randn_like(p) * 2)
    m = gated.hard_masks()
    hard = expected_cost(gated.geometry, m.head, m.ffn, m.value, m.neuron).total
    assert int(hard) == structure_macs(gated.geometry, masks_to_structure(m)) == gated.hard_macs()


@pytest.mark.parametrize("qk_gates", [False, True])
def test_expected_cost_is_differentiable_and_sums_probabilities(qk_gates: bool) -> None:
    gated = GatedViT(make_vit("plain"), gate_init=0.0, qk_gates=qk_gates)  # every keep probability 0.5
    g = gated.geometry
    cost = gated.expected_cost()
    cost.total.backward()
    learned = [p for p in gated.gates.parameters() if p.requires_grad]
    assert len(learned) == (5 if qk_gates else 4)  # q/k logits learn only where gated
    assert all(p.grad is not None and torch.all(p.grad > 0) for p in learned)
    # a head's q/k cost: per kept q/k dim (probability 0.5 * 0.5) where gated, the whole head's otherwise
    per_head = 0.25 * g.head_dim * g.qk_unit_macs if qk_gates else 0.5 * g.head_unit_macs
    expected_macro = g.depth * g.num_heads * per_head
    expected_micro = g.depth * (
        g.num_heads * g.head_dim * 0.25 * g.value_unit_macs + g.hidden * 0.25 * g.neuron_unit_macs
    )
    assert float(cost.macro.detach()) == pytest.approx(expected_macro)
    assert float(cost.micro.detach()) == pytest.approx(expected_micro)


def test_relation_to_the_papers_c1_c2_c3_count() -> None:
    """Same dense total; the paper leaves the V column of each pruned value dim (N*D MACs) uncredited."""
    geom = describe_vit(make_vit("plain"))
    dense_block = geom.dense_structure().blocks[0]
    assert paper_block_macs(geom, dense_block) == block_macs(geom, dense_block)
    pruned = BlockStructure(heads=(0, 2), value_dims=((0, 1, 2), tuple(range(10))), ffn=True, neurons=(1, 2, 3))
    removed_value_dims = 2 * geom.head_dim - pruned.value_total
    assert paper_block_macs(geom, pruned) - block_macs(geom, pruned) == removed_value_dims * geom.num_tokens * geom.dim


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), spread=st.floats(0.1, 6.0))
def test_hard_cost_equals_structure_count_for_any_gates(seed: int, spread: float) -> None:
    """Property: for any logits, the cost model's hard count, the structure count and the floors agree."""
    gated = _PROPERTY_MODEL
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in gated.gates.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * spread)
    m = gated.hard_masks()
    structure = masks_to_structure(m)
    macs = structure_macs(gated.geometry, structure)
    assert int(expected_cost(gated.geometry, m.head, m.ffn, m.value, m.neuron).total) == macs
    assert gated.geometry.fixed_macs < macs <= gated.geometry.dense_macs
    for block in structure.blocks:
        assert len(block.heads) >= gated.floors.heads(gated.geometry.num_heads)
        assert all(len(v) >= gated.floors.value_dims(gated.geometry.head_dim) for v in block.value_dims)
        assert not block.ffn or len(block.neurons) >= gated.floors.neurons(gated.geometry.hidden)
    assert structure_params(gated.geometry, structure) <= gated.geometry.dense_params


_PROPERTY_MODEL = GatedViT(make_vit("wide_heads"))
