"""Static check of an ONNX file against a device profile: opset, operators, and TensorRT's fused-attention rules.

It runs anywhere (no TensorRT needed) and says, before anything is copied to a board, what the board's runtime
would refuse or run slowly. Sources for the rules (also in ../shared/docs/deployment.md):
- TensorRT 10.x parses ONNX opsets 9..20 (onnx-tensorrt docs/operators.md); TensorRT 8.5 (JetPack 5) has no
  LayerNormalization op, which came with 8.6.
- TensorRT fused attention takes Q [B, N, S, H] and K, V [B, N, S, H]: one head size H for Q, K and V
  (TensorRT developer guide, "Fused Attention"), with 16 <= H <= 256 and H % 8 == 0 for FP16 (TensorRT #2981,
  #3243). A pruned block whose value width differs from its Q/K head width therefore runs unfused.
- TensorRT's explicit quantization reads Q/DQ nodes with signed INT8 and zero point 0 only; its fused INT8 MHA
  needs head sizes 16, 32 or 64 and Q/DQ on the inputs of both attention matmuls (TensorRT #2981, #4167).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hiap.base.precision import FP16, TRT
from hiap.devices.profile import DeviceProfile
from hiap.export.onnx_io import load_shaped

# Operators a hiap ViT export can contain, all in TensorRT's ONNX support matrix since 8.x (LayerNormalization
# since 8.6). An operator outside this list is not necessarily unsupported, only not verified by hiap: a warning.
TRT_VERIFIED_OPS = frozenset(
    [
        "Add",
        "Cast",
        "Concat",
        "Constant",
        "ConstantOfShape",
        "Conv",
        "DequantizeLinear",
        "Div",
        "Equal",
        "Erf",
        "Expand",
        "Flatten",
        "Gather",
        "Gemm",
        "GlobalAveragePool",
        "Identity",
        "LayerNormalization",
        "MatMul",
        "Mul",
        "Pow",
        "QuantizeLinear",
        "Range",
        "ReduceMean",
        "Relu",
        "Reshape",
        "Shape",
        "Sigmoid",
        "Slice",
        "Softmax",
        "Split",
        "Sqrt",
        "Squeeze",
        "Sub",
        "Tanh",
        "Transpose",
        "Unsqueeze",
        "Where",
    ]
)
# Operators TensorRT's support matrix lists as unsupported (a subset that exporters can emit). NonZero (8.5+) and
# Hardmax (10.x) are parsed, so they are not here.
TRT_UNSUPPORTED_OPS = frozenset(["Unique", "StringNormalizer", "SequenceConstruct", "SequenceAt", "Det"])
INT8_MHA_HEAD_SIZES = (16, 32, 64)


@dataclass
class Finding:
    level: str  # "error": the runtime refuses it; "warning": it runs, but slower or unverified
    where: str
    what: str
    fix: str = ""

    def line(self) -> str:
        return f"{self.level}: {self.where}: {self.what}" + (f" Fix: {self.fix}" if self.fix else "")


@dataclass(frozen=True)
class Attention:
    """One attention of the graph: its Q/K and V head sizes, and whether both of its matmuls read quantized
    (DequantizeLinear) inputs, which TensorRT's fused INT8 MHA needs."""

    qk: int
    v: int
    quantized: bool


def _attention_pairs(graph: Any, shapes: dict[str, list[int]]) -> list[Attention]:
    """The attentions of the graph, from MatMul pairs whose both operands are activations:
    scores = Q @ K^T ([.., S, H] x [.., H, S]) followed by out = P @ V ([.., S, S] x [.., S, Hv])."""
    params = {i.name for i in graph.initializer}
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    pairs: list[Attention] = []
    pending: tuple[int, bool] | None = None
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[0] in params or node.input[1] in params:
            continue
        a, b = shapes.get(node.input[0]), shapes.get(node.input[1])
        if not a or not b or len(a) != 4 or len(b) != 4:
            continue
        quantized = all(i in dequantized for i in node.input[:2])
        if pending is None:
            pending = (a[-1], quantized)  # Q @ K^T: contracted dim is the Q/K head size
        else:
            pairs.append(Attention(pending[0], b[-1], pending[1] and quantized))  # P @ V: V's last dim
            pending = None
    return pairs


def _int8_findings(graph: Any, attentions: list[Attention]) -> list[Finding]:
    """What TensorRT's explicit quantization refuses (unsigned or offset INT8) and where its fused INT8 MHA will
    not apply."""
    import onnx
    from onnx import numpy_helper

    inits = {i.name: i for i in graph.initializer}
    zero_points = [inits[n.input[2]] for n in graph.node
                   if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in inits]  # fmt: skip
    findings = []
    if any(z.data_type != onnx.TensorProto.INT8 or numpy_helper.to_array(z).any() for z in zero_points):
        findings.append(Finding("error", "QuantizeLinear", "the file is quantized with unsigned or offset INT8 "
                                "activations (ONNX Runtime's CPU recipe); TensorRT takes signed INT8, zero point 0.",
                                "export with --precision int8 --target <this device> (s8 symmetric)."))  # fmt: skip
    for i, att in enumerate(attentions):
        if att.qk not in INT8_MHA_HEAD_SIZES or att.v != att.qk:
            findings.append(Finding("warning", f"attention {i}", f"head sizes {att.qk}/{att.v} (Q/K, V): TensorRT's "
                                    f"fused INT8 MHA needs one head size of {INT8_MHA_HEAD_SIZES}, so this attention "
                                    "runs as separate kernels."))  # fmt: skip
        elif not att.quantized:
            findings.append(Finding("warning", f"attention {i}", "its matmuls have float inputs: TensorRT's fused "
                                    "INT8 MHA needs Q/DQ around both attention matmuls.",
                                    "export with --target <this device>, which quantizes them."))  # fmt: skip
    return findings


def check_onnx(path: Path, profile: DeviceProfile) -> dict[str, Any]:
    """Findings for this file on this device; `passed` is False when any finding is an error."""
    proto, shapes = load_shaped(path)
    graph = proto.graph
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    ops = sorted({n.op_type for n in graph.node})
    findings: list[Finding] = []
    if opset > profile.max_opset:
        findings.append(Finding("error", "opset", f"the model uses opset {opset}; {profile.name} takes at most "
                                f"{profile.max_opset}.", f"export with --opset {profile.max_opset}."))  # fmt: skip
    if profile.runtime == TRT:
        trt_range = profile.software.tensorrt or ">=10"
        if opset < 9:
            findings.append(Finding("error", "opset", f"opset {opset} is below TensorRT's minimum 9.", "--opset 17"))
        oldest = profile.software.oldest_tensorrt()
        no_layernorm = oldest is not None and oldest < (8, 6)
        if no_layernorm and "LayerNormalization" in ops:
            findings.append(Finding("error", "LayerNormalization", f"TensorRT {trt_range} ({profile.name}) cannot "
                                    "parse the opset-17 LayerNormalization op (native support came with 8.6).",
                                    "export with --opset 16 (LayerNorm decomposed into primitive ops)."))  # fmt: skip
        for op in ops:
            if op in TRT_UNSUPPORTED_OPS:
                findings.append(Finding("error", op, "TensorRT's ONNX parser does not support this operator."))
            elif op not in TRT_VERIFIED_OPS:
                findings.append(Finding("warning", op, "operator not verified by hiap for TensorRT; check "
                                        "onnx-tensorrt's operators.md for your version."))  # fmt: skip
        pinned = profile.trt is not None and profile.trt.layernorm_fp32
        if "LayerNormalization" not in ops and profile.precision == FP16 and pinned:
            findings.append(Finding("warning", "LayerNorm", "LayerNorm is decomposed (opset < 17), so it cannot be "
                                    "pinned to FP32 as one layer; FP16 overflow risk (TensorRT #2564).",
                                    "use opset 17 where the device's TensorRT has LayerNormalization."))  # fmt: skip
        attentions = _attention_pairs(graph, shapes)
        if "QuantizeLinear" in ops:
            findings += _int8_findings(graph, attentions)
        for i, (hq, hv) in enumerate((a.qk, a.v) for a in attentions):
            where = f"attention {i}"
            if hq != hv:
                findings.append(Finding("warning", where, f"value head width {hv} differs from the Q/K head width "
                                        f"{hq}: TensorRT fuses attention only when Q, K and V share one head size, "
                                        "so this block runs as separate MatMul/Softmax kernels.",
                                        f"export with --align {hq} to pad V to the Q/K width (costs MACs; "
                                        "measure both on the device)."))  # fmt: skip
            if not 16 <= hq <= 256:
                findings.append(Finding("warning", where, f"head size {hq} is outside 16..256, where TensorRT's "
                                        "fused attention kernels exist."))  # fmt: skip
            if profile.precision == FP16 and hq % 8:
                findings.append(Finding("warning", where, f"head size {hq} is not a multiple of 8, which FP16 "
                                        "fused attention needs."))  # fmt: skip
    return {
        "device": profile.name,
        "model": str(path),
        "opset": opset,
        "operators": ops,
        "findings": [asdict(f) for f in findings],
        "errors": sum(f.level == "error" for f in findings),
        "warnings": sum(f.level == "warning" for f in findings),
        "passed": not any(f.level == "error" for f in findings),
        "lines": [f.line() for f in findings],
    }


def layernorm_node_names(path: Path) -> list[str]:
    """Names of the LayerNormalization nodes (TensorRT names its layers after them), for trtexec's precisions."""
    import onnx

    return [
        n.name for n in onnx.load(str(path), load_external_data=False).graph.node if n.op_type == "LayerNormalization"
    ]
