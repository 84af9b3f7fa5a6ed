"""INT8 export: the quantized file of the shipped trained model keeps its accuracy, describes itself, and benches;
bad calibration input is refused before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("torch")

from typer.testing import CliRunner  # noqa: E402

from hiap.cli import app  # noqa: E402


def _dense_plan(tmp: Path, model: str = "hiap_vit_fmnist") -> Path:
    from hiap.export.plan import make_plan
    from hiap.gated import GatedViT
    from hiap.models import create_model, data_config

    vit = create_model(model, num_classes=10)
    geom = GatedViT(vit).geometry
    plan = tmp / f"{model}-plan.json"
    plan.write_text(json.dumps(make_plan(model, geom, geom.dense_structure(), data_config(vit), 10).to_dict()))
    return plan


@pytest.fixture(scope="module")
def int8_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped dense checkpoint of the built-in model (trained, 86 % top-1), exported to INT8."""
    tmp = tmp_path_factory.mktemp("int8")
    plan = _dense_plan(tmp)
    result = CliRunner().invoke(app, ["export", "--model", "hiap_vit_fmnist", "--plan", str(plan), "--precision",
                                      "int8", "--out", str(tmp / "export-int8")])  # fmt: skip
    assert result.exit_code == 0, result.output
    return tmp / "export-int8"


def test_int8_export_keeps_the_accuracy_and_is_smaller(int8_export: Path) -> None:
    report = json.loads((int8_export / "export_report.json").read_text())
    assert report["precision"] == "int8" and report["parity"]["passed"]
    check = report["int8_check"]
    # The whole built-in validation split, both files measured on it.
    assert check["images"] == 3000 and check["source"] == "builtin validation split"
    assert check["fp32_top1"] > 85.0 and abs(check["drop_pp"]) <= 1.0
    assert check["agreement"]["top1_agreement"] > 0.98
    assert report["file_bytes"] * 2 <= report["fp32_file_bytes"]
    assert (int8_export / "model.onnx").stat().st_size == report["file_bytes"]
    calibration = report["quantization"]["calibration"]
    assert calibration == {"images": 512, "source": "builtin train split", "available": 12000, "seed": 0}


def test_int8_file_describes_itself_and_uses_standard_operators(int8_export: Path) -> None:
    model = onnx.load(str(int8_export / "model.onnx"))
    meta = {p.key: p.value for p in model.metadata_props}
    fp32_meta = {p.key: p.value for p in onnx.load(str(int8_export / "model-fp32.onnx")).metadata_props}
    assert meta["precision"] == "int8" and fp32_meta["precision"] == "fp32"
    recipe = json.loads(meta["quantization"])
    # 7-bit weights on the CPUs: x86 without VNNI then computes what ARM and OpenVINO compute (no saturation).
    assert recipe["ops"] == "matmul+attention" and recipe["activations"] == "u8" and recipe["reduce_range"]
    assert json.loads(meta["calibration"])["images"] == 512
    assert meta["plan_hash"] == fp32_meta["plan_hash"] and meta["input_size"] == fp32_meta["input_size"]
    ops = [n.op_type for n in model.graph.node]
    # One QuantizeLinear per input of a weight matmul (qkv, proj, fc1, fc2 of 6 blocks, the head) and two per
    # attention matmul (q @ k^T, attn @ v); LayerNorm, softmax, GELU and the residual adds stay in float.
    assert ops.count("QuantizeLinear") == 6 * 4 + 1 + 6 * 2 * 2
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}
    # Counted from the graph, the INT8 file has the FP32 file's MACs and parameters (its int8 weights, not its
    # scales and zero points), so `hiap inspect` reports the same network.
    from hiap.export.onnx_io import onnx_cost

    assert onnx_cost(int8_export / "model.onnx") == onnx_cost(int8_export / "model-fp32.onnx")


def test_int8_golden_holds_the_int8_files_own_logits(int8_export: Path) -> None:
    from hiap.export.onnx_io import ort_run

    golden = np.load(int8_export / "golden.npz")
    x = golden["inputs"]
    int8 = np.concatenate([ort_run(int8_export / "model.onnx", x[i : i + 1]) for i in range(len(x))])
    fp32 = np.concatenate([ort_run(int8_export / "model-fp32.onnx", x[i : i + 1]) for i in range(len(x))])
    assert np.abs(golden["logits"] - int8).max() < 1e-5
    assert np.abs(golden["logits"] - fp32).max() > 1e-3  # so the device is held to what the INT8 file produces


def test_bench_reports_precision_and_compares_across_precisions(int8_export: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = ["bench", str(int8_export / "model.onnx"), "--data", "builtin", "--iterations", "5", "--warmup", "1",
            "--min-seconds", "0", "--compare", str(int8_export / "model-fp32.onnx"), "--json", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code in (0, 1), result.output  # latency budgets may fail on a loaded machine
    bench = json.loads(out.read_text())
    assert bench["precision"] == "int8" and bench["compare"]["dense_precision"] == "fp32"
    assert bench["environment"]["runner"]["precision"] == "int8"
    fidelity = {b["budget"]: b for b in bench["budgets"] if b["budget"].startswith("fidelity")}
    assert all(b["passed"] for b in fidelity.values()), fidelity
    assert fidelity["fidelity_max_abs_diff"]["limit"] == 0.5  # the profile's INT8 limit, not the FP32 one
    assert bench["accuracy"]["dense"]["top1"] - bench["accuracy"]["model"]["top1"] <= 1.0
    assert "int8" in result.output


def test_bench_refuses_a_precision_the_device_does_not_run(int8_export: Path, tmp_path: Path) -> None:
    import yaml

    from hiap.devices.profile import profiles_dir

    body = yaml.safe_load((profiles_dir() / "x86-cpu.yaml").read_text())
    body["precisions"] = ["fp32"]
    profile = tmp_path / "fp32-only.yaml"
    profile.write_text(yaml.safe_dump(body))
    result = CliRunner().invoke(app, ["bench", str(int8_export / "model.onnx"), "--device", str(profile)])
    assert result.exit_code == 2
    assert "is int8 but device 'x86-cpu' runs ['fp32']" in result.output


def test_int8_dynamic_export(tmp_path: Path) -> None:
    plan = _dense_plan(tmp_path, "hiap_vit_fmnist_tiny")
    out = tmp_path / "dyn"
    args = ["export", "--model", "hiap_vit_fmnist_tiny", "--plan", str(plan), "--pretrained", "none",
            "--precision", "int8-dynamic", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "export_report.json").read_text())
    assert report["precision"] == "int8-dynamic" and report["quantization"]["calibration"] is None
    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops and "QuantizeLinear" not in ops
    from hiap.export.onnx_io import onnx_cost

    (macs, params), (fp32_macs, fp32_params) = onnx_cost(out / "model.onnx"), onnx_cost(out / "model-fp32.onnx")
    # + the per-channel weight scales: one per output channel, 1/64 of the weights at this width
    assert macs == fp32_macs and 0 < params - fp32_params <= fp32_params / 64


def _png_folder(root: Path, n: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        cls = root / f"c{i % 2}"
        cls.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(cls / f"{i}.png")
    return root


def test_int8_bad_input_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    plan = _dense_plan(tmp_path, "hiap_vit_fmnist_tiny")
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"an earlier export")
    base = [
        "export",
        "--model",
        "hiap_vit_fmnist_tiny",
        "--plan",
        str(plan),
        "--pretrained",
        "none",
        "--out",
        str(out),
        "--force",
    ]  # fmt: skip  (--force: the input errors must still come first)
    cases = [
        (["--precision", "int4"], "--precision int4: choose fp32, int8, int8-dynamic"),
        (["--precision", "int8", "--calibration-images", "8"], "at least 32 are needed"),
        (["--precision", "int8", "--calibration-data", str(_png_folder(tmp_path / "few", 10))], "holds 10 images"),
        (["--precision", "int8", "--calibration-data", str(tmp_path / "nowhere")], "is not a folder"),
        (["--precision", "int8", "--calibration-method", "mse"], "calibration method 'mse'"),
        (["--calibration-method", "entropy"], "apply to --precision int8 only"),
        (["--precision", "int8", "--max-int8-drop", "nan"], "--max-int8-drop must be a finite number of pp >= 0"),
    ]
    for extra, message in cases:
        result = CliRunner().invoke(app, [*base, *extra])
        assert result.exit_code == 2, (extra, result.output)
        assert message in result.output, (extra, result.output)
        assert "Traceback" not in result.output
        assert sorted(p.name for p in out.iterdir()) == ["model.onnx"]
        assert (out / "model.onnx").read_bytes() == b"an earlier export"
        assert sorted(p.name for p in tmp_path.iterdir() if "out" in p.name) == ["out"]  # nothing staged or failed


def test_int8_calibration_from_a_small_folder_warns(tmp_path: Path) -> None:
    plan = _dense_plan(tmp_path, "hiap_vit_fmnist_tiny")
    data = _png_folder(tmp_path / "data", 40)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["export", "--model", "hiap_vit_fmnist_tiny", "--plan", str(plan),
                                      "--pretrained", "none", "--precision", "int8", "--calibration-data", str(data),
                                      "--out", str(out), "--max-int8-drop", "100"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "calibrating on 40 images, fewer than the 512 asked for" in result.output
    report = json.loads((out / "export_report.json").read_text())
    assert report["quantization"]["calibration"] == {"images": 40, "source": str(data), "available": 40, "seed": 0}


def test_a_plan_only_export_without_training_data_needs_calibration_data(tmp_path: Path) -> None:
    import dataclasses

    from hiap.base.errors import HiapError
    from hiap.export.artifact import Int8Options, export_source
    from hiap.export.quantize import Recipe
    from hiap.export.source import source_from_plan

    src = source_from_plan("hiap_vit_fmnist_tiny", _dense_plan(tmp_path, "hiap_vit_fmnist_tiny"), "none")
    with pytest.raises(HiapError, match="pass --calibration-data ROOT"):
        export_source(dataclasses.replace(src, builtin_data=False), tmp_path / "out", int8=Int8Options(Recipe()))
    assert not (tmp_path / "out").exists()


def test_an_int8_file_that_loses_too_much_is_an_error_with_the_report_kept(tmp_path: Path) -> None:
    from hiap.base.errors import HiapError
    from hiap.export.artifact import Int8Options, _refuse_int8_drop
    from hiap.export.quantize import Recipe

    report = {"int8_check": {"drop_pp": 2.0}}
    with pytest.raises(HiapError, match=r"loses 2.00 pp top-1 against the FP32 file \(limit 1.0 pp"):
        _refuse_int8_drop(report, tmp_path, Int8Options(Recipe(), max_drop_pp=1.0))
    _refuse_int8_drop(report, tmp_path, Int8Options(Recipe(), max_drop_pp=2.5))
    _refuse_int8_drop({"int8_check": {"reason": "no validation data"}}, tmp_path, Int8Options(Recipe()))


def test_int8_for_tensorrt_is_symmetric_and_quantizes_attention(int8_export: Path, tmp_path: Path) -> None:
    from hiap.devices.profile import load_profile
    from hiap.export.device_check import check_onnx

    nano = load_profile("jetson-orin-nano")
    # The ONNX Runtime recipe (u8 activations, attention in float) is refused for TensorRT, and says why.
    cpu_file = check_onnx(int8_export / "model.onnx", nano)
    assert not cpu_file["passed"] and any(line.startswith("error: QuantizeLinear") for line in cpu_file["lines"])
    plan = _dense_plan(tmp_path, "hiap_vit_fmnist_tiny")
    out = tmp_path / "trt"
    result = CliRunner().invoke(app, ["export", "--model", "hiap_vit_fmnist_tiny", "--plan", str(plan),
                                      "--pretrained", "none", "--precision", "int8", "--target", "jetson-orin-nano",
                                      "--out", str(out), "--max-int8-drop", "100"])  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((out / "export_report.json").read_text())
    assert report["quantization"]["recipe"]["activations"] == "s8"
    assert report["quantization"]["recipe"]["ops"] == "matmul+attention"
    assert not report["quantization"]["recipe"]["reduce_range"]  # full 8-bit weights: no pair sums to saturate
    check = report["device_check"]
    assert check["passed"] and check["findings"] == [], check["lines"]  # head size 16, attention quantized
    model = onnx.load(str(out / "model.onnx"))
    inits = {i.name: i for i in model.graph.initializer}
    zero_points = [onnx.numpy_helper.to_array(inits[n.input[2]]) for n in model.graph.node
                   if n.op_type == "QuantizeLinear"]  # fmt: skip
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)
    # Attention left in float: TensorRT runs it, but not as its fused INT8 MHA, and the check says so.
    from hiap.export.quantize import Recipe, quantize_file

    quantize_file(out / "model-fp32.onnx", tmp_path / "float-attention.onnx", Recipe("int8", "minmax", "matmul", "s8"),
                  np.load(out / "golden.npz")["inputs"].repeat(4, axis=0), {})  # fmt: skip
    lines = check_onnx(tmp_path / "float-attention.onnx", nano)["lines"]
    assert lines and all("needs Q/DQ around both attention matmuls" in line for line in lines)


def test_a_graph_the_tools_cannot_quantize_is_one_line_and_writes_nothing(
    int8_export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnxruntime.quantization

    from hiap.base.errors import HiapError
    from hiap.export.quantize import Recipe, quantize_file

    def broken(*_: object, **__: object) -> None:
        raise ValueError("unsupported pattern\nsecond line of detail")

    monkeypatch.setattr(onnxruntime.quantization, "quantize_static", broken)
    out = tmp_path / "int8.onnx"
    x = np.zeros((32, 1, 28, 28), np.float32)
    with pytest.raises(HiapError, match=r"could not quantize .* \(ValueError: unsupported pattern\)\.$"):
        quantize_file(int8_export / "model-fp32.onnx", out, Recipe(), x, {})
    assert not out.exists()


@pytest.mark.openvino
def test_the_int8_file_runs_on_openvino_within_the_int8_fidelity_limits(int8_export: Path, tmp_path: Path) -> None:
    out = tmp_path / "ov.json"
    args = ["bench", str(int8_export / "model.onnx"), "--runtime", "openvino", "--data", "builtin", "--limit", "500",
            "--iterations", "5", "--warmup", "1", "--min-seconds", "0", "--json", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code in (0, 1, 4), result.output
    bench = json.loads(out.read_text())
    assert bench["environment"]["runner"]["runtime"] == "openvino" and bench["precision"] == "int8"
    # OpenVINO's integer kernels are not ONNX Runtime's: close to the golden logits, not equal to them.
    assert 0 < bench["fidelity"]["max_abs_diff"] <= 0.5 and bench["fidelity"]["top1_agreement"] == 1.0
    assert bench["accuracy"]["model"]["top1"] > 80.0
