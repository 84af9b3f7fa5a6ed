"""The latency table of one device (lut.json, written by `hiap profile`): its schema, reading with one-line errors,
and the checks that a table fits the model, device and precision it is used for (torch-free)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from hiap.base.errors import HiapError
from hiap.base.jsonfile import read_json_object
from hiap.base.precision import PRECISION_NAMES

LUT_SCHEMA = "hiap-lut"
LUT_VERSION = 1
# The shapes a table must agree on with the model it prices (hiap.cost.Geometry's names).
GEOMETRY_KEYS = ("num_tokens", "dim", "depth", "num_heads", "head_dim", "hidden")
# The files of a probe set (written by export/probes.py, timed by devices/lut.py): its manifest and the probes.
PROBE_MANIFEST, OVERHEAD_PROBE, FIXED_PROBE = "probes.json", "overhead.onnx", "fixed.onnx"


def geometry_record(geometry: Any) -> dict[str, int]:
    """The shapes of a geometry (hiap.cost.Geometry, or anything with its attribute names) that a table records."""
    return {k: getattr(geometry, k) for k in GEOMETRY_KEYS}


def attention_probe(heads: int, width: int) -> str:
    return f"attn_h{heads}_w{width}.onnx"


def qk_probe(heads: int, width: int) -> str:
    return f"attn_h{heads}_q{width}.onnx"


def ffn_probe(neurons: int) -> str:
    return f"ffn_k{neurons}.onnx"


@dataclass(frozen=True)
class Cell:
    """One probe's measured latency of one call, in ms: `ms` the steady figure the cost model uses (the median of the
    fastest round, devices/lut.py::steady_ms), p50/p90 over all calls for the spread."""

    ms: float
    p50: float
    p90: float


@dataclass(frozen=True)
class Tables:
    """The cells at one batch size.

    overhead: a graph that only copies its input (the cost of one call, which every probe file pays once and a
    whole network pays once); fixed: the network without blocks (patch embedding, prefix tokens, final norm, head);
    attention[i][j]: the attention branch (norm, attention, residual add) with heads[i] heads of value width
    value_widths[j] (q/k at full width); ffn[k]: the FFN branch (norm, MLP, residual add) with ffn_widths[k]
    neurons; attention_qk[i][j] (tables with a q/k axis, else empty): the attention branch with heads[i] heads of
    q/k width qk_widths[j] and full value width (its last column is attention[i][-1], the same branch).
    """

    overhead: Cell
    fixed: Cell
    attention: tuple[tuple[Cell, ...], ...]
    ffn: tuple[Cell, ...]
    attention_qk: tuple[tuple[Cell, ...], ...] = ()


@dataclass(frozen=True)
class LatencyTable:
    """A measured lut.json: what it was measured on (device, runner, precision, threads), for which model geometry
    and export layout (align), over which grid, and the cells per batch size."""

    device: str
    runtime: str
    precision: str
    model: str
    model_kwargs: dict[str, Any]
    geometry: dict[str, int]
    align: int
    chain: int  # branches per probe file (a branch costs (cell - overhead) / chain)
    heads: tuple[int, ...]
    value_widths: tuple[int, ...]
    ffn_widths: tuple[int, ...]
    tables: dict[int, Tables]
    body: dict[str, Any]  # the whole file, for reports and the artifact's record
    path: str = ""
    qk_widths: tuple[int, ...] = ()  # emitted q/k widths; empty: the table prices attention at full q/k width only

    @cached_property
    def digest(self) -> str:
        """sha256 of the cells and what they describe (first 16 hex): names the table a prediction came from."""
        import hashlib

        return hashlib.sha256(json.dumps(self.body, sort_keys=True).encode()).hexdigest()[:16]

    def at(self, batch: int) -> Tables:
        if batch not in self.tables:
            have = ", ".join(str(b) for b in sorted(self.tables))
            raise HiapError(f"Latency table '{self.path}' has no cells at batch {batch} (it has batch {have}): "
                            f"measure it with hiap profile --batch {batch}.")  # fmt: skip
        return self.tables[batch]

    def branch_ms(self, cell: Cell, batch: int) -> float:
        """One branch's cost from its probe's cell: less one call's overhead, per copy in the chain. A noisy cell can
        come out below the overhead; a branch never costs less than nothing."""
        return max(cell.ms - self.at(batch).overhead.ms, 0.0) / self.chain

    def describe(self) -> str:
        return f"{self.device} ({self.runtime}, {self.precision}, {self.body.get('threads', {})})"

    @property
    def validated(self) -> bool:
        """False for tables whose probes have not been checked against measured networks (TensorRT)."""
        return bool(self.body.get("validated", True))

    @property
    def measured_elsewhere(self) -> str | None:
        """Why the table's timings are not its device's (hiap profile --allow-mismatch, an emulator), or None."""
        why = self.body.get("measured_elsewhere")
        return str(why) if why else None

    def check_geometry(self, model: str, geometry: dict[str, int], what: str) -> None:
        """Refuse a table measured for other shapes than `what` has, naming the first field that differs."""
        for key in GEOMETRY_KEYS:
            if self.geometry.get(key) != geometry.get(key):
                raise HiapError(
                    f"Latency table '{self.path}' was measured for {self.model} with {key}={self.geometry.get(key)}, "
                    f"but {what} ({model}) has {key}={geometry.get(key)}: measure a table for this model with "
                    f"hiap profile --model {model}."
                )

    def check_use(self, device: str | None = None, precision: str | None = None, align: int | None = None) -> None:
        """Refuse a table of another device, precision or export layout than the one it is used for."""
        if device is not None and device != self.device:
            raise HiapError(f"Latency table '{self.path}' was measured on device '{self.device}', not '{device}': "
                            f"measure it there with hiap profile --device {device}.")  # fmt: skip
        if precision is not None and precision != self.precision:
            raise HiapError(f"Latency table '{self.path}' holds {self.precision} latencies, but the model is "
                            f"{precision}: measure a table at that precision.")  # fmt: skip
        if align is not None and align != self.align:
            raise HiapError(f"Latency table '{self.path}' was measured with value widths on --align {self.align}, "
                            f"not {align}: export with --align {self.align} or measure a table with --align "
                            f"{align}.")  # fmt: skip


def write_lut(path: Path, body: dict[str, Any]) -> None:
    from hiap.base.atomic import write_json_atomic

    write_json_atomic(path, body, indent=1)


def _cell(raw: Any, where: str) -> Cell:
    if not isinstance(raw, dict) or not all(
        isinstance(raw.get(k), (int, float)) and not isinstance(raw.get(k), bool) for k in ("ms", "p50", "p90")
    ):
        raise HiapError(f"{where}: expected an object with numbers ms, p50, p90.")
    cell = Cell(float(raw["ms"]), float(raw["p50"]), float(raw["p90"]))
    if not all(math.isfinite(v) and v > 0 for v in (cell.ms, cell.p50, cell.p90)):
        raise HiapError(f"{where}: latencies must be positive finite milliseconds, got {raw!r:.80}.")
    return cell


def _ints(raw: Any, where: str) -> tuple[int, ...]:
    if (
        not isinstance(raw, list)
        or not raw
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in raw)
        or raw != sorted(set(raw))
    ):
        raise HiapError(f"{where}: expected a non-empty ascending list of positive integers, got {raw!r:.80}.")
    return tuple(raw)


def parse_lut(body: Any, path: str = "") -> LatencyTable:
    """Validate a lut.json body; every error names the file and the field."""
    where = f"Latency table '{path}'"
    if not isinstance(body, dict) or body.get("schema") != LUT_SCHEMA:
        raise HiapError(f"{where} is not a hiap latency table (no \"schema\": \"{LUT_SCHEMA}\"): write one with "
                        "hiap profile.")  # fmt: skip
    if body.get("schema_version") != LUT_VERSION:
        raise HiapError(f"{where} has schema_version {body.get('schema_version')!r}; this hiap reads {LUT_VERSION}.")
    for key in ("device", "runtime", "precision", "model", "geometry", "align", "chain", "grid", "tables"):
        if key not in body:
            raise HiapError(f"{where}: missing field '{key}'.")
    # What the cells were computed in: a file's precision (fp32, int8 probes) or an FP32 file's inference precision
    # on OpenVINO (bf16, fp16): any precision of the table.
    if body["precision"] not in PRECISION_NAMES:
        raise HiapError(f"{where}: 'precision' must be one of {', '.join(PRECISION_NAMES)}, got "
                        f"{body['precision']!r:.40}.")  # fmt: skip
    if not isinstance(body.get("validated", True), bool):
        raise HiapError(f"{where}: 'validated' must be true or false, got {body['validated']!r:.40}.")
    geometry = body["geometry"]
    if not isinstance(geometry, dict) or not all(
        isinstance(geometry.get(k), int) and geometry[k] > 0 for k in GEOMETRY_KEYS
    ):
        raise HiapError(f"{where}: 'geometry' must give positive integers {', '.join(GEOMETRY_KEYS)}.")
    grid = body["grid"]
    if not isinstance(grid, dict):
        raise HiapError(f"{where}: 'grid' must be an object with heads, value_widths, ffn_widths.")
    heads = _ints(grid.get("heads"), f"{where} grid 'heads'")
    widths = _ints(grid.get("value_widths"), f"{where} grid 'value_widths'")
    ffn = _ints(grid.get("ffn_widths"), f"{where} grid 'ffn_widths'")
    qk = _ints(grid["qk_widths"], f"{where} grid 'qk_widths'") if "qk_widths" in grid else ()
    if (
        heads[-1] != geometry["num_heads"]
        or widths[-1] != geometry["head_dim"]
        or ffn[-1] != geometry["hidden"]
        or (qk and qk[-1] != geometry["head_dim"])
    ):
        raise HiapError(f"{where}: the grid must reach the dense widths (heads {geometry['num_heads']}, value and q/k "
                        f"width {geometry['head_dim']}, FFN {geometry['hidden']}).")  # fmt: skip
    for key in ("align", "chain"):
        if not isinstance(body.get(key), int) or isinstance(body.get(key), bool) or body[key] < 1:
            raise HiapError(f"{where}: '{key}' must be a positive integer.")
    raw_tables = body["tables"]
    if not isinstance(raw_tables, dict) or not raw_tables:
        raise HiapError(f"{where}: 'tables' must map batch sizes to cells.")
    tables: dict[int, Tables] = {}
    for key, t in raw_tables.items():
        if not str(key).isdigit() or int(key) < 1 or not isinstance(t, dict):
            raise HiapError(f"{where}: 'tables' keys must be batch sizes, got {key!r}.")
        at = f"{where} batch {key}"
        attention = t.get("attention")
        if not isinstance(attention, list) or len(attention) != len(heads):
            raise HiapError(f"{at} 'attention': expected one row per head count ({len(heads)}).")
        rows = []
        for i, row in enumerate(attention):
            if not isinstance(row, list) or len(row) != len(widths):
                raise HiapError(f"{at} 'attention'[{i}]: expected one cell per value width ({len(widths)}).")
            rows.append(tuple(_cell(c, f"{at} 'attention'[{i}]") for c in row))
        ffn_cells = t.get("ffn")
        if not isinstance(ffn_cells, list) or len(ffn_cells) != len(ffn):
            raise HiapError(f"{at} 'ffn': expected one cell per FFN width ({len(ffn)}).")
        qk_rows = []
        if qk:
            raw_qk = t.get("attention_qk")
            if not isinstance(raw_qk, list) or len(raw_qk) != len(heads):
                raise HiapError(f"{at} 'attention_qk': expected one row per head count ({len(heads)}).")
            for i, row in enumerate(raw_qk):
                if not isinstance(row, list) or len(row) != len(qk):
                    raise HiapError(f"{at} 'attention_qk'[{i}]: expected one cell per q/k width ({len(qk)}).")
                qk_rows.append(tuple(_cell(c, f"{at} 'attention_qk'[{i}]") for c in row))
        tables[int(key)] = Tables(
            overhead=_cell(t.get("overhead"), f"{at} 'overhead'"),
            fixed=_cell(t.get("fixed"), f"{at} 'fixed'"),
            attention=tuple(rows),
            ffn=tuple(_cell(c, f"{at} 'ffn'") for c in ffn_cells),
            attention_qk=tuple(qk_rows),
        )
    kwargs = body.get("model_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise HiapError(f"{where}: 'model_kwargs' must be an object.")
    return LatencyTable(
        device=str(body["device"]), runtime=str(body["runtime"]), precision=str(body["precision"]),
        model=str(body["model"]), model_kwargs=kwargs, geometry={k: int(geometry[k]) for k in GEOMETRY_KEYS},
        align=body["align"], chain=body["chain"], heads=heads, value_widths=widths, ffn_widths=ffn, tables=tables,
        body=body, path=path, qk_widths=qk,
    )  # fmt: skip


def read_lut(path: Path) -> LatencyTable:
    path = Path(path)
    return parse_lut(read_json_object(path, "Latency table", "measure one with hiap profile"), str(path))
