import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from vit_zoo import VARIANTS, make_distilled, make_vit

from hiap.cost import BlockStructure, Structure, structure_macs, structure_params
from hiap.export.compact import build_compact, padded_structure
from hiap.gated import GatedViT, masks_to_structure, structure_to_masks


def _input(vit: torch.nn.Module) -> torch.Tensor:
    h, w = vit.patch_embed.img_size
    return torch.randn(2, vit.patch_embed.proj.in_channels, h, w)


def _check(vit: torch.nn.Module, structure: Structure, align: int) -> None:
    compact = build_compact(vit, structure, align=align)
    gated = GatedViT(vit, qk_gates=any(b.qk_dims is not None for b in structure.blocks)).eval()
    x = _input(vit)
    with torch.no_grad():
        ref = gated(x, structure_to_masks(structure, gated.open_masks()))
        out = compact(x)
    assert float((out - ref).abs().max()) <= 1e-5
    emitted = padded_structure(structure, gated.geometry.head_dim, align)
    assert sum(p.numel() for p in compact.parameters()) == structure_params(gated.geometry, emitted)
    assert structure_macs(gated.geometry, emitted) >= structure_macs(gated.geometry, structure)


@settings(max_examples=25, deadline=None)
@given(
    variant=st.sampled_from(sorted(VARIANTS)),
    seed=st.integers(0, 2**31 - 1),
    align=st.sampled_from([1, 8]),
)
def test_random_plans_compact_parity(variant: str, seed: int, align: int) -> None:
    vit = make_vit(variant, fused=False)
    gated = GatedViT(vit, qk_gates=True)  # q/k widths pruned too, except under qk-norm (never gated there)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in gated.gates.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 2)
    _check(vit, masks_to_structure(gated.hard_masks()), align)


def test_distilled_compact_parity() -> None:
    vit = make_distilled()
    geom = GatedViT(vit).geometry
    block = BlockStructure(heads=(1,), value_dims=((0, 5, 9),), ffn=True, neurons=(3, 4, 100))
    _check(vit, Structure(blocks=(block,) * geom.depth), align=8)


@pytest.mark.parametrize(
    "block",
    [
        BlockStructure(heads=(0, 1, 2), value_dims=(tuple(range(16)),) * 3, ffn=False, neurons=()),  # FFN removed
        BlockStructure(heads=(2,), value_dims=((7,),), ffn=True, neurons=tuple(range(0, 192, 3))),  # one head, width 1
        BlockStructure(heads=(), value_dims=(), ffn=True, neurons=(0, 1)),  # no heads: FFN only
        BlockStructure(heads=(), value_dims=(), ffn=False, neurons=()),  # empty block: residual only
    ],
)
@pytest.mark.parametrize("align", [1, 8])
def test_edge_plans(block: BlockStructure, align: int) -> None:
    vit = make_vit("layerscale", fused=False)
    _check(vit, Structure(blocks=(block, block)), align)


def test_padding_is_recorded_in_macs() -> None:
    vit = make_vit("plain")
    geom = GatedViT(vit).geometry
    block = BlockStructure(heads=(0, 1), value_dims=((0,), (0, 1, 2)), ffn=True, neurons=(0,))
    s = Structure(blocks=(block, block))
    assert (
        structure_macs(geom, padded_structure(s, geom.head_dim, 1))
        == structure_macs(geom, s) + 2 * 2 * geom.value_unit_macs
    )
    assert padded_structure(s, geom.head_dim, 8).blocks[0].value_total == 16


def test_padding_never_exceeds_a_head_width_that_is_not_a_multiple_of_align() -> None:
    vit = make_vit("plain", embed_dim=60, num_heads=3, fused=False)  # head_dim 20
    block = BlockStructure(heads=(0, 1), value_dims=(tuple(range(18)), (4,)), ffn=True, neurons=(0, 1))
    structure = Structure(blocks=(block, block))
    assert padded_structure(structure, 20, 8).blocks[0].value_total == 2 * 20
    _check(vit, structure, align=8)


def test_pruned_qk_widths_compact_parity_and_counts() -> None:
    """q/k dims removed from q and k (the softmax scale stays the original head's), padded to align like values."""
    vit = make_vit("plain", fused=True)
    geom = GatedViT(vit).geometry
    block = BlockStructure(heads=(0, 2), value_dims=((1, 2), tuple(range(9))), ffn=True, neurons=(5,),
                           qk_dims=((0, 3, 4), tuple(range(0, 16, 2))))  # fmt: skip
    structure = Structure(blocks=(block, block))
    _check(vit, structure, align=1)
    _check(vit, structure, align=8)
    emitted = padded_structure(structure, geom.head_dim, 8).blocks[0]
    assert [len(q) for q in emitted.qk_dims] == [8, 8] and emitted.value_total == 2 * 16
    full = BlockStructure(heads=block.heads, value_dims=block.value_dims, ffn=True, neurons=(5,))
    saved = 2 * geom.head_dim - (3 + 8)  # q/k dims removed over both kept heads, one block
    assert structure_macs(geom, Structure(blocks=(full, full))) - structure_macs(geom, structure) == (
        2 * saved * geom.qk_unit_macs
    )
    assert structure_params(geom, Structure(blocks=(full, full))) - structure_params(geom, structure) == (
        2 * saved * 2 * (geom.dim + 1)  # q and k rows with their biases
    )
