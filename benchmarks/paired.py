"""Paired comparison of two networks on the same test images: per-image disagreement, the difference of their top-1
with a 95 % confidence interval, and McNemar's exact test; per seed and pooled over seeds.

Two networks evaluated on the same 10,000 images are not independent samples: most images both get right or both
get wrong, and only the images where they disagree carry the difference. The interval below is the normal
approximation for a paired difference of proportions (each image contributes +1, -1 or 0), which is what a 0.5 pp
lead must clear.
"""

from __future__ import annotations

import base64
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

Z95 = 1.959963984540054  # the standard normal's two-sided 95 % quantile


def pack(correct: np.ndarray) -> str:
    """A per-image correctness vector (bool) as base64 bits, to keep in a results line (10,000 images: 1,668 chars)."""
    return base64.b64encode(np.packbits(np.asarray(correct, dtype=bool)).tobytes()).decode()


def unpack(text: str, images: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))[:images].astype(bool)


@dataclass(frozen=True)
class Paired:
    """A minus B on the same images (pp), with the images only A got right and only B got right."""

    images: int
    only_a: int
    only_b: int
    diff_pp: float
    ci95_pp: tuple[float, float]
    mcnemar_p: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired(a: np.ndarray, b: np.ndarray) -> Paired:
    """The paired statistics of correctness vectors `a` and `b` (the same images in the same order)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError(f"paired() needs two correctness vectors of one length, got {a.shape} and {b.shape}")
    n = len(a)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    d = (only_a - only_b) / n
    # Per image the difference is +1 (only A), -1 (only B) or 0: its variance is (only_a + only_b) / n - d^2.
    se = math.sqrt(max((only_a + only_b) / n - d * d, 0.0) / n)
    return Paired(images=n, only_a=only_a, only_b=only_b, diff_pp=100 * d,
                  ci95_pp=(100 * (d - Z95 * se), 100 * (d + Z95 * se)), mcnemar_p=mcnemar(only_a, only_b))  # fmt: skip


def mcnemar(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar p-value: under equal accuracy the discordant images split as a fair coin."""
    k, m = min(only_a, only_b), only_a + only_b
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, i) for i in range(k + 1)) / 2**m
    return min(1.0, 2 * tail)
