"""TensorRT build and run: opt-in (`-m tensorrt`), needs tensorrt, cuda-python and an NVIDIA GPU."""

import hashlib
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.tensorrt
pytest.importorskip("tensorrt", exc_type=ImportError)
pytest.importorskip("cuda", exc_type=ImportError)


def test_engine_build_sidecar_and_fidelity(exported_pair: dict, tmp_path: Path) -> None:
    import onnx

    from hiap.runtime.harness import Tolerance, fidelity
    from hiap.runtime.trt_build import build_engine, read_sidecar
    from hiap.runtime.trt_runner import TrtRunner

    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(exported_pair["pruned"].read_bytes())
    engine = tmp_path / "model.engine"
    sidecar = build_engine(onnx_path, engine, fp16=True, timing_cache=tmp_path / "timing.cache",
                           metadata={"plan_hash": "x"})  # fmt: skip
    assert engine.is_file() and (tmp_path / "timing.cache").is_file()
    assert read_sidecar(engine) == sidecar and sidecar["plan_hash"] == "x"
    # Every LayerNormalization of the graph is pinned to FP32, each once (TensorRT >= 8.6 parses it to one layer).
    layernorms = [n.name for n in onnx.load(str(onnx_path)).graph.node if n.op_type == "LayerNormalization"]
    pinned = sidecar["layernorm_fp32_layers"]
    assert len(layernorms) == 8 and len(pinned) == len(set(pinned)) == len(layernorms), (pinned, layernorms)
    assert sidecar["precision"] == "fp16" and sidecar["validated_on_hardware"] is False
    assert sidecar["build"] == {"fp16": True, "layernorm_fp32": True, "workspace_mb": 1024, "max_batch": 32}
    assert sidecar["onnx_sha256"] == hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    assert sidecar["engine_sha256"] == hashlib.sha256(engine.read_bytes()).hexdigest()
    with TrtRunner(engine) as runner:
        result = fidelity(runner, exported_pair["pruned"].with_name("golden.npz"), 1, Tolerance(atol=5e-2))
    assert result.comparison.max_abs_diff < 5e-2 and result.comparison.top1_agreement == 1.0
    bad = json.loads((tmp_path / "model.engine.json").read_text()) | {"tensorrt_version": "0.0"}
    (tmp_path / "model.engine.json").write_text(json.dumps(bad))
    from hiap.base.errors import HiapError

    with pytest.raises(HiapError, match="Engines are not portable"), TrtRunner(engine):
        pass
