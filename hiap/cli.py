"""The `hiap` command line: the one place that ties the packages together (train, inspect; export and bench later)."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

from hiap.errors import HiapError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="hiap: learn which heads, FFN blocks, value dims and neurons of a timm ViT to remove under a MAC budget.",
)
F = TypeVar("F", bound=Callable[..., Any])


def user_errors(fn: F) -> F:
    """Print a HiapError as one line on stderr and exit 2; anything else is a bug and keeps its traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except HiapError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted: the last complete checkpoint is kept; continue with --resume", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


@app.command()
@user_errors
def train(
    model: str = typer.Option(None, help="Built-in 'hiap_vit_fmnist' (default) or a timm ViT name."),
    data: str = typer.Option(None, help="'builtin' (Fashion-MNIST subset, default) or an ImageFolder root."),
    pretrained: str = typer.Option(None, help="'auto' (default), 'none', 'timm', or a .safetensors/.pt file."),
    dense: bool = typer.Option(None, "--dense", help="Train the plain model without gates."),
    target_macs: str = typer.Option(None, help="Fraction of dense MACs (0.5) or absolute (3.1G). Default 0.5."),
    epochs: int = typer.Option(None, help="Training epochs. Default 6."),
    batch_size: int = typer.Option(None, help="Images per step. Default 128."),
    lr: float = typer.Option(None, help="Weight learning rate (AdamW)."),
    gate_lr: float = typer.Option(None, help="Gate-logit learning rate (no weight decay)."),
    lambda_macro: float = typer.Option(
        None, help="Weight of the macro (head) MAC penalty; the controller scales both weights together. Default 2."
    ),
    lambda_micro: float = typer.Option(
        None, help="Weight of the micro (value dim, neuron) MAC penalty. Default 1 (paper: macro:micro = 2:1)."
    ),
    tau_start: float = typer.Option(None, help="Gumbel-Sigmoid temperature at step 0. Default 2.0."),
    tau_end: float = typer.Option(None, help="Temperature at the last step (exponential). Default 0.5."),
    kd: bool = typer.Option(None, "--kd/--no-kd", help="Distil from the frozen dense start (default on)."),
    config: Path = typer.Option(None, help="YAML file of config keys (CLI flags override it)."),
    out: str = typer.Option(None, help="Output directory (default runs/<name>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    seed: int = typer.Option(None, help="Seed of data order, augmentation, gate noise and init. Default 0."),
    device: str = typer.Option(None, help="auto, cpu, cuda or cuda:N."),
) -> None:
    """Train HiAP gates (or a dense model) and write checkpoint, metrics.jsonl, config.yaml and summary.json."""
    from rich.console import Console

    from hiap.config import resolve_config
    from hiap.progress import summary_table
    from hiap.train import Trainer

    values = dict(
        model=model, data=data, pretrained=pretrained, dense=dense, target_macs=target_macs, epochs=epochs,
        batch_size=batch_size, lr=lr, gate_lr=gate_lr, lambda_macro=lambda_macro, lambda_micro=lambda_micro,
        tau_start=tau_start, tau_end=tau_end, kd=kd, out=out, seed=seed, device=device,
    )  # fmt: skip
    cfg = resolve_config(config, values)
    console = Console()
    summary = Trainer(cfg, console, resume=resume).run()
    console.print(summary_table(summary))


@app.command()
@user_errors
def inspect(
    target: str = typer.Argument(..., help="timm model name, run directory, checkpoint, plan.json or .onnx."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Dense and pruned GMACs, params and the per-block structure."""
    from hiap.inspect import inspect_target

    if target.endswith(".onnx"):
        from export.inspect import inspect_onnx

        report = inspect_onnx(Path(target))
        typer.echo(json.dumps(report, indent=2) if as_json else
                   f"{report['model']} ({target}): {report['gmacs']:.5f} GMACs, {report['params']} params counted from "
                   f"the graph, {report['file_bytes'] / 1e6:.2f} MB, plan {report['plan_hash']}")  # fmt: skip
        return
    if target.endswith(".json"):
        from export.inspect import inspect_plan

        report = inspect_plan(Path(target))
    else:
        report = inspect_target(target)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{report['model']} ({report['target']})")
    for col in ("block", "heads", "value widths", "FFN", "neurons", "MMACs"):
        table.add_column(col, justify="right")
    for b in report["blocks"]:
        table.add_row(
            str(b["block"]),
            f"{len(b['heads'])}/{report['num_heads']}",
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


@app.command()
@user_errors
def export(
    run: Path = typer.Argument(None, help="Run directory or checkpoint.safetensors (or use --model and --plan)."),
    model: str = typer.Option(None, help="With --plan: a timm ViT name or the built-in model."),
    plan: Path = typer.Option(None, help="With --model: a plan.json to build the compact network from."),
    pretrained: str = typer.Option("auto", help="With --model: 'auto', 'none', 'timm' or a weights file."),
    format: str = typer.Option("onnx", "--format", help="onnx (engine: see the note printed)."),
    out: Path = typer.Option(None, help="Output directory (default RUN/export)."),
    opset: int = typer.Option(17, help="ONNX opset."),
    align: int = typer.Option(8, help="Pad value widths of a block to a multiple of this (1: no rounding)."),
    dynamic_batch: bool = typer.Option(False, "--dynamic-batch", help="Batch axis dynamic instead of 1."),
    dense: bool = typer.Option(False, "--dense", help="Export the unpruned model the same way."),
    simplify: bool = typer.Option(True, "--simplify/--no-simplify", help="Run onnxsim (re-validated after)."),
) -> None:
    """Freeze the gates into plan.json and write the compact model.onnx, golden.npz and export_report.json."""
    from export.pipeline import export_source, source_from_plan, source_from_run

    if format != "onnx":
        raise HiapError(
            f"--format {format}: only onnx is built so far; build an engine on the device with "
            "'trtexec --onnx=model.onnx --saveEngine=model.engine --fp16' (TensorRT path not yet validated)."
        )
    if (run is None) == (model is None or plan is None):
        raise HiapError("Give either RUN (a run directory or checkpoint) or both --model and --plan.")
    if run is not None:
        src = source_from_run(run, dense=dense)
        target = out or (run if run.is_dir() else run.parent) / ("export-dense" if dense else "export")
    else:
        src = source_from_plan(model, plan, pretrained)
        target = out or plan.parent / "export"
    report = export_source(src, target, opset=opset, align=align, dynamic_batch=dynamic_batch, simplify=simplify)
    from rich.console import Console
    from rich.table import Table

    parity = report["parity"]
    table = Table(title=f"hiap export: {src.model} -> {target}")
    for col in ("", "dense", "exported"):
        table.add_column(col, justify="right")
    table.add_row("GMACs (plan)", f"{report['dense_gmacs']:.5f}", f"{report['gmacs']:.5f}")
    table.add_row("GMACs (ONNX graph)", "", f"{report['onnx_gmacs']:.5f}")
    table.add_row("padding GMACs", "", f"{report['padding_gmacs']:.5f} (--align {align})")
    table.add_row("params", f"{report['dense_params']:,}", f"{report['onnx_params']:,}")
    table.add_row("file MB", "", f"{report['file_bytes'] / 1e6:.2f}")
    table.add_row("parity max abs", "", f"{parity['max_abs_diff']:.2e} ({'passed' if parity['passed'] else 'FAILED'})")
    table.add_row("top-1 agreement", "", f"{parity['top1_agreement']:.0%}")
    table.caption = "plan.json, model.onnx, golden.npz, export_report.json; TensorRT path not yet validated"
    Console().print(table)


def main() -> None:
    app(prog_name="hiap")


if __name__ == "__main__":
    sys.exit(main())
