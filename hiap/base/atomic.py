"""Atomic file writes (temporary file in the same folder, fsync, rename): a reader sees the old file or the whole
new one, never half of it. Torch-free, so the device install uses it too."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from hiap.base.errors import HiapError


def write_bytes_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):  # a read-only folder refuses the cleanup too: the first error is the one
            tmp.unlink(missing_ok=True)
        raise HiapError(f"Cannot write '{path}': {exc.strerror or exc}.") from None


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_json_atomic(path: Path, body: Any, indent: int = 2) -> None:
    write_text_atomic(path, json.dumps(body, indent=indent) + "\n")
