"""The one error family the CLI reports as a one-line message (anything else is a bug and propagates)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class HiapError(Exception):
    """A user-facing failure: the message says what failed, what was expected and how to fix it."""


class UnsupportedModelError(HiapError):
    """The model is not a ViT that hiap can gate and export."""


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """Return ' Did you mean 'x'?' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""
