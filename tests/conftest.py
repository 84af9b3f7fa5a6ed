"""Shared test setup: offline hub, small thread pool, and tiny timm ViTs built in-process."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a hub lookup would hang ~50 s before failing

import pytest


@pytest.fixture(autouse=True)
def _deterministic_torch() -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
