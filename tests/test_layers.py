"""The layer map of docs/architecture.md, enforced: a static import check over every module, and hiap.runtime and
hiap.devices importing in a process where torch, the onnx tools and every non-base module of the core and the export
are gone."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Each part's folder in the repository and its installed name, as pyproject's package-dir maps them.
PARTS = {"hiap": "hiap", "export": "hiap.export", "runtime": "hiap.runtime", "devices": "hiap.devices"}
OUTER = tuple(folder for folder in PARTS if folder != "hiap")  # the parts outside hiap/: export, runtime, devices
# The torch-free base every part may import: the package root and the hiap.base subpackage, by its place in the
# layout (docs/architecture.md describes the same modules).
BASE = frozenset(
    {"hiap", "hiap.base"}
    | {f"hiap.base.{p.stem}" for p in (ROOT / "hiap" / "base").glob("*.py") if p.stem != "__init__"}
)
# The modules that tie the parts together: the Python API (training and export in the user's code), the CLI built
# on it with the module that renders its output, and `python -m hiap`, which only starts the CLI.
CLI = frozenset({"hiap.cli", "hiap.render", "hiap.__main__"})
API = frozenset({"hiap.api"})
# Import names of the train extra: what the device install does not have.
HEAVY = ("torch", "torchvision", "timm", "onnx", "onnxsim", "onnxscript", "safetensors", "matplotlib")


def product_modules() -> dict[str, Path]:
    """Installed dotted name -> file for every module of the four parts (a package's __init__ is the package)."""
    out = {}
    for folder, installed in PARTS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            inner = path.relative_to(ROOT / folder).with_suffix("").parts
            out[".".join((installed, *inner)).removesuffix(".__init__")] = path
    return out


def part_of(module: str) -> str | None:
    """The part (a repository folder: hiap, export, runtime, devices) an installed module belongs to; None for a
    module of another distribution."""
    for folder in OUTER:
        if module == PARTS[folder] or module.startswith(PARTS[folder] + "."):
            return folder
    return "hiap" if module.split(".")[0] == "hiap" else None


def imported_names(path: Path, module: str, known: set[str]) -> set[str]:
    """Every module `path` imports, at the top or inside functions (a lazy import is still a dependency)."""
    names: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:  # `from hiap import faults` imports the module hiap.faults
                names.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return names


def layer_violations(imports: dict[str, set[str]]) -> list[str]:
    """Each import that breaks the layer map, as 'importer -> imported: rule'."""
    out = []
    for importer, names in sorted(imports.items()):
        part = part_of(importer)
        for name in sorted(names):
            top, imported = name.split(".")[0], part_of(name)
            if top in OUTER:
                # Installed, only hiap.<part> exists; a top-level name works in a source checkout and nowhere else.
                out.append(f"{importer} -> {name}: the parts are installed under hiap: import hiap.{name}")
            elif name in CLI and importer not in CLI:
                out.append(f"{importer} -> {name}: nothing imports the CLI")
            elif name in API and importer not in CLI:
                out.append(f"{importer} -> {name}: only the CLI builds on the API; the parts do not import it")
            elif importer in CLI | API:
                continue
            elif part == "hiap" and imported in OUTER:
                out.append(f"{importer} -> {name}: the core imports nothing from export, runtime or devices")
            elif importer in BASE and (top in HEAVY or (imported == "hiap" and name not in BASE)):
                out.append(f"{importer} -> {name}: the base imports only the base (and nothing heavy)")
            elif part in ("runtime", "devices") and imported == "hiap" and name not in BASE:
                out.append(f"{importer} -> {name}: {part}/ imports only the base from hiap")
            elif part in ("runtime", "devices") and imported == "export":
                out.append(f"{importer} -> {name}: {part}/ imports nothing from export")
            elif part == "runtime" and imported == "devices":
                out.append(f"{importer} -> {name}: devices builds on runtime, not the other way")
            elif part in ("runtime", "devices") and top in HEAVY:
                out.append(f"{importer} -> {name}: {part}/ ships to the device without the train extra")
    return out


def test_every_import_follows_the_layer_map() -> None:
    modules = product_modules()
    assert set(modules) >= BASE and len(modules) > 30
    imports = {m: imported_names(p, m, set(modules)) for m, p in modules.items()}
    assert layer_violations(imports) == []


def test_the_static_check_catches_what_it_is_for(tmp_path: Path) -> None:
    """Each rule must fire on the import it forbids (a check that matches nothing proves nothing)."""
    bad = {
        "hiap.data": {"hiap.runtime.data"},
        "hiap.base.errors": {"hiap.models"},
        "hiap.runtime.bench": {"hiap.devices.profile", "hiap.train", "hiap.export.plan", "torch"},
        "hiap.devices.bench": {"hiap.cli", "runtime.harness"},
        "hiap.train": {"hiap.api"},
        "hiap.cli": {"export.artifact"},
    }
    found = layer_violations(bad)
    assert len(found) == 10
    assert "hiap.cli -> export.artifact: the parts are installed under hiap: import hiap.export.artifact" in found
    good = {
        "hiap.cli": {"hiap.export.artifact", "hiap.devices.bench", "hiap.api"},
        "hiap.api": {"hiap.export.compact", "hiap.pruner"},
        "hiap.devices.bench": {"hiap.runtime.harness", "hiap.base.errors", "hiap"},
        "hiap.export.artifact": {"hiap.runtime.harness", "hiap.devices.profile", "hiap.models"},
    }
    assert layer_violations(good) == []
    assert [part_of(m) for m in ("hiap.export", "hiap.exporter", "hiap.devices.bench", "hiap", "exporter")] == [
        "export", "hiap", "devices", "hiap", None]  # fmt: skip
    src = tmp_path / "pkg" / "mod.py"
    src.parent.mkdir()
    src.write_text("from hiap import faults, __version__\nfrom . import sibling\ndef f():\n    import torch\n")
    names = imported_names(src, "pkg.mod", {"hiap.faults", "pkg.sibling"})
    assert names == {"hiap.faults", "hiap", "pkg.sibling", "torch"}


UNAVAILABLE = """
import importlib, importlib.abc, json, sys
blocked_tops, blocked, wanted = (set(json.loads(a)) for a in sys.argv[1:4])
class _NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name in blocked or name.split('.')[0] in blocked_tops:
            raise ImportError(f'{name} is not on the device install (tests/test_layers.py)')
        return None
sys.meta_path.insert(0, _NotInstalled())
for name in sorted(wanted):
    importlib.import_module(name)
print(json.dumps(sorted(m for m in sys.modules if m in blocked or m.split('.')[0] in blocked_tops)))
"""


def test_runtime_and_devices_import_with_only_the_base() -> None:
    """Every module of hiap.runtime and hiap.devices imports where torch, the onnx tools and every non-base module of
    the core and the export cannot: what a board with `pip install hiap` has. The repository's top-level folder
    names are blocked too: they resolve from a source checkout only."""
    modules = product_modules()
    wanted = sorted(m for m in modules if part_of(m) in ("runtime", "devices"))
    blocked = sorted(m for m in modules if part_of(m) in ("hiap", "export") and m not in BASE)
    tops = [*HEAVY, *OUTER]
    cmd = [sys.executable, "-c", UNAVAILABLE, json.dumps(tops), json.dumps(blocked), json.dumps(wanted)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == []
    assert "hiap.runtime.harness" in wanted and "hiap.devices.profile" in wanted and "hiap.export.plan" in blocked


GATED_OPS = ("gated_attention", "gated_mlp")


def gated_op_calls(modules: dict[str, Path]) -> list[str]:
    """Every call of the gated attention or FFN as 'module.function', over the given modules."""
    out = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        scopes = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
        for scope in scopes:
            if isinstance(scope, ast.ClassDef):
                continue
            for node in ast.walk(scope):
                if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in GATED_OPS:
                    owner = next((c.name for c in scopes if isinstance(c, ast.ClassDef) and scope in c.body), "")
                    out.append(f"{name}.{owner + '.' if owner else ''}{scope.name}")
    return sorted(set(out))


def test_one_gated_forward_runs_every_gated_block() -> None:
    """Training, validation and the export's parity reference run the same block code: GatedBlock.forward."""
    assert gated_op_calls(product_modules()) == ["hiap.gated.GatedBlock.forward"]


def test_the_gated_forward_check_catches_a_second_block_loop(tmp_path: Path) -> None:
    copy = tmp_path / "copy.py"
    copy.write_text("def forward(x, blk, m):\n    return gated_mlp(blk.mlp, x, m.neuron, m.ffn)\n")
    calls = gated_op_calls(product_modules() | {"hiap.export.copy": copy})
    assert calls == ["hiap.export.copy.forward", "hiap.gated.GatedBlock.forward"]


# A precision is named once, in hiap/base/precision.py's table; everywhere else the code says its constants (FP32,
# INT8, ...), so the names cannot drift apart between the parts.
PRECISION_TABLE = "hiap.base.precision"
# Strings spelled as a precision that name something else, each by the module and the name it is assigned to, and
# why: the one exemption from the rule below.
NOT_PRECISIONS = {("hiap.base.cpu", "CPU_FLAGS"): "ARM's bf16 CPU feature, as /proc/cpuinfo spells it"}


def precision_literals(modules: dict[str, Path]) -> list[str]:
    """Every string constant that is exactly a precision's name, as "module:line 'name'", outside the table and
    NOT_PRECISIONS."""
    from hiap.base.precision import PRECISION_NAMES

    out = []
    for name, path in modules.items():
        if name == PRECISION_TABLE:
            continue
        tree = ast.parse(path.read_text(), str(path))
        exempt = {
            inner
            for node in ast.walk(tree)
            if isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and (name, t.id) in NOT_PRECISIONS for t in node.targets)
            for inner in ast.walk(node.value)
        }
        out += [f"{name}:{node.lineno} {node.value!r}" for node in ast.walk(tree)
                if isinstance(node, ast.Constant) and node.value in PRECISION_NAMES and node not in exempt]  # fmt: skip
    return sorted(out)


def test_precision_names_are_written_only_in_their_table() -> None:
    assert precision_literals(product_modules()) == []


def test_the_precision_literal_check_catches_a_literal(tmp_path: Path) -> None:
    snippet = tmp_path / "snippet.py"
    snippet.write_text('def f(meta):\n    return meta.get("precision", "fp32") == "int8-dynamic"\n'
                       'CPU_FLAGS = ("bf16",)\n')  # fmt: skip
    found = ["2 'fp32'", "2 'int8-dynamic'"]
    assert precision_literals({"hiap.devices.copy": snippet}) == [
        f"hiap.devices.copy:{f}" for f in [*found, "3 'bf16'"]
    ]
    # The exemption is the CPU flag list of hiap/base/cpu.py only, not the whole module.
    assert precision_literals({"hiap.base.cpu": snippet}) == [f"hiap.base.cpu:{f}" for f in found]
    assert precision_literals({PRECISION_TABLE: snippet}) == []
