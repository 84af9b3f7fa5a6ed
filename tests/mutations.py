"""Helpers shared by the bad-input suites: a JSON body with one value replaced, and a call that must either pass or
fail with a one-line HiapError."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hiap.base.errors import HiapError


def mutate(body: object, path: list, value: object) -> object:
    """`body` with the value at `path` replaced by `value` (each step picks a key or index modulo the size)."""
    if not path:
        return value
    if isinstance(body, dict) and body:
        key = sorted(body)[path[0] % len(body)]
        return body | {key: mutate(body[key], path[1:], value)}
    if isinstance(body, list) and body:
        i = path[0] % len(body)
        return [*body[:i], mutate(body[i], path[1:], value), *body[i + 1 :]]
    return value


def one_line_error(fn: Callable[..., Any], *args: object) -> str | None:
    """Run fn; return the HiapError text (asserting it is one line), or None when the input was acceptable."""
    try:
        fn(*args)
    except HiapError as exc:
        text = str(exc)
        assert "\n" not in text and text and len(text) < 600, text
        return text
    return None
