"""Analytical MACs and parameter counts of a ViT and of any pruned structure: dense, expected and hard.

Conventions (the ones behind the published DeiT figures, fvcore-style):
- one MAC per multiply-accumulate of a matrix product, per image (batch 1): the patch-embedding convolution,
  the qkv projection, Q @ K^T, attention @ V, the output projection, fc1, fc2 and the classifier head(s);
- softmax, LayerNorm, GELU, biases, residual adds, LayerScale and pooling are not counted;
- N counts every token a block sees: patches plus class, register and distillation tokens.

Per block with kept heads h (q/k widths q_h, Dh unless pruned; value widths w_h) and kept FFN neurons k:

    attention MACs = sum_h q_h * [2*N*D + N*N]  +  sum_h w_h * [2*N*D + N*N]
                     (q and k columns, Q K^T)       (v column + proj row, attn @ V column)
    FFN MACs       = k * 2*N*D                      (fc1 row + fc2 column)

This is exactly what the exporter emits. The paper's per-unit costs (arXiv 2603.12222, in FLOPs = 2 MACs)
charge a head C1 = 2*N*D*3*Dh + 2*N^2*Dh, i.e. its full V projection, and a value dim C2 = 2*N*D + 2*N^2
without its V column; both give the same dense total, but the paper's count does not credit the V column of a
pruned value dim (N*D MACs each). `paper_block_macs` below implements the paper's count for that comparison.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TypeVar

import torch

WidthT = TypeVar("WidthT", int, torch.Tensor)


@dataclass(frozen=True)
class Geometry:
    """Shapes of a uniform ViT that the cost model needs (every block has the same widths)."""

    num_tokens: int  # N: patches + prefix tokens
    dim: int  # D: embedding width
    depth: int  # L: number of blocks
    num_heads: int  # H
    head_dim: int  # Dh: q/k width per head, also the unpruned value width
    hidden: int  # K: FFN hidden width
    patch_macs: int  # patch-embedding convolution
    head_macs: int  # classifier head(s)
    fixed_params: int  # parameters outside the blocks (embeddings, final norms, heads)
    norm1_params: int
    qk_norm_params: int  # q_norm + k_norm together (0 without qk-norm)
    ls1_params: int
    norm2_params: int
    ls2_params: int
    qkv_bias: bool
    proj_bias: bool
    mlp_bias: bool

    @property
    def head_unit_macs(self) -> int:
        """MACs of one kept head at its full q/k width, without its value dims: q and k projections, Q @ K^T."""
        return self.head_dim * self.qk_unit_macs

    @property
    def qk_unit_macs(self) -> int:
        """MACs of one kept q/k dim of a head: its q and k columns and its column of Q @ K^T."""
        n, d = self.num_tokens, self.dim
        return 2 * n * d + n * n

    @property
    def value_unit_macs(self) -> int:
        """MACs of one kept value dim: its V column, its attn @ V column and its proj row."""
        n, d = self.num_tokens, self.dim
        return 2 * n * d + n * n

    @property
    def neuron_unit_macs(self) -> int:
        """MACs of one kept FFN neuron: its fc1 row and fc2 column."""
        return 2 * self.num_tokens * self.dim

    @property
    def fixed_macs(self) -> int:
        return self.patch_macs + self.head_macs

    def dense_structure(self) -> Structure:
        block = BlockStructure(
            heads=tuple(range(self.num_heads)),
            value_dims=tuple(tuple(range(self.head_dim)) for _ in range(self.num_heads)),
            ffn=True,
            neurons=tuple(range(self.hidden)),
        )
        return Structure(blocks=tuple(block for _ in range(self.depth)))

    # Cached: the penalties divide by dense MACs every step, and building the dense structure is not free.
    @cached_property
    def dense_macs(self) -> int:
        return structure_macs(self, self.dense_structure())

    @cached_property
    def dense_params(self) -> int:
        return structure_params(self, self.dense_structure())


@dataclass(frozen=True)
class BlockStructure:
    """What one block keeps; all indices are the kept ones, sorted."""

    heads: tuple[int, ...]
    value_dims: tuple[tuple[int, ...], ...]  # one tuple per kept head, in the order of `heads`
    ffn: bool
    neurons: tuple[int, ...]  # empty when the FFN is removed
    # One tuple per kept head (order of `heads`) of the q/k dims it keeps; None: every kept head keeps all of them
    # (the paper's search space, and every plan written before q/k widths could be pruned).
    qk_dims: tuple[tuple[int, ...], ...] | None = None

    @property
    def value_total(self) -> int:
        return sum(len(v) for v in self.value_dims)

    def qk_total(self, head_dim: int) -> int:
        """q/k dims kept over all kept heads."""
        if self.qk_dims is None:
            return len(self.heads) * head_dim
        return sum(len(q) for q in self.qk_dims)


@dataclass(frozen=True)
class Structure:
    blocks: tuple[BlockStructure, ...]


def emitted_width(widest: WidthT, head_dim: int, align: int) -> WidthT:
    """The value width the exporter gives every kept head of a block whose widest kept head keeps `widest` dims:
    rounded up to `align`, but never past the head width (padding beyond it would only add zero columns). For an
    int, or elementwise for a tensor of widths (the latency model prices the export layout with it)."""
    padded = -(-widest // align) * align  # ceiling division for ints and tensors alike; 0 stays 0
    return padded.clamp(max=head_dim) if isinstance(padded, torch.Tensor) else min(padded, head_dim)


def block_macs(geom: Geometry, block: BlockStructure) -> int:
    attn = 0
    if block.heads:
        attn = block.qk_total(geom.head_dim) * geom.qk_unit_macs + block.value_total * geom.value_unit_macs
    ffn = len(block.neurons) * geom.neuron_unit_macs if block.ffn else 0
    return attn + ffn


def structure_macs(geom: Geometry, structure: Structure) -> int:
    return geom.fixed_macs + sum(block_macs(geom, b) for b in structure.blocks)


def paper_block_macs(geom: Geometry, block: BlockStructure) -> int:
    """The paper's C1/C2/C3 count of one block, in MACs (its FLOPs / 2): charges a head's full V projection."""
    n, d, dh = geom.num_tokens, geom.dim, geom.head_dim
    c1 = n * d * 3 * dh + n * n * dh
    c2 = n * d + n * n
    c3 = 2 * n * d
    ffn = len(block.neurons) if block.ffn else 0
    return len(block.heads) * c1 + block.value_total * c2 + ffn * c3


def block_params(geom: Geometry, block: BlockStructure) -> int:
    d, dh = geom.dim, geom.head_dim
    params = 0
    if block.heads:
        qk_rows = 2 * block.qk_total(dh)
        v_rows = block.value_total
        params += geom.norm1_params + geom.qk_norm_params + geom.ls1_params
        params += (qk_rows + v_rows) * d + ((qk_rows + v_rows) if geom.qkv_bias else 0)
        params += v_rows * d + (d if geom.proj_bias else 0)
    if block.ffn and block.neurons:
        k = len(block.neurons)
        params += geom.norm2_params + geom.ls2_params
        params += k * d + (k if geom.mlp_bias else 0)
        params += k * d + (d if geom.mlp_bias else 0)
    return params


def structure_params(geom: Geometry, structure: Structure) -> int:
    return geom.fixed_params + sum(block_params(geom, b) for b in structure.blocks)


@dataclass
class ExpectedCost:
    """Differentiable expected MACs, split as the decoupled penalties charge them."""

    macro: torch.Tensor  # head terms (q, k, Q K^T; per kept q/k dim where those are gated)
    micro: torch.Tensor  # value-dim and neuron terms, weighted by their macro gate's probability
    total: torch.Tensor  # fixed + macro + micro


def expected_cost(
    geom: Geometry,
    p_head: torch.Tensor,  # [L, H]
    p_ffn: torch.Tensor,  # [L]
    p_value: torch.Tensor,  # [L, H, Dh]
    p_neuron: torch.Tensor,  # [L, K]
    p_qk: torch.Tensor | None = None,  # [L, H, Dh]; None: q/k widths not gated (every kept head full)
) -> ExpectedCost:
    """E[MACs] from keep probabilities; exact under any dependence by linearity of expectation (paper, Prop. 1).

    Called with 0/1 masks it returns the hard MACs of that structure, identical to `structure_macs`. A head's q/k
    cost stays in the macro part when its dims are gated too: it is what keeping the head costs, and the decoupled
    penalty weights (lambda_macro:lambda_micro) keep the meaning they have in the paper.
    """
    if p_qk is None:
        macro = geom.head_unit_macs * p_head.sum()
    else:
        macro = geom.qk_unit_macs * (p_head.unsqueeze(-1) * p_qk).sum()
    micro = geom.value_unit_macs * (p_head.unsqueeze(-1) * p_value).sum()
    micro = micro + geom.neuron_unit_macs * (p_ffn.unsqueeze(-1) * p_neuron).sum()
    return ExpectedCost(macro=macro, micro=micro, total=geom.fixed_macs + macro + micro)
