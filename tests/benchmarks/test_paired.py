"""The paired statistics of the plateau benchmark (benchmarks/paired.py) on vectors whose answers are known."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def load():
    spec = importlib.util.spec_from_file_location("paired", ROOT / "benchmarks" / "paired.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_difference_counts_only_disagreements_and_its_interval_is_the_paired_one() -> None:
    p = load()
    a = np.zeros(1000, dtype=bool)
    b = np.zeros(1000, dtype=bool)
    a[:600], b[:600] = True, True  # both right on 600
    a[600:640] = True  # only A on 40
    b[640:650] = True  # only B on 10
    r = p.paired(a, b)
    assert (r.images, r.only_a, r.only_b) == (1000, 40, 10)
    assert r.diff_pp == pytest.approx(3.0)
    se = math.sqrt((50 / 1000 - 0.03**2) / 1000)
    assert r.ci95_pp == pytest.approx((100 * (0.03 - 1.959964 * se), 100 * (0.03 + 1.959964 * se)), rel=1e-6)
    assert r.mcnemar_p == pytest.approx(2 * sum(math.comb(50, i) for i in range(11)) / 2**50)
    same = p.paired(a, a)
    assert same.diff_pp == 0.0 and same.ci95_pp == (0.0, 0.0) and same.mcnemar_p == 1.0
    assert np.array_equal(p.unpack(p.pack(a), 1000), a)
