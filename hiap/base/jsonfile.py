"""Reading the JSON files hiap writes (plans, latency tables, probe sets, engine sidecars) with one-line errors for a
missing, unreadable or malformed file; torch-free, so the device install uses it too."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hiap.base.errors import HiapError


def read_json_object(path: Path, what: str, missing: str = "") -> dict[str, Any]:
    """The JSON object in `path`. `what` names the file in errors ("Plan", "Latency table"); `missing` says how to
    make the file when it does not exist."""
    if not path.is_file():
        raise HiapError(f"{what} '{path}' does not exist{': ' + missing if missing else ''}.")
    try:
        body = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HiapError(f"{what} '{path}' is not valid JSON ({exc}).") from None
    except OSError as exc:
        raise HiapError(f"Cannot read {what.lower()} '{path}': {exc.strerror or exc}.") from None
    if not isinstance(body, dict):
        raise HiapError(f"{what} '{path}' must hold a JSON object, not {type(body).__name__}.")
    return body
