"""Training objective: task loss (CE or KD from the dense teacher), decoupled MAC penalties, feasibility floors."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hiap.cost import ExpectedCost
from hiap.gated import GatedViT


def task_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    label_smoothing: float = 0.0,
    teacher_logits: torch.Tensor | None = None,
    alpha: float = 0.7,
    temperature: float = 4.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Cross-entropy, or (1 - alpha) * CE + alpha * T^2 * KL(teacher || student) at temperature T (Hinton); the
    parts come back as detached tensors (reading them is the caller's choice: on a GPU it synchronises)."""
    ce = F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)
    if teacher_logits is None:
        return ce, {"ce": ce.detach()}
    t = temperature
    kl = F.kl_div(
        F.log_softmax(logits.float() / t, dim=-1),
        F.log_softmax(teacher_logits.float() / t, dim=-1),
        reduction="batchmean",
        log_target=True,
    )
    loss = (1.0 - alpha) * ce + alpha * t * t * kl
    return loss, {"ce": ce.detach(), "kd": kl.detach()}


def mac_penalty(
    cost: ExpectedCost, dense: float, lambda_macro: float, lambda_micro: float, scale: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """scale * (lambda_macro * E[macro cost] + lambda_micro * E[micro cost]) / dense cost (parts detached); the
    cost is MACs, or milliseconds under a latency budget."""
    macro = cost.macro / dense
    micro = cost.micro / dense
    loss = scale * (lambda_macro * macro + lambda_micro * micro)
    return loss, {"macro": macro.detach(), "micro": micro.detach()}


def feasibility_loss(model: GatedViT) -> torch.Tensor:
    """Soft floors on keep probabilities (paper: relu(k_min - sum_h g)^2, plus analogous micro floors).

    q/k, value and neuron floors are on the kept fraction and weighted by the probability that their macro gate is
    kept, so a head or FFN that is on its way out is not held back by its own floor.
    """
    g, fl = model.geometry, model.floors
    p = {k: torch.sigmoid(a) for k, a in model.gates.as_dict().items()}
    heads = F.relu(fl.heads(g.num_heads) - p["head"].sum(-1)).pow(2).sum()
    value_frac = fl.value_dims(g.head_dim) / g.head_dim
    values = (p["head"] * F.relu(value_frac - p["value"].mean(-1)).pow(2)).sum()
    neuron_frac = fl.neurons(g.hidden) / g.hidden
    neurons = (p["ffn"] * F.relu(neuron_frac - p["neuron"].mean(-1)).pow(2)).sum()
    qk = heads.new_zeros(())
    if model.qk_gated:
        qk_frac = fl.qk_dims(g.head_dim) / g.head_dim
        qk = (p["head"] * F.relu(qk_frac - p["qk"].mean(-1)).pow(2)).sum()
    return heads + values + neurons + qk


def _entropy(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-6, 1 - 1e-6)
    return -(p * p.log() + (1 - p) * (1 - p).log())


def polarization_loss(model: GatedViT) -> torch.Tensor:
    """Cost-weighted entropy of the keep probabilities, sum_i (c_i / dense) * H(sigmoid(a_i)).

    Its gradient -(c_i / dense) * a_i * sigmoid'(a_i) pushes each logit away from 0 on the side it is on, so
    gates that hover at the export threshold decide; weighting by unit cost makes an FFN or head gate (whose
    flip moves the hard MACs by percent) decide before a neuron does. It is switched on after the budget
    ramp, so that the expected cost the controller steers and the hard cost of the export rule converge.
    """
    g = model.geometry
    p = {k: torch.sigmoid(a) for k, a in model.gates.as_dict().items()}
    block_ffn = g.hidden * g.neuron_unit_macs
    head = g.head_unit_macs + g.head_dim * g.value_unit_macs
    loss = head * _entropy(p["head"]).sum() + block_ffn * _entropy(p["ffn"]).sum()
    loss = loss + g.value_unit_macs * _entropy(p["value"]).sum() + g.neuron_unit_macs * _entropy(p["neuron"]).sum()
    if model.qk_gated:
        loss = loss + g.qk_unit_macs * _entropy(p["qk"]).sum()
    return loss / g.dense_macs


def allocation_loss(model: GatedViT) -> torch.Tensor:
    """Spread of the blocks' expected kept fractions, sum_b (f_b - mean f)^2, f_b = E[MACs of block b] / its dense
    MACs (the fixed parts left out).

    Zero when every block keeps the same share of its MACs, as a uniform cut does; its weight (even_allocation)
    sets how far the search may move MACs between blocks. Off by default: learning that allocation is HiAP's
    point, and this prior measures what it is worth.
    """
    g = model.geometry
    p = model.keep_probabilities()
    head = p["head"].unsqueeze(-1)
    kept = g.qk_unit_macs * (head * p["qk"]).sum((1, 2)) + g.value_unit_macs * (head * p["value"]).sum((1, 2))
    kept = kept + g.neuron_unit_macs * p["ffn"] * p["neuron"].sum(-1)
    dense = g.num_heads * (g.head_unit_macs + g.head_dim * g.value_unit_macs) + g.hidden * g.neuron_unit_macs
    f = kept / dense
    return (f - f.mean()).pow(2).sum()
