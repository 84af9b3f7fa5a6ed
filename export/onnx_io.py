"""ONNX writing and reading: torch2onnx for the compact model, and MACs/parameters counted from the graph itself."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hiap.base.atomic import write_bytes_atomic
from hiap.base.errors import HiapError
from hiap.runtime.ort_runner import default_runner


def torch2onnx(
    model: torch.nn.Module,
    input_size: tuple[int, int, int],
    path: Path,
    opset: int = 17,
    dynamic_batch: bool = False,
    metadata: dict[str, str] | None = None,
) -> None:
    """One self-contained ONNX file (weights inside), input 'input' [1|batch, C, H, W], output 'logits'."""
    import onnx

    model = model.eval()
    x = torch.zeros(1, *input_size)
    buf = io.BytesIO()
    # The TorchScript exporter (dynamo=False: it keeps the compact graph's MatMul/Gemm shapes static and needs no
    # onnxscript rewrite) warns about traced Python branches in timm's forward that are constant for a fixed
    # model; those warnings say nothing to a user.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _export(model, x, buf, opset, dynamic_batch)
    proto = onnx.load_from_string(buf.getvalue())
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    write_bytes_atomic(path, proto.SerializeToString())


def _export(model: torch.nn.Module, x: torch.Tensor, buf: io.BytesIO, opset: int, dynamic_batch: bool) -> None:
    torch.onnx.export(
        model,
        (x,),
        buf,
        input_names=["input"],
        output_names=["logits"],
        opset_version=opset,
        dynamo=False,
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None,
    )


def simplify_onnx(path: Path) -> tuple[int, int]:
    """onnxsim in place (metadata kept); returns (nodes before, nodes after). The caller re-validates the file."""
    import onnx
    import onnxsim

    model = onnx.load(str(path))
    before = len(model.graph.node)
    simplified, ok = onnxsim.simplify(model)
    if not ok:
        raise HiapError(f"onnxsim could not validate its simplification of '{path}': rerun with --no-simplify.")
    del simplified.metadata_props[:]
    simplified.metadata_props.extend(model.metadata_props)
    write_bytes_atomic(path, simplified.SerializeToString())
    return before, len(simplified.graph.node)


def _dims(info: Any) -> list[int]:
    return [d.dim_value for d in info.type.tensor_type.shape.dim]


def load_shaped(path: Path) -> tuple[Any, dict[str, list[int]]]:
    """(model, shape of every tensor) at batch 1: a dynamic batch axis is pinned so inference gives static shapes."""
    import onnx
    from onnx import shape_inference

    try:
        proto = onnx.load(str(path))
        # Count at batch 1: pin a dynamic batch axis so shape inference yields static shapes everywhere.
        pinned = False
        for value in [*proto.graph.input, *proto.graph.output]:
            dims = value.type.tensor_type.shape.dim
            if dims and not dims[0].dim_value:
                dims[0].dim_value, pinned = 1, True
        if pinned:  # the exporter's own shapes carry the symbolic batch: infer again from the pinned input
            del proto.graph.value_info[:]
        proto = shape_inference.infer_shapes(proto, data_prop=True)
    except Exception as exc:
        raise HiapError(f"'{path}' is not a readable ONNX model ({type(exc).__name__}).") from None
    graph = proto.graph
    if not graph.node or not graph.input or not graph.output:
        raise HiapError(f"'{path}' holds no model graph: the file is empty or truncated.")
    shapes = {v.name: _dims(v) for v in [*graph.value_info, *graph.input, *graph.output]}
    shapes.update({i.name: list(i.dims) for i in graph.initializer})
    return proto, shapes


# The data inputs of quantized operators: their integer initializers are the weights (counted as parameters); the
# other inputs of Q/DQ nodes are scales and zero points (not parameters).
_QUANTIZED_DATA_INPUTS = {"DequantizeLinear": (0,), "MatMulInteger": (0, 1), "ConvInteger": (0, 1)}


def onnx_cost(path: Path) -> tuple[int, int]:
    """(MACs, parameters) of an ONNX model at batch 1: MatMul/Gemm/Conv (and their integer forms) from inferred
    shapes; parameters are float initializers and, in an INT8 file, the quantized weights (scales and zero points of
    Q/DQ nodes are not counted; a dynamic-INT8 file's per-channel weight scales are: one per output channel, 1/width
    of its weights)."""
    from onnx import numpy_helper

    proto, shapes = load_shaped(path)
    graph = proto.graph
    macs = 0
    for node in graph.node:
        if node.op_type in ("MatMul", "Gemm", "Conv", "MatMulInteger", "ConvInteger") and not all(
            name in shapes and shapes[name] and all(d > 0 for d in shapes[name])  # [] is an unknown rank
            for name in (node.input[0], node.input[1], node.output[0])
        ):
            raise HiapError(f"'{path}': the shapes around {node.op_type} node '{node.name}' are not static, so its "
                            "MACs cannot be counted (is this an ONNX file from hiap export?).")  # fmt: skip
        if node.op_type in ("MatMul", "MatMulInteger"):
            a, out = shapes[node.input[0]], shapes[node.output[0]]
            macs += int(np.prod(out)) * a[-1]
        elif node.op_type == "Gemm":
            a, out = shapes[node.input[0]], shapes[node.output[0]]
            trans_a = next((at.i for at in node.attribute if at.name == "transA"), 0)
            macs += int(np.prod(out)) * (a[0] if trans_a else a[-1])
        elif node.op_type in ("Conv", "ConvInteger"):
            w, out = shapes[node.input[1]], shapes[node.output[0]]
            macs += int(np.prod(out)) * int(np.prod(w[1:]))
    # Parameters: initializers counted once per consuming node. The exporter deduplicates initializers with
    # equal values (a freshly initialised model has many LayerNorms of ones), so counting distinct initializers
    # would undercount; in a ViT every weight feeds exactly one node, so per-use counting recovers the modules'.
    arrays = {i.name: numpy_helper.to_array(i) for i in graph.initializer if int(np.prod(i.dims)) > 1}
    params = 0
    for node in graph.node:
        data = _QUANTIZED_DATA_INPUTS.get(node.op_type)
        for index, name in enumerate(node.input):
            arr = arrays.get(name)
            if arr is None or (node.op_type == "QuantizeLinear" and index > 0):
                continue
            if data is not None:
                params += arr.size if index in data else 0
            elif arr.dtype.kind == "f":
                params += arr.size
    return macs, params


def zero_params(path: Path) -> int:
    """Parameters (per consuming node, like onnx_cost) held in float initializers that are entirely zero."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    zeros = {}
    for init in graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.dtype.kind == "f" and arr.size > 1 and not arr.any():
            zeros[init.name] = arr.size
    return sum(zeros.get(name, 0) for node in graph.node for name in node.input)


def ort_run(path: Path, x: np.ndarray) -> np.ndarray:
    """First output of an ONNX file for `x` (fed whole) on the CPU provider, through runtime's runner."""
    with default_runner(Path(path)) as runner:
        return runner.infer({runner.inputs[0].name: x})[runner.outputs[0].name]
