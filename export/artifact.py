"""`hiap export`: the artifact folder of a source (plan.json, compact model.onnx, golden.npz, export_report.json),
every file written atomically and checked for parity against the gated reference."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np
import torch

from hiap import __version__
from hiap.base.atomic import write_bytes_atomic, write_json_atomic
from hiap.base.errors import HiapError
from hiap.base.precision import COMPUTE_PRECISIONS, FP32, INT8_DYNAMIC, ORT, TRT
from hiap.cost import Geometry, Structure, structure_macs, structure_params
from hiap.export.compact import check_landing_grid, padded_structure
from hiap.export.onnx_io import onnx_cost, simplify_onnx, torch2onnx, zero_params
from hiap.export.plan import make_plan
from hiap.export.quantize import (
    Images,
    Recipe,
    calibration_images,
    compare_files,
    int8_metadata,
    quantize_file,
    validation_images,
)
from hiap.export.source import Source
from hiap.runtime.harness import Tolerance, compare_logits, run_batched
from hiap.runtime.ort_runner import default_runner

if TYPE_CHECKING:
    from hiap.devices.profile import DeviceProfile

PARITY_TOL = 1e-4
GOLDEN_IMAGES = 8  # real validation images in golden.npz: the bench's fidelity check runs all of them


class Parity(TypedDict):
    """The parity checks of an export: gated reference vs compact model vs ONNX file, on random and real inputs."""

    max_abs_diff: float
    top1_agreement: float
    passed: bool
    checks: list[dict[str, Any]]


class ExportReport(TypedDict, total=False):
    """What an export measured and wrote: export_report.json's content, every key typed here (the keys marked
    INT8 only come with a quantized export, device_check only with a --target)."""

    hiap_version: str
    plan_hash: str
    align: int
    opset: int
    precision: str  # fp32, int8 or int8-dynamic: the precision of model.onnx
    predicted_latency: dict[str, Any] | None  # what a latency table predicts for the exported network, per batch
    gmacs: float  # planned, padded to the align grid as emitted
    unpadded_gmacs: float
    padding_gmacs: float
    params: int
    dense_gmacs: float
    dense_params: int
    onnx_gmacs: float  # counted in the final file
    onnx_params: int
    onnx_params_before_simplify: int
    zero_params_removed_by_onnxsim: int
    file_bytes: int
    simplified: bool
    nodes_before_after_simplify: list[int] | None
    parity: Parity
    counts_match: bool | None  # the file's MACs and params equal the plan's; None for a whole model (not planned)
    golden: dict[str, Any] | None
    golden_reason: str | None
    val_split: dict[str, Any] | None
    val_split_reason: str | None
    seconds: float
    metadata: dict[str, str]  # the ONNX file's own metadata
    notes: list[str]  # what the caller should tell the user (the CLI prints them)
    device_check: dict[str, Any]
    fp32_file: str  # INT8 only, as the four below
    fp32_file_bytes: int
    quantization: dict[str, Any]
    int8_check: dict[str, Any]


@dataclass
class Golden:
    """Real validation images for golden.npz and the fingerprint of their split, or why there are none."""

    inputs: np.ndarray | None
    source: str | None
    reason: str | None = None  # why there are no inputs
    fingerprint: dict[str, Any] | None = None
    split_reason: str | None = None  # why there is no fingerprint (None when there is one, or nothing to say)
    notes: list[str] = field(default_factory=list)  # a user's data that should have been there: said on the console


def _validation_images(src: Source, meta: dict[str, str], n: int) -> Golden:
    """The first `n` images of the split the model validated on, prepared by the device's own preprocessing
    (hiap.runtime.data with the Preprocessing the bench reads from this export's metadata, so its fidelity check
    compares like with like), and the split's fingerprint, which lets the bench tell whether its --data is
    that split."""
    from hiap.runtime.data import (
        Preprocessing,
        builtin_fingerprint,
        builtin_val_batches,
        image_folder_files,
        load_image,
        split_fingerprint,
    )

    pre = Preprocessing.from_metadata(meta, src.origin)
    if src.data is None or src.data == "builtin":
        if not src.builtin_data:
            reason = ("no validation data known (a plan-only export of a model not trained on the built-in data): "
                      "bench fidelity with your own --golden")  # fmt: skip
            return Golden(None, None, reason, split_reason="no validation data known")
        x = next(builtin_val_batches(pre, batch_size=n))[0]
        if src.data is None:  # a plan of the built-in model has no run: it may have been trained on anything
            return Golden(x, "builtin validation split", split_reason="a plan-only export: no training run")
        return Golden(x, "builtin validation split", fingerprint=builtin_fingerprint())
    val = Path(src.data) / "val"
    if not val.is_dir():
        reason = (f"the run's validation folder '{val}' (its config's data) is not there; export where it is to get "
                  "golden.npz and the split fingerprint hiap bench needs to report an accuracy drop")  # fmt: skip
        return Golden(None, None, reason, split_reason=reason, notes=[f"no golden.npz written: {reason}"])
    golden = Golden(None, None)
    try:
        golden.fingerprint = split_fingerprint(val)
    except HiapError as exc:
        golden.split_reason = f"the run's validation folder cannot be listed here: {exc}"
        golden.notes.append(f"no validation split fingerprint recorded: {golden.split_reason}")
    if golden.fingerprint and src.classes and golden.fingerprint["classes"] != src.classes:
        # The folder changed since training: its accuracy is not the run's, so record no fingerprint to match.
        golden.split_reason = (f"'{val}' now has class folders {golden.fingerprint['classes'][:5]}, not the run's "
                               f"{src.classes[:5]}: it is not the split the run validated on")  # fmt: skip
        golden.fingerprint = None
        golden.notes.append(f"no validation split fingerprint recorded: {golden.split_reason}")
    try:
        # Any real images serve the fidelity check (device vs exporter on the same inputs), even from a changed
        # folder: read without the class mapping, exactly as image_folder_batches reads each image.
        files = image_folder_files(val)[1][:n]
        if not files:
            raise HiapError(f"'{val}' holds no images")
        golden.inputs = pre.normalise(np.stack([load_image(f, pre) for f, _ in files]))
        golden.source = str(val)
    except HiapError as exc:
        golden.reason = f"the run's validation images cannot be read here: {exc}"
        golden.notes.append(f"no golden.npz written: {golden.reason}")
    return golden


def _sample_images(src: Source) -> Golden:
    """The caller's own sample inputs as golden.npz's inputs (hiap.api.export): already preprocessed tensors."""
    assert src.golden_inputs is not None
    x = src.golden_inputs.detach().float().cpu().numpy()
    return Golden(x, "sample inputs given to the export", split_reason="sample inputs, not a validation split")


def _inputs(golden: Golden, input_size: tuple[int, int, int], n_random: int = 4) -> dict[str, np.ndarray]:
    """Random inputs, plus the real validation images when there are some."""
    rng = np.random.default_rng(0)
    inputs = {"random": rng.standard_normal((n_random, *input_size)).astype(np.float32)}
    if golden.inputs is not None:
        inputs["validation"] = golden.inputs.astype(np.float32)
    return inputs


def _check(inputs: str, pair: str, ref: np.ndarray, out: np.ndarray) -> dict[str, Any]:
    """One parity check, measured as the bench measures fidelity; it passes within PARITY_TOL at full agreement."""
    diff = compare_logits(ref, out, Tolerance(PARITY_TOL, min_top1_agreement=1.0))
    return {"inputs": inputs, "pair": pair, "max_abs_diff": diff.max_abs_diff, "top1_agreement": diff.top1_agreement,
            "passed": bool(diff)}  # fmt: skip


def _save_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_bytes_atomic(path, buf.getvalue())


@dataclass(frozen=True)
class Sizes:
    """MACs and parameters of the exported network (padded to the align grid) and of the plan's own widths."""

    macs: int
    unpadded_macs: int
    params: int

    @classmethod
    def of(cls, geom: Geometry, structure: Structure, emitted: Structure) -> Sizes:
        return cls(structure_macs(geom, emitted), structure_macs(geom, structure), structure_params(geom, emitted))


@dataclass(frozen=True)
class Int8Options:
    """What `hiap export --precision int8|int8-dynamic` asks for: the recipe, the calibration images (how many, from
    where: None for the run's own training data), how many validation images the check runs on, and the largest
    top-1 drop against the FP32 file that is accepted."""

    recipe: Recipe
    calibration_images: int = 512
    calibration_data: str | None = None
    eval_images: int = 10_000
    max_drop_pp: float = 1.0

    @classmethod
    def asked(cls, precision: str, target: DeviceProfile | None, calibration_images: int = 512,
              calibration_data: str | None = None, calibration_method: str | None = None, eval_images: int = 10_000,
              max_drop_pp: float = 1.0) -> Int8Options | None:  # fmt: skip
        """The quantization `hiap export --precision` asks for (None for FP32): the default recipe of the target's
        runtime (ONNX Runtime without a target), checked."""
        if precision == FP32:
            if calibration_data is not None or calibration_method is not None:
                raise HiapError("--calibration-data and --calibration-method apply to --precision int8 only.")
            return None
        recipe = Recipe.for_runtime(precision, target.runtime if target is not None else ORT, calibration_method)
        if not (math.isfinite(max_drop_pp) and max_drop_pp >= 0):
            raise HiapError(f"--max-int8-drop must be a finite number of pp >= 0, got {max_drop_pp}.")
        return cls(recipe, calibration_images, calibration_data, eval_images, max_drop_pp)


def export_folder(beside: Path, dense: bool = False, precision: str = FP32) -> Path:
    """Where an export goes unless told: export/ (export-dense/ for the dense baseline) beside the run or plan it
    was made from, a quantized file's folder named by its precision, so that it never replaces the FP32 one."""
    return beside / (("export-dense" if dense else "export") + ("" if precision == FP32 else f"-{precision}"))


def export_target(target: str | None, engine: bool) -> DeviceProfile | None:
    """The device profile an export is checked against: `target` (a name or .yaml), or for an engine the default
    TensorRT device; None when neither is asked. An engine for a device that runs no TensorRT is refused."""
    if target is None and not engine:
        return None
    from hiap.devices.profile import all_profiles, default_engine_target, load_profile

    profile = load_profile(target) if target is not None else default_engine_target(all_profiles())
    if engine and profile.runtime != TRT:
        raise HiapError(f"--format engine: device '{profile.name}' runs ONNX Runtime, not TensorRT; export --format "
                        "onnx.")  # fmt: skip
    return profile


def export_source(src: Source, out: Path, opset: int = 17, align: int = 8, dynamic_batch: bool = False,
                  simplify: bool = True, target: DeviceProfile | None = None, int8: Int8Options | None = None,
                  lut: Path | None = None, force: bool = False) -> ExportReport:  # fmt: skip
    """Write plan.json, model.onnx, golden.npz and export_report.json into the folder `out`, built beside it and
    swapped in only when every check has passed (a refused export is left in `out`.failed; a folder holding another
    export is replaced only with `force`). With a `target` profile, also check the ONNX against that device. With
    `int8`, model.onnx is the quantized file (and model-fp32.onnx the float one it was made from), and golden.npz
    holds the quantized file's own logits. With a latency table (`lut`, or the one a latency-targeted run carries),
    the report and the file's metadata say what latency the table predicts for the exported network."""
    _check_options(align, opset)
    check_landing_grid(src.landing_align, align)
    check_export_folder(out, force)  # before minutes of work
    with staged_folder(out) as work:
        return _export_into(work, out, src, opset, align, dynamic_batch, simplify, target, int8, lut)


def check_export_folder(out: Path, force: bool) -> None:
    """Refuse a target that is a file, or a folder holding something, unless `force`. First, an export killed
    between staged_folder's two renames is undone: the old export goes back under its name."""
    for old in _left_by_dead_processes(out, "old"):
        if out.exists():  # the swap finished: the new export is in place
            shutil.rmtree(old, ignore_errors=True)
        else:  # killed between the two renames: the old export goes back under its name
            old.rename(out)
    if out.exists() and not out.is_dir():
        raise HiapError(f"--out '{out}' is a file: give a folder for the export.")
    if out.is_dir() and any(out.iterdir()) and not force:
        what = "an export" if (out / "export_report.json").exists() or (out / "plan.json").exists() else "files"
        raise HiapError(f"'{out}' holds {what} already: pass --force to replace it, or --out another folder.")


@contextlib.contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """A hidden folder beside `out` to build an export in. On success it replaces `out` (two renames: never a
    mix of two exports under the name); on a refusal (HiapError) it becomes `out`.failed; on anything else,
    including a kill, `out` is untouched (a killed export leaves only the hidden folder, removed next time; a kill
    between the two renames leaves the old export under a hidden name, which check_export_folder puts back)."""
    for stale in _left_by_dead_processes(out, "partial"):
        shutil.rmtree(stale, ignore_errors=True)
    work = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        work.mkdir(parents=True)
    except OSError as exc:
        raise HiapError(f"Cannot write the export beside '{out}': {exc.strerror or exc}.") from None
    try:
        yield work
    except HiapError:
        if not any(work.iterdir()):  # refused before writing anything (bad input): nothing to keep
            shutil.rmtree(work, ignore_errors=True)
            raise
        failed = failed_folder(out)
        shutil.rmtree(failed, ignore_errors=True)
        work.rename(failed)
        raise
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
        work.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        work.rename(out)


def _left_by_dead_processes(out: Path, kind: str) -> list[Path]:
    """The hidden `.OUT.<kind>-<pid>` folders beside `out` whose export process is gone (a kill, a crash)."""
    found = sorted(out.parent.glob(f".{out.name}.{kind}-*")) if out.parent.is_dir() else []
    return [f for f in found if not (f.name.rsplit("-", 1)[-1].isdigit() and _alive(int(f.name.rsplit("-", 1)[-1])))]


def failed_folder(out: Path) -> Path:
    return out.parent / f"{out.name}.failed"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _export_into(work: Path, out: Path, src: Source, opset: int, align: int, dynamic_batch: bool, simplify: bool,
                 target: DeviceProfile | None, int8: Int8Options | None, lut: Path | None) -> ExportReport:  # fmt: skip
    """The export written into `work`; refusals name `out`.failed, where the staged folder goes then."""
    t0 = time.perf_counter()
    geom = src.gated.geometry
    precision = FP32 if int8 is None else int8.recipe.precision
    notes: list[str] = []  # what the caller should tell the user (report["notes"]); the library prints nothing
    prediction = predicted_latency(src, align, precision, lut, target, notes)  # a table that does not fit fails here
    emitted = padded_structure(src.structure, geom.head_dim, align)
    sizes = Sizes.of(geom, src.structure, emitted)
    plan = make_plan(src.model, geom, src.structure, src.data_config, src.num_classes, class_names=src.classes,
                     source=src.origin, model_kwargs=src.model_kwargs, align=align)  # fmt: skip
    body = plan.to_dict()
    meta = _metadata(src, body["hash"], geom, sizes, opset, align, dynamic_batch)
    if src.wrapper is not None:  # the file is the user's whole model; the plan is its backbone's
        meta["wrapper"] = json.dumps({"class": type(src.wrapper).__name__, "backbone": src.backbone_path})
    if prediction is not None:
        meta["predicted_latency"] = json.dumps(prediction)
    calibration = _calibration(src, meta, int8, notes) if int8 is not None else None  # before anything is written
    plan.write(work / "plan.json", body)
    compact = src.exported(align)
    golden_src = _sample_images(src) if src.golden_inputs is not None else _validation_images(src, meta, GOLDEN_IMAGES)
    # The bench compares its --data with this to decide whether the training accuracies above apply to it.
    meta["val_split"] = json.dumps(golden_src.fingerprint)
    notes += golden_src.notes
    onnx_path = work / ("model-fp32.onnx" if int8 is not None else "model.onnx")
    torch2onnx(compact, tuple(src.data_config["input_size"]), onnx_path, opset, dynamic_batch, meta)
    # Counted on the exporter's own file first: there every planned weight is an initializer, so its MACs and
    # parameters must equal the plan exactly. onnxsim may then drop constants that are all zeros (the zero biases
    # of randomly initialised weights, added as no-ops), so after it the parameter count may only go down.
    raw_macs, raw_params = onnx_cost(onnx_path)
    raw_zero_params = zero_params(onnx_path) if simplify else 0  # only onnxsim can drop zero constants
    nodes = simplify_onnx(onnx_path) if simplify else None  # the checks below run on the final file
    checks, golden = _parity_checks(src, compact, onnx_path, golden_src, dynamic_batch)
    measured = _measured(onnx_path, sizes, geom, (raw_macs, raw_params, raw_zero_params), nodes, checks, golden,
                         golden_src, whole_model=src.wrapper is not None)  # fmt: skip
    report = ExportReport(hiap_version=__version__, plan_hash=body["hash"], align=align, opset=opset, precision=FP32,
                          predicted_latency=prediction, **measured)  # fmt: skip
    if int8 is not None and report["parity"]["passed"]:
        report |= _quantize(src, onnx_path, work / "model.onnx", meta, int8, calibration, golden, dynamic_batch)
    _write_golden(work / "golden.npz", golden)
    report |= {"seconds": time.perf_counter() - t0, "metadata": meta, "notes": notes}
    model_path = work / "model.onnx"
    if target is not None and model_path.is_file():
        from hiap.export.device_check import check_onnx

        report["device_check"] = check_onnx(model_path, target)
    write_json_atomic(work / "export_report.json", report)
    _refuse_failed_parity(report, failed_folder(out))
    _refuse_int8_drop(report, failed_folder(out), int8)
    return report


def predicted_latency(src: Source, align: int, precision: str, lut: Path | None, target: DeviceProfile | None,
                      notes: list[str]) -> dict[str, Any] | None:  # fmt: skip
    """What the latency table predicts for the exported network, per batch it holds: from `lut`, else the run's own
    table. A table given explicitly must fit (model, device of --target, precision, align) or the export is refused;
    the run's own table is skipped with a note when the export differs from what it was measured for."""
    from hiap.base.lut import geometry_record, read_lut
    from hiap.latency import LatencyCost

    path = lut or src.lut
    if path is None:
        return None
    table = read_lut(path)
    geom = src.gated.geometry
    table.check_geometry(src.model, geometry_record(geom), "the exported model")
    try:
        # An FP32 file is what a bf16 or fp16 deployment runs (the runtime lowers it): such a table predicts it.
        lowered = precision == FP32 and table.precision in COMPUTE_PRECISIONS
        table.check_use(device=target.name if target is not None else None, precision=None if lowered else precision,
                        align=align)  # fmt: skip
    except HiapError as exc:
        if lut is not None:
            raise
        notes.append(f"no latency prediction: {exc}")
        return None
    ms = {str(b): round(LatencyCost(table, geom, src.model, b).structure_ms(src.structure), 6) for b in table.tables}
    return {"device": table.device, "runtime": table.runtime, "precision": table.precision,
            "threads": table.body.get("threads", {}), "align": table.align, "ms": ms, "table": table.digest,
            "validated": table.validated,
            **({"measured_elsewhere": table.measured_elsewhere} if table.measured_elsewhere else {})}  # fmt: skip


def _calibration(src: Source, meta: dict[str, str], int8: Int8Options, notes: list[str]) -> Images | None:
    """The calibration images of a static INT8 export (None for a dynamic one), read before anything is written:
    no data, or too few images, is an error that leaves the output folder as it was."""
    from hiap.runtime.data import Preprocessing

    if int8.recipe.precision == INT8_DYNAMIC:
        return None
    if int8.eval_images < 1:
        raise HiapError(f"--eval-images must be >= 1, got {int8.eval_images}.")
    pre = Preprocessing.from_metadata(meta, src.origin)
    images, warnings = calibration_images(int8.calibration_data or src.data, src.builtin_data, pre,
                                          int8.calibration_images)  # fmt: skip
    for warning in warnings:
        notes.append(f"warning: {warning}")
    return images


def _quantize(src: Source, fp32: Path, out: Path, meta: dict[str, str], int8: Int8Options, calibration: Images | None,
              golden: dict[str, np.ndarray], dynamic_batch: bool) -> dict[str, Any]:  # fmt: skip
    """Quantize the checked FP32 file into `out`, measure it against the FP32 file on the run's validation images,
    and put the quantized file's own logits into golden (what the device must reproduce)."""
    from hiap.runtime.data import Preprocessing

    described = calibration.describe() | {"seed": 0} if calibration is not None else None
    meta |= int8_metadata(int8.recipe, described)  # the report's metadata is the INT8 file's
    done = quantize_file(fp32, out, int8.recipe, calibration.x if calibration is not None else None, meta)
    batch = 8 if dynamic_batch else 1
    if golden:
        from hiap.runtime.harness import run_batched
        from hiap.runtime.ort_runner import default_runner

        with default_runner(out) as runner:
            golden["logits"] = run_batched(runner, golden["inputs"], batch)
    pre = Preprocessing.from_metadata(meta, src.origin)
    images, why_not = validation_images(src.data, src.builtin_data, pre, int8.eval_images)
    check = compare_files(fp32, out, images, batch) if images is not None else {"reason": why_not}
    return {"precision": int8.recipe.precision, "fp32_file": fp32.name, "fp32_file_bytes": fp32.stat().st_size,
            "file_bytes": out.stat().st_size,
            "quantization": {"recipe": int8.recipe.to_dict(), "calibration": described} | done,
            "int8_check": check}  # fmt: skip


def _measured(
    onnx_path: Path,
    sizes: Sizes,
    geom: Geometry,
    raw: tuple[int, int, int],
    nodes: tuple[int, int] | None,
    checks: list[dict[str, Any]],
    golden: dict[str, np.ndarray],
    golden_src: Golden,
    whole_model: bool = False,
) -> dict[str, Any]:
    """export_report.json's measurements: the sizes as planned and as counted in the final file, parity, golden.
    The file of a whole model (a backbone with the user's own parts) holds MACs the plan does not count: its counts
    are reported, not matched (counts_match None)."""
    raw_macs, raw_params, raw_zero_params = raw
    # The final file: re-counted only when onnxsim rewrote it.
    onnx_macs, onnx_params = onnx_cost(onnx_path) if nodes is not None else (raw_macs, raw_params)
    counts_match = None if whole_model else (raw_macs == onnx_macs == sizes.macs and raw_params == sizes.params
                                             and 0 <= raw_params - onnx_params <= raw_zero_params)  # fmt: skip
    return {
        "gmacs": sizes.macs / 1e9,
        "unpadded_gmacs": sizes.unpadded_macs / 1e9,
        "padding_gmacs": (sizes.macs - sizes.unpadded_macs) / 1e9,
        "params": sizes.params,
        "dense_gmacs": geom.dense_macs / 1e9,
        "dense_params": geom.dense_params,
        "onnx_gmacs": onnx_macs / 1e9,
        "onnx_params": onnx_params,
        "onnx_params_before_simplify": raw_params,
        "zero_params_removed_by_onnxsim": raw_params - onnx_params,
        "file_bytes": onnx_path.stat().st_size,
        "simplified": nodes is not None,
        "nodes_before_after_simplify": list(nodes) if nodes else None,
        "parity": _parity_summary(checks),
        "counts_match": counts_match,
        "golden": {"images": len(golden["inputs"]), "source": golden_src.source} if golden else None,
        "golden_reason": golden_src.reason,
        "val_split": golden_src.fingerprint,
        "val_split_reason": golden_src.split_reason,
    }


def _check_options(align: int, opset: int) -> None:
    if align < 1:
        raise HiapError(f"--align must be >= 1, got {align} (1: no rounding).")
    # torch's TorchScript exporter writes up to 20; below 14 ONNX shape inference leaves some of its tensors without a
    # rank, so the exported file's MACs could not be checked against the plan.
    if not 14 <= opset <= 20:
        raise HiapError(f"--opset {opset}: hiap exports opsets 14 to 20 (17 recommended: native LayerNormalization).")


def _metadata(src: Source, plan_hash: str, geom: Geometry, sizes: Sizes, opset: int, align: int,
              dynamic_batch: bool) -> dict[str, str]:  # fmt: skip
    """The ONNX file's own description (model, geometry, plan hash, preprocessing, accuracies), so a device needs
    only the file; values are JSON text."""
    dcfg = src.data_config
    return {
        "hiap_version": __version__,
        "plan_hash": plan_hash,
        "model": src.model,
        "model_kwargs": json.dumps(src.model_kwargs),
        "input_size": json.dumps(list(dcfg["input_size"])),
        "mean": json.dumps(list(dcfg["mean"])),
        "std": json.dumps(list(dcfg["std"])),
        "interpolation": json.dumps(dcfg.get("interpolation", "bicubic")),
        "crop_pct": json.dumps(dcfg.get("crop_pct", 1.0)),
        "class_names": json.dumps(src.classes),
        "reference_val_acc": json.dumps(src.val_acc),
        "dense_val_acc": json.dumps(src.dense_val_acc),
        "gmacs": json.dumps(sizes.macs / 1e9),
        "dense_gmacs": json.dumps(geom.dense_macs / 1e9),
        "params": json.dumps(sizes.params),
        "opset": json.dumps(opset),
        "align": json.dumps(align),
        "dynamic_batch": json.dumps(dynamic_batch),
        "precision": FP32,
    }


def _parity_checks(src: Source, compact: torch.nn.Module, onnx_path: Path, golden_src: Golden,
                   dynamic_batch: bool) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:  # fmt: skip
    """Gated reference vs compact model vs the ONNX file on random and real inputs; the real images and the
    compact model's logits for them become golden.npz."""
    checks, golden = [], {}
    with default_runner(onnx_path) as runner:
        for kind, x in _inputs(golden_src, tuple(src.data_config["input_size"])).items():
            with torch.no_grad():
                ref = src.reference(torch.from_numpy(x)).numpy()
                mid = compact(torch.from_numpy(x)).numpy()
            onnx_out = run_batched(runner, x, len(x) if dynamic_batch else 1)  # a fixed-batch model: row by row
            checks += [_check(kind, "gated-vs-compact", ref, mid), _check(kind, "gated-vs-onnx", ref, onnx_out)]
            if kind == "validation":
                golden = {"inputs": x, "logits": mid}
    return checks, golden


def _write_golden(path: Path, golden: dict[str, np.ndarray]) -> None:
    if golden:  # the folder is new: no golden.npz of an earlier export can be left beside the new file
        _save_npz_atomic(path, golden)


def _parity_summary(checks: list[dict[str, Any]]) -> Parity:
    return {
        "max_abs_diff": max(c["max_abs_diff"] for c in checks),
        "top1_agreement": min(c["top1_agreement"] for c in checks),
        "passed": all(c["passed"] for c in checks),
        "checks": checks,
    }


def _refuse_failed_parity(report: ExportReport, out: Path) -> None:
    """An export whose files disagree with the gated reference or the plan ends in an error (the report stays)."""
    if report["parity"]["passed"] and report["counts_match"] is not False:
        return
    checks = report["parity"]["checks"]
    failed = [f"{c['pair']} on {c['inputs']}: max abs {c['max_abs_diff']:.2e}, top-1 {c['top1_agreement']:.2%}"
              for c in checks if not c["passed"]]  # fmt: skip
    if report["counts_match"] is False:
        failed.append("ONNX MACs/params differ from the plan")
    raise HiapError(f"Export parity failed ({'; '.join(failed)}); report written to {out / 'export_report.json'}.")


def _refuse_int8_drop(report: ExportReport, out: Path, int8: Int8Options | None) -> None:
    """An INT8 file that loses more top-1 than allowed against its FP32 file ends in an error (files and report stay,
    so the user can look)."""
    if int8 is None:
        return
    drop = report.get("int8_check", {}).get("drop_pp")
    if drop is not None and drop > int8.max_drop_pp:
        raise HiapError(f"The INT8 file loses {drop:.2f} pp top-1 against the FP32 file (limit {int8.max_drop_pp} "
                        f"pp, --max-int8-drop); report in {out / 'export_report.json'}. Try --calibration-method "
                        "entropy or percentile, or --precision int8-dynamic.")  # fmt: skip
