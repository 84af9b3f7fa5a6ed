"""Terminal output of a training run: the live progress bar with MACs vs target, and the end-of-run table."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table


class TrainProgress:
    """A rich progress bar over optimizer steps showing epoch, loss, tau, and expected/hard MACs vs target."""

    def __init__(self, console: Console, total_steps: int, done_steps: int, target_fraction: float,
                 budget: str = "macs") -> None:  # fmt: skip
        self.console = console
        self.target = target_fraction
        self.unit = "latency" if budget == "latency" else "MACs"
        self.progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=console,
            transient=False,
        )
        self.task = self.progress.add_task("train", total=total_steps, completed=done_steps, epoch="-", info="")

    def __enter__(self) -> TrainProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.progress.__exit__(et, ev, tb)

    def advance(self, epoch: int, epochs: int, parts: dict[str, float]) -> None:
        if "skipped" in parts:  # a non-finite step dropped under on_nonfinite: skip
            self.progress.update(self.task, advance=1, epoch=f"{epoch}/{epochs}", info="step skipped (non-finite)")
            return
        info = f"loss {parts['loss']:.3f} tau {parts['tau']:.2f}"
        if "expected_frac" in parts:
            info += f" {self.unit} E {parts['expected_frac']:.1%} hard {parts['hard_frac']:.1%}"
            info += f" / target {self.target:.1%}"
        self.progress.update(self.task, advance=1, epoch=f"{epoch}/{epochs}", info=info)

    def epoch_done(self, record: dict[str, Any]) -> None:
        if record.get("target_latency_ms") is not None:
            cost = (f"predicted {record['predicted_latency_ms']:.4g} ms (target {record['target_latency_ms']:.4g}), "
                    f"{record['hard_gmacs'] * 1e3:.2f} MMACs")  # fmt: skip
        else:
            cost = f"hard {record['hard_gmacs'] * 1e3:.2f} MMACs (target {record['target_gmacs'] * 1e3:.2f})"
        self.progress.console.print(
            f"epoch {record['epoch']}: val acc {record['val_acc']:.4f}, {cost}, heads {sum(record['kept_heads'])}, "
            f"neurons {sum(record['kept_neurons'])}, {record['epoch_seconds']:.1f} s"
            + (f", {record['skipped_steps']} non-finite steps skipped so far" if record.get("skipped_steps") else "")
        )


def summary_table(summary: dict[str, Any]) -> Table:
    """Dense vs pruned side by side, then where the files are."""
    dense_run = bool(summary.get("dense"))
    title = f"hiap train{' --dense' if dense_run else ''}: {summary['model']}"
    table = Table(title=title, show_header=True)
    table.add_column("")
    table.add_column("start" if dense_run else "dense", justify="right")
    table.add_column("trained" if dense_run else "pruned", justify="right")
    table.add_row("GMACs", f"{summary['dense_gmacs']:.4f}", f"{summary['pruned_gmacs']:.4f}")
    off = f"{summary['target_error']:+.2%} off" + ("" if summary.get("target_met", True) else ", MISSED")
    if summary.get("target_latency_ms") is not None:
        device = summary["latency_table"]["device"]
        table.add_row(f"latency ms ({device}, table)", f"{summary['dense_latency_ms']:.4g}",
                      f"{summary['predicted_latency_ms']:.4g}")  # fmt: skip
        table.add_row("target ms", "", f"{summary['target_latency_ms']:.4g} ({off})")
    elif summary.get("target_gmacs") is not None:
        table.add_row("target GMACs", "", f"{summary['target_gmacs']:.4f} ({off})")
    table.add_row("params (M)", f"{summary['dense_params'] / 1e6:.3f}", f"{summary['pruned_params'] / 1e6:.3f}")
    heads = summary["kept_heads"]
    table.add_row("heads", f"{summary['num_heads'] * len(heads)}", f"{sum(heads)}")
    table.add_row(
        "value dims",
        f"{summary['num_heads'] * summary['head_dim'] * len(heads)}",
        f"{sum(sum(v) for v in summary['kept_value_dims'])}",
    )
    table.add_row("FFN blocks", f"{len(heads)}", f"{sum(summary['kept_ffn'])}")
    table.add_row("FFN neurons", f"{summary['hidden'] * len(heads)}", f"{sum(summary['kept_neurons'])}")
    table.add_row("val top-1", f"{summary['dense_val_acc']:.4f}", f"{summary['val_acc']:.4f}")
    table.caption = f"run: {summary['run_dir']}  (checkpoint.safetensors, metrics.jsonl, summary.json, config.yaml)"
    return table
