"""The runner contract every runtime implements: a context manager with input specs and infer(feeds) -> outputs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from hiap.base.errors import HiapError


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: name, shape (None for a dynamic axis) and numpy dtype name."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str

    def check(self, value: np.ndarray) -> None:
        """Refuse a feed whose rank, fixed dims or dtype differ from what the model declares."""
        if value.ndim != len(self.shape) or any(
            d is not None and d != v for d, v in zip(self.shape, value.shape, strict=True)
        ):
            want = "x".join("?" if d is None else str(d) for d in self.shape)
            got = "x".join(str(v) for v in value.shape)
            raise HiapError(f"Input '{self.name}' has shape {got} but the model expects {want}.")
        if value.dtype != np.dtype(self.dtype):
            raise HiapError(f"Input '{self.name}' is {value.dtype} but the model expects {self.dtype}.")


def check_feeds(inputs: list[TensorSpec], feeds: dict[str, np.ndarray]) -> None:
    """Refuse feeds that miss one of the model's inputs or do not match its spec (every runner checks the same)."""
    for spec in inputs:
        if spec.name not in feeds:
            raise HiapError(f"Missing input '{spec.name}' (the model takes {[s.name for s in inputs]}).")
        spec.check(feeds[spec.name])


class Runner(Protocol):
    """Open with `with`, then call infer as often as needed; describe() goes into every report."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    metadata: dict[str, str]

    def __enter__(self) -> Runner: ...

    def __exit__(self, *exc: object) -> None: ...

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def describe(self) -> dict[str, Any]: ...


def batch_of(spec: TensorSpec, requested: int) -> int:
    """The batch a run uses: the model's fixed batch, or the requested one when the axis is dynamic."""
    fixed = spec.shape[0] if spec.shape else None
    if fixed is not None and requested != fixed:
        raise HiapError(
            f"The model's batch is fixed at {fixed}; the device profile asks for {requested} "
            "(export with --dynamic-batch to choose the batch at run time)."
        )
    return fixed or requested
