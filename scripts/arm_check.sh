#!/usr/bin/env bash
# Run hiap's light (device) install and a bench of an exported model inside an
# emulated arm64 Debian bookworm root (qemu-user + binfmt_misc + chroot).
#
# Why: the device path (numpy + onnxruntime, no torch) must install from the
# aarch64 wheels and produce the same logits on an ARM CPU as on the host.
# A chroot under qemu-user catches wrong wheels, missing base deps, a torch
# import sneaking into the device path, and numeric drift between x86 and ARM
# kernels of onnxruntime. Latency measured here is EMULATED and means nothing
# for the real device; HIAP_EMULATION=qemu-user tells the tool to say so.
#
# An INT8 export (`hiap export --precision int8`) is checked on the whole built-in validation split, and its
# top-1 there must equal the x86 top-1 the export recorded (export_report.json, int8_check): the aarch64
# onnxruntime's integer kernels must classify every image as x86's do, or this check fails (exit 5).
#
# Usage: scripts/arm_check.sh EXPORT_DIR [OUT_DIR]
#   EXPORT_DIR  holds model.onnx and golden.npz (the output of `hiap export`)
#   OUT_DIR     where results, environment.txt and arm_check.log go
#               (default ./arm-check-out)
# Env:
#   HIAP_ARM_ROOT    the arm64 root (default /var/cache/hiap/arm64-root); built
#                    once, then reused while its marker file is present
#   HIAP_ARM_CMD     command run in the root, in /opt/hiap-out, venv on PATH
#   HIAP_ARM_MIRROR  Debian mirror (default: the first reachable one apt uses)
#   HIAP_QEMU_CPU    emulated CPU (default cortex-a72)
# Needs root (debootstrap, chroot, mounts, binfmt registration).
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0" >&2; exit 2; }
[[ $# -ge 1 && $# -le 2 ]] || usage
[[ ${EUID} -eq 0 ]] || { echo "arm_check: must run as root (chroot, mounts, binfmt)" >&2; exit 2; }

EXPORT_DIR=$(realpath -e "$1")
for f in model.onnx golden.npz; do
  [[ -f "$EXPORT_DIR/$f" ]] || { echo "arm_check: $EXPORT_DIR has no $f" >&2; exit 2; }
done
mkdir -p "${2:-./arm-check-out}"
OUT_DIR=$(realpath -e "${2:-./arm-check-out}")
REPO=$(cd "$(dirname "$0")/.." && pwd)
ROOT=${HIAP_ARM_ROOT:-/var/cache/hiap/arm64-root}
ROOT=$(realpath -m "$ROOT")
[[ "$ROOT" != "/" ]] || { echo "arm_check: HIAP_ARM_ROOT must not be /" >&2; exit 2; }
SUITE=bookworm
MARKER="$ROOT/.hiap-arm-root"           # written last: its presence means the root is complete
VENV=/opt/hiap-venv
# cortex-a72 = Raspberry Pi 4 class core: no LSE atomics / dotprod, so onnxruntime picks the
# plain NEON kernels. (qemu 7.2 also knows cortex-a76, the Raspberry Pi 5 core.)
QEMU_CPU=${HIAP_QEMU_CPU:-cortex-a72}
export QEMU_CPU                         # read by qemu-user for every arm64 exec, chroot included
# Latency under emulation means nothing, so few timed calls; fidelity (golden) and accuracy (300 built-in images)
# are exact and are the point. On a 300-image subset the accuracy drop against the training run cannot be judged, so
# the bench ends with exit 4 ("not measured: accuracy"), which is the expected status of this check.
DEFAULT_CMD='python -m hiap bench /opt/hiap-export/model.onnx --device rpi5 --allow-mismatch --golden /opt/hiap-export/golden.npz --data builtin --limit 300 --iterations 20 --warmup 2 --min-seconds 0 --json /opt/hiap-out/bench.json'
PRECISION=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1])).get("precision", "fp32"))' \
  "$EXPORT_DIR/export_report.json" 2>/dev/null || echo fp32)
if [[ "$PRECISION" == int8* ]]; then  # the whole split, to compare its top-1 with x86's image for image
  DEFAULT_CMD=${DEFAULT_CMD/ --limit 300/}
fi
ARM_CMD=${HIAP_ARM_CMD:-$DEFAULT_CMD}

# Full log: everything below also goes to OUT_DIR/arm_check.log.
: >"$OUT_DIR/arm_check.log"
exec > >(tee -a "$OUT_DIR/arm_check.log") 2>&1

# ---- phase timing -------------------------------------------------------------------------
PHASES=()
phase_t0=0
phase_name=""
phase() {  # phase NAME: close the running phase (if any), start NAME
  local now; now=$(date +%s.%N)
  if [[ -n "$phase_name" ]]; then
    local d; d=$(awk -v a="$phase_t0" -v b="$now" 'BEGIN{printf "%.1f", b-a}')
    PHASES+=("$(printf '%-14s %7ss' "$phase_name" "$d")")
    echo "== [$phase_name] done in ${d}s"
  fi
  phase_name=${1:-}; phase_t0=$now
  [[ -z "$phase_name" ]] || echo "== [$phase_name] $(date -u +%H:%M:%S)"
}
print_timings() { echo "== phase timings:"; local p; for p in "${PHASES[@]}"; do echo "   $p"; done; }

# ---- mounts and cleanup -------------------------------------------------------------------
mounts_under_root() {  # mount points at or below $ROOT, deepest first
  awk -v r="$ROOT" 'index($2, r "/") == 1 {print $2}' /proc/self/mounts | sort -r
}
unmount_all() {
  local m
  for m in $(mounts_under_root); do
    umount "$m" 2>/dev/null || umount -l "$m" || echo "arm_check: could not unmount $m" >&2
  done
}
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  local rc=$?
  set +e
  unmount_all
  if [[ $rc -ne 0 ]]; then
    [[ -z "$phase_name" ]] || echo "== [$phase_name] FAILED (exit $rc)"
    ((${#PHASES[@]})) && print_timings
  fi
  exit "$rc"
}
trap cleanup EXIT

# What python/pip need in the chroot: /proc and /dev (+pts, shm). NOT /sys: with the host's
# (x86) sysfs visible, onnxruntime's cpuinfo probe segfaults under qemu-user at import; without
# it, cpuinfo only warns ("failed to parse the list of possible processors") and goes on.
mount_root() {
  mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
  local d
  for d in dev dev/pts dev/shm; do
    [[ -d /$d ]] || continue
    mkdir -p "$ROOT/$d"
    mountpoint -q "$ROOT/$d" || mount --bind "/$d" "$ROOT/$d"
  done
}

# Run a bash command line in the root with a clean environment. QEMU_CPU must be in the
# environment of every arm64 process (qemu-user reads it at each exec), so env -i keeps it.
in_root() {
  chroot "$ROOT" /usr/bin/env -i \
    PATH="$VENV/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    HOME=/root LANG=C.UTF-8 TERM=dumb DEBIAN_FRONTEND=noninteractive \
    QEMU_CPU="$QEMU_CPU" HIAP_EMULATION=qemu-user \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off \
    /bin/bash -c "$1"
}

# ---- 1. host setup ------------------------------------------------------------------------
phase host-setup
mkdir -p "$(dirname "$ROOT")"
exec 9>"$ROOT.lock"   # one run at a time per root: they share its mounts
flock -n 9 || { echo "arm_check: another arm_check is using $ROOT" >&2; exit 1; }

need=()
for p in debootstrap qemu-user-static binfmt-support; do
  [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" == "install ok installed" ]] || need+=("$p")
done
if ((${#need[@]})); then
  echo "installing host packages: ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y "${need[@]}" \
    || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "${need[@]}"; }
fi

# binfmt: the F (fix-binary) flag makes the kernel open qemu at registration time, so the
# interpreter works inside the chroot without being on its path. update-binfmts (which mounts
# binfmt_misc itself) is the normal way; in a container without systemd it may fail, so fall
# back to mounting binfmt_misc and writing the registration by hand.
BINFMT=/proc/sys/fs/binfmt_misc
binfmt_ok() { [[ -f $BINFMT/qemu-aarch64 && "$(head -1 "$BINFMT/qemu-aarch64")" == enabled ]]; }
if ! binfmt_ok; then
  update-binfmts --enable qemu-aarch64 || echo "update-binfmts failed; registering by hand"
fi
if ! binfmt_ok; then
  mountpoint -q "$BINFMT" || mount -t binfmt_misc binfmt_misc "$BINFMT"
  [[ -e $BINFMT/qemu-aarch64 ]] && echo 1 >"$BINFMT/qemu-aarch64"   # present but disabled
  binfmt_ok || printf '%s' ':qemu-aarch64:M::\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:/usr/bin/qemu-aarch64-static:FP' \
    >"$BINFMT/register"
fi
binfmt_ok || { echo "arm_check: could not register the qemu-aarch64 binfmt handler" >&2; exit 1; }
arch-test arm64 # proves an arm64 binary actually runs here
sed -n '1,2p' "$BINFMT/qemu-aarch64"

# ---- 2. arm64 root ------------------------------------------------------------------------
# Mirror: the one apt already uses (reachable by construction), checked to carry arm64.
find_mirror() {
  local u rel
  for u in ${HIAP_ARM_MIRROR:-} \
           $(sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/*.sources 2>/dev/null) \
           $(awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; break}}' \
               /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null) \
           http://deb.debian.org/debian; do
    u=${u%/}
    rel=$(curl -fsS --max-time 20 "$u/dists/$SUITE/Release" 2>/dev/null) || continue
    if grep -q '^Architectures:.*\barm64\b' <<<"$rel"; then echo "$u"; return 0; fi
  done
  return 1
}

phase root
if [[ -f "$MARKER" ]]; then
  echo "reusing arm64 root $ROOT:"; sed 's/^/   /' "$MARKER"
  MIRROR=$(sed -n 's/^mirror=//p' "$MARKER")
else
  MIRROR=$(find_mirror) || { echo "arm_check: no reachable Debian mirror with $SUITE/arm64" >&2; exit 1; }
  echo "building arm64 root in $ROOT from $MIRROR"
  # A half-built root (no marker) is thrown away. Never rm across a mount (a bound /dev).
  unmount_all
  [[ -z "$(mounts_under_root)" ]] || { echo "arm_check: mounts left under $ROOT" >&2; exit 1; }
  [[ ! -e "$ROOT" ]] || rm -rf --one-file-system "$ROOT"
  mkdir -p "$ROOT"
  # Two stages: the first only downloads and unpacks (host tools), the second runs the
  # arm64 maintainer scripts through qemu. minbase keeps it small (no init, no apt extras).
  debootstrap --arch=arm64 --foreign --variant=minbase \
    --include=python3,python3-venv,python3-pip,ca-certificates \
    "$SUITE" "$ROOT" "$MIRROR"
  # Also copy qemu in: not needed with the F flag, but keeps the root usable if the handler
  # is later registered without it (e.g. by systemd-binfmt with a different config).
  install -m 755 /usr/bin/qemu-aarch64-static "$ROOT/usr/bin/qemu-aarch64-static"
  chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin QEMU_CPU="$QEMU_CPU" \
    /debootstrap/debootstrap --second-stage
  unmount_all   # the second stage may leave its own /proc, /sys mounts behind
  chroot "$ROOT" /usr/bin/apt-get clean
  {
    echo "suite=$SUITE"
    echo "mirror=$MIRROR"
    echo "built=$(date -u +%FT%TZ)"
    echo "debian_version=$(cat "$ROOT/etc/debian_version")"
  } >"$MARKER"
fi

# Network inside: DNS and /etc/hosts from the host (refreshed every run, the host's may
# change), and the host's local CAs: if egress goes through a TLS-intercepting proxy, pip
# in the root needs that CA too. update-ca-certificates only when the set changed.
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
cp -L /etc/hosts "$ROOT/etc/hosts"
mkdir -p "$ROOT/usr/local/share/ca-certificates"
if ! diff -qr /usr/local/share/ca-certificates "$ROOT/usr/local/share/ca-certificates" >/dev/null 2>&1; then
  rm -rf "$ROOT/usr/local/share/ca-certificates"
  cp -a /usr/local/share/ca-certificates "$ROOT/usr/local/share/ca-certificates" 2>/dev/null \
    || mkdir -p "$ROOT/usr/local/share/ca-certificates"
  chroot "$ROOT" /usr/sbin/update-ca-certificates --fresh >/dev/null
  echo "root CA bundle refreshed from the host's /usr/local/share/ca-certificates"
fi
mount_root

# ---- 3. venv with the base deps -----------------------------------------------------------
# Base deps and build backend read from pyproject.toml (so this stays in sync with it);
# the extras (train: torch..., dev) are never installed. The venv is cached and rebuilt
# only when that list changes.
phase venv
mapfile -t SPECS < <(python3 - "$REPO/pyproject.toml" <<'EOF' 2>/dev/null || printf '%s\n' numpy onnxruntime typer rich pyyaml setuptools wheel
import sys, tomllib
d = tomllib.load(open(sys.argv[1], "rb"))
for s in d["project"]["dependencies"] + d["build-system"]["requires"] + ["wheel"]:
    print(s)
EOF
)
want="$(printf '%s\n' "${SPECS[@]}")"
have="$(cat "$ROOT$VENV/.hiap-deps" 2>/dev/null || true)"
if [[ "$want" != "$have" || ! -e "$ROOT$VENV/pyvenv.cfg" ]]; then
  echo "creating $VENV with: ${SPECS[*]}"
  rm -rf "${ROOT:?}$VENV"
  in_root "python3 -m venv $VENV && pip install $(printf '%q ' "${SPECS[@]}")"
  printf '%s\n' "$want" >"$ROOT$VENV/.hiap-deps"
else
  echo "reusing $VENV (deps unchanged)"
fi

# ---- 4. the project itself ----------------------------------------------------------------
# Fresh copy of the working tree each run (minus VCS, venvs, runs and other bulk), installed
# with --no-deps and without build isolation: the backend is already in the venv, so the
# install needs no network and cannot drag an extra in.
phase install
rm -rf "${ROOT:?}/opt/hiap-src"
mkdir -p "$ROOT/opt/hiap-src"
tar -C "$REPO" -cf - \
  --exclude=./.git --exclude='./.venv*' --exclude=./runs --exclude=./benchmarks/results \
  --exclude=./arm-check-out --exclude=./build --exclude=./dist --exclude='*.egg-info' \
  --exclude=__pycache__ --exclude=.pytest_cache --exclude=.ruff_cache --exclude=.hypothesis \
  --exclude=.mypy_cache --exclude=./.whl . | tar -C "$ROOT/opt/hiap-src" -xf -
in_root "pip install --no-deps --no-build-isolation --force-reinstall /opt/hiap-src && pip check"
# The device install must not contain torch (or anything else from the train extra), and its parts must live under
# hiap only: a top-level export/runtime/devices would collide with a user's own packages of those names.
in_root "cd / && python - <<'EOF'
import importlib.util, sys
bad = [m for m in ('torch', 'torchvision', 'timm', 'onnx') if importlib.util.find_spec(m)]
stray = [m for m in ('export', 'runtime', 'devices') if importlib.util.find_spec(m)]
missing = [m for m in ('hiap.runtime.harness', 'hiap.devices.bench') if not importlib.util.find_spec(m)]
sys.exit(f'train-only packages in the device venv: {bad}' if bad else
         f'top-level packages outside hiap in the device venv: {stray}' if stray else
         f'missing from the device install: {missing}' if missing else 0)
EOF"

# ---- 5. run -------------------------------------------------------------------------------
phase run
rm -rf "${ROOT:?}/opt/hiap-export" "${ROOT:?}/opt/hiap-out"
cp -a "$EXPORT_DIR" "$ROOT/opt/hiap-export"
mkdir -p "$ROOT/opt/hiap-out"
in_root 'python -c "import platform, onnxruntime, numpy; print(platform.machine(), onnxruntime.__version__, numpy.__version__)"'
echo "+ $ARM_CMD"
set +e
in_root "cd /opt/hiap-out && $ARM_CMD"
cmd_rc=$?
set -e
echo "command exit status: $cmd_rc"

# ---- 6. collect ---------------------------------------------------------------------------
phase collect
cp -a "$ROOT/opt/hiap-out/." "$OUT_DIR/"
root_versions=$(in_root 'python - <<EOF
import platform, numpy, onnxruntime, ctypes
from importlib.metadata import version
hwcap = ctypes.CDLL(None).getauxval
hwcap.restype = ctypes.c_ulong
print("root python:", platform.python_version())
print("root numpy:", numpy.__version__)
print("root onnxruntime:", onnxruntime.__version__, onnxruntime.get_available_providers())
print("root hiap:", version("hiap"))
print("root AT_HWCAP: %#x (cortex-a72 has no atomics bit 0x100)" % hwcap(16))
EOF')
{
  echo "date: $(date -u +%FT%TZ)"
  echo "host uname: $(uname -a)"
  echo "root uname -m: $(in_root 'uname -m')"
  echo "qemu: $(qemu-aarch64-static --version | sed -n 1p)"
  echo "QEMU_CPU: $QEMU_CPU"
  echo "HIAP_EMULATION: qemu-user (latency is emulated, not the device's)"
  echo "root debian: $(cat "$ROOT/etc/debian_version") ($SUITE, arm64, from $MIRROR)"
  echo "root path: $ROOT"
  echo "$root_versions"
  echo "export dir: $EXPORT_DIR"
  echo "command: $ARM_CMD"
  echo "command exit status: $cmd_rc"
} >"$OUT_DIR/environment.txt"
cat "$OUT_DIR/environment.txt"
if [[ "$PRECISION" == int8* && -f "$OUT_DIR/bench.json" ]]; then
  phase int8-vs-x86
  python3 - "$EXPORT_DIR/export_report.json" "$OUT_DIR/bench.json" <<'EOF' | tee "$OUT_DIR/int8_vs_x86.txt" || cmd_rc=5
import json, sys
x86 = json.load(open(sys.argv[1])).get("int8_check", {})
arm = json.load(open(sys.argv[2]))["accuracy"].get("model", {})
line = (f"{x86.get('source')}: x86 top-1 {x86.get('int8_top1')} % of {x86.get('images')} images, "
        f"arm64 {arm.get('top1')} % of {arm.get('images')}")
same = x86.get("images") == arm.get("images") and x86.get("int8_top1") == arm.get("top1")
print(("same top-1: " if same else "DIFFERENT top-1: ") + line)
sys.exit(0 if same else 1)
EOF
fi
phase
print_timings
echo "results in $OUT_DIR"
exit "$cmd_rc"
