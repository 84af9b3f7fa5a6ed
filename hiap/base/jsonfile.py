"""Reading every JSON and YAML text hiap takes from a user or a device (plans, latency tables, profiles, configs,
run records, ONNX and checkpoint metadata) within limits, with one-line errors; torch-free, so the device install
uses it too.

The limits are far above anything hiap writes and far below what takes a process down: a size cap before parsing,
a nesting depth (the parsers recurse, so a few thousand brackets end in a RecursionError), numbers finite unless the
caller allows NaN (hiap's own run records may hold one), and no YAML aliases (a few lines of nested aliases expand to
gigabytes, and hiap's configs and profiles have no use for them).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from hiap.base.errors import HiapError

MAX_BYTES = 64 * 1024 * 1024  # a latency table of a large grid is a few MB; configs and profiles a few KB
MAX_DEPTH = 64  # hiap's own files nest at most 6 levels


def _depth(value: Any) -> int:
    """Deepest nesting of lists and dicts, walked without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in item)
    return deepest


def _check_depth(value: Any, what: str) -> Any:
    if _depth(value) > MAX_DEPTH:
        raise HiapError(f"{what} nests deeper than {MAX_DEPTH} levels: not a file hiap wrote or reads.")
    return value


def _no_constant(name: str) -> float:
    raise ValueError(f"non-finite number {name}")


def parse_json(text: str | bytes, what: str, allow_nan: bool = False) -> Any:
    """The JSON value in `text`, or a one-line HiapError naming `what` (e.g. "Plan 'x/plan.json'")."""
    if len(text) > MAX_BYTES:
        raise HiapError(f"{what} is {len(text) / 2**20:.0f} MiB, over the {MAX_BYTES // 2**20} MiB hiap reads.")
    try:
        value = json.loads(text) if allow_nan else json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise HiapError(f"{what} nests deeper than {MAX_DEPTH} levels: not a file hiap wrote or reads.") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError, as are 5,000-digit numbers
        raise HiapError(f"{what} is not valid JSON ({_first_line(exc)}).") from None
    return _check_depth(value, what)


class _NoAliasLoader(yaml.SafeLoader):
    """yaml.SafeLoader without anchors and aliases (a 'billion laughs' document expands to gigabytes)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise HiapError(f"uses a YAML alias (*name) at line {mark.line + 1}; write the value out instead")
        return super().compose_node(parent, index)


def parse_yaml(text: str, what: str) -> Any:
    """The YAML value in `text` (safe types only, no aliases), or a one-line HiapError naming `what`."""
    if len(text) > MAX_BYTES:
        raise HiapError(f"{what} is {len(text) / 2**20:.0f} MiB, over the {MAX_BYTES // 2**20} MiB hiap reads.")
    try:
        loader = _NoAliasLoader(text)  # what yaml.safe_load does, with the alias refusal
        try:
            value = loader.get_single_data()
        finally:
            loader.dispose()
    except HiapError as exc:
        raise HiapError(f"{what} {exc}.") from None
    except RecursionError:
        raise HiapError(f"{what} nests deeper than {MAX_DEPTH} levels: not a file hiap wrote or reads.") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or _first_line(exc)
        raise HiapError(f"{what} is not valid YAML{where} ({problem}).") from None
    return _check_depth(value, what)


def read_text(path: Path, what: str, missing: str = "") -> str:
    """The UTF-8 text of a regular file of at most MAX_BYTES (a FIFO or device would block or never end)."""
    if not path.exists():
        raise HiapError(f"{what} '{path}' does not exist{': ' + missing if missing else ''}.")
    if not path.is_file():
        raise HiapError(f"{what} '{path}' is not a regular file.")
    try:
        if path.stat().st_size > MAX_BYTES:
            raise HiapError(f"{what} '{path}' is over the {MAX_BYTES // 2**20} MiB hiap reads.")
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise HiapError(f"{what} '{path}' is not UTF-8 text.") from None
    except OSError as exc:
        raise HiapError(f"Cannot read {what.lower()} '{path}': {exc.strerror or exc}.") from None


def read_json_object(path: Path, what: str, missing: str = "", allow_nan: bool = False) -> dict[str, Any]:
    """The JSON object in `path`. `what` names the file in errors ("Plan", "Latency table"); `missing` says how to
    make the file when it does not exist."""
    body = parse_json(read_text(path, what, missing), f"{what} '{path}'", allow_nan=allow_nan)
    if not isinstance(body, dict):
        raise HiapError(f"{what} '{path}' must hold a JSON object, not {type(body).__name__}.")
    return body


def _first_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."
