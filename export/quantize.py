"""INT8 post-training quantization of an exported FP32 ONNX file with ONNX Runtime's quantization tools: the recipe,
the calibration images and the quantized file's own check against the FP32 file (top-1 and logit agreement)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hiap.base.atomic import write_bytes_atomic
from hiap.base.errors import HiapError
from hiap.base.precision import INT8, INT8_DYNAMIC, ORT, QUANTIZED_PRECISIONS, TRT

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
OP_SETS = ("matmul", "matmul+attention", "all")
# ModelOpt recommends at least 500 calibration images for ViTs; below MIN_CALIBRATION_IMAGES the activation ranges
# are too poorly estimated to ship, so that is refused rather than warned about.
DEFAULT_CALIBRATION_IMAGES = 512
MIN_CALIBRATION_IMAGES = 32
# The quantized file must run on every runtime hiap targets (ONNX Runtime, TensorRT, OpenVINO): standard ONNX
# operators only, none of ONNX Runtime's com.microsoft contrib ops.
STANDARD_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class Recipe:
    """How a file is quantized. `ops`: 'matmul' quantizes the weight matmuls (qkv, proj, fc1, fc2, head) only;
    'matmul+attention' also the two activation-by-activation attention matmuls (what TensorRT's fused INT8 MHA
    needs); 'all' is ONNX Runtime's default operator set (adds, softmax, GELU's parts, the patch conv).
    `activations`: 'u8' (asymmetric, ONNX Runtime's fast path on x86 and ARM CPUs) or 's8' (symmetric, zero point
    0: what TensorRT's explicit quantization accepts). Weights are always signed, symmetric and per channel;
    `reduce_range` keeps them to 7 bits, so x86 CPUs without VNNI (whose u8 x s8 instruction sums pairs into
    saturating 16 bits) compute exactly what VNNI, ARM and OpenVINO compute: the same file, the same classes."""

    precision: str = INT8
    calibration: str = "percentile"
    ops: str = "matmul+attention"
    activations: str = "u8"
    reduce_range: bool = True

    def __post_init__(self) -> None:
        for name, value, allowed in (("precision", self.precision, QUANTIZED_PRECISIONS),
                                     ("calibration method", self.calibration, CALIBRATION_METHODS),
                                     ("operator set", self.ops, OP_SETS),
                                     ("activation type", self.activations, ("u8", "s8"))):  # fmt: skip
            if value not in allowed:
                raise HiapError(f"INT8 {name} '{value}': choose one of {', '.join(allowed)}.")

    @classmethod
    def for_runtime(cls, precision: str, runtime: str = ORT, calibration: str | None = None) -> Recipe:
        """The default chosen on held-out training images (benchmarks/results/quantization.md): percentile
        calibration, every matmul quantized (weights and attention), nothing else; u8 activations for the CPU
        runtimes, s8 for TensorRT (the only INT8 its explicit quantization takes). Dynamic quantization takes the
        weight matmuls only: ONNX Runtime quantizes an activation on the fly only against constant weights."""
        ops = "matmul" if precision == INT8_DYNAMIC else "matmul+attention"
        trt = runtime == TRT  # s8 x s8 on TensorRT has no 16-bit pair sums to saturate: full 8-bit weights
        return cls(precision, calibration or "percentile", ops, "s8" if trt else "u8", reduce_range=not trt)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self) | {"weights": f"s8 symmetric per channel{', 7-bit range' if self.reduce_range else ''}"}
        if self.precision == INT8_DYNAMIC:  # ranges are taken per call: nothing is calibrated
            out |= {"calibration": None, "activations": "u8 per call"}
        return out


def check_graph_domains(graph: Any) -> None:
    """Refuse a quantized graph that uses non-standard operators (it would run on ONNX Runtime only)."""
    odd = sorted({n.op_type for n in graph.node if n.domain not in STANDARD_DOMAINS})
    if odd:
        raise HiapError(f"The quantized graph uses non-standard operators {odd}: TensorRT and OpenVINO cannot read it.")


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over an array of prepared images, fed at the model's batch."""

    def __init__(self, name: str, images: np.ndarray, batch: int) -> None:
        self._feeds: Iterator[dict[str, np.ndarray]] = (
            {name: np.ascontiguousarray(images[i : i + batch])} for i in range(0, len(images) - batch + 1, batch)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """ONNX Runtime's quantizer logs per-tensor notes through the root logger; none of them is the user's concern."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def activation_matmuls(graph: Any) -> list[str]:
    """The MatMul nodes with no constant input: the two attention matmuls of each block (q @ k^T, attn @ v)."""
    constants = {i.name for i in graph.initializer} | {
        o for n in graph.node if n.op_type == "Constant" for o in n.output
    }
    return [n.name for n in graph.node if n.op_type == "MatMul" and not constants & set(n.input)]


def _input_of(graph: Any) -> tuple[str, int]:
    """The model's input name and the batch it is fed with (its fixed batch, or 8 for a dynamic axis)."""
    dim = graph.input[0].type.tensor_type.shape.dim[0]
    return graph.input[0].name, dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else 8


def _run_quantizer(pre: Path, out: Path, recipe: Recipe, calibration: np.ndarray | None) -> None:
    """ONNX Runtime's quantizer on the pre-processed file, as the recipe asks."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    graph = onnx.load(str(pre), load_external_data=False).graph
    ops = None if recipe.ops == "all" else ["MatMul", "Gemm"]
    # ONNX Runtime's MatMulConstBOnly is honoured by its QOperator and dynamic paths only, so with the weight
    # matmuls alone the attention matmuls are kept in float by name.
    exclude = activation_matmuls(graph) if recipe.ops == "matmul" else []
    extra: dict[str, Any] = {"MatMulConstBOnly": recipe.ops == "matmul", "WeightSymmetric": True}
    if recipe.ops != "all":
        # A matmul's output stays float unless its consumer is quantized: quantizing GELU's or LayerNorm's inputs
        # unfuses them (benchmarks/results/quantization.md).
        extra["OpTypesToExcludeOutputQuantization"] = ["MatMul", "Gemm"]
    if recipe.precision == INT8_DYNAMIC:
        quantize_dynamic(str(pre), str(out), op_types_to_quantize=ops or [], per_channel=True,
                         reduce_range=recipe.reduce_range, weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                         extra_options=extra)  # fmt: skip
        return
    assert calibration is not None  # the caller resolves the images before anything is written
    name, batch = _input_of(graph)
    extra["ActivationSymmetric"] = recipe.activations == "s8"
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[recipe.calibration]  # fmt: skip
    quantize_static(str(pre), str(out), _Reader(name, calibration, batch), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=ops, per_channel=True, reduce_range=recipe.reduce_range,
                    activation_type=QuantType.QInt8 if recipe.activations == "s8" else QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=method, nodes_to_exclude=exclude,
                    extra_options=extra)  # fmt: skip


def quantize_file(fp32: Path, out: Path, recipe: Recipe, calibration: np.ndarray | None,
                  metadata: dict[str, str]) -> dict[str, Any]:  # fmt: skip
    """Write the INT8 version of `fp32` to `out` (atomically), with `metadata` as its metadata_props; returns what
    the quantization did (time, node counts). Failures of ONNX Runtime's tools become one-line errors."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hiap-int8-") as tmp:
        pre, quantized = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        try:
            # Shape inference and constant folding first, as ONNX Runtime's quantization guide asks; its own
            # progress chatter is not the user's business.
            with contextlib.redirect_stdout(io.StringIO()), _quiet_root_logger():
                quant_pre_process(str(fp32), str(pre))
                _run_quantizer(pre, quantized, recipe, calibration)
        except HiapError:
            raise
        except Exception as exc:  # ONNX Runtime's tools raise plain Exceptions of every kind
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise HiapError(f"ONNX Runtime could not quantize '{fp32}' ({type(exc).__name__}: {first}).") from None
        model = onnx.load(str(quantized))
        check_graph_domains(model.graph)
        del model.metadata_props[:]
        for key, value in metadata.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        nodes = len(model.graph.node)
        q_nodes = sum(n.op_type in ("QuantizeLinear", "DynamicQuantizeLinear") for n in model.graph.node)
        write_bytes_atomic(out, model.SerializeToString())
    return {"seconds": time.perf_counter() - t0, "nodes": nodes, "quantize_nodes": q_nodes}


def int8_metadata(recipe: Recipe, calibration: dict[str, Any] | None) -> dict[str, str]:
    """What an INT8 file's metadata adds to its FP32 file's (model, geometry, preprocessing, plan hash): its
    precision and how it was quantized."""
    return {
        "precision": recipe.precision,
        "quantization": json.dumps(recipe.to_dict()),
        "calibration": json.dumps(calibration),
    }


@dataclass(frozen=True)
class Images:
    """Prepared images (the device's eval transform), their labels when known, where they came from and how many
    the source holds."""

    x: np.ndarray
    y: np.ndarray | None
    source: str
    available: int

    def describe(self) -> dict[str, Any]:
        return {"images": len(self.x), "source": self.source, "available": self.available}


def calibration_images(data: str | None, builtin_model: bool, pre: Any, n: int) -> tuple[Images, list[str]]:
    """`n` images of the training data (`data`: 'builtin', a training root with train/, or a class-folder tree; None:
    the built-in data for a built-in model), drawn without replacement with seed 0, and warnings to print. Raises
    when there are none or too few to calibrate on."""
    from hiap.runtime.data import builtin_images, sample_image_folder

    if n < MIN_CALIBRATION_IMAGES:
        raise HiapError(f"--calibration-images {n}: at least {MIN_CALIBRATION_IMAGES} are needed to estimate the "
                        f"activation ranges ({DEFAULT_CALIBRATION_IMAGES} recommended).")  # fmt: skip
    if data is None and not builtin_model:
        raise HiapError("INT8 needs calibration images and this export has no training data (a plan-only export): "
                        "pass --calibration-data ROOT (an ImageFolder root with train/, or a class-folder "
                        "tree).")  # fmt: skip
    warnings = []
    if data in (None, "builtin"):
        from hiap.base.builtin_data import load_builtin_arrays

        available = len(load_builtin_arrays()["y_train"])
        picked = np.sort(np.random.default_rng(0).choice(available, size=min(n, available), replace=False))
        x, _ = builtin_images(pre, "train", picked)
        images = Images(x, None, "builtin train split", available)
    else:
        root = Path(data)
        folder = root / "train" if (root / "train").is_dir() else root
        if not folder.is_dir():
            raise HiapError(f"Calibration data '{data}' is not a folder: pass an ImageFolder root with train/ or a "
                            "class-folder tree.")  # fmt: skip
        x, available = sample_image_folder(folder, pre, n)
        images = Images(x, None, str(folder), available)
    if len(images.x) < MIN_CALIBRATION_IMAGES:
        raise HiapError(f"Calibration data '{images.source}' holds {len(images.x)} images; at least "
                        f"{MIN_CALIBRATION_IMAGES} are needed (pass --calibration-data with more).")  # fmt: skip
    if len(images.x) < n:
        warnings.append(f"calibrating on {len(images.x)} images, fewer than the {n} asked for: all that "
                        f"'{images.source}' holds; INT8 ranges from few images are less reliable")  # fmt: skip
    return images, warnings


def validation_images(data: str | None, builtin_model: bool, pre: Any, limit: int) -> tuple[Images | None, str]:
    """The run's validation images with labels (the whole built-in split; `limit` of an ImageFolder's val/, taken
    round-robin over its classes), or None and why not."""
    from hiap.runtime.data import builtin_images, image_folder_batches

    if data in (None, "builtin") and (data == "builtin" or builtin_model):
        x, y = builtin_images(pre, "val")
        return Images(x, y, "builtin validation split", len(y)), ""
    if data is None:
        return None, "no validation data known (a plan-only export)"
    val = Path(data) / "val"
    if not val.is_dir():
        return None, f"the run's validation folder '{val}' is not there"
    try:
        batches = list(image_folder_batches(val, pre, batch_size=256, limit=limit))
    except HiapError as exc:
        return None, f"the run's validation images cannot be read here: {exc}"
    from hiap.runtime.data import image_folder_files

    x, y = np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])
    return Images(x, y, str(val), len(image_folder_files(val)[1])), ""


def compare_files(fp32: Path, int8: Path, images: Images, batch: int) -> dict[str, Any]:
    """Top-1 of both files on the same labelled images and the INT8 logits against the FP32 ones."""
    from hiap.runtime.harness import Tolerance, compare_logits, run_batched
    from hiap.runtime.ort_runner import default_runner

    with default_runner(fp32) as a, default_runner(int8) as b:
        ref, out = run_batched(a, images.x, batch), run_batched(b, images.x, batch)
    diff = compare_logits(ref, out, Tolerance(float("inf"), 0.0))  # reported, judged by the top-1 drop instead
    result: dict[str, Any] = images.describe() | {"agreement": diff.differences()}
    if images.y is not None:
        fp32_top1 = 100.0 * float((ref.argmax(-1) == images.y).mean())
        int8_top1 = 100.0 * float((out.argmax(-1) == images.y).mean())
        result |= {"fp32_top1": fp32_top1, "int8_top1": int8_top1, "drop_pp": fp32_top1 - int8_top1}
    return result
