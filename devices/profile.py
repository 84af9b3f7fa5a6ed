"""Device profiles: one YAML file per device (runtime, precision, threads, budgets, software, protocol), validated."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from hiap.errors import HiapError, did_you_mean

SCHEMA_VERSION = 1
OPT_LEVELS = ("disable", "basic", "extended", "all")

# The schema, as (type, required) per dotted key. Kept as data so the error for a bad file can name the key, and so
# the test that loads every profile also checks that nothing unknown slipped in (a typo would otherwise be ignored).
_NUM = (int, float)
SCHEMA: dict[str, tuple[type | tuple[type, ...], bool]] = {
    "schema_version": (int, True),
    "name": (str, True),
    "aliases": (list, False),
    "description": (str, True),
    "host": (dict, True),
    "host.arch": (str, True),
    "host.board": (str, False),
    "host.l4t": (str, False),
    "host.model_contains": (list, False),
    "runtime": (str, True),
    "precision": (str, True),
    "batch": (int, True),
    "ort": (dict, False),
    "ort.providers": (list, True),
    "ort.intra_op_threads": (int, True),
    "ort.inter_op_threads": (int, True),
    "ort.graph_optimization_level": (str, True),
    "trt": (dict, False),
    "trt.workspace_mb": (int, True),
    "trt.layernorm_fp32": (bool, True),
    "software": (dict, True),
    "software.onnxruntime": (str, False),
    "software.tensorrt": (str, False),
    "software.jetpack": (str, False),
    "software.cuda": (str, False),
    "software.max_opset": (int, True),
    "alignment": (dict, True),
    "alignment.recommended_align": (int, True),
    "alignment.note": (str, False),
    "budgets": (dict, True),
    "budgets.latency_p50_ms": (_NUM, True),
    "budgets.latency_p99_ms": (_NUM, True),
    "budgets.max_acc_drop": (_NUM, True),
    "budgets.fidelity_atol": (_NUM, True),
    "budgets.min_top1_agreement": (_NUM, True),
    "protocol": (dict, True),
    "protocol.warmup": (int, True),
    "protocol.iterations": (int, True),
    "protocol.min_seconds": (_NUM, True),
    "protocol.power_mode": (str, False),
    "protocol.jetson_clocks": (bool, False),
    "protocol.governor": (str, False),
}


@dataclass(frozen=True)
class Budgets:
    latency_p50_ms: float
    latency_p99_ms: float
    max_acc_drop: float
    fidelity_atol: float
    min_top1_agreement: float


@dataclass(frozen=True)
class DeviceProfile:
    """A validated device profile; `raw` keeps the file's content for reports."""

    name: str
    description: str
    runtime: str  # "ort" or "trt"
    precision: str  # "fp32" or "fp16"
    batch: int
    budgets: Budgets
    max_opset: int
    recommended_align: int
    host: dict[str, Any]
    ort: dict[str, Any]
    trt: dict[str, Any]
    software: dict[str, Any]
    protocol: dict[str, Any]
    aliases: tuple[str, ...] = ()
    source: str = ""
    raw: dict[str, Any] = field(default_factory=dict, compare=False)


def profiles_dir() -> Path:
    return Path(str(resources.files("devices") / "profiles"))


def _get(body: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    node: Any = body
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def validate(body: Any, source: str) -> DeviceProfile:
    """Check a parsed profile against SCHEMA and the value rules; raise one HiapError naming the file and key."""
    if not isinstance(body, dict):
        raise HiapError(f"Device profile {source}: expected a YAML mapping at the top level.")

    def fail(key: str, why: str) -> HiapError:
        return HiapError(f"Device profile {source}: '{key}' {why}.")

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            if dotted not in SCHEMA:
                known = [k.rsplit(".", 1)[-1] for k in SCHEMA if k.startswith(prefix) and "." not in k[len(prefix) :]]
                raise fail(dotted, "is not a profile field" + (did_you_mean(str(key), known) or f" (known: {known})"))
            if isinstance(value, dict):
                walk(value, dotted + ".")

    walk(body, "")
    for key, (kind, required) in SCHEMA.items():
        parent = key.rsplit(".", 1)[0] if "." in key else None
        if parent is not None and not _get(body, parent)[0]:
            continue  # optional section absent: its own required keys do not apply
        present, value = _get(body, key)
        if not present:
            if required:
                raise fail(key, "is missing")
            continue
        if isinstance(value, bool) and kind is not bool and bool not in (kind if isinstance(kind, tuple) else ()):
            raise fail(key, f"must be {_type_name(kind)}, got {value!r}")
        if not isinstance(value, kind):
            raise fail(key, f"must be {_type_name(kind)}, got {value!r}")
    for key in ("aliases", "host.model_contains", "ort.providers"):
        present, value = _get(body, key)
        if present and not all(isinstance(v, str) for v in value):
            raise fail(key, f"must be a list of strings, got {value!r}")
    present, threads = _get(body, "ort.intra_op_threads")
    if present and threads > 256:
        raise fail("ort.intra_op_threads", f"is {threads}; at most 256 (0 lets ONNX Runtime choose)")
    if body["schema_version"] != SCHEMA_VERSION:
        raise fail("schema_version", f"is {body['schema_version']}; this hiap reads version {SCHEMA_VERSION}")
    if body["runtime"] not in ("ort", "trt"):
        raise fail("runtime", f"must be 'ort' or 'trt', got {body['runtime']!r}")
    if body["precision"] not in ("fp32", "fp16"):
        raise fail("precision", f"must be 'fp32' or 'fp16', got {body['precision']!r}")
    if body["runtime"] not in body:
        raise fail(body["runtime"], f"section is required when runtime is '{body['runtime']}'")
    if body["runtime"] == "ort" and body["precision"] != "fp32":
        raise fail("precision", "must be 'fp32' with runtime 'ort' (hiap exports FP32 ONNX)")
    if body["host"]["arch"] not in ("x86_64", "aarch64", "any"):
        raise fail("host.arch", f"must be x86_64, aarch64 or any, got {body['host']['arch']!r}")
    if "ort" in body and body["ort"]["graph_optimization_level"] not in OPT_LEVELS:
        raise fail("ort.graph_optimization_level", f"must be one of {list(OPT_LEVELS)}")
    for key in ("batch", "ort.intra_op_threads", "protocol.iterations", "software.max_opset",
                "alignment.recommended_align", "trt.workspace_mb"):  # fmt: skip
        present, value = _get(body, key)
        if present and value < (0 if key == "ort.intra_op_threads" else 1):
            raise fail(key, f"must be positive, got {value}")
    b = body["budgets"]
    for key in ("latency_p50_ms", "latency_p99_ms", "fidelity_atol"):
        if b[key] <= 0:
            raise fail(f"budgets.{key}", f"must be > 0, got {b[key]}")
    if b["latency_p99_ms"] < b["latency_p50_ms"]:
        raise fail("budgets.latency_p99_ms", f"({b['latency_p99_ms']}) is below latency_p50_ms ({b['latency_p50_ms']})")
    if not 0 <= b["min_top1_agreement"] <= 1:
        raise fail("budgets.min_top1_agreement", f"must be a fraction in [0, 1], got {b['min_top1_agreement']}")
    for key in ("software.tensorrt", "software.onnxruntime"):
        present, value = _get(body, key)
        if present:
            try:
                parse_range(value)
            except ValueError as exc:
                raise fail(key, str(exc)) from None
    return DeviceProfile(
        name=body["name"],
        description=body["description"],
        runtime=body["runtime"],
        precision=body["precision"],
        batch=body["batch"],
        budgets=Budgets(**{k: float(v) for k, v in b.items()}),
        max_opset=body["software"]["max_opset"],
        recommended_align=body["alignment"]["recommended_align"],
        host=dict(body["host"]),
        ort=dict(body.get("ort", {})),
        trt=dict(body.get("trt", {})),
        software=dict(body["software"]),
        protocol=dict(body["protocol"]),
        aliases=tuple(str(a) for a in body.get("aliases", [])),
        source=source,
        raw=body,
    )


def _type_name(kind: type | tuple[type, ...]) -> str:
    if kind == _NUM:
        return "a number"
    return {int: "an integer", str: "a string", list: "a list", dict: "a mapping", bool: "true or false"}.get(
        kind if isinstance(kind, type) else int, str(kind)
    )


def read_profile(path: Path) -> DeviceProfile:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise HiapError(f"Device profile '{path}' cannot be read: {exc.strerror}.") from None
    except UnicodeDecodeError:
        raise HiapError(f"Device profile '{path}' is not UTF-8 text.") from None
    try:
        body = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise HiapError(f"Device profile '{path}' is not valid YAML{where}.") from None
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
