"""The compact network: fresh modules of exactly the planned sizes, holding the sliced weights of the timm model.

Layout: the value widths of one block are padded with zero weights to the block's widest kept width, rounded up
to a multiple of `align`, so a block's heads stay uniform (one reshape, one batched matmul; what fused attention
kernels require). Zero V rows give zero output columns, whose proj columns are zero too: the padding changes no
output, only MACs. Pruned q/k widths are laid out the same way (zero q and k rows add nothing to Q K^T); the
softmax scale stays 1/sqrt(head_dim) of the original head whatever the kept q/k width. `padded_structure` gives
the cost model that exact layout. A block without an FFN runs attention only; a block
without heads runs its FFN only; nothing of width zero is built.

Around the blocks the network is the timm model's own (patch embedding, norms, head); only the joining of the
prefix tokens to the patch tokens is re-expressed (`embed_tokens`), so that the exported graph has static shapes
for every token layout (class token before or after the position embedding, register tokens, no position embedding).
"""

from __future__ import annotations

import copy

import torch
from timm.layers import resample_abs_pos_embed
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from hiap.base.errors import HiapError
from hiap.cost import BlockStructure, Structure, emitted_width

# The attribute under which hiap.pruner keeps the gate logits in a ViT (hiap.pruner.GATES; the export layer reads
# the name, it does not import the trainer).
GATES_ATTR = "hiap_gates"


def check_landing_grid(landing: int, align: int) -> None:
    """Refuse an export grid incoherent with the search's landing: a landing that filled value widths to multiples of
    `landing` (value_align; 0: none) takes an `align` that divides it (the same widths) or is a multiple of it (a
    coarser grid on purpose, such as TensorRT's one head size; the report counts the padding MACs)."""
    if landing and landing % align and align % landing:
        raise HiapError(f"The search landed on value widths padded to multiples of {landing} (value_align) and counted "
                        f"the budget on them: export with an align that divides {landing} or is a multiple of it, not "
                        f"{align}, or search again with value_align {align}.")  # fmt: skip


def block_width(block: BlockStructure, head_dim: int, align: int) -> int:
    """The value width every kept head of `block` gets in the export (hiap.cost.emitted_width of its widest)."""
    return emitted_width(max((len(v) for v in block.value_dims), default=0), head_dim, align)


def block_qk_width(block: BlockStructure, head_dim: int, align: int) -> int:
    """The q/k width every kept head of `block` gets in the export: head_dim unless its q/k dims are pruned."""
    if block.qk_dims is None:
        return head_dim
    return emitted_width(max((len(q) for q in block.qk_dims), default=0), head_dim, align)


def padded_structure(structure: Structure, head_dim: int, align: int) -> Structure:
    """The structure the exporter emits (value and q/k widths padded), for counting its MACs and parameters."""
    blocks = []
    for b in structure.blocks:
        dims = tuple(tuple(range(block_width(b, head_dim, align))) for _ in b.heads)
        qk_width = block_qk_width(b, head_dim, align)
        qk = None if qk_width == head_dim else tuple(tuple(range(qk_width)) for _ in b.heads)
        blocks.append(BlockStructure(heads=b.heads, value_dims=dims, ffn=b.ffn, neurons=b.neurons, qk_dims=qk))
    return Structure(blocks=tuple(blocks))


class CompactAttention(nn.Module):
    """Multi-head attention with `num_heads` heads of q/k width `head_dim` and value width `value_dim`; `scale`
    is the original head's 1/sqrt(head_dim) (the q/k width may have been pruned below it)."""

    def __init__(
        self, dim: int, num_heads: int, head_dim: int, value_dim: int, qkv_bias: bool, proj_bias: bool,
        q_norm: nn.Module, k_norm: nn.Module, scale: float | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        self.num_heads, self.head_dim, self.value_dim = num_heads, head_dim, value_dim
        self.scale = head_dim**-0.5 if scale is None else scale
        self.qkv = nn.Linear(dim, num_heads * (2 * head_dim + value_dim), bias=qkv_bias)
        self.q_norm, self.k_norm = q_norm, k_norm
        self.proj = nn.Linear(num_heads * value_dim, dim, bias=proj_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        h, dq, dv = self.num_heads, self.head_dim, self.value_dim
        q, k, v = self.qkv(x).split([h * dq, h * dq, h * dv], dim=-1)
        q = self.q_norm(q.reshape(b, n, h, dq).transpose(1, 2))
        k = self.k_norm(k.reshape(b, n, h, dq).transpose(1, 2))
        v = v.reshape(b, n, h, dv).transpose(1, 2)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, h * dv))


class CompactMlp(nn.Module):
    def __init__(self, dim: int, hidden: int, act: nn.Module, bias: bool) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.act = act
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CompactBlock(nn.Module):
    """A pre-norm block whose attention or FFN branch may be absent (residual only)."""

    def __init__(
        self, norm1: nn.Module | None, attn: CompactAttention | None, ls1: nn.Module | None,
        norm2: nn.Module | None, mlp: CompactMlp | None, ls2: nn.Module | None,
    ) -> None:  # fmt: skip
        super().__init__()
        self.norm1, self.attn, self.ls1 = norm1, attn, ls1
        self.norm2, self.mlp, self.ls2 = norm2, mlp, ls2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.attn is not None:
            x = x + self.ls1(self.attn(self.norm1(x)))
        if self.mlp is not None:
            x = x + self.ls2(self.mlp(self.norm2(x)))
        return x


@torch.no_grad()
def compact_block(blk: nn.Module, plan: BlockStructure, align: int) -> CompactBlock:
    attn_src, mlp_src = blk.attn, blk.mlp
    dim = attn_src.qkv.in_features
    big_h, dh = attn_src.num_heads, attn_src.head_dim
    attn = None
    if plan.heads:
        width = block_width(plan, dh, align)
        qk_width = block_qk_width(plan, dh, align)
        plain_qk = isinstance(attn_src.q_norm, nn.Identity) and isinstance(attn_src.k_norm, nn.Identity)
        if qk_width < dh and not plain_qk:
            raise HiapError("The plan removes q/k dims of a model with qk-norm, which normalises over the whole head.")
        attn = CompactAttention(
            dim, len(plan.heads), qk_width, width, attn_src.qkv.bias is not None, attn_src.proj.bias is not None,
            copy.deepcopy(attn_src.q_norm), copy.deepcopy(attn_src.k_norm), scale=dh**-0.5,
        )  # fmt: skip
        w_src, b_src = attn_src.qkv.weight, attn_src.qkv.bias
        attn.qkv.weight.zero_()
        if attn.qkv.bias is not None:
            attn.qkv.bias.zero_()
        attn.proj.weight.zero_()
        nq = len(plan.heads) * qk_width
        qk_dims = plan.qk_dims if plan.qk_dims is not None else [range(dh)] * len(plan.heads)
        for slot, (h, dims) in enumerate(zip(plan.heads, qk_dims, strict=True)):
            rows_q = [h * dh + j for j in dims]
            rows_k = [big_h * dh + r for r in rows_q]
            dst = slot * qk_width
            attn.qkv.weight[dst : dst + len(rows_q)] = w_src[rows_q]
            attn.qkv.weight[nq + dst : nq + dst + len(rows_k)] = w_src[rows_k]
            if b_src is not None:
                attn.qkv.bias[dst : dst + len(rows_q)] = b_src[rows_q]
                attn.qkv.bias[nq + dst : nq + dst + len(rows_k)] = b_src[rows_k]
        for slot, (h, dims) in enumerate(zip(plan.heads, plan.value_dims, strict=True)):
            src_rows = [2 * big_h * dh + h * dh + j for j in dims]
            dst = 2 * nq + slot * width
            attn.qkv.weight[dst : dst + len(dims)] = w_src[src_rows]
            attn.proj.weight[:, slot * width : slot * width + len(dims)] = attn_src.proj.weight[
                :, [h * dh + j for j in dims]
            ]
            if b_src is not None:
                attn.qkv.bias[dst : dst + len(dims)] = b_src[src_rows]
        if attn.proj.bias is not None:
            attn.proj.bias.copy_(attn_src.proj.bias)
    mlp = None
    if plan.ffn and plan.neurons:
        keep = list(plan.neurons)
        mlp = CompactMlp(dim, len(keep), copy.deepcopy(mlp_src.act), mlp_src.fc1.bias is not None)
        mlp.fc1.weight.copy_(mlp_src.fc1.weight[keep])
        mlp.fc2.weight.copy_(mlp_src.fc2.weight[:, keep])
        if mlp.fc1.bias is not None:
            mlp.fc1.bias.copy_(mlp_src.fc1.bias[keep])
            mlp.fc2.bias.copy_(mlp_src.fc2.bias)
    return CompactBlock(
        copy.deepcopy(blk.norm1) if attn else None, attn, copy.deepcopy(blk.ls1) if attn else None,
        copy.deepcopy(blk.norm2) if mlp else None, mlp, copy.deepcopy(blk.ls2) if mlp else None,
    )  # fmt: skip


def _batched(token: torch.Tensor, batch: int) -> torch.Tensor:
    """`token` [1, T, D] broadcast to [batch, T, D] (a view, as timm's expand)."""
    # timm writes token.expand(B, -1, -1); the TorchScript exporter turns those -1s into a ConstantOfShape/Equal/Where
    # subgraph that ONNX shape inference cannot evaluate, so a one-token prefix (the class token) gets an unknown
    # length. In timm's default layout the following add of the static position embedding pins the length again;
    # where the tokens are joined after it (no_embed_class: DeiT-III) or there is none, the unknown length reached
    # every block and the MACs could not be counted. expand_as exports as Expand(Shape(...)), which inference
    # resolves, for a fixed batch and for a dynamic one once pinned.
    return token.expand_as(token.new_empty(batch, *token.shape[1:]))


_TIMM_POS_EMBED = (VisionTransformer._pos_embed, VisionTransformerDistilled._pos_embed)


def embed_tokens(vit: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """timm's `_pos_embed` of `vit` (VisionTransformer's or the distilled one's), with the prefix tokens broadcast
    over the batch by `_batched`: the same values, in a graph whose shapes ONNX shape inference can resolve."""
    if type(vit)._pos_embed not in _TIMM_POS_EMBED:  # a subclass with its own layout: keep its code as it is
        return vit._pos_embed(x)
    pos = vit.pos_embed
    if vit.dynamic_img_size:
        b, h, w, c = x.shape
        if pos is not None:
            prefix = 0 if vit.no_embed_class else vit.num_prefix_tokens
            pos = resample_abs_pos_embed(pos, new_size=(h, w), old_size=vit.patch_embed.grid_size,
                                         num_prefix_tokens=prefix)  # fmt: skip
        x = x.view(b, -1, c)
    names = ("cls_token", "dist_token") if isinstance(vit, VisionTransformerDistilled) else ("cls_token", "reg_token")
    tokens = [_batched(t, x.shape[0]) for t in (getattr(vit, n) for n in names) if t is not None]
    if pos is None:  # timm applies no pos_drop here
        return torch.cat([*tokens, x.view(x.shape[0], -1, x.shape[-1])], dim=1)
    if vit.no_embed_class:
        x = x + pos
        if tokens:
            x = torch.cat([*tokens, x], dim=1)
    else:
        if tokens:
            x = torch.cat([*tokens, x], dim=1)
        x = x + pos
    return vit.pos_drop(x)


class CompactViT(nn.Module):
    """The exported network: a copy of the timm model (`vit`) whose blocks are compact blocks, run as timm's
    forward_features and forward_head do, with the tokens joined by `embed_tokens`."""

    def __init__(self, vit: VisionTransformer) -> None:
        super().__init__()
        self.vit = vit

    @property
    def blocks(self) -> nn.Sequential:
        """The compact blocks, where callers found them when build_compact returned the timm copy itself."""
        return self.vit.blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        vit = self.vit
        x = vit.norm_pre(vit.patch_drop(embed_tokens(vit, vit.patch_embed(x))))
        return vit.forward_head(vit.norm(vit.blocks(x)))


def build_compact(vit: VisionTransformer, structure: Structure, align: int = 8) -> CompactViT:
    """A copy of `vit` (embeddings, norms, heads) whose blocks are fresh compact blocks of the planned sizes."""
    if align < 1:
        raise HiapError(f"--align must be >= 1, got {align}.")
    if len(structure.blocks) != len(vit.blocks):
        raise HiapError(f"Plan has {len(structure.blocks)} blocks, the model {len(vit.blocks)}.")
    compact = _copy(vit).eval()
    if hasattr(compact, GATES_ATTR):
        delattr(compact, GATES_ATTR)
    compact.blocks = nn.Sequential(
        *(compact_block(b, p, align) for b, p in zip(vit.blocks, structure.blocks, strict=True))
    )
    return CompactViT(compact).eval()


@torch.no_grad()
def compact_in_place(model: nn.Module, backbone_path: str, structure: Structure, align: int = 8,
                     copy_model: bool = False) -> nn.Module:  # fmt: skip
    """The ViT at `backbone_path` in `model` ('' : `model` itself) with its blocks replaced by compact blocks of
    `structure` and its gate logits removed; every other part of `model` (the user's head) is left as it is.
    With `copy_model`, a copy is changed and `model` is not. Returns the changed model, in eval mode."""
    if align < 1:
        raise HiapError(f"--align must be >= 1, got {align}.")
    vit = model.get_submodule(backbone_path) if backbone_path else model
    if len(structure.blocks) != len(vit.blocks):
        raise HiapError(f"Plan has {len(structure.blocks)} blocks, the model {len(vit.blocks)}.")
    blocks = [compact_block(b, p, align) for b, p in zip(vit.blocks, structure.blocks, strict=True)]
    if copy_model:
        model = _copy(model)
        vit = model.get_submodule(backbone_path) if backbone_path else model
    vit.blocks = nn.Sequential(*blocks)
    if hasattr(vit, GATES_ATTR):
        delattr(vit, GATES_ATTR)
    return model.eval()


def _copy(model: nn.Module) -> nn.Module:
    """A deep copy of `model`; the gated blocks of a pruned ViT hold their pruner (not a module), which the copy
    does not drag along."""
    memo: dict[int, object] = {}
    for m in model.modules():
        pruner = getattr(m, "pruner", None)
        if pruner is not None and not isinstance(pruner, nn.Module):
            memo[id(pruner)] = None
    return copy.deepcopy(model, memo)
