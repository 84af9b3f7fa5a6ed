import json
from pathlib import Path

import onnx
from onnx import TensorProto, helper
from typer.testing import CliRunner

from hiap.cli import app
from hiap.cost import BlockStructure, Structure
from hiap.devices.profile import load_profile
from hiap.export.compact import build_compact
from hiap.export.device_check import check_onnx
from hiap.export.onnx_io import torch2onnx
from hiap.gated import GatedViT
from hiap.models import create_model


def _export(tmp_path: Path, align: int, opset: int = 17, widths: tuple[int, int] = (11, 16)) -> Path:
    vit = create_model("hiap_vit_fmnist_tiny", num_classes=10).eval()
    geom = GatedViT(vit).geometry  # 4 heads of 16 per block
    block = BlockStructure(heads=(0, 3), value_dims=tuple(tuple(range(w)) for w in widths), ffn=True,
                           neurons=tuple(range(64)))  # fmt: skip
    compact = build_compact(vit, Structure(blocks=(block,) * geom.depth), align=align)
    path = tmp_path / f"m{align}-{opset}.onnx"
    torch2onnx(compact, (1, 28, 28), path, opset=opset)
    return path


def test_uneven_value_width_warns_for_tensorrt_and_align_head_dim_fixes_it(tmp_path: Path) -> None:
    nano = load_profile("jetson-orin-nano")
    for align, widths, emitted in ((8, (7, 5), 8), (1, (11, 5), 11)):
        report = check_onnx(_export(tmp_path, align=align, widths=widths), nano)
        assert report["passed"] and report["opset"] == 17 and report["errors"] == 0
        hits = [f for f in report["findings"] if f["where"].startswith("attention")]
        assert len(hits) == 4  # one per block
        assert all(f"value head width {emitted} differs from the Q/K head width 16" in f["what"] for f in hits)
        assert all("--align 16" in f["fix"] for f in hits)
    padded = check_onnx(_export(tmp_path, align=16, widths=(7, 5)), nano)
    assert padded["findings"] == []
    # ONNX Runtime has no fused-attention rule: the same uneven file has nothing to report there
    assert check_onnx(_export(tmp_path, align=1, widths=(11, 5)), load_profile("x86-cpu"))["findings"] == []


def test_jetpack5_refuses_opset17_layernorm_and_takes_opset16(tmp_path: Path) -> None:
    jp5 = load_profile("jetson-orin-nano-jp5")
    report = check_onnx(_export(tmp_path, align=16, opset=17), jp5)
    assert not report["passed"] and report["errors"] == 1
    assert "LayerNormalization" in report["lines"][0] and "--opset 16" in report["lines"][0]
    ok = check_onnx(_export(tmp_path, align=16, opset=16), jp5)
    assert ok["passed"] and "LayerNormalization" not in ok["operators"]
    assert any("decomposed" in line for line in ok["lines"])
    assert check_onnx(_export(tmp_path, align=16, opset=17), load_profile("jetson-orin-nano"))["findings"] == []


def test_opset_above_the_device_and_unsupported_ops(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.INT64, [None, 2])
    nodes = [helper.make_node("NonZero", ["x"], ["nz"]), helper.make_node("Det", ["x"], ["y"])]
    graph = helper.make_graph(nodes, "g", [x], [y])
    path = tmp_path / "odd.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))
    report = check_onnx(path, load_profile("jetson-agx-orin"))
    assert not report["passed"]
    assert any("opset 21" in line and "--opset 20" in line for line in report["lines"])
    assert any(line.startswith("error: Det") for line in report["lines"])
    # TensorRT's ONNX parser takes NonZero (8.5+) and Hardmax (10.x): not refused.
    assert not any(line.startswith("error: NonZero") for line in report["lines"])


def test_export_target_and_engine_without_tensorrt(tmp_path: Path, exported_pair: dict) -> None:
    plan = exported_pair["pruned"].parent / "plan.json"
    args = ["export", "--model", "hiap_vit_fmnist_tiny", "--plan", str(plan), "--pretrained", "none", "--no-simplify"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "a"), "--target", "jetson-orin-nano-jp5"])
    assert result.exit_code == 1, result.output
    assert "LayerNormalization" in result.output and "will not run on jetson-orin-nano-jp5" in result.output
    report = json.loads((tmp_path / "a" / "export_report.json").read_text())
    assert report["device_check"]["errors"] == 1 and report["parity"]["passed"]
    engine = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "b"), "--format", "engine", "--target",
                                      "jetson-orin-nano"])  # fmt: skip
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert engine.exit_code == 2
        assert "TensorRT is not installed here" in engine.output and "trtexec --onnx=" in engine.output
        assert "--layerPrecisions=" in engine.output and "hiap bench" in engine.output
        assert (tmp_path / "b" / "model.onnx").is_file() and not (tmp_path / "b" / "model.engine").exists()
