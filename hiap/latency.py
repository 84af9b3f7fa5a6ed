"""Latency as the cost of a structure: a device's measured table (hiap.base.lut) turned into the expected latency of
the gates (differentiable, what a latency-targeted run penalises) and the latency of a hard structure.

A network's latency is modelled as the table's `fixed` cell (everything outside the blocks, plus one call) and,
per block, the cost of its attention branch at (kept heads, emitted value width) and of its FFN branch at its
neuron count. A branch's cost is its probe's latency less one call's overhead, divided by the probe's chain
length (a probe runs `chain` copies of the branch in a row, so the branch is timed in the company a network
gives it). Between grid points the table is interpolated linearly (bilinearly for attention); beyond its ends
it is held at the end value.

A table with a q/k axis (probes at q/k width q and full value width, Q(h, q)) prices narrowed q/k widths as a
saving on the attention cell: A(h, w) + Q(h, q) - Q(h, head_dim), the q/k and value parts of attention taken as
separable (the q/k projection and Q K^T scale with q, the value projection and attention @ V with w).

Expected latency of block l from keep probabilities, by the same rule over expected widths:
    attention = A(E[heads], w) [+ Q(E[heads], q) - Q(E[heads], head_dim) with gated q/k dims]
                E[heads] = sum_h p_h,  w = sum_h p_h m_h / E[heads],  m_h = sum_d p_hd  (q likewise over p_qk)
    FFN       = p_ffn * F(E[neurons])                       E[neurons] = sum_k p_k
The mean kept width w stands in for the emitted width (the widest kept head, rounded up to align): it gives every
value gate a gradient, and the controller regulates the hard latency at the end of the search anyway. The split
into macro and micro parts mirrors the MAC penalties: macro is each branch at its narrowest grid width (the cost
of keeping a head or an FFN at all) with, where q/k dims are gated, the q/k term (in the MAC cost a head's q/k
part is macro too), micro the rest (what its width adds).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from hiap.base.lut import Cell, LatencyTable, geometry_record
from hiap.cost import ExpectedCost, Geometry, Structure, emitted_width
from hiap.gated import Floors, Masks


def _weights(x: torch.Tensor, xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Neighbouring grid indices of x and the linear weight of the upper one (held at the ends)."""
    if len(xs) == 1:
        zero = torch.zeros_like(x, dtype=torch.long)
        return zero, zero, torch.zeros_like(x)
    hi = torch.searchsorted(xs, x.detach().contiguous()).clamp(1, len(xs) - 1)
    lo = hi - 1
    t = ((x - xs[lo]) / (xs[hi] - xs[lo])).clamp(0.0, 1.0)
    return lo, hi, t


def interp1(x: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    lo, hi, t = _weights(x, xs)
    return ys[lo] + t * (ys[hi] - ys[lo])


def interp2(h: torch.Tensor, w: torch.Tensor, hs: torch.Tensor, ws: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    i0, i1, th = _weights(h, hs)
    j0, j1, tw = _weights(w, ws)
    low = table[i0, j0] + tw * (table[i0, j1] - table[i0, j0])
    high = table[i1, j0] + tw * (table[i1, j1] - table[i1, j0])
    return low + th * (high - low)


class _Grid(NamedTuple):
    heads: torch.Tensor  # grid of kept heads
    widths: torch.Tensor  # grid of emitted value widths
    ffn_widths: torch.Tensor
    attention: torch.Tensor  # [heads, widths] ms per attention branch
    ffn: torch.Tensor  # [ffn_widths] ms per FFN branch
    qk_widths: torch.Tensor  # grid of emitted q/k widths (empty: no q/k axis)
    attention_qk: torch.Tensor  # [heads, qk_widths] ms per attention branch at full value width


def _valued(value: torch.Tensor, trend: torch.Tensor) -> torch.Tensor:
    """`value` with the gradient of `trend`."""
    return value.detach() + trend - trend.detach()


def _plane(heads: torch.Tensor, widths: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """Least-squares (a, b, c) of cells ~ a + b h + c h w over the grid."""
    h, w = torch.meshgrid(heads, widths, indexing="ij")
    design = torch.stack([torch.ones_like(h), h, h * w], -1).reshape(-1, 3)
    return torch.linalg.lstsq(design, cells.reshape(-1, 1)).solution.flatten()


def _trend(grid: _Grid) -> tuple[float, float, float, float]:
    """Least-squares slopes of the table, none below 0: ms per head and per head x value width of the attention
    branch (A ~ a + b h + c h w), ms per neuron of the FFN branch (F ~ d + e k), ms per head x q/k width of the
    q/k axis (Q ~ a + b h + c h q; 0 without one)."""
    attention = _plane(grid.heads, grid.widths, grid.attention)
    k = grid.ffn_widths
    ffn = torch.linalg.lstsq(torch.stack([torch.ones_like(k), k], -1), grid.ffn.reshape(-1, 1)).solution.flatten()
    qk = _plane(grid.heads, grid.qk_widths, grid.attention_qk)[2] if len(grid.qk_widths) > 1 else torch.tensor(0.0)
    return (max(float(attention[1]), 0.0), max(float(attention[2]), 0.0), max(float(ffn[1]), 0.0),
            max(float(qk), 0.0))  # fmt: skip


class LatencyCost:
    """The latency model of one table at one batch size, for one model geometry (checked)."""

    def __init__(self, table: LatencyTable, geometry: Geometry, model: str, batch: int = 1) -> None:
        table.check_geometry(model, geometry_record(geometry), "the model")
        cells = table.at(batch)
        self.table, self.geometry, self.batch, self.align = table, geometry, batch, table.align

        def branch(cell: Cell) -> float:
            return table.branch_ms(cell, batch)

        self.fixed = cells.fixed.ms
        grid = _Grid(
            heads=torch.tensor(table.heads, dtype=torch.float64),
            widths=torch.tensor(table.value_widths, dtype=torch.float64),
            ffn_widths=torch.tensor(table.ffn_widths, dtype=torch.float64),
            attention=torch.tensor([[branch(c) for c in row] for row in cells.attention], dtype=torch.float64),
            ffn=torch.tensor([branch(c) for c in cells.ffn], dtype=torch.float64),
            qk_widths=torch.tensor(table.qk_widths, dtype=torch.float64),
            attention_qk=torch.tensor([[branch(c) for c in row] for row in cells.attention_qk], dtype=torch.float64),
        )
        self._grids: dict[Any, _Grid] = {None: grid}
        self.dense = self.structure_ms(geometry.dense_structure())
        self.slopes = _trend(grid)

    def _on(self, like: torch.Tensor) -> _Grid:
        """The table's tensors on `like`'s device and dtype (converted once per device and dtype: the expected cost
        runs in the gates' float32, the hard one in float64)."""
        key = (like.device, like.dtype)
        if key not in self._grids:
            self._grids[key] = _Grid(*(t.to(like.device, like.dtype) for t in self._grids[None]))
        return self._grids[key]

    @property
    def prices_qk(self) -> bool:
        """Whether the table has a q/k axis (narrowed q/k widths have a price; otherwise they stay full)."""
        return bool(self.table.qk_widths)

    def _qk_saving(self, t: _Grid, heads: torch.Tensor, qk_width: torch.Tensor) -> torch.Tensor:
        """What narrowing the q/k widths of `heads` heads to `qk_width` saves on the attention cell (<= 0 where the
        table falls with the width): Q(h, q) - Q(h, head_dim)."""
        full = torch.full_like(qk_width, float(self.geometry.head_dim))
        return interp2(heads, qk_width, t.heads, t.qk_widths, t.attention_qk) - interp2(
            heads, full, t.heads, t.qk_widths, t.attention_qk
        )

    # --- expected (differentiable) --------------------------------------------------------------------
    def expected(self, p_head: torch.Tensor, p_ffn: torch.Tensor, p_value: torch.Tensor,
                 p_neuron: torch.Tensor, p_qk: torch.Tensor | None = None) -> ExpectedCost:  # fmt: skip
        """E[latency] in ms from keep probabilities [L, H], [L], [L, H, Dh], [L, K] and, where q/k dims are gated
        (a table with a q/k axis), [L, H, Dh]."""
        t = self._on(p_head)
        per_head, per_head_width, per_neuron, per_head_qk = self.slopes
        heads = p_head.sum(-1)
        width = (p_head * p_value.sum(-1)).sum(-1) / heads.clamp_min(1e-6)
        neurons = p_neuron.sum(-1)

        # The value is the table's; the gradient the table's trend (a least-squares plane), because between two
        # neighbouring cells a measured table is as often flat or falling as rising: a local slope of zero there
        # stalls the gates it prices (measured: neurons never closed on the built-in model's table).
        def attention_at(w: torch.Tensor) -> torch.Tensor:
            trend = per_head * heads + per_head_width * heads * w
            return _valued(interp2(heads, w, t.heads, t.widths, t.attention), trend)

        attention = attention_at(width)
        ffn = p_ffn * _valued(interp1(neurons, t.ffn_widths, t.ffn), per_neuron * neurons)
        macro = attention_at(t.widths[:1].expand_as(heads)) + p_ffn * t.ffn[0]
        if p_qk is not None:
            if not self.prices_qk:
                raise ValueError("q/k keep probabilities given to a table without a q/k axis")
            qk_width = (p_head * p_qk.sum(-1)).sum(-1) / heads.clamp_min(1e-6)
            saving = per_head_qk * heads * (qk_width - self.geometry.head_dim)  # the trend of Q(h, q) - Q(h, Dh)
            qk = _valued(self._qk_saving(t, heads, qk_width), saving)
            attention, macro = attention + qk, macro + qk
        total = self.fixed + attention.sum() + ffn.sum()
        return ExpectedCost(macro=macro.sum(), micro=total - self.fixed - macro.sum(), total=total)

    # --- hard -------------------------------------------------------------------------------------------
    def block_ms(self, heads: torch.Tensor, widest: torch.Tensor, neurons: torch.Tensor,
                 widest_qk: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """Latency per block of the exported layout: `heads` kept, value (and q/k) widths padded from the widest
        kept one to a multiple of align (at most the head width), `neurons` kept (0: no FFN). `widest_qk` None:
        q/k at full width."""
        t = self._on(heads)
        width = emitted_width(widest, self.geometry.head_dim, self.align)
        cell = interp2(heads, width, t.heads, t.widths, t.attention)
        if widest_qk is not None and self.prices_qk:
            cell = cell + self._qk_saving(t, heads, emitted_width(widest_qk, self.geometry.head_dim, self.align))
        attention = torch.where(heads > 0, cell, 0.0)
        ffn = torch.where(neurons > 0, interp1(neurons, t.ffn_widths, t.ffn), 0.0)
        return attention + ffn

    def masks_ms(self, masks: Masks) -> torch.Tensor:
        """Latency of the network that 0/1 masks keep, as a tensor on their device (no host read-back)."""
        head = masks.head.double()
        widest = (masks.value.double() * head.unsqueeze(-1)).sum(-1).amax(-1)
        widest_qk = (masks.qk.double() * head.unsqueeze(-1)).sum(-1).amax(-1)
        neurons = masks.neuron.double().sum(-1) * masks.ffn.double()
        return self.fixed + self.block_ms(head.sum(-1), widest, neurons, widest_qk).sum()

    def structure_ms(self, structure: Structure) -> float:
        blocks = structure.blocks
        heads = torch.tensor([len(b.heads) for b in blocks], dtype=torch.float64)
        widest = torch.tensor([max((len(v) for v in b.value_dims), default=0) for b in blocks], dtype=torch.float64)
        dh = self.geometry.head_dim
        widest_qk = torch.tensor([dh if b.qk_dims is None else max((len(q) for q in b.qk_dims), default=0)
                                  for b in blocks], dtype=torch.float64)  # fmt: skip
        neurons = torch.tensor([len(b.neurons) if b.ffn else 0 for b in blocks], dtype=torch.float64)
        return self.fixed + float(self.block_ms(heads, widest, neurons, widest_qk).sum())

    def min_reachable_ms(self, floors: Floors, ffn_blocks_removable: bool = True, qk_removable: bool = False) -> float:
        """The fastest network the floors allow: k_min heads at their minimum value (and, where gated, q/k) width,
        every FFN removed (or each at its minimum neurons when FFN blocks cannot be removed)."""
        g = self.geometry
        depth = g.depth
        heads = torch.full((depth,), float(floors.heads(g.num_heads)), dtype=torch.float64)
        widest = torch.full((depth,), float(floors.value_dims(g.head_dim)), dtype=torch.float64)
        qk = torch.full((depth,), float(floors.qk_dims(g.head_dim) if qk_removable else g.head_dim),
                        dtype=torch.float64)  # fmt: skip
        neurons = torch.full((depth,), 0.0 if ffn_blocks_removable else float(floors.neurons(g.hidden)),
                             dtype=torch.float64)  # fmt: skip
        return self.fixed + float(self.block_ms(heads, widest, neurons, qk).sum())


def format_ms(ms: float) -> str:
    return f"{ms:.3f} ms" if ms < 10 else f"{ms:.2f} ms" if ms < 100 else f"{ms:.1f} ms"
