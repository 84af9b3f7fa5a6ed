"""`hiap report`: the per-run plots (pruned topology, temperature and gate polarisation, MACs or predicted latency
vs target), and the plot of a device's latency table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hiap.base.errors import HiapError
from hiap.base.jsonfile import parse_json, read_json_object


def _records(run: Path) -> list[dict[str, Any]]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise HiapError(f"'{run}' has no metrics.jsonl: pass a run directory written by hiap train.")
    records = []
    needed = {"epoch", "step", "tau", "expected_gmacs", "hard_gmacs", "target_gmacs"}
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            record = parse_json(line, f"'{path}' line {i}", allow_nan=True)
            if not isinstance(record, dict) or not needed <= set(record):
                raise HiapError(f"'{path}' line {i} is not a hiap metrics record (needs {sorted(needed)}).")
            records.append(record)
    if not records:
        raise HiapError(f"'{path}' is empty: the run has not finished an epoch yet.")
    return records


def run_structure(run: Path) -> tuple[Any, Any]:
    """(structure, geometry) of the run's last checkpoint with the export rule applied."""
    from hiap.checkpoint import gated_from_checkpoint, load_checkpoint

    ckpt = load_checkpoint(run)
    gated = gated_from_checkpoint(ckpt, str(run))
    structure = gated.hard_structure() if ckpt.gates else gated.geometry.dense_structure()
    return structure, gated.geometry


def plot_topology(structure: Any, geom: Any, title: str, path: Path) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    depth, heads = geom.depth, geom.num_heads
    widths = np.zeros((heads, depth))
    for b, block in enumerate(structure.blocks):
        for h, dims in zip(block.heads, block.value_dims, strict=True):
            widths[h, b] = len(dims)
    neurons = [len(b.neurons) if b.ffn else 0 for b in structure.blocks]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(6, depth * 0.7), 6.5), sharex=True,
                                   gridspec_kw={"height_ratios": [heads, max(3, heads // 2)]})  # fmt: skip
    im = ax1.imshow(widths, aspect="auto", cmap="viridis", vmin=0, vmax=geom.head_dim, origin="lower",
                    extent=(-0.5, depth - 0.5, -0.5, heads - 0.5))  # fmt: skip
    for b in range(depth):
        for h in range(heads):
            w = int(widths[h, b])
            ax1.text(b, h, str(w) if w else "x", ha="center", va="center", fontsize=7,
                     color="white" if w < geom.head_dim * 0.6 else "black")  # fmt: skip
    ax1.set_ylabel("head")
    ax1.set_yticks(range(heads))
    ax1.set_title(f"{title}\nvalue width kept per head (x: head removed) of {geom.head_dim}")
    fig.colorbar(im, ax=ax1, label="value dims kept")
    colors = ["tab:blue" if n else "tab:red" for n in neurons]
    ax2.bar(range(depth), [n if n else geom.hidden * 0.02 for n in neurons], color=colors)
    for b, n in enumerate(neurons):
        ax2.text(b, (n or 0) + geom.hidden * 0.03, str(n) if n else "FFN removed", ha="center", fontsize=7,
                 rotation=0 if n else 90)  # fmt: skip
    ax2.axhline(geom.hidden, color="gray", lw=0.8, ls="--", label=f"dense {geom.hidden}")
    ax2.set_ylim(0, geom.hidden * 1.25)
    ax2.set_ylabel("FFN neurons kept")
    ax2.set_xlabel("block")
    ax2.set_xticks(range(depth))
    ax2.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_annealing(records: list[dict[str, Any]], path: Path) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    # Only epochs that recorded a histogram (a run resumed from an older hiap has none for its first epochs).
    with_hist = [r for r in records if isinstance(r.get("gate_histogram"), dict)]
    epochs = [r["epoch"] for r in records]
    hist_epochs = [r["epoch"] for r in with_hist]
    hists = [r["gate_histogram"] for r in with_hist]
    kinds = [k for k in ("head", "ffn", "qk", "value", "neuron") if hists and all(k in h for h in hists)]
    fig, axes = plt.subplots(1, 1 + len(kinds), figsize=(3.2 * (1 + len(kinds)), 3.4))
    axes = np.atleast_1d(axes)
    trace = [t for r in records for t in r.get("trace", [])]
    steps_per_epoch = records[0]["step"] / records[0]["epoch"] if records[0].get("step") else 1
    if trace:
        axes[0].plot([t[0] / steps_per_epoch for t in trace], [t[1] for t in trace])
    else:
        axes[0].plot(epochs, [r["tau"] for r in records], marker="o")
    axes[0].set_title("Gumbel-Sigmoid temperature")
    axes[0].set_xlabel("epoch")
    for ax, kind in zip(axes[1:], kinds, strict=True):
        grid = np.array([h[kind] for h in hists], dtype=float).T  # bins x epochs
        grid = grid / np.maximum(grid.sum(axis=0, keepdims=True), 1)
        ax.imshow(grid, aspect="auto", origin="lower", cmap="magma",
                  extent=(hist_epochs[0] - 0.5, hist_epochs[-1] + 0.5, 0, 1))  # fmt: skip
        ax.set_title(f"{kind} gates: keep probability")
        ax.set_xlabel("epoch")
        ax.set_ylabel("sigmoid(logit)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_macs(records: list[dict[str, Any]], dense_gmacs: float, path: Path) -> None:
    """MACs against the target: the per-step trace (a few points an epoch) when the run recorded one, else one point
    per epoch."""
    scale, unit = (1e3, "MMACs") if dense_gmacs < 0.1 else (1.0, "GMACs")
    per_epoch = {"expected (gate probabilities)": [r["expected_gmacs"] * scale for r in records],
                 "hard (export rule)": [r["hard_gmacs"] * scale for r in records]}  # fmt: skip
    _plot_cost(records, dense_gmacs * scale, records[-1]["target_gmacs"] * scale, per_epoch, unit,
               "MACs over training", path)  # fmt: skip


def plot_latency(records: list[dict[str, Any]], path: Path) -> None:
    """A latency-targeted run's predicted latency (its table's ms) against the target, as plot_macs."""
    last = records[-1]
    per_epoch = {"hard (export rule)": [r["predicted_latency_ms"] for r in records]}
    device = last["latency_table"]["device"]
    _plot_cost(records, last["dense_latency_ms"], last["target_latency_ms"], per_epoch, f"ms on {device} (table)",
               "predicted latency over training", path)  # fmt: skip


def _plot_cost(records: list[dict[str, Any]], dense: float, target: float, per_epoch: dict[str, list[float]],
               unit: str, title: str, path: Path) -> None:  # fmt: skip
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    trace = [t for r in records for t in r.get("trace", [])]  # [step, tau, expected, hard, reference], of dense
    steps_per_epoch = records[0]["step"] / records[0]["epoch"] if records[0].get("step") else 1
    if trace:
        x = [t[0] / steps_per_epoch for t in trace]
        ax.plot(x, [t[2] * dense for t in trace], label="expected (gate probabilities)")
        ax.plot(x, [t[3] * dense for t in trace], label="hard (export rule)")
        ax.plot(x, [t[4] * dense for t in trace], ls=":", color="gray", label="controller reference")
    else:
        epochs = [r["epoch"] for r in records]
        for (label, values), marker in zip(per_epoch.items(), "os", strict=False):
            ax.plot(epochs, values, marker=marker, label=label)
    ax.axhline(target, ls="--", color="black", label="target")
    ax.axhline(dense, color="gray", lw=0.8, label="dense")
    ax.set_xlabel("epoch")
    ax.set_ylabel(unit)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_lut(path: Path, out: Path) -> Path:
    """`hiap report lut.json`: latency per branch against width, one panel per part, so a user sees the device's
    steps (alignment cliffs, the fixed cost of a branch)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hiap.base.lut import read_lut

    lut = read_lut(path)
    batches = sorted(lut.tables)
    fig, axes = plt.subplots(len(batches), 2, figsize=(10, 3.6 * len(batches)), squeeze=False)
    for (ax1, ax2), batch in zip(axes, batches, strict=True):
        cells = lut.tables[batch]
        for i, (h, row) in enumerate(zip(lut.heads, cells.attention, strict=True)):
            ax1.plot(lut.value_widths, [lut.branch_ms(c, batch) for c in row], marker="o", color=f"C{i}",
                     label=f"{h} heads")  # fmt: skip
        for i, (h, row) in enumerate(zip(lut.heads, cells.attention_qk, strict=True)):  # the q/k axis, if any
            ax1.plot(lut.qk_widths, [lut.branch_ms(c, batch) for c in row], marker="x", linestyle="--",
                     color=f"C{i}", label=f"{h} heads, q/k width")  # fmt: skip
        width = "value width (o) or q/k width (x, dashed)" if lut.qk_widths else "value width"
        ax1.set_xlabel(f"{width} per head (--align {lut.align})")
        ax1.set_ylabel("ms per attention branch")
        ax1.set_ylim(bottom=0)
        ax1.set_title(f"attention, batch {batch}")
        ax1.legend(fontsize=7)
        ax2.plot(lut.ffn_widths, [lut.branch_ms(c, batch) for c in cells.ffn], marker=".")
        ax2.set_xlabel("FFN neurons")
        ax2.set_ylabel("ms per FFN branch")
        ax2.set_ylim(bottom=0)
        ax2.set_title(f"FFN, batch {batch} (outside the blocks: {cells.fixed.ms:.3g} ms)")
    fig.suptitle(f"{lut.model} on {lut.device} ({lut.runtime}, {lut.precision})", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def make_report(run: Path, out: Path | None = None) -> list[Path]:
    """Write topology.png, annealing.png and macs.png (latency.png for a latency target) for a run; their paths."""
    import matplotlib  # the train extra; the CLI names it when it is missing (hiap.cli.needs_train_extra)

    matplotlib.use("Agg")  # files only: no display on servers and boards
    if not run.is_dir():
        raise HiapError(f"'{run}' is not a run directory (hiap train writes one under runs/).")
    records = _records(run)
    structure, geom = run_structure(run)
    out = out or run / "report"
    out.mkdir(parents=True, exist_ok=True)
    summary_path = run / "summary.json"
    try:
        summary = read_json_object(summary_path, "Run summary", allow_nan=True) if summary_path.is_file() else {}
    except HiapError:
        summary = {}  # only the model name is read from it
    if not isinstance(summary, dict):
        summary = {}
    model = summary.get("model") or run.name
    latency = records[-1].get("target_latency_ms") is not None
    paths = [out / "topology.png", out / "annealing.png", out / ("latency.png" if latency else "macs.png")]
    plot_topology(structure, geom, f"{model}: {records[-1]['hard_gmacs']:.4g} of {geom.dense_macs / 1e9:.4g} GMACs",
                  paths[0])  # fmt: skip
    plot_annealing(records, paths[1])
    if latency:
        plot_latency(records, paths[2])
    else:
        plot_macs(records, geom.dense_macs / 1e9, paths[2])
    return paths
