"""A linear classifier as an ONNX file, written byte by byte (protobuf wire format), so device-side tests have a
model where neither torch nor the onnx package is installed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

INPUT_SIZE = (1, 28, 28)  # the built-in data's images, so `--data builtin` evaluates it


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _int(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _bytes(field: int, payload: bytes | str) -> bytes:
    data = payload.encode() if isinstance(payload, str) else payload
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def _value_info(name: str, dims: tuple[int, ...]) -> bytes:
    shape = b"".join(_bytes(1, _int(1, d)) for d in dims)  # TensorShapeProto.dim[].dim_value
    return _bytes(1, name) + _bytes(2, _bytes(1, _int(1, 1) + _bytes(2, shape)))  # float tensor of that shape


def linear_onnx(path: Path, weight: np.ndarray, metadata: dict[str, str] | None = None) -> Path:
    """input [1, *INPUT_SIZE] -> Flatten -> MatMul(weight [784, classes]) -> logits, opset 17, with metadata_props
    as hiap export writes them (input size, mean/std) unless `metadata` overrides them."""
    w = np.ascontiguousarray(weight, dtype="<f4")
    init = b"".join(_int(1, d) for d in w.shape) + _int(2, 1) + _bytes(8, "weight") + _bytes(9, w.tobytes())
    nodes = (
        _bytes(1, "input") + _bytes(2, "flat") + _bytes(3, "flatten") + _bytes(4, "Flatten"),
        _bytes(1, "flat") + _bytes(1, "weight") + _bytes(2, "logits") + _bytes(3, "head") + _bytes(4, "MatMul"),
    )
    graph = b"".join(_bytes(1, n) for n in nodes) + _bytes(2, "tiny") + _bytes(5, init)
    graph += _bytes(11, _value_info("input", (1, *INPUT_SIZE))) + _bytes(12, _value_info("logits", (1, w.shape[1])))
    meta = {
        "model": "tiny-linear",
        "input_size": json.dumps(list(INPUT_SIZE)),
        "mean": "[0.5]",
        "std": "[0.5]",
        "interpolation": json.dumps("bilinear"),
        "gmacs": json.dumps(w.size / 1e9),
    } | (metadata or {})
    model = _int(1, 8) + _bytes(2, "tests/tiny_onnx.py") + _bytes(7, graph) + _bytes(8, _int(2, 17))
    model += b"".join(_bytes(14, _bytes(1, k) + _bytes(2, v)) for k, v in meta.items())
    path.write_bytes(model)
    return path


def linear_export(folder: Path, seed: int = 0, classes: int = 10) -> Path:
    """folder/model.onnx and the golden.npz hiap export would write beside it (logits computed in numpy)."""
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((int(np.prod(INPUT_SIZE)), classes)).astype(np.float32) * 0.05
    folder.mkdir(parents=True, exist_ok=True)
    x = rng.standard_normal((8, *INPUT_SIZE)).astype(np.float32)
    np.savez(folder / "golden.npz", inputs=x, logits=x.reshape(len(x), -1) @ weight)
    return linear_onnx(folder / "model.onnx", weight)
