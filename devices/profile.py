"""Device profiles: one YAML file per device (runtime, precision, threads, budgets, software, protocol), validated."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

from hiap.base.errors import HiapError, did_you_mean
from hiap.base.jsonfile import parse_yaml, read_text
from hiap.base.precision import (
    BUDGET_FAMILIES,
    CPU_RUNTIMES,
    FP32,
    INT8,
    OPENVINO,
    ORT,
    PRECISION_NAMES,
    PROFILE_PRECISIONS,
    RUNTIME_SHORT_NAMES,
    precision_named,
)

SCHEMA_VERSION = 1


class Field(NamedTuple):
    """One profile key: its type, whether it is required (within its section, when the section is present), and
    the values it may take (empty: any value of the type)."""

    kind: type | tuple[type, ...]
    required: bool
    allowed: tuple[Any, ...] = ()


# The schema, per dotted key. Kept as data so the error for a bad file can name the key, and so the test that loads
# every profile also checks that nothing unknown slipped in (a typo would otherwise be ignored). A new architecture
# is a new allowed value here; a new runtime or precision is a row of hiap/base/precision.py's tables (and the code
# that builds its runner).
_NUM = (int, float)
SCHEMA: dict[str, Field] = {
    "schema_version": Field(int, True),
    "name": Field(str, True),
    "aliases": Field(list, False),
    "description": Field(str, True),
    # The target of `hiap export --format engine` when no --target is given (exactly one shipped profile).
    "default_engine_target": Field(bool, False),
    "host": Field(dict, True),
    "host.arch": Field(str, True, ("x86_64", "aarch64", "any")),
    "host.board": Field(str, False),
    "host.l4t": Field(str, False),
    "host.model_contains": Field(list, False),
    # A profile for any host of its kind (a generic GPU box): tried after every other profile when guessing the
    # host's, so a more specific one (the CPU profile on a GPU box, a Jetson's own) wins.
    "host.fallback": Field(bool, False),
    "runtime": Field(str, True, RUNTIME_SHORT_NAMES),
    "precision": Field(str, True, PROFILE_PRECISIONS),
    # The model-file precisions (the metadata `precision` hiap export writes) this device runs; default [fp32].
    "precisions": Field(list, False),
    "batch": Field(int, True),
    "ort": Field(dict, False),
    "ort.providers": Field(list, True),
    "ort.intra_op_threads": Field(int, True),
    "ort.inter_op_threads": Field(int, True),
    "ort.graph_optimization_level": Field(str, True, ("disable", "basic", "extended", "all")),
    # OpenVINO's CPU plugin (an optional runtime): threads and its performance hint.
    "openvino": Field(dict, False),
    "openvino.threads": Field(int, True),
    "openvino.hint": Field(str, False, ("LATENCY", "THROUGHPUT")),
    "trt": Field(dict, False),
    "trt.workspace_mb": Field(int, True),
    "trt.layernorm_fp32": Field(bool, True),
    "software": Field(dict, True),
    "software.onnxruntime": Field(str, False),
    "software.tensorrt": Field(str, False),
    "software.jetpack": Field(str, False),
    "software.cuda": Field(str, False),
    "software.max_opset": Field(int, True),
    "alignment": Field(dict, True),
    "alignment.recommended_align": Field(int, True),
    "alignment.note": Field(str, False),
    "budgets": Field(dict, True),
    "budgets.latency_p50_ms": Field(_NUM, True),
    "budgets.latency_p99_ms": Field(_NUM, True),
    "budgets.max_acc_drop": Field(_NUM, True),
    "budgets.fidelity_atol": Field(_NUM, True),
    "budgets.min_top1_agreement": Field(_NUM, True),
    # An INT8 file against its own golden logits: another runtime's or CPU's integer kernels round differently,
    # so these are looser than the float ones (required when `precisions` lists an INT8 precision).
    "budgets.int8_fidelity_atol": Field(_NUM, False),
    "budgets.int8_min_top1_agreement": Field(_NUM, False),
    # An FP32 file computed in bf16 or fp16 (OpenVINO's inference precision, `hiap bench --precision`) against the
    # FP32 golden logits: 8 or 11 bits of mantissa (required when `precisions` lists the precision).
    "budgets.bf16_fidelity_atol": Field(_NUM, False),
    "budgets.bf16_min_top1_agreement": Field(_NUM, False),
    "budgets.fp16_fidelity_atol": Field(_NUM, False),
    "budgets.fp16_min_top1_agreement": Field(_NUM, False),
    "protocol": Field(dict, True),
    "protocol.warmup": Field(int, True),
    "protocol.iterations": Field(int, True),
    "protocol.min_seconds": Field(_NUM, True),
    "protocol.power_mode": Field(str, False),
    "protocol.jetson_clocks": Field(bool, False),
    "protocol.governor": Field(str, False),
}


@dataclass(frozen=True)
class Budgets:
    latency_p50_ms: float
    latency_p99_ms: float
    max_acc_drop: float
    fidelity_atol: float
    min_top1_agreement: float
    int8_fidelity_atol: float | None = None
    int8_min_top1_agreement: float | None = None
    bf16_fidelity_atol: float | None = None
    bf16_min_top1_agreement: float | None = None
    fp16_fidelity_atol: float | None = None
    fp16_min_top1_agreement: float | None = None

    def fidelity_limits(self, precision: str) -> tuple[float, float]:
        """(atol, min top-1 agreement) for a model file of `precision`."""
        entry = precision_named(precision)
        family = entry.budgets if entry is not None else None
        atol = getattr(self, f"{family}_fidelity_atol", None) if family is not None else None
        if atol is not None:
            return atol, float(getattr(self, f"{family}_min_top1_agreement", None) or 0.0)
        return self.fidelity_atol, self.min_top1_agreement


@dataclass(frozen=True)
class HostRule:
    """Which machines the profile is for (see devices/host.py::profile_mismatch)."""

    arch: str  # "x86_64", "aarch64" or "any"
    board: str = ""  # "jetson", "raspberry-pi", "nvidia-gpu" or "" (any)
    l4t: str = ""
    model_contains: tuple[str, ...] = ()
    fallback: bool = False


@dataclass(frozen=True)
class OrtSettings:
    providers: tuple[str, ...]
    intra_op_threads: int  # 0 lets ONNX Runtime choose
    inter_op_threads: int
    graph_optimization_level: str


@dataclass(frozen=True)
class OvSettings:
    threads: int
    hint: str = "LATENCY"


@dataclass(frozen=True)
class TrtSettings:
    workspace_mb: int
    layernorm_fp32: bool  # pin LayerNorm to FP32 in an FP16 engine (FP16 LayerNorm overflows in ViTs)


@dataclass(frozen=True)
class Software:
    max_opset: int
    onnxruntime: str = ""  # version ranges such as ">=10.3,<10.4"; "" when the profile does not say
    tensorrt: str = ""
    jetpack: str = ""
    cuda: str = ""

    def oldest_tensorrt(self) -> tuple[int, ...] | None:
        """The lowest TensorRT version the profile's range admits ((8, 5) for '>=8.5,<8.6'); None without a floor."""
        floors = [bound for op, bound in parse_range(self.tensorrt) if op in (">=", "==", ">")] if self.tensorrt else []
        return max(floors) if floors else None


@dataclass(frozen=True)
class Protocol:
    warmup: int
    iterations: int
    min_seconds: float
    power_mode: str = ""
    jetson_clocks: bool = False
    governor: str = ""


@dataclass(frozen=True)
class DeviceProfile:
    """A validated device profile; `raw` keeps the file's content for reports."""

    name: str
    description: str
    runtime: str  # one of SCHEMA["runtime"].allowed
    precision: str  # one of SCHEMA["precision"].allowed
    batch: int
    precisions: tuple[str, ...]  # the precisions it runs: files' and what it computes an FP32 file in
    budgets: Budgets
    recommended_align: int
    host: HostRule
    software: Software
    protocol: Protocol
    ort: OrtSettings | None = None  # present when runtime is "ort" (or the file has the section)
    trt: TrtSettings | None = None  # present when runtime is "trt"
    openvino: OvSettings | None = None  # present when runtime is "openvino" (or the file has the section)
    aliases: tuple[str, ...] = ()
    default_engine_target: bool = False
    source: str = ""
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def max_opset(self) -> int:
        return self.software.max_opset


def profiles_dir() -> Path:
    return Path(str(resources.files("hiap.devices") / "profiles"))


def _get(body: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    node: Any = body
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _alternatives(values: tuple[Any, ...]) -> str:
    quoted = [repr(v) for v in values]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def _problems(body: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """Every problem of a parsed profile as "'key' why", and the keys whose value has the right type and an
    allowed value (the value rules below only look at those, so one bad key is reported once)."""
    problems: list[str] = []

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            if dotted not in SCHEMA:
                known = [k.rsplit(".", 1)[-1] for k in SCHEMA if k.startswith(prefix) and "." not in k[len(prefix) :]]
                hint = did_you_mean(str(key), known) or f" (known: {known})"
                problems.append(f"{dotted!r} is not a profile field{hint}")  # repr: a key may hold a newline
            elif isinstance(value, dict):
                walk(value, dotted + ".")

    walk(body, "")
    good: dict[str, Any] = {}
    for key, (kind, required, allowed) in SCHEMA.items():
        parent = key.rsplit(".", 1)[0] if "." in key else None
        if parent is not None and parent not in good:
            continue  # section absent (its own required keys do not apply) or not a mapping (reported already)
        present, value = _get(body, key)
        if not present:
            if required:
                problems.append(f"'{key}' is missing")
            continue
        bool_ok = kind is bool or bool in (kind if isinstance(kind, tuple) else ())
        if (isinstance(value, bool) and not bool_ok) or not isinstance(value, kind):
            problems.append(f"'{key}' must be {_type_name(kind)}, got {value!r:.80}")
        elif kind is list and not all(isinstance(v, str) for v in value):
            problems.append(f"'{key}' must be a list of strings, got {value!r:.80}")
        elif allowed and value not in allowed:
            problems.append(f"'{key}' must be {_alternatives(allowed)}, got {value!r:.80}")
        else:
            good[key] = value
    return problems, good


def _first_problems(problems: list[str], room: int = 360) -> str:
    """The problems joined by '; ', as many as fit in `room` characters (the first always), and how many more: one
    line a user can read (a profile whose whole 'budgets' section was replaced listed nine problems, 900 characters)."""
    shown = problems[:1]
    for p in problems[1:]:
        if len("; ".join([*shown, p])) > room:
            break
        shown.append(p)
    more = len(problems) - len(shown)
    return "; ".join(shown) + (f"; and {more} more (fix these first)" if more else "")


def validate(body: Any, source: str) -> DeviceProfile:
    """Check a parsed profile against SCHEMA and the value rules; raise one HiapError naming the file and the problems
    found (separated by '; ', as many as a readable line holds, with how many more), so a bad file is fixed in one or
    two passes."""
    if not isinstance(body, dict):
        raise HiapError(f"Device profile {source}: expected a YAML mapping at the top level.")
    problems, good = _problems(body)

    def fail(key: str, why: str) -> None:
        problems.append(f"'{key}' {why}")

    threads = good.get("ort.intra_op_threads")
    if threads is not None and threads > 256:
        fail("ort.intra_op_threads", f"is {threads}; at most 256 (0 lets ONNX Runtime choose)")
    version = good.get("schema_version")
    if version is not None and version != SCHEMA_VERSION:
        fail("schema_version", f"is {version}; this hiap reads version {SCHEMA_VERSION}")
    runtime, precision = good.get("runtime"), good.get("precision")
    if runtime is not None and runtime not in body:
        fail(runtime, f"section is required when runtime is '{runtime}'")
    if runtime in CPU_RUNTIMES and precision is not None and precision != FP32:
        fail("precision", f"must be 'fp32' with runtime '{runtime}' (the file's own precision is in 'precisions')")
    if runtime == OPENVINO and ORT not in body:  # the section is named as the runtime
        fail("ort", "section is required with runtime 'openvino' too (the fallback where OpenVINO is not installed)")
    for key in ("batch", "ort.intra_op_threads", "protocol.iterations", "software.max_opset",
                "alignment.recommended_align", "trt.workspace_mb"):  # fmt: skip
        value = good.get(key)
        if value is not None and value < (0 if key == "ort.intra_op_threads" else 1):
            fail(key, f"must be positive, got {value}")
    precisions = good.get("precisions", [FP32])
    problems += _precision_problems(precisions, good)
    for key in (
        "latency_p50_ms",
        "latency_p99_ms",
        "fidelity_atol",
        "int8_fidelity_atol",
        "bf16_fidelity_atol",
        "fp16_fidelity_atol",
    ):
        value = good.get(f"budgets.{key}")
        if value is not None and not (math.isfinite(value) and value > 0):
            fail(f"budgets.{key}", f"must be a finite number > 0, got {value}")
    drop = good.get("budgets.max_acc_drop")
    if drop is not None and not (math.isfinite(drop) and drop >= 0):
        fail("budgets.max_acc_drop", f"must be a finite number >= 0, got {drop}")
    p50, p99 = good.get("budgets.latency_p50_ms"), good.get("budgets.latency_p99_ms")
    if p50 is not None and p99 is not None and p99 < p50:
        fail("budgets.latency_p99_ms", f"({p99}) is below latency_p50_ms ({p50})")
    for key in (
        "budgets.min_top1_agreement",
        "budgets.int8_min_top1_agreement",
        "budgets.bf16_min_top1_agreement",
        "budgets.fp16_min_top1_agreement",
    ):
        agreement = good.get(key)
        if agreement is not None and not 0 <= agreement <= 1:  # also refuses NaN
            fail(key, f"must be a fraction in [0, 1], got {agreement}")
    for key in ("software.tensorrt", "software.onnxruntime"):
        if key in good:
            try:
                parse_range(good[key])
            except ValueError as exc:
                fail(key, str(exc))
    if problems:
        raise HiapError(f"Device profile {source}: {_first_problems(problems)}.")

    def section(name: str) -> dict[str, Any]:
        return {k.split(".", 1)[1]: v for k, v in good.items() if k.startswith(name + ".")}

    ort, trt, ov = section("ort"), section("trt"), section("openvino")
    host = section("host")
    return DeviceProfile(
        name=body["name"],
        description=body["description"],
        runtime=body["runtime"],
        precision=body["precision"],
        batch=body["batch"],
        precisions=tuple(precisions),
        budgets=Budgets(**{k: float(v) for k, v in section("budgets").items()}),
        recommended_align=body["alignment"]["recommended_align"],
        host=HostRule(**host | {"model_contains": tuple(host.get("model_contains", ()))}),
        software=Software(**section("software")),
        protocol=Protocol(**section("protocol")),
        ort=OrtSettings(**ort | {"providers": tuple(ort["providers"])}) if ort else None,
        trt=TrtSettings(**trt) if trt else None,
        openvino=OvSettings(**ov) if ov else None,
        aliases=tuple(body.get("aliases", [])),
        default_engine_target=bool(body.get("default_engine_target", False)),
        source=source,
        raw=body,
    )


def _precision_problems(precisions: list[str], good: dict[str, Any]) -> list[str]:
    """What is wrong with the precisions a profile lists: unknown ones, or one without its fidelity limits."""
    problems = []
    known = PRECISION_NAMES
    if not isinstance(precisions, list) or not precisions:
        return [f"'precisions' must be a non-empty list of {_alternatives(known)}"]
    odd = [v for v in precisions if v not in known]
    if odd:
        problems.append(f"'precisions' has {odd}; each must be {_alternatives(known)}")
    for family in BUDGET_FAMILIES:
        listed = "an INT8 precision" if family == INT8 else family  # int8 and int8-dynamic share the int8_ limits
        needs = [k for k in (f"{family}_fidelity_atol", f"{family}_min_top1_agreement") if f"budgets.{k}" not in good]
        if any(str(v).startswith(family) for v in precisions) and "budgets" in good and needs:
            problems.append(f"'budgets' needs {needs} when precisions lists {listed}")
    return problems


def _type_name(kind: type | tuple[type, ...]) -> str:
    if kind == _NUM:
        return "a number"
    return {int: "an integer", str: "a string", list: "a list", dict: "a mapping", bool: "true or false"}.get(
        kind if isinstance(kind, type) else int, str(kind)
    )


def read_profile(path: Path) -> DeviceProfile:
    body = parse_yaml(read_text(path, "Device profile"), f"Device profile '{path}'")
    return validate(body, f"'{path}'")


def all_profiles() -> dict[str, DeviceProfile]:
    """Every shipped profile by name (adding a device means adding one file to devices/profiles/)."""
    found = {}
    for path in sorted(profiles_dir().glob("*.yaml")):
        profile = read_profile(path)
        if profile.name != path.stem:
            raise HiapError(f"Device profile '{path}': name '{profile.name}' must equal the file name '{path.stem}'.")
        found[profile.name] = profile
    return found


def load_profile(name_or_path: str) -> DeviceProfile:
    """A shipped profile by name or alias, or a user's profile file (*.yaml)."""
    if name_or_path.endswith((".yaml", ".yml")):
        return read_profile(Path(name_or_path))
    profiles = all_profiles()
    by_alias = {a: p for p in profiles.values() for a in (p.name, *p.aliases)}
    if name_or_path in by_alias:
        return by_alias[name_or_path]
    raise HiapError(
        f"Unknown device '{name_or_path}'.{did_you_mean(name_or_path, by_alias)} Known devices: "
        f"{', '.join(sorted(profiles))} (or a profile .yaml file)."
    )


def default_engine_target(profiles: dict[str, DeviceProfile]) -> DeviceProfile:
    """The profile marked `default_engine_target: true`: where `hiap export --format engine` builds by default."""
    marked = [p for p in profiles.values() if p.default_engine_target]
    if len(marked) != 1:
        raise HiapError(f"Exactly one device profile must set default_engine_target: true, found "
                        f"{[p.name for p in marked]}; pass --target NAME.")  # fmt: skip
    return marked[0]


# -- version ranges such as ">=10.3,<10.4" without a dependency on `packaging` (the device install stays small) --


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.strip().split("."):
        digits = "".join(ch for ch in piece if ch.isdigit()) if piece else ""
        if not digits or not piece[0].isdigit():
            break
        parts.append(int(digits))
    if not parts:
        raise ValueError(f"'{text}' is not a version")
    return tuple(parts)


def parse_range(spec: str) -> list[tuple[str, tuple[int, ...]]]:
    """'>=10.3,<10.4' -> [('>=', (10, 3)), ('<', (10, 4))]."""
    out = []
    for clause in spec.split(","):
        clause = clause.strip()
        op = next((o for o in (">=", "<=", "==", "!=", ">", "<") if clause.startswith(o)), None)
        if op is None:
            raise ValueError(f"has clause '{clause}': expected a comparison such as '>=10.3'")
        out.append((op, _version_tuple(clause[len(op) :])))
    return out


def version_in_range(version: str, spec: str) -> bool:
    v = _version_tuple(version)
    for op, bound in parse_range(spec):
        width = max(len(v), len(bound))
        a, b = v + (0,) * (width - len(v)), bound + (0,) * (width - len(bound))
        if op == "==":
            ok = a[: len(bound)] == bound  # '==10.3' matches 10.3.x
        else:
            ok = {">=": a >= b, "<=": a <= b, "!=": a != b, ">": a > b, "<": a < b}[op]
        if not ok:
            return False
    return True
