"""Fault injection for the crash tests: HIAP_FAULT=POINT:N kills this process (SIGKILL) the N-th time POINT is hit.

Points: `step` (after an optimizer step), `metrics-written` (between an epoch's metrics line and its checkpoint),
`checkpoint-write` (checkpoint bytes on disk under the temporary name, not yet renamed). Unset, it costs one
environment lookup per call.
"""

from __future__ import annotations

import os
import signal

_hits: dict[str, int] = {}


def point(name: str) -> None:
    spec = os.environ.get("HIAP_FAULT")
    if not spec:
        return
    want, _, count = spec.partition(":")
    if want != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == (int(count) if count.isdigit() else 1):
        os.kill(os.getpid(), signal.SIGKILL)
