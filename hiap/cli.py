"""The `hiap` command line: the one module that imports all four parts (hiap, export, runtime, devices)."""

from __future__ import annotations

import functools
import json
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer

from hiap.base.errors import HiapError
from hiap.base.jsonfile import parse_json, read_text
from hiap.base.precision import COMPUTE_PRECISIONS, FILE_PRECISIONS, FP32, ORT, PRECISION_NAMES

if TYPE_CHECKING:
    from hiap.devices.host import Host
    from hiap.devices.options import BenchTarget
    from hiap.devices.profile import DeviceProfile
    from hiap.export.artifact import ExportReport

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="hiap: learn which heads, FFN blocks, value dims and neurons of a timm ViT to remove under a MAC budget.",
)
F = TypeVar("F", bound=Callable[..., Any])


# What an interrupted command leaves, by command (a training run is the one with something to continue).
INTERRUPTED = {
    "train": "the last complete checkpoint is kept; continue with --resume",
    "pipeline": "the last complete checkpoint is kept; rerun to continue",
    "export": "nothing was written over (the export is built aside and moved into place only when complete)",
    "profile": "the table was not written",
}
EXIT_INTERNAL = 70  # a bug in hiap (sysexits' EX_SOFTWARE), never 1, which a bench uses for "a budget failed"


def user_errors(fn: F) -> F:
    """Print a HiapError as one line on stderr and exit 2, and a failed read or write of a file (a full disk, a
    read-only folder) the same way; anything else is a bug: its traceback, a line saying so, exit 70."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except HiapError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            left = INTERRUPTED.get(fn.__name__, "nothing was reported")
            typer.echo(f"interrupted: {left}", err=True)
            raise typer.Exit(130) from None
        except OSError as exc:  # ENOSPC, EACCES, EROFS, ...: the environment, said in one line
            where = f": '{exc.filename}'" if exc.filename else ""
            typer.echo(f"error: {exc.strerror or type(exc).__name__}{where}.", err=True)
            raise typer.Exit(2) from None
        except MemoryError:
            typer.echo(f"error: hiap {fn.__name__} ran out of memory: use a smaller --batch-size or model, or a "
                       "larger host.", err=True)  # fmt: skip
            raise typer.Exit(EXIT_INTERNAL) from None
        except Exception as exc:
            if type(exc).__module__.split(".")[0] in ("click", "typer"):  # the CLI library's own exits and usage errors
                raise
            traceback.print_exc()
            typer.echo(f"error: internal error in hiap {fn.__name__} (a bug): please report it with the traceback "
                       "above.", err=True)  # fmt: skip
            raise typer.Exit(EXIT_INTERNAL) from None

    return wrapper  # type: ignore[return-value]


# Import names of the packages in pyproject's `train` extra, which the device install (`pip install hiap`) lacks.
TRAIN_EXTRA = frozenset({"torch", "torchvision", "timm", "safetensors", "onnx", "onnxscript", "onnxsim", "matplotlib"})


def needs_train_extra(fn: F) -> F:
    """A command that runs torch or the ONNX tools says which extra it needs, as a HiapError, when one of those
    packages is missing (the light device install); a missing submodule of an installed package is a broken
    install, not a missing extra, and keeps its traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ModuleNotFoundError as exc:
            if exc.name not in TRAIN_EXTRA:
                raise
            raise HiapError(
                f"hiap {fn.__name__} needs the training extra ({exc.name} is not installed): pip install 'hiap[train]'"
            ) from None

    return wrapper  # type: ignore[return-value]


@app.command()
@user_errors
@needs_train_extra
def train(
    model: str = typer.Option(None, help="Built-in 'hiap_vit_fmnist' (default) or a timm ViT name."),
    model_kwargs: list[str] = typer.Option(
        None, help="Model constructor arguments KEY=VALUE ... (timm's), e.g. img_size=32 patch_size=4 depth=6."
    ),
    data: str = typer.Option(None, help="'builtin' (Fashion-MNIST subset, default) or an ImageFolder root."),
    pretrained: str = typer.Option(None, help="'auto' (default), 'none', 'timm', or a .safetensors/.pt file."),
    dense: bool = typer.Option(None, "--dense", help="Train the plain model without gates."),
    target_macs: str = typer.Option(None, help="Fraction of dense MACs (0.5) or absolute (3.1G). Default 0.5."),
    target_tolerance: float = typer.Option(
        None, help="Relative distance from the target that still counts as landed (exit 3 beyond). Default 0.01."
    ),
    target_latency_ms: float = typer.Option(
        None, help="Latency budget instead of MACs: the exported network's latency (ms) on the device of --lut."
    ),
    lut: str = typer.Option(None, help="The device's latency table (lut.json from hiap profile)."),
    latency_batch: int = typer.Option(None, help="Batch size of the latency target (a batch in the table). Default 1."),
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
    crop_pad: int = typer.Option(
        None, help="Random crop of the image padded by N px (0: random-resized-crop; -1 auto: N = size/8 up to 64 px)."
    ),
    scale: tuple[float, float] = typer.Option(None, help="Random-resized-crop area range. Default 0.08 1."),
    ratio: tuple[float, float] = typer.Option(None, help="Random-resized-crop aspect range."),
    hflip: float = typer.Option(None, help="Horizontal flip probability. Default 0.5."),
    color_jitter: float = typer.Option(None, help="Color jitter strength (0: off, the default)."),
    auto_augment: str = typer.Option(None, help="timm policy such as rand-m9-mstd0.5-inc1 (default: none)."),
) -> None:
    """Train HiAP gates (or a dense model) and write checkpoint, metrics.jsonl, config.yaml and summary.json."""
    flags = dict(locals())
    from rich.console import Console

    from hiap.config import TrainConfig, resolve_config
    from hiap.progress import summary_table
    from hiap.train import Trainer

    # The flags named as config keys, by the config's own key list (model_kwargs comes as KEY=VALUE words).
    values = {k: v for k, v in flags.items() if k in TrainConfig.key_names() and k != "model_kwargs"}
    for pair in ("scale", "ratio"):  # typer gives an unset pair as (None, None)
        if values[pair] is not None and values[pair][0] is None:
            values[pair] = None
    if model_kwargs:
        from hiap.models import parse_model_kwargs

        values["model_kwargs"] = parse_model_kwargs(model_kwargs)
    cfg = resolve_config(config, values)
    console = Console()
    trainer = Trainer(cfg, console, resume=resume)
    summary = trainer.run()
    if trainer.dist.is_main:  # under torchrun, one table
        console.print(summary_table(summary))
    _refuse_missed_target(summary, console)


def _refuse_missed_target(summary: dict[str, Any], console: Any) -> None:
    """A run that ended off its MAC target says so loudly and exits 3: its checkpoint is kept (it may still be
    useful), but nothing downstream should take it for a network at the budget."""
    if summary.get("target_met", True):
        return
    if summary.get("target_latency_ms") is not None:
        console.print(f"[bold red]warning: the pruned network's predicted latency is {summary['target_error']:+.2%} "
                      f"off the target {summary['target_latency_ms']:.4g} ms ({summary['predicted_latency_ms']:.4g} "
                      "ms): the schedule was too short or too fast for the controller to land it. Train longer "
                      "(--epochs) or lower --gate-lr.[/]")  # fmt: skip
        raise typer.Exit(3)
    console.print(f"[bold red]warning: the pruned network is {summary['target_error']:+.2%} off the target "
                  f"{summary['target_gmacs']:.4f} GMACs ({summary['pruned_gmacs']:.4f} GMACs): the schedule was "
                  "too short or too fast for the controller to land it. Train longer (--epochs) or lower "
                  "--gate-lr.[/]")  # fmt: skip
    raise typer.Exit(3)


@app.command()
@user_errors
@needs_train_extra
def pipeline(
    config: Path = typer.Option(None, help="YAML of training keys (default: the built-in recipe)."),
    target_macs: str = typer.Option(None, help="Fraction of dense MACs (0.5) or absolute (3.1G). Default 0.5."),
    epochs: int = typer.Option(None, help="Training epochs. Default 6."),
    out: str = typer.Option(None, help="Run directory (default runs/<name>)."),
    device: str = typer.Option(None, "--bench-device", help="Device profile to bench on (default: this host's)."),
    budget_ms: float = typer.Option(None, help="p50 latency budget in ms for the bench (default: the profile's)."),
    max_acc_drop: float = typer.Option(None, help="Largest top-1 drop vs dense, percentage points (default: 1)."),
) -> None:
    """The main job: train the gates, export pruned and dense ONNX, and bench both on this host (exit codes as
    hiap bench: 1 on a missed budget, 4 when one could not be measured). With no options it runs the built-in
    model on the built-in data, offline."""
    from rich.console import Console

    from hiap.base.atomic import write_json_atomic
    from hiap.config import resolve_config
    from hiap.devices.bench import run_bench
    from hiap.devices.options import BenchOptions
    from hiap.export.artifact import export_folder, export_source
    from hiap.export.source import source_from_run
    from hiap.progress import summary_table
    from hiap.render import print_bench, print_export
    from hiap.train import Trainer

    if int(__import__("os").environ.get("WORLD_SIZE", "1")) > 1:
        raise HiapError("hiap pipeline runs in one process (it benches on this host); under torchrun use hiap train, "
                        "then hiap export and hiap bench once.")  # fmt: skip
    # Before training: an unknown or mismatched device must not cost a training run.
    target = _bench_target(device)
    bench_device = device or target.profile.name
    if target.mismatch:
        raise HiapError(f"{target.mismatch}: the pipeline benches on this host; pick its profile or run hiap bench "
                        "on the device with the exported model.")  # fmt: skip
    cfg = resolve_config(config, {"target_macs": target_macs, "epochs": epochs, "out": out})
    console = Console()
    console.rule("1/3 train")
    summary = Trainer(cfg, console).run()
    console.print(summary_table(summary))
    _refuse_missed_target(summary, console)  # before exporting a network that is not at the budget
    run = Path(summary["run_dir"])
    console.rule("2/3 export")
    for dense in (False, True):
        src = source_from_run(run, dense=dense)
        out_dir = export_folder(run, dense)
        print_export(export_source(src, out_dir), src.model, out_dir, 8)
    console.rule(f"3/3 bench on {bench_device}")
    # The run's own data (an ImageFolder root resolves to its val/), so accuracy is measured for every run.
    opts = BenchOptions(data=cfg.data, compare=export_folder(run, dense=True) / "model.onnx", budget_ms=budget_ms,
                        max_acc_drop=max_acc_drop)  # fmt: skip
    report = run_bench(export_folder(run) / "model.onnx", target, opts)
    write_json_atomic(run / "bench.json", report.to_dict())
    print_bench(report)
    console.print(f"run, exports and bench.json in {run}")
    if report.exit_code:
        raise typer.Exit(report.exit_code)


@app.command()
@user_errors
@needs_train_extra
def report(
    run: Path = typer.Argument(..., help="Run directory written by hiap train, or a lut.json from hiap profile."),
    out: Path = typer.Option(None, help="Folder for the PNGs (default RUN/report; a table's: beside it)."),
) -> None:
    """Plot a run (pruned topology per block, temperature and gate polarisation, MACs or latency vs target over
    training) or a device's latency table (ms per branch against width)."""
    from hiap.report import make_report, plot_lut

    if run.suffix == ".json":
        typer.echo(f"wrote {plot_lut(run, (out or run.parent) / (run.stem + '.png'))}")
        return

    for path in make_report(run, out):
        typer.echo(f"wrote {path}")


@app.command()
@user_errors
@needs_train_extra
def inspect(
    target: str = typer.Argument(
        ..., help="timm model name, run directory, checkpoint, export folder, plan.json, save_pruned file or .onnx."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Dense and pruned GMACs, params and the per-block structure; or a latency table (lut.json) as rows."""
    path = Path(target)
    if path.suffix in (".json", ".onnx", ".safetensors") or "/" in target:
        if not path.exists():
            raise HiapError(f"'{target}' does not exist: pass a timm model name, run directory, checkpoint, export "
                            "folder, plan.json, lut.json, save_pruned weights or .onnx file.")  # fmt: skip
        if not path.is_file() and not path.is_dir():
            raise HiapError(f"'{target}' is not a regular file.")
    body = _lut_body(path) if target.endswith(".json") else None
    if body is not None:  # torch-free: a board reads the table it measured
        from hiap.base.lut import parse_lut

        lut = parse_lut(body, target)
        if as_json:
            typer.echo(json.dumps(lut.body, indent=2))
        else:
            from hiap.render import print_lut

            print_lut(path, lut)
        return
    from hiap.inspect import inspect_target

    if target.endswith(".onnx"):
        from hiap.export.inspect import inspect_onnx

        report = inspect_onnx(path)
        typer.echo(json.dumps(report, indent=2) if as_json else
                   f"{report['model']} ({target}): {report['gmacs']:.5f} GMACs, {report['params']} params counted from "
                   f"the graph, {report['file_bytes'] / 1e6:.2f} MB, plan {report['plan_hash']}")  # fmt: skip
        return
    if target.endswith(".json"):
        from hiap.export.inspect import inspect_plan

        report = inspect_plan(Path(target))
    else:
        from hiap.api import PLAN_KEY
        from hiap.export.inspect import inspect_planned

        # An export folder or save_pruned's weights hold a plan and no checkpoint; the rest is the core's.
        report = (inspect_planned(path, PLAN_KEY) if path.exists() else None) or inspect_target(target)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    from hiap.render import print_inspect

    print_inspect(report)


@app.command()
@user_errors
@needs_train_extra
def profile(
    device: str = typer.Option(None, help="Device profile name or .yaml (default: the one matching this host)."),
    model: str = typer.Option(None, help="Built-in 'hiap_vit_fmnist' (default) or a timm ViT name: the geometry."),
    model_kwargs: list[str] = typer.Option(None, help="Model constructor arguments KEY=VALUE ..., as hiap train."),
    out: Path = typer.Option(Path("lut.json"), help="The latency table to write."),
    probes: Path = typer.Option(
        None, help="Measure this probe folder (from --probes-only) instead of making one: the device side, no torch."
    ),
    probes_only: Path = typer.Option(
        None, help="Only write the probe folder here (the workstation side); measure it on the device with --probes."
    ),
    align: int = typer.Option(8, help="The --align hiap export will use: value widths are measured on its grid."),
    ffn_step: int = typer.Option(16, help="FFN widths are measured every this many neurons."),
    chain: int = typer.Option(4, help="Copies of a branch per probe (timed in company, as in a network)."),
    batch: list[int] = typer.Option(None, help="Batch sizes to measure (default 1 and the profile's batch)."),
    runtime: str = typer.Option(None, help="CPU profiles: onnxruntime or openvino (default: the profile's)."),
    iterations: int = typer.Option(None, help="Timed calls per probe (default: the profile's protocol)."),
    warmup: int = typer.Option(None, help="Untimed calls per probe (default: the profile's protocol)."),
    rounds: int = typer.Option(
        20, help="Rounds the calls are split into, every probe timed once per round (fewer: faster, on a quiet board)."
    ),
    allow_mismatch: bool = typer.Option(False, "--allow-mismatch", help="Measure another device's profile here."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out table."),
    precision: str = typer.Option(
        FP32,
        help="fp32, int8 or int8-dynamic (quantized probes), bf16 or fp16 (FP32 probes on OpenVINO at that "
        "precision): the precision the network will be deployed at.",
    ),
) -> None:
    """Measure the device's latency table (lut.json) for a model geometry: what --target-latency-ms trains to.

    On one machine it makes the probes and times them. For a board: --probes-only DIR on the workstation, copy DIR
    to the board, hiap profile --probes DIR --device NAME there (needs only the device install)."""
    from rich.console import Console

    from hiap.base.lut import PROBE_MANIFEST

    console = Console()
    if probes is not None and (model or model_kwargs or probes_only):
        raise HiapError("--probes measures a probe folder as it was made: drop --model, --model-kwargs, --probes-only.")
    if probes_only is None and out.exists() and not force:
        raise HiapError(f"'{out}' exists: pass --force to replace it, or --out another file.")
    if probes_only is not None and (probes_only / PROBE_MANIFEST).exists() and not force:
        raise HiapError(f"'{probes_only}' holds a probe set already: pass --force to replace it, or another folder.")
    # The profile decides the batches to write probes for, and is what the timing is judged against.
    target = _bench_target(device) if device is not None or probes_only is None else None
    if probes_only is None and target is not None and target.mismatch and not allow_mismatch:
        raise HiapError(f"{target.mismatch}. Measure the table on the device itself, or pass --allow-mismatch to "
                        f"measure {target.profile.name}'s runner here.")  # fmt: skip
    batches = tuple(batch) if batch else tuple(sorted({1, target.profile.batch if target else 1}))
    lowered = precision if precision in COMPUTE_PRECISIONS else None
    if precision not in PRECISION_NAMES:
        raise HiapError(f"--precision {precision}: choose fp32, int8, int8-dynamic, bf16 or fp16.")
    if probes_only is not None:
        device_runtime = target.profile.runtime if target else ORT
        manifest = _write_probes(model, model_kwargs, probes_only, align, ffn_step, batches, chain, console,
                                 FP32 if lowered else precision, device_runtime)  # fmt: skip
        console.print(f"wrote {len(manifest['probes'])} probes to {probes_only}: copy the folder to the device and "
                      f"run hiap profile --probes {probes_only} --device NAME there")  # fmt: skip
        return
    from hiap.base.lut import parse_lut, write_lut
    from hiap.devices.lut import measure_lut

    assert target is not None
    with console.status("timing probes") as status:
        if probes is not None:  # the device side: no torch, the folder as it was made
            body = measure_lut(probes, target.profile, runtime=runtime, iterations=iterations, warmup=warmup,
                               batches=batches if batch else None, rounds=rounds, precision=lowered,
                               progress=lambda i, n: status.update(f"timing probes: round {i}/{n}"))  # fmt: skip
        else:
            from hiap.export.probes import profile_model
            from hiap.models import DEFAULT_MODEL, check_model_name, parse_model_kwargs

            name = model or DEFAULT_MODEL
            check_model_name(name)
            body = profile_model(name, parse_model_kwargs(model_kwargs) if model_kwargs else {}, target.profile,
                                 align=align, ffn_step=ffn_step, batches=batches, chain=chain, runtime=runtime,
                                 iterations=iterations, warmup=warmup, rounds=rounds, precision=precision,
                                 progress=lambda stage, i, n: status.update(f"{stage}: {i}/{n}"))  # fmt: skip
    if target.mismatch:
        body["measured_elsewhere"] = target.mismatch
    write_lut(out, body)
    table = parse_lut(body, str(out))
    qk = f" (and {len(table.heads)}x{len(table.qk_widths)} at q/k widths)" if table.qk_widths else ""
    console.print(f"wrote {out}: {table.model} on {table.describe()}, {len(table.heads)}x{len(table.value_widths)} "
                  f"attention{qk} and {len(table.ffn_widths)} FFN cells at batch "
                  f"{', '.join(str(b) for b in sorted(table.tables))}")  # fmt: skip
    if not body.get("validated", True):
        console.print(f"[yellow]note:[/] {body['note']}")


def _write_probes(model: str | None, model_kwargs: list[str] | None, folder: Path, align: int, ffn_step: int,
                  batches: tuple[int, ...], chain: int, console: Any, precision: str = FP32,
                  runtime: str = ORT) -> dict[str, Any]:  # fmt: skip
    """The probe set of a model geometry written to `folder` (hiap profile's workstation side); its manifest."""
    from hiap.export.probes import make_probes
    from hiap.models import DEFAULT_MODEL, check_model_name, parse_model_kwargs

    name = model or DEFAULT_MODEL
    check_model_name(name)
    kwargs = parse_model_kwargs(model_kwargs) if model_kwargs else {}
    with console.status("writing probes") as status:
        return make_probes(name, kwargs, folder, align=align, ffn_step=ffn_step, batches=batches, chain=chain,
                           progress=lambda i, n: status.update(f"writing probes {i}/{n}"), precision=precision,
                           runtime=runtime)  # fmt: skip


def _lut_body(path: Path) -> dict[str, Any] | None:
    """The body of a latency table at `path`; None for a plan (the plan reader checks it). A file that is not JSON
    is refused here, naming neither: it may have been meant as either."""
    body = parse_json(read_text(path, "File"), f"'{path}' (a plan or latency table)")
    return body if isinstance(body, dict) and body.get("schema") == "hiap-lut" else None


@app.command()
@user_errors
@needs_train_extra
def export(
    run: Path = typer.Argument(None, help="Run directory or checkpoint.safetensors (or use --model and --plan)."),
    model: str = typer.Option(None, help="With --plan: a timm ViT name or the built-in model."),
    plan: Path = typer.Option(None, help="With --model: a plan.json to build the compact network from."),
    pretrained: str = typer.Option("auto", help="With --model: 'auto', 'none', 'timm' or a weights file."),
    format: str = typer.Option("onnx", "--format", help="onnx, or engine (TensorRT, built where it will run)."),
    out: Path = typer.Option(None, help="Output directory (default RUN/export)."),
    opset: int = typer.Option(17, help="ONNX opset."),
    align: int = typer.Option(8, help="Pad value widths of a block to a multiple of this (1: no rounding)."),
    dynamic_batch: bool = typer.Option(False, "--dynamic-batch", help="Batch axis dynamic instead of 1."),
    dense: bool = typer.Option(False, "--dense", help="Export the unpruned model the same way."),
    simplify: bool = typer.Option(True, "--simplify/--no-simplify", help="Run onnxsim (re-validated after)."),
    target: str = typer.Option(None, help="Device profile to check the ONNX against (opset, operators, attention)."),
    precision: str = typer.Option(
        FP32, help="fp32, int8 (static Q/DQ, calibrated on the run's training images) or int8-dynamic."
    ),
    calibration_images: int = typer.Option(512, help="INT8: calibration images drawn from the training data."),
    calibration_data: str = typer.Option(
        None, help="INT8: 'builtin', an ImageFolder root (its train/) or a class-folder tree (default: the run's data)."
    ),
    calibration_method: str = typer.Option(None, help="INT8: percentile (default), minmax or entropy."),
    eval_images: int = typer.Option(10_000, help="INT8: validation images the INT8-vs-FP32 check runs on (at most)."),
    max_int8_drop: float = typer.Option(1.0, help="INT8: the largest top-1 drop (pp) against the FP32 file accepted."),
    lut: Path = typer.Option(
        None, help="A device's latency table: record its predicted latency (default: the table the run trained to)."
    ),
    force: bool = typer.Option(False, "--force", help="Replace a folder that holds another export (or files)."),
) -> None:
    """Freeze the gates into plan.json and write the compact model.onnx, golden.npz and export_report.json."""
    from hiap.export.artifact import Int8Options, export_folder, export_source, export_target
    from hiap.export.source import source_from_plan, source_from_run

    if format not in ("onnx", "engine"):
        raise HiapError(f"--format {format}: choose onnx or engine.")
    if precision not in FILE_PRECISIONS:
        raise HiapError(f"--precision {precision}: choose {', '.join(FILE_PRECISIONS)}.")
    # Resolved once: checked here, by the export's device check and for the engine build.
    profile = export_target(target, engine=format == "engine")
    int8 = Int8Options.asked(precision, profile, calibration_images, calibration_data, calibration_method,
                             eval_images, max_int8_drop)  # fmt: skip
    if (run is None) == (model is None or plan is None):
        raise HiapError("Give either RUN (a run directory or checkpoint) or both --model and --plan.")
    if run is not None:
        src = source_from_run(run, dense=dense)
        out_dir = out or export_folder(run if run.is_dir() else run.parent, dense, precision)
    else:
        src = source_from_plan(model, plan, pretrained)
        out_dir = out or export_folder(plan.parent, dense, precision)
    report = export_source(src, out_dir, opset=opset, align=align, dynamic_batch=dynamic_batch, simplify=simplify,
                           target=profile, int8=int8, lut=lut, force=force)  # fmt: skip
    from hiap.render import print_export

    print_export(report, src.model, out_dir, align)
    check = report.get("device_check")
    if format == "engine" and profile is not None and (check is None or check["passed"]):
        _export_engine(out_dir, report, profile, dynamic_batch)
    if check is not None and not check["passed"]:
        typer.echo(f"error: model.onnx will not run on {check['device']} as exported (see above).", err=True)
        raise typer.Exit(1)


def _export_engine(out_dir: Path, report: ExportReport, profile: DeviceProfile, dynamic_batch: bool) -> None:
    from hiap.export.engine import export_engine
    from hiap.runtime.trt_env import NOT_VALIDATED

    sidecar = export_engine(out_dir, report["metadata"], profile, dynamic_batch)
    engine_path = out_dir / "model.engine"
    size_mb = engine_path.stat().st_size / 1e6
    typer.echo(f"wrote {engine_path} ({size_mb:.2f} MB, TensorRT {sidecar['tensorrt_version']} "
               f"on {sidecar['gpu']}, {sidecar['engine_precision']}); {NOT_VALIDATED}")  # fmt: skip


@app.command()
@user_errors
def bench(
    artifact: Path = typer.Argument(..., help="model.onnx or model.engine written by hiap export."),
    device: str = typer.Option(None, help="Device profile name or .yaml (default: the one matching this host)."),
    data: str = typer.Option(
        None,
        help="Also measure top-1: 'builtin', the root 'hiap train --data' took (its val/ is evaluated) or a "
        "class-folder tree. On the run's own validation split the drop is taken against its training accuracy.",
    ),
    golden: Path = typer.Option(None, help="golden.npz for fidelity (default: the one next to ARTIFACT)."),
    budget_ms: float = typer.Option(None, help="p50 latency budget in ms (p99 keeps the profile's p99/p50 ratio)."),
    max_acc_drop: float = typer.Option(None, help="Largest top-1 drop (percentage points) vs the reference."),
    compare: Path = typer.Option(None, help="Dense artifact to run the same way, alternating with ARTIFACT."),
    allow_mismatch: bool = typer.Option(False, "--allow-mismatch", help="Measure another device's profile here."),
    iterations: int = typer.Option(None, help="Timed calls (default: the profile's protocol)."),
    warmup: int = typer.Option(None, help="Untimed calls first (default: the profile's protocol)."),
    min_seconds: float = typer.Option(None, help="Keep timing until this many seconds have passed."),
    limit: int = typer.Option(
        None,
        help="Evaluate N images of --data, taken round-robin over its classes (the same every run; then not the "
        "run's split: no drop vs training).",
    ),
    runtime: str = typer.Option(None, help="CPU profiles: onnxruntime or openvino (default: the profile's)."),
    compare_runtime: str = typer.Option(
        None, help="Run the --compare model (default: ARTIFACT itself) on this runtime, side by side."
    ),
    json_out: Path = typer.Option(None, "--json", help="Write the full report here (JSON)."),
    precision: str = typer.Option(
        None, help="Compute an FP32 file in bf16 or fp16 (OpenVINO, where the profile lists it and the CPU has it)."
    ),
    sweep: bool = typer.Option(
        False, "--sweep", help="Every runtime x precision the profile allows and this host supports, in one table."
    ),
    int8: Path = typer.Option(None, "--int8", help="With --sweep: the INT8 export of the same run, for its rows."),
) -> None:
    """Measure latency, fidelity and accuracy on this device and check every budget of its profile.

    Exit 0: every budget measured and met. 1: a budget failed. 4: none failed but some could not be measured
    (accuracy without --data or on other images than the run validated on, fidelity without golden.npz); the
    last line names them and why. 2: bad input."""
    from hiap.devices.bench import run_bench
    from hiap.devices.options import BenchOptions

    target = _bench_target(device)
    if json_out is not None:  # checked before the bench runs, not after minutes of measuring
        if json_out.is_dir():
            raise HiapError(f"--json '{json_out}' is a directory: give a file name such as {json_out / 'bench.json'}.")
        try:
            json_out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise HiapError(f"--json '{json_out}': cannot create its folder ({exc.strerror}).") from None
    opts = BenchOptions(data=data, golden=golden, budget_ms=budget_ms, max_acc_drop=max_acc_drop,
                        compare=compare, allow_mismatch=allow_mismatch, iterations=iterations, warmup=warmup,
                        min_seconds=min_seconds, limit=limit, runtime=runtime,
                        compare_runtime=compare_runtime, precision=precision)  # fmt: skip
    if sweep:
        _sweep(artifact, int8, target, opts, json_out)
        return
    if int8 is not None:
        raise HiapError("--int8 names the INT8 file of a --sweep; bench it alone as ARTIFACT.")
    from hiap.render import budget_failures, print_bench

    report = run_bench(artifact, target, opts)
    print_bench(report)  # first: what was measured is shown even if the JSON cannot be written
    if json_out is not None:
        from hiap.base.atomic import write_json_atomic

        write_json_atomic(json_out, report.to_dict())
    if report.verdict == "failed":
        typer.echo(budget_failures(report), err=True)
    if report.exit_code:
        raise typer.Exit(report.exit_code)


def _sweep(artifact: Path, int8: Path | None, target: BenchTarget, opts: Any, json_out: Path | None) -> None:
    """hiap bench --sweep: run every combination, print one table and the fastest that meets every budget."""
    from hiap.devices.sweep import run_sweep
    from hiap.render import print_sweep

    report = run_sweep(artifact, int8, target, opts)
    print_sweep(report, target.profile.name, artifact)
    if json_out is not None:  # after the table: what was measured is shown even if the JSON cannot be written
        from hiap.base.atomic import write_json_atomic

        write_json_atomic(json_out, report.to_dict())
    if report.exit_code:
        raise typer.Exit(report.exit_code)


def _bench_target(device: str | None) -> BenchTarget:
    """The profile named by --device (a name, alias or .yaml), or this host's; resolved once, with this host."""
    from hiap.devices.host import detect_host
    from hiap.devices.options import BenchTarget
    from hiap.devices.profile import load_profile

    host = detect_host()
    return BenchTarget.on(load_profile(device) if device is not None else _host_device(host), host)


def _host_device(host: Host) -> DeviceProfile:
    from hiap.devices.host import guess_profile
    from hiap.devices.profile import all_profiles

    profile = guess_profile(host, all_profiles().values())  # fallback profiles last: the CPU one on a GPU box
    if profile is None:
        raise HiapError(f"No device profile matches this host ({host.describe()}): pass --device NAME.")
    return profile


def spread_multi_value_flags(argv: list[str], flags: tuple[str, ...] = ("--model-kwargs",)) -> list[str]:
    """`--model-kwargs a=1 b=2` (timm's train.py convention) -> `--model-kwargs a=1 --model-kwargs b=2`, the form
    the option parser takes: every following word up to the next option belongs to the flag."""
    out: list[str] = []
    current = None
    for word in argv:
        if word.startswith("-"):
            current = word if word in flags else None
            out.append(word)
        elif current is not None and out[-1] != current:
            out += [current, word]
        else:
            out.append(word)
    return out


def main() -> None:
    app(args=spread_multi_value_flags(sys.argv[1:]), prog_name="hiap")


if __name__ == "__main__":
    sys.exit(main())
