"""What the `hiap` commands print: the tables and lines rendered from the library's typed results."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from hiap.devices.report import verdict_line

if TYPE_CHECKING:
    from hiap.base.lut import LatencyTable
    from hiap.devices.report import BenchReport
    from hiap.devices.sweep import SweepReport
    from hiap.export.artifact import ExportReport


def print_inspect(report: dict[str, Any]) -> None:
    """A structure (inspect's report of a model, run, plan or export) as one row per block."""
    table = Table(title=f"{report['model']} ({report['target']})")
    for col in ("block", "heads", "q/k widths", "value widths", "FFN", "neurons", "MMACs"):
        table.add_column(col, justify="right")
    for b in report["blocks"]:
        table.add_row(
            str(b["block"]),
            f"{len(b['heads'])}/{report['num_heads']}",
            ",".join(map(str, b.get("qk_widths", []))) or "-",
            ",".join(map(str, b["value_widths"])) or "-",
            "kept" if b["ffn"] else "removed",
            f"{b['neurons']}/{report['hidden']}",
            f"{b['gmacs'] * 1e3:.2f}",
        )
    table.caption = (
        f"GMACs {report['gmacs']:.4f} (dense {report['dense_gmacs']:.4f}), "
        f"params {report['params'] / 1e6:.3f} M (dense {report['dense_params'] / 1e6:.3f} M)"
    )
    Console().print(table)


def print_sweep(report: SweepReport, device: str, artifact: Path) -> None:
    """`hiap bench --sweep`: one row per runtime x precision, what was not run and why, and the fastest in budget."""
    table = Table(title=f"hiap bench --sweep on {device}: {artifact}")
    for col in ("runtime", "precision", "size MB", "top-1 %", "p50 ms", "p99 ms", "speedup", "fidelity", "budgets"):
        table.add_column(col, justify="left" if col in ("runtime", "precision", "budgets") else "right")
    skipped = []
    for row in report.rows:
        r = row.report
        if r is None:
            skipped.append(f"{row.runtime} {row.precision}: {row.skipped}")
            continue
        top1 = r.accuracy.model.top1 if r.accuracy.model is not None else None
        speedup = f"{r.compare.speedup_p50:.2f}x" if r.compare is not None else "-"
        fid = f"{r.fidelity.comparison.max_abs_diff:.1e}" if r.fidelity is not None else "-"
        table.add_row(row.runtime, row.precision, f"{r.size_mb:.2f}", fmt(top1),
                      f"{r.latency.p50:.3f}", f"{r.latency.p99:.3f}", speedup, fid, r.verdict)  # fmt: skip
    console = Console()
    console.print(table)
    for line in skipped:
        console.print(f"not run: {line}")
    if report.fastest is not None:
        f = report.fastest
        assert f.report is not None  # the fastest is a row that ran
        console.print(f"fastest meeting every budget: {f.runtime} {f.precision} ({f.report.latency.p50:.3f} ms p50)")
    else:
        console.print(f"no fastest combination: {report.why_none}")


def budget_failures(report: BenchReport) -> str:
    """The failed budgets in one line (for stderr): each value against its limit and by how much."""
    parts = [f"{b.name} {fmt(b.value)} vs limit {fmt(b.limit)} (over by {fmt(abs(b.margin or 0.0))})"
             for b in report.budgets if b.passed is False]  # fmt: skip
    return "budget failed: " + "; ".join(parts)


def print_lut(path: Path, lut: LatencyTable) -> None:
    """A latency table as a user reads it: ms per branch (overhead removed, per copy) against width, per batch."""
    console = Console()
    console.print(
        f"{path}: {lut.model} {lut.body.get('model_kwargs') or ''} on {lut.describe()}, align {lut.align}, "
        f"measured {lut.body.get('date', '?')}" + ("" if lut.validated else " (TensorRT: not validated)")
    )
    if lut.measured_elsewhere:
        console.print(f"[yellow]warning:[/] not measured on {lut.device}: {lut.measured_elsewhere}")

    def heads_by_width(title: str, widths: tuple[int, ...], rows: Any, batch: int) -> Table:
        table = Table(title=title)
        table.add_column("heads", justify="right")
        for w in widths:
            table.add_column(str(w), justify="right")
        for h, row in zip(lut.heads, rows, strict=True):
            table.add_row(str(h), *(f"{lut.branch_ms(c, batch):.4f}" for c in row))
        return table

    for batch, cells in sorted(lut.tables.items()):
        console.print(heads_by_width(f"attention branch, ms (batch {batch}): kept heads x value width",
                                     lut.value_widths, cells.attention, batch))  # fmt: skip
        if cells.attention_qk:
            console.print(heads_by_width(f"attention branch, ms (batch {batch}): kept heads x q/k width, full value "
                                         "width", lut.qk_widths, cells.attention_qk, batch))  # fmt: skip
        ffn = Table(title=f"FFN branch, ms (batch {batch})")
        ffn.add_column("neurons", justify="right")
        ffn.add_column("ms", justify="right")
        ffn.add_column("ms per 100 neurons", justify="right")
        for k, c in zip(lut.ffn_widths, cells.ffn, strict=True):
            ms = lut.branch_ms(c, batch)
            ffn.add_row(str(k), f"{ms:.4f}", f"{100 * ms / k:.4f}")
        console.print(ffn)
        console.print(f"outside the blocks (patch embedding, head, one call): {cells.fixed.ms:.4f} ms; one call's "
                      f"overhead {cells.overhead.ms:.4f} ms")  # fmt: skip


def print_export(report: ExportReport, model: str, out_dir: Path, align: int) -> None:
    """An export's notes (stderr), its dense-vs-exported table and its device check's findings."""
    for note in report.get("notes", []):  # the export's notes and warnings, on stderr as they were written
        print(note if note.startswith("warning: ") else f"note: {note}", file=sys.stderr)
    parity = report["parity"]
    table = Table(title=f"hiap export: {model} -> {out_dir}")
    for col in ("", "dense", "exported"):
        table.add_column(col, justify="right")
    table.add_row("GMACs (plan)", f"{report['dense_gmacs']:.5f}", f"{report['gmacs']:.5f}")
    table.add_row("GMACs (ONNX graph)", "", f"{report['onnx_gmacs']:.5f}")
    table.add_row("padding GMACs", "", f"{report['padding_gmacs']:.5f} (--align {align})")
    table.add_row("params", f"{report['dense_params']:,}", f"{report['onnx_params']:,}")
    table.add_row("file MB", "", f"{report['file_bytes'] / 1e6:.2f}")
    table.add_row("parity max abs", "", f"{parity['max_abs_diff']:.2e} ({'passed' if parity['passed'] else 'FAILED'})")
    table.add_row("top-1 agreement", "", f"{parity['top1_agreement']:.0%}")
    check = report.get("int8_check")
    if check is not None:
        table.add_row("precision", "", f"{report['precision']} ({report['fp32_file']}: FP32)")
        if "fp32_top1" in check:
            label = f"top-1 FP32 / {report['precision']} ({check['images']} val)"
            value = f"{check['fp32_top1']:.2f} / {check['int8_top1']:.2f} % ({-check['drop_pp']:+.2f} pp)"
            table.add_row(label, "", value)
        else:
            table.add_row("INT8 top-1", "", f"not measured: {check['reason']}")
    pred = report.get("predicted_latency")
    if pred is not None:
        ms = ", ".join(f"{v:.4g} ms at batch {b}" for b, v in pred["ms"].items())
        table.add_row(f"predicted latency ({pred['device']}, table)", "", ms)
    table.caption = "plan.json, model.onnx, golden.npz, export_report.json; TensorRT path not yet validated"
    Console().print(table)
    check = report.get("device_check")
    if check is not None:
        findings = check["lines"] or [f"no findings (opset {check['opset']}, {len(check['operators'])} operator types)"]
        for line in findings:
            print(f"device check {check['device']}: {line}")


def fmt(value: Any) -> str:
    """A figure in a table cell: '-' for none, small values in significant digits."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-2 and value != 0 else f"{value:.3f}".rstrip("0").rstrip(".")
    return str(value)


def prediction_note(pred: dict[str, Any]) -> str:
    """The latency table's prediction against the measured p50, with what qualifies it; or why it was not compared."""
    if not pred["compared"]:
        return f"latency prediction not compared: {pred['reason']}"
    note = (f"latency table predicted {pred['predicted_ms']:.4g} ms, measured {pred['measured_ms']:.4g} ms "
            f"({pred['error']:+.1%}), both the median of the fastest round (p50 of all calls "
            f"{pred['measured_p50_ms']:.4g} ms)")  # fmt: skip
    if not pred["validated"]:
        note += " (TensorRT tables: not validated)"
    if pred.get("measured_elsewhere"):
        note += f" (the table was not measured on this device: {pred['measured_elsewhere']})"
    return note


def print_bench(report: BenchReport) -> None:
    """A bench's figures, its budgets, and the one verdict line CI logs grep."""
    env = report.environment["runner"]
    title = f"hiap bench on {report.device}: {report.artifact}"
    table = Table(title=title)
    for col in ("model", "format", "precision", "size MB", "top-1 %", "p50 ms", "p99 ms", "FPS"):
        table.add_column(col, justify="right")
    dense = report.compare
    # Two runtimes side by side are named by runtime; a pruned model and its dense one by what they are.
    names = (
        (f"model ({env['runtime']})", f"compare ({dense.runtime})") if dense and dense.runtime else ("pruned", "dense")
    )
    rows = [(names[0] if dense is not None else "model", report.precision, report.size_mb, report.latency,
             report.accuracy.model)]  # fmt: skip
    if dense is not None:
        rows.append((names[1], dense.precision, dense.size_mb, dense.latency, report.accuracy.dense))
    for label, precision, size, lat, acc in rows:
        top1_text = "-" if acc is None else f"{acc.top1:.2f}"
        table.add_row(label, report.format, precision, f"{size:.2f}", top1_text, f"{lat.p50:.3f}", f"{lat.p99:.3f}",
                      f"{lat.throughput_fps:.1f}")  # fmt: skip
    budgets = Table(title="budgets")
    for col in ("budget", "limit", "measured", "result"):
        budgets.add_column(col, justify="right")
    for b in report.budgets:
        # Why a budget was not measured is in the verdict line below (the reasons are too long for a cell).
        verdict = "not measured" if b.margin is None else f"{'passed' if b else 'FAILED'} by {fmt(abs(b.margin))}"
        budgets.add_row(b.name, fmt(b.limit), fmt(b.value), verdict)
    notes = [f"{env['runtime']} {env['version']}, batch {report.batch}, "
             f"{env.get('intra_op_threads', '-')} threads"]  # fmt: skip
    if dense is not None:
        notes.append(f"speedup p50 {dense.speedup_p50:.2f}x for {fmt(dense.mac_ratio)}x fewer MACs "
                     f"(realisation {fmt(dense.realisation)})")  # fmt: skip
    if report.fidelity is not None:  # not truthiness: a fidelity that failed is falsy but measured
        f = report.fidelity.comparison
        notes.append(f"fidelity vs golden ({report.fidelity.images} images, {report.precision}): max abs "
                     f"{f.max_abs_diff:.2e}, "
                     f"top-1 agreement {f.top1_agreement:.0%}")  # fmt: skip
    if report.prediction is not None:
        notes.append(prediction_note(report.prediction))
    if report.label:
        notes.append(report.label)
    notes += [f"protocol: {w}" for w in report.protocol_warnings]
    if report.note:
        notes.append(report.note)
    table.caption = "\n".join(notes)
    console = Console()
    console.print(table)
    console.print(budgets)
    # One unwrapped line without markup (reasons hold paths and lists), so CI logs can grep it.
    style = {"met": None, "failed": "bold red", "not measured": "bold yellow"}[report.verdict]
    console.print(verdict_line(report), style=style, soft_wrap=True, markup=False, highlight=False)
