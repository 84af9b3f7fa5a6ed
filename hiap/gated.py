"""The gated ViT: a timm VisionTransformer whose heads, FFN blocks, q/k dims, value dims and neurons carry HiAP gates.

The timm model is held unchanged (`GatedViT.vit`), so its parameter names, `state_dict` and pretrained_cfg
stay exactly timm's; the gate logits live beside it in `GatedViT.gates`. The forward pass reuses the model's
own embedding, norm and head methods and re-expresses only the block computation, with the masks passed
explicitly (no patched attributes, no monkeypatched forwards).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from timm.layers import Attention, Mlp
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from hiap.base.errors import HiapError, UnsupportedModelError
from hiap.compensate import UnitStats
from hiap.cost import BlockStructure, ExpectedCost, Geometry, Structure, emitted_width, expected_cost
from hiap.gates import export_rule, gumbel_sigmoid, keep_probability, logistic_noise

SUPPORTED = (
    "hiap supports timm VisionTransformer models (ViT, DeiT incl. distilled, DeiT-III, register tokens, "
    "qk-norm, LayerScale, avg/token pooling, pre-norm) whose blocks are timm Block with timm Attention and Mlp"
)


@dataclass(frozen=True)
class Floors:
    """Feasibility floors: hard constraints of the export rule and targets of the feasibility penalty."""

    k_min: int = 1  # heads kept per block
    min_value_frac: float = 0.25  # fraction of value dims kept per kept head
    min_neuron_frac: float = 0.1  # fraction of neurons kept per kept FFN (an FFN may still be removed whole)
    min_qk_frac: float = 0.125  # fraction of q/k dims kept per kept head, where those are gated

    def heads(self, num_heads: int) -> int:
        return max(1, min(self.k_min, num_heads))

    def value_dims(self, head_dim: int) -> int:
        return max(1, min(head_dim, math.ceil(self.min_value_frac * head_dim)))

    def neurons(self, hidden: int) -> int:
        return max(1, min(hidden, math.ceil(self.min_neuron_frac * hidden)))

    def qk_dims(self, head_dim: int) -> int:
        return max(1, min(head_dim, math.ceil(self.min_qk_frac * head_dim)))


# The logit a filled value dim gets when it was below the export threshold (kept: logit > 0).
FILLED_LOGIT = 0.01


@dataclass
class Masks:
    """One sample of the gate kinds; effective masks are products (q/k dim g*e, value g*d, neuron b*c)."""

    head: torch.Tensor  # g [L, H]
    value: torch.Tensor  # d [L, H, Dh]
    ffn: torch.Tensor  # b [L]
    neuron: torch.Tensor  # c [L, K]
    qk: torch.Tensor  # e [L, H, Dh]: all ones where q/k widths are not gated


# The logit of a gate that is fixed open (a gate kind switched off): keep probability 1 - 5e-5.
FIXED_OPEN = 10.0


class GateLogits(nn.Module):
    """Learnable logits of the five gate kinds (one logit per gate), initialised open."""

    def __init__(self, depth: int, num_heads: int, head_dim: int, hidden: int, init: float = 3.0) -> None:
        super().__init__()
        self.head = nn.Parameter(torch.full((depth, num_heads), init))
        self.value = nn.Parameter(torch.full((depth, num_heads, head_dim), init))
        self.ffn = nn.Parameter(torch.full((depth,), init))
        self.neuron = nn.Parameter(torch.full((depth, hidden), init))
        self.qk = nn.Parameter(torch.full((depth, num_heads, head_dim), init))

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {"head": self.head, "value": self.value, "ffn": self.ffn, "neuron": self.neuron, "qk": self.qk}


def with_qk_logits(gates: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Gate logits saved before q/k dims had gates (no 'qk'): every q/k dim fixed open, as those runs computed."""
    if "qk" in gates or "value" not in gates:
        return gates
    return {**gates, "qk": torch.full_like(gates["value"], FIXED_OPEN)}


def qk_gateable(geometry: Geometry) -> bool:
    """q/k dims can be gated without qk-norm only: a LayerNorm over the head's q or k changes when dims are removed."""
    return geometry.qk_norm_params == 0


def _only(module: nn.Module, kind: type, what: str, index: int) -> None:
    if type(module) is not kind:
        raise UnsupportedModelError(
            f"Unsupported model: block {index} has {what} of type {type(module).__name__}, "
            f"expected {kind.__name__}. {SUPPORTED}."
        )


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def describe_vit(vit: nn.Module) -> Geometry:
    """Check that `vit` is a supported timm ViT and return its geometry; fail early naming what is supported."""
    if not isinstance(vit, VisionTransformer):
        raise UnsupportedModelError(f"Unsupported model of type {type(vit).__name__}. {SUPPORTED}.")
    if getattr(vit, "attn_pool", None) is not None:
        raise UnsupportedModelError(f"Unsupported model: attention pooling ('map'/'prr') is not gated. {SUPPORTED}.")
    if not isinstance(getattr(vit.patch_embed, "proj", None), nn.Conv2d):
        raise UnsupportedModelError(f"Unsupported model: patch embedding is not a Conv2d (hybrid?). {SUPPORTED}.")
    blocks = list(vit.blocks)
    if not blocks:
        raise UnsupportedModelError("Unsupported model: it has no transformer blocks.")
    first = blocks[0]
    for i, blk in enumerate(blocks):
        _only(blk, Block, "a block", i)
        _only(blk.attn, Attention, "attention", i)
        _only(blk.mlp, Mlp, "an MLP", i)
        if getattr(blk.attn, "gate", None) is not None or not isinstance(blk.attn.norm, nn.Identity):
            raise UnsupportedModelError(
                f"Unsupported model: block {i} uses gated or scale-normed attention, whose output cannot be "
                f"pruned per value dim. {SUPPORTED}."
            )
        if not isinstance(blk.mlp.norm, nn.Identity) or not isinstance(blk.mlp.fc1, nn.Linear):
            raise UnsupportedModelError(
                f"Unsupported model: block {i} has a normed or convolutional MLP, whose neurons cannot be "
                f"removed exactly. {SUPPORTED}."
            )
        same = (
            blk.attn.num_heads == first.attn.num_heads
            and blk.attn.head_dim == first.attn.head_dim
            and blk.mlp.fc1.out_features == first.mlp.fc1.out_features
            and _numel(blk) == _numel(first)
        )
        if not same:
            raise UnsupportedModelError(f"Unsupported model: block {i} differs in width from block 0.")
    attn, mlp = first.attn, first.mlp
    dim = first.norm1.normalized_shape[0] if hasattr(first.norm1, "normalized_shape") else attn.qkv.in_features
    if attn.qkv.in_features != dim or attn.proj.out_features != dim or mlp.fc2.out_features != dim:
        raise UnsupportedModelError(f"Unsupported model: attention or MLP changes the embedding width. {SUPPORTED}.")
    conv = vit.patch_embed.proj
    num_patches = vit.patch_embed.num_patches
    patch_macs = num_patches * conv.out_channels * (conv.in_channels // conv.groups) * math.prod(conv.kernel_size)
    head_macs = 0
    for name in ("head", "head_dist"):
        head = getattr(vit, name, None)
        if isinstance(head, nn.Linear):
            head_macs += head.in_features * head.out_features
    block_params = sum(_numel(b) for b in blocks)
    return Geometry(
        num_tokens=num_patches + vit.num_prefix_tokens,
        dim=dim,
        depth=len(blocks),
        num_heads=attn.num_heads,
        head_dim=attn.head_dim,
        hidden=mlp.fc1.out_features,
        patch_macs=patch_macs,
        head_macs=head_macs,
        fixed_params=_numel(vit) - block_params,
        norm1_params=_numel(first.norm1),
        qk_norm_params=_numel(attn.q_norm) + _numel(attn.k_norm),
        ls1_params=_numel(first.ls1),
        norm2_params=_numel(first.norm2),
        ls2_params=_numel(first.ls2),
        qkv_bias=attn.qkv.bias is not None,
        proj_bias=attn.proj.bias is not None,
        mlp_bias=mlp.fc1.bias is not None,
    )


def gated_attention(
    attn: Attention, x: torch.Tensor, value_mask: torch.Tensor, qk_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """timm Attention.forward with a [H, Dh] multiplier on each head's value dims (g*d) and, where q/k widths are
    gated, one on each head's q/k dims (e).

    A q/k dim j of a head enters only through q_j * k_j in Q K^T, so zeroing q_j removes it exactly as the export
    does (both columns gone); the multiplier goes on the q rows of qkv's weight and bias, and the softmax scale
    stays 1/sqrt(head_dim), as in the exported network. describe_vit's callers gate q/k dims only without qk-norm.

    The gate multiplies proj's input columns instead of the attention output: (A V) * m == A (V * m) column by
    column, and proj(o * m) == (W * m) o + b, so it is the same gate on the value dim at the cost of one weight-sized
    product. Applied to the activations it cost a pass over them forward and two backward plus a saved copy:
    measured on an H100, DeiT-Small batch 256 bf16 took 1.44x the GPU kernel time of plain training and 1.38x its
    memory (benchmarks/results/gpu_training.md). describe_vit guarantees attn.norm is the identity.
    """
    b, n, _ = x.shape
    if qk_mask is None:
        qkv = attn.qkv(x)
    else:
        width = attn.num_heads * attn.head_dim
        rows = torch.cat([qk_mask.reshape(-1), qk_mask.new_ones(attn.qkv.out_features - width)])
        rows = rows.to(attn.qkv.weight.dtype)
        bias = attn.qkv.bias * rows if attn.qkv.bias is not None else None
        qkv = F.linear(x, attn.qkv.weight * rows.unsqueeze(-1), bias)
    qkv = qkv.reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if attn.fused_attn:
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=attn.attn_drop.p if attn.training else 0.0)
    else:
        scores = (q * attn.scale) @ k.transpose(-2, -1)
        out = attn.attn_drop(scores.softmax(dim=-1)) @ v
    out = out.transpose(1, 2).reshape(b, n, attn.attn_dim)
    weight = attn.proj.weight * value_mask.reshape(1, -1).to(attn.proj.weight.dtype)
    return attn.proj_drop(F.linear(out, weight, attn.proj.bias))


def gated_mlp(mlp: Mlp, x: torch.Tensor, neuron_mask: torch.Tensor, ffn_gate: torch.Tensor) -> torch.Tensor:
    """timm Mlp.forward with a multiplier on each hidden neuron (c) and one on the whole block's output (b).

    Both are folded into fc2 (its columns by the neuron gates, its weight and bias by the FFN gate), for the same
    reason as in gated_attention; dropout commutes with the scaling and describe_vit guarantees mlp.norm is the
    identity.
    """
    h = mlp.drop1(mlp.act(mlp.fc1(x)))
    fc2 = mlp.fc2
    weight = fc2.weight * (neuron_mask.to(fc2.weight.dtype) * ffn_gate.to(fc2.weight.dtype)).unsqueeze(0)
    bias = fc2.bias * ffn_gate.to(fc2.bias.dtype) if fc2.bias is not None else None
    return mlp.drop2(F.linear(h, weight, bias))


def _standardised(magnitude: torch.Tensor) -> torch.Tensor:
    """z-score of log magnitudes (scale-free across layers), clipped to +-2 so no unit starts far from the rest."""
    x = magnitude.float().clamp_min(1e-12).log()
    return ((x - x.mean()) / x.std().clamp_min(1e-6)).clamp(-2.0, 2.0)


class GatedViT(nn.Module):
    """A supported timm ViT plus HiAP gates; `vit.state_dict()` is the plain timm state dict."""

    def __init__(
        self, vit: VisionTransformer, floors: Floors | None = None, gate_init: float = 3.0, qk_gates: bool = False
    ) -> None:
        super().__init__()
        self.geometry = describe_vit(vit)
        self.vit = vit
        self.floors = floors or Floors()
        g = self.geometry
        self.gates = GateLogits(g.depth, g.num_heads, g.head_dim, g.hidden, init=gate_init)
        # q/k dims removed at export change what a qk-norm (LayerNorm over the head's q or k) computes: gated only
        # without one. Off, their logits stay fixed open and every mask of theirs is exactly one.
        self.qk_gated = qk_gates and qk_gateable(g)
        if not self.qk_gated:
            self.fix_open("qk")

    @torch.no_grad()
    def fix_open(self, kind: str) -> None:
        """A gate kind switched off: its logits fixed open (FIXED_OPEN), no gradient, so no optimizer moves them."""
        logits = self.gates.as_dict()[kind]
        logits.fill_(FIXED_OPEN)
        logits.requires_grad_(False)

    def micro_logits(self) -> list[nn.Parameter]:
        """The micro gates that learn: value dims, neurons and, where gated, q/k dims."""
        return [self.gates.value, self.gates.neuron] + ([self.gates.qk] if self.qk_gated else [])

    @torch.no_grad()
    def init_from_importance(self, spread: float, stats: UnitStats | None = None) -> None:
        """Offset each micro gate's logit by `spread` times its unit's standardised log-importance within its block.

        Importance by l1 magnitude (no `stats`): of a value dim |its V-projection row|_1 * |its proj column|_1, of a
        neuron |fc1 row|_1 * |fc2 column|_1, of a q/k dim |q row|_1 * |k row|_1 (the weights the unit reads and
        writes, as l1-magnitude pruning ranks them). By output variance (`stats`, calibration images): of a neuron
        or value dim its activation's variance times |its fc2 / proj column|_2^2, the variance it adds to the
        residual stream (the part a folded mean cannot replace); q/k dims stay by l1. Standardised per block and
        clipped to +-2, so with the default gate_init 3 and spread 1 the logits start between 1 and 5 and the
        weakest units reach the export threshold first. Macro gates (heads, FFN blocks) keep their init: those
        decisions are left to the gradients."""
        g = self.geometry
        for i, blk in enumerate(self.vit.blocks):
            attn, mlp = blk.attn, blk.mlp
            width = g.num_heads * g.head_dim
            if stats is None:
                v_rows = attn.qkv.weight[2 * width : 3 * width].abs().sum(1)  # timm's qkv rows: q, k, v, head-major
                value = v_rows * attn.proj.weight.abs().sum(0)
                neuron = mlp.fc1.weight.abs().sum(1) * mlp.fc2.weight.abs().sum(0)
            else:
                value = stats.value_var[i].to(attn.proj.weight) * attn.proj.weight.pow(2).sum(0)
                neuron = stats.neuron_var[i].to(mlp.fc2.weight) * mlp.fc2.weight.pow(2).sum(0)
            self.gates.value[i] += spread * _standardised(value).view(g.num_heads, g.head_dim)
            self.gates.neuron[i] += spread * _standardised(neuron)
            if self.qk_gated:
                qk = attn.qkv.weight[:width].abs().sum(1) * attn.qkv.weight[width : 2 * width].abs().sum(1)
                self.gates.qk[i] += spread * _standardised(qk).view(g.num_heads, g.head_dim)

    # --- masks -------------------------------------------------------------------------------------------
    def sample_masks(self, tau: float, generator: torch.Generator, hard: bool = True) -> Masks:
        """One Gumbel-Sigmoid sample of every gate, shared by the whole batch."""
        gates = self.gates.as_dict()
        if not self.qk_gated:
            gates.pop("qk")
        z = {k: gumbel_sigmoid(a, tau, logistic_noise(tuple(a.shape), generator), hard) for k, a in gates.items()}
        if not self.qk_gated:
            z["qk"] = torch.ones_like(self.gates.qk, requires_grad=False)
        return Masks(**z)

    @torch.no_grad()
    def hard_masks(self) -> Masks:
        """The export rule (logit > 0), then the floors enforced by keeping the highest logits."""
        g, fl = self.geometry, self.floors
        head = _with_floor(self.gates.head, fl.heads(g.num_heads))
        value = _with_floor(self.gates.value, fl.value_dims(g.head_dim)) & head.unsqueeze(-1)
        ffn = export_rule(self.gates.ffn)
        neuron = _with_floor(self.gates.neuron, fl.neurons(g.hidden)) & ffn.unsqueeze(-1)
        qk = _with_floor(self.gates.qk, fl.qk_dims(g.head_dim)) if self.qk_gated else torch.ones_like(value)
        qk = qk & head.unsqueeze(-1)
        return Masks(head=head.float(), value=value.float(), ffn=ffn.float(), neuron=neuron.float(), qk=qk.float())

    @torch.no_grad()
    def fill_value_widths(self, align: int) -> None:
        """Give every kept head of a block the block's emitted value width (its widest kept head rounded up to
        `align`, hiap.cost.emitted_width) by raising the logits of each head's next-best value dims just above the
        export threshold: the exporter would emit those columns anyway, as zero padding, so they cost nothing more
        in the exported graph and carry weights instead. Gated q/k widths are filled the same way."""
        masks = self.hard_masks()
        kinds = [(self.gates.value, masks.value)] + ([(self.gates.qk, masks.qk)] if self.qk_gated else [])
        for logits, kept in kinds:
            widest = kept.sum(-1).amax(-1).long()  # [blocks]
            width = emitted_width(widest, self.geometry.head_dim, align).view(-1, 1, 1)
            rank = logits.argsort(dim=-1, descending=True).argsort(dim=-1)  # 0 = the head's best dim
            fill = (rank < width) & masks.head.bool().unsqueeze(-1)
            logits.copy_(torch.where(fill, logits.clamp_min(FILLED_LOGIT), logits))

    def open_masks(self) -> Masks:
        """All gates open: the wrapped model computes exactly the timm model."""
        return Masks(**{k: torch.ones_like(a, requires_grad=False) for k, a in self.gates.as_dict().items()})

    # --- cost --------------------------------------------------------------------------------------------
    def keep_probabilities(self) -> dict[str, torch.Tensor]:
        """sigmoid(logit) per gate kind; q/k dims that are not gated are kept for sure (1, no gradient)."""
        p = {k: keep_probability(a) for k, a in self.gates.as_dict().items()}
        if not self.qk_gated:
            p["qk"] = torch.ones_like(p["qk"]).detach()
        return p

    def expected_cost(self) -> ExpectedCost:
        p = self.keep_probabilities()
        qk = p["qk"] if self.qk_gated else None
        return expected_cost(self.geometry, p["head"], p["ffn"], p["value"], p["neuron"], qk)

    def hard_cost(self) -> torch.Tensor:
        """MACs of the exported network as a tensor on the gates' device (no host read-back)."""
        m = self.hard_masks()
        return expected_cost(self.geometry, m.head, m.ffn, m.value, m.neuron, m.qk if self.qk_gated else None).total

    def hard_macs(self) -> int:
        return round(float(self.hard_cost()))

    def hard_structure(self) -> Structure:
        return masks_to_structure(self.hard_masks())

    # --- forward -----------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, masks: Masks | None = None) -> torch.Tensor:
        """Forward with the given masks through the blocks training runs (GatedBlock); without masks, the exported
        network (hard rule), as in validation."""
        if masks is None:
            masks = self.hard_masks()
        vit = self.vit
        source = FixedMasks(masks, self.qk_gated)
        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
        for i, blk in enumerate(vit.blocks):
            block = GatedBlock(blk, i, source)
            block.training = self.training  # its own flag only: the block's children keep theirs
            x = block(x)
        return vit.forward_head(vit.norm(x))


@dataclass(frozen=True)
class BlockMasks:
    """What one gated block multiplies by in one forward."""

    value: torch.Tensor  # [H, Dh] head gate x value gate
    qk: torch.Tensor | None  # [H, Dh] q/k-dim gate; None where q/k widths are not gated
    neuron: torch.Tensor  # [K]
    ffn: torch.Tensor  # scalar
    attends: bool  # False only in eval, for a block whose every head is closed


def block_masks(masks: Masks, index: int, qk_gated: bool, attends: bool) -> BlockMasks:
    """Block `index`'s share of a sample of every gate."""
    qk = masks.qk[index] if qk_gated else None
    return BlockMasks(masks.head[index].unsqueeze(-1) * masks.value[index], qk, masks.neuron[index],
                      masks.ffn[index], attends)  # fmt: skip


class MaskSource(Protocol):
    """Where a GatedBlock gets its masks for one forward: the Pruner while training, FixedMasks elsewhere."""

    def block_masks(self, index: int, training: bool) -> BlockMasks: ...


class FixedMasks:
    """The same masks for every forward (the export's reference network, a checkpoint's structure)."""

    def __init__(self, masks: Masks, qk_gated: bool) -> None:
        self.masks, self.qk_gated = masks, qk_gated
        # In eval a block with every head closed contributes nothing (proj's bias included), as the exported
        # network does; the floors make this happen only in hand-edited plans, never in training. One read-back
        # for all blocks, not one per block.
        self.attends = masks.head.any(-1).tolist()

    def block_masks(self, index: int, training: bool) -> BlockMasks:
        return block_masks(self.masks, index, self.qk_gated, training or self.attends[index])


class GatedBlock(nn.Module):
    """A timm Block whose attention and FFN are multiplied by its source's masks: the one gated block, run by
    training and by every reference forward. Its children are the Block's own under the same names, so the model's
    state_dict keys (and any weights loaded into it) stay timm's."""

    def __init__(self, block: nn.Module, index: int, source: MaskSource) -> None:
        super().__init__()
        for name, child in block.named_children():
            self.add_module(name, child)
        self.index = index
        self.source = source  # not a Module: held, not registered

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise HiapError("hiap gates do not support attention masks or causal attention in a ViT block.")
        m = self.source.block_masks(self.index, self.training)
        if m.attends:
            x = x + self.drop_path1(self.ls1(gated_attention(self.attn, self.norm1(x), m.value, m.qk)))
        return x + self.drop_path2(self.ls2(gated_mlp(self.mlp, self.norm2(x), m.neuron, m.ffn)))


def _with_floor(logits: torch.Tensor, minimum: int) -> torch.Tensor:
    """logit > 0 along the last axis, topped up with the highest logits to at least `minimum` kept."""
    keep = export_rule(logits)
    top = logits.topk(minimum, dim=-1).indices
    return keep.scatter(-1, top, True)


def structure_to_masks(structure: Structure, like: Masks) -> Masks:
    """0/1 masks that keep exactly `structure` (shapes taken from `like`)."""
    kinds = (like.head, like.value, like.ffn, like.neuron, like.qk)
    head, value, ffn, neuron, qk = (torch.zeros_like(t) for t in kinds)
    for i, b in enumerate(structure.blocks):
        qk_dims = b.qk_dims if b.qk_dims is not None else [range(qk.shape[-1])] * len(b.heads)
        for h, dims, q in zip(b.heads, b.value_dims, qk_dims, strict=True):
            head[i, h] = 1
            value[i, h, list(dims)] = 1
            qk[i, h, list(q)] = 1
        ffn[i] = float(b.ffn)
        neuron[i, list(b.neurons)] = 1
    return Masks(head=head, value=value, ffn=ffn, neuron=neuron, qk=qk)


def masks_to_structure(masks: Masks) -> Structure:
    """Kept indices per block from 0/1 masks (value and q/k dims of closed heads and neurons of removed FFNs drop
    out); a block whose kept heads keep every q/k dim records them as None (full)."""
    blocks = []
    head, value = masks.head.bool(), (masks.value * masks.head.unsqueeze(-1)).bool()
    ffn, neuron, qk = masks.ffn.bool(), masks.neuron.bool(), masks.qk.bool()
    for i in range(head.shape[0]):
        heads = tuple(int(h) for h in torch.nonzero(head[i]).flatten())
        value_dims = tuple(tuple(int(j) for j in torch.nonzero(value[i, h]).flatten()) for h in heads)
        qk_dims: tuple[tuple[int, ...], ...] | None = tuple(
            tuple(int(j) for j in torch.nonzero(qk[i, h]).flatten()) for h in heads
        )
        if all(len(q) == qk.shape[-1] for q in qk_dims):
            qk_dims = None
        kept_ffn = bool(ffn[i]) and bool(neuron[i].any())
        neurons = tuple(int(k) for k in torch.nonzero(neuron[i]).flatten()) if kept_ffn else ()
        blocks.append(
            BlockStructure(heads=heads, value_dims=value_dims, ffn=kept_ffn, neurons=neurons, qk_dims=qk_dims)
        )
    return Structure(blocks=tuple(blocks))
