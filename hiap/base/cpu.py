"""The CPU a figure was measured on: its model name and the features that decide which kernels (and so which speeds
and precisions) a runtime gets, read from /proc/cpuinfo."""

from __future__ import annotations

import platform
import re
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
# CPU features that decide which kernels, and so which speeds and precisions, a runtime gets (x86, then ARM).
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_int8", "amx_bf16", "amx_fp16",
             "asimddp", "fphp", "asimdhp", "bf16", "i8mm")  # fmt: skip


def read_system_file(path: Path) -> str:
    """A /proc, /sys or /etc file's text (NULs dropped, stripped); '' where it cannot be read."""
    try:
        return path.read_text(errors="replace").replace("\x00", "").strip()
    except OSError:
        return ""


def read_cpuinfo(root: Path = Path("/")) -> str:
    """/proc/cpuinfo under `root` (tests point it at a fake filesystem); '' where it cannot be read."""
    return read_system_file(root / CPUINFO.relative_to("/"))


def cpu_model(cpuinfo: str) -> str:
    """The CPU's model name (x86 'model name', ARM 'Hardware' or 'Model'), else what the platform says."""
    names = re.findall(r"^(?:model name|Hardware|Model)\s*:\s*(.+)$", cpuinfo, flags=re.M)
    return names[0].strip() if names else platform.processor()


def cpu_flags(cpuinfo: str) -> list[str]:
    """Which of CPU_FLAGS the CPU reports, in CPU_FLAGS' order."""
    features = re.search(r"^(?:flags|Features)\s*:\s*(.+)$", cpuinfo, flags=re.M)
    reported = set(features.group(1).split()) if features else set()
    return [f for f in CPU_FLAGS if f in reported]
