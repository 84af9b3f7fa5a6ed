"""Host detection: what this machine is (Jetson, Raspberry Pi, aarch64, x86-64, emulated) and whether a profile fits."""

from __future__ import annotations

import os
import platform
import re
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hiap.base.cpu import cpu_flags, cpu_model, read_cpuinfo, read_system_file
from hiap.devices.profile import DeviceProfile

DT_MODEL = Path("/proc/device-tree/model")
TEGRA_RELEASE = Path("/etc/nv_tegra_release")


@dataclass
class Host:
    """Facts read off the machine; `notes` explains anything that could not be read."""

    arch: str
    board: str  # "jetson", "raspberry-pi", "nvidia-gpu" or "generic"
    model: str = ""
    l4t: str = ""
    cpu: str = ""
    cpu_flags: list[str] = field(default_factory=list)  # which of hiap.base.cpu.CPU_FLAGS the CPU reports
    emulated: str = ""  # non-empty when the architecture is emulated (qemu-user): latency is meaningless
    nvidia_gpu: bool = False
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        what = self.model or {"x86_64": "x86-64 machine", "aarch64": "aarch64 machine"}.get(self.arch, self.arch)
        extra = f", L4T R{self.l4t}" if self.l4t else ""
        return f"{what} ({self.arch}{extra}{', emulated by ' + self.emulated if self.emulated else ''})"


def detect_host(root: Path = Path("/")) -> Host:
    """Read the machine; `root` lets tests point at a fake filesystem."""
    arch = platform.machine().lower()
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(arch, arch)
    dt_model = read_system_file(root / DT_MODEL.relative_to("/"))
    tegra = read_system_file(root / TEGRA_RELEASE.relative_to("/"))
    cpuinfo = read_cpuinfo(root)
    host = Host(arch=arch, board="generic", model=dt_model, cpu=cpu_model(cpuinfo), cpu_flags=cpu_flags(cpuinfo))
    if tegra or "jetson" in dt_model.lower() or "nvidia" in dt_model.lower():
        host.board = "jetson"
        # "# R36 (release), REVISION: 4.3, ..." is L4T 36.4.3 (JetPack 6.2); JetPack 6.0 (36.3) ships TensorRT 8.6
        # and 6.1/6.2 (36.4) TensorRT 10.3, so the profile match needs the revision, not only R36.
        match = re.search(r"R(\d+)(?:[^\n]*?REVISION:\s*([\d.]+))?", tegra)
        host.l4t = ".".join(p for p in match.groups() if p) if match else ""
        if not tegra:
            host.notes.append(f"{TEGRA_RELEASE} not readable: L4T/JetPack release unknown")
    elif "raspberry pi" in dt_model.lower():
        host.board = "raspberry-pi"
    elif shutil.which("nvidia-smi") or Path(root / "proc/driver/nvidia/version").exists():
        host.board = "nvidia-gpu"
        host.nvidia_gpu = True
    # qemu-user passes the host's /proc/cpuinfo through, so an aarch64 process that sees x86 vendor lines is
    # emulated; the ARM check also says so explicitly through HIAP_EMULATION.
    if os.environ.get("HIAP_EMULATION"):
        host.emulated = os.environ["HIAP_EMULATION"]
    elif arch == "aarch64" and re.search(r"^vendor_id\s*:\s*(GenuineIntel|AuthenticAMD)", cpuinfo, flags=re.M):
        host.emulated = "qemu-user (x86 host)"
    return host


def l4t_matches(host: str, wanted: str) -> bool:
    """A host release ('36.4.3') is within a profile's ('36.4': any 36.4.x). A host whose revision is unknown
    ('36') matches on the major release alone."""
    if "." not in host:
        return host == wanted.split(".")[0]
    return host == wanted or host.startswith(wanted + ".")


def profile_mismatch(profile: DeviceProfile, host: Host) -> str:
    """Why this host is not the profile's device, or '' when it is."""
    want = profile.host
    if host.emulated:  # first: whatever else matches, an emulated CPU's timings say nothing about the device
        return f"this {host.arch} host is emulated ({host.emulated}): its timings are not the device's"
    if want.arch != "any" and want.arch != host.arch:
        return f"profile '{profile.name}' is for {want.arch} but this host is {host.arch}"
    board = want.board
    if board == "nvidia-gpu" and not (host.nvidia_gpu or host.board == "jetson"):
        return f"profile '{profile.name}' needs an NVIDIA GPU and none was found (no nvidia-smi)"
    if board in ("jetson", "raspberry-pi") and host.board != board:
        return f"profile '{profile.name}' is for a {board} but this host is a {host.board} {host.arch} machine"
    contains = want.model_contains
    if contains and not any(c.lower() in host.model.lower() for c in contains):
        return f"profile '{profile.name}' is for a {' or '.join(contains)} but this board reports '{host.model}'"
    if want.l4t and host.l4t and not l4t_matches(host.l4t, want.l4t):
        return f"profile '{profile.name}' is for L4T R{want.l4t} but this Jetson runs R{host.l4t}"
    return ""


def guess_profile(host: Host, profiles: Iterable[DeviceProfile]) -> DeviceProfile | None:
    """The profile that matches this host, for 'bench on this machine'. Profiles are tried in the given order,
    except that fallback ones (`host.fallback: true`, such as the generic GPU box) come after every other."""
    ordered = sorted(profiles, key=lambda p: p.host.fallback)  # stable: the given order otherwise
    return next((p for p in ordered if not profile_mismatch(p, host)), None)


def power_state(host: Host) -> dict[str, str]:
    """What the measurement protocol asks to report: CPU governor, and on a Jetson the nvpmodel mode and clocks."""
    import subprocess

    governor = read_system_file(Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"))
    state = {"governor": governor or "unreadable"}
    if host.board == "jetson":
        for key, cmd in (("power_mode", ["nvpmodel", "-q"]), ("jetson_clocks", ["jetson_clocks", "--show"])):
            if shutil.which(cmd[0]) is None:
                state[key] = f"{cmd[0]} not found"
                continue
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
                state[key] = " ".join(done.stdout.split())[:300] or done.stderr.strip()[:300]
            except (OSError, subprocess.TimeoutExpired) as exc:
                state[key] = f"unreadable ({exc})"
    return state
