"""Gumbel-Sigmoid (binary Concrete) gates, the export rule and the temperature schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# u is clamped away from 0 and 1 so the logistic noise stays finite in float32.
_EPS = 1e-6


def logistic_noise(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Logistic noise eps = log(u) - log(1 - u), u ~ U(0, 1), drawn on the CPU from `generator`.

    Drawing on the CPU from an explicitly seeded generator makes the sample a function of (seed, step) only,
    the same on every device and every rank.
    """
    u = torch.rand(shape, generator=generator).clamp_(_EPS, 1.0 - _EPS)
    return torch.log(u) - torch.log1p(-u)


def gumbel_sigmoid(
    logits: torch.Tensor, tau: float, noise: torch.Tensor | None = None, hard: bool = True
) -> torch.Tensor:
    """Sample z = sigmoid((a + eps) / tau); with `hard`, forward the 0/1 value and backpropagate the soft one.

    The hard sample is 1 exactly when (a + eps) > 0, so its keep probability is sigmoid(a) whatever tau is;
    tau only shapes the straight-through gradient (and the soft sample).
    """
    # non_blocking: a blocking host-to-device copy would synchronise the stream once per gate tensor and step.
    y = logits if noise is None else logits + noise.to(logits.device, logits.dtype, non_blocking=True)
    soft = torch.sigmoid(y / tau)
    if not hard:
        return soft
    return _StraightThrough.apply(soft, (y > 0).to(soft.dtype))


class _StraightThrough(torch.autograd.Function):
    """Forward the exact 0/1 sample, backpropagate into the soft one (hard + soft - soft.detach() is not exact
    in floating point: 1 + s - s can be 0.99999994)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, soft: torch.Tensor, hard: torch.Tensor) -> torch.Tensor:
        return hard

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def keep_probability(logits: torch.Tensor) -> torch.Tensor:
    """P(hard sample keeps the gate) = sigmoid(a); what the expected-cost model charges."""
    return torch.sigmoid(logits)


def export_rule(logits: torch.Tensor) -> torch.Tensor:
    """The deterministic rule used in eval and at export: keep a gate iff its logit is > 0."""
    return logits > 0


@dataclass(frozen=True)
class TemperatureSchedule:
    """Exponential anneal tau(t) = start * (end / start) ** (t / total_steps), per optimizer step (paper: 2 -> 0.5)."""

    start: float = 2.0
    end: float = 0.5
    total_steps: int = 1

    def __call__(self, step: int) -> float:
        frac = min(max(step, 0), self.total_steps) / max(self.total_steps, 1)
        return self.start * math.exp(frac * math.log(self.end / self.start))
