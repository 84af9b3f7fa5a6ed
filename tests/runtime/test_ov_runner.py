"""The OpenVINO runner reads hiap's ONNX files (metadata included) and agrees with ONNX Runtime; which runtime a
bench uses is resolved before anything opens, with a fallback that says so where OpenVINO is not installed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tiny_onnx import linear_export
from typer.testing import CliRunner

from hiap.base.errors import HiapError
from hiap.cli import app
from hiap.devices.profile import load_profile
from hiap.devices.runners import resolve_runtime

FAST = ["--iterations", "5", "--warmup", "1", "--min-seconds", "0"]


@pytest.mark.openvino
def test_openvino_runner_matches_onnx_runtime_and_reads_the_metadata(tmp_path: Path) -> None:
    from hiap.runtime.harness import run_batched
    from hiap.runtime.ort_runner import OrtRunner
    from hiap.runtime.ov_runner import OvRunner

    model = linear_export(tmp_path / "m")
    x = np.load(tmp_path / "m" / "golden.npz")["inputs"]
    with OvRunner(model, threads=1) as ov, OrtRunner(model) as ort:
        assert ov.metadata == ort.metadata and json.loads(ov.metadata["input_size"]) == [1, 28, 28]
        assert [(s.name, s.shape, s.dtype) for s in ov.inputs] == [("input", (1, 1, 28, 28), "float32")]
        assert np.abs(run_batched(ov, x, 1) - run_batched(ort, x, 1)).max() < 1e-4
        assert ov.describe()["runtime"] == "openvino" and ov.describe()["precision"] == "fp32"
        assert ov.describe()["inference_precision"] == "f32"  # whatever the CPU plugin would choose by default
        with pytest.raises(HiapError, match="has shape 2x1x28x28 but the model expects 1x1x28x28"):
            ov.infer({"input": np.zeros((2, 1, 28, 28), np.float32)})


@pytest.mark.openvino
def test_bench_runtime_openvino(tmp_path: Path) -> None:
    model = linear_export(tmp_path / "m")
    out = tmp_path / "b.json"
    result = CliRunner().invoke(app, ["bench", str(model), "--device", "x86-cpu", "--runtime", "openvino",
                                      "--json", str(out), *FAST])  # fmt: skip
    assert result.exit_code == 4, result.output  # no --data: accuracy not measured
    report = json.loads(out.read_text())
    assert report["environment"]["runner"]["runtime"] == "openvino"
    assert report["fidelity"]["max_abs_diff"] < 1e-4 and report["fidelity"]["top1_agreement"] == 1.0
    garbage = tmp_path / "bad.onnx"
    garbage.write_bytes(b"\x08\x07garbage" * 50)
    result = CliRunner().invoke(app, ["bench", str(garbage), "--device", "x86-cpu", "--runtime", "openvino", *FAST])
    assert result.exit_code == 2 and "OpenVINO cannot load" in result.output and "Traceback" not in result.output


def test_runtime_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    import hiap.runtime.ov_runner

    x86 = load_profile("x86-cpu")
    assert resolve_runtime(x86, "onnxruntime") == ("ort", "")
    with pytest.raises(HiapError, match="--runtime tflite: choose onnxruntime or openvino"):
        resolve_runtime(x86, "tflite")
    with pytest.raises(HiapError, match="runs TensorRT, not a CPU runtime"):
        resolve_runtime(load_profile("jetson-orin-nano"), "openvino")
    monkeypatch.setattr(hiap.runtime.ov_runner, "import_openvino", lambda: None)
    with pytest.raises(HiapError, match="OpenVINO is not installed here"):
        resolve_runtime(x86, "openvino")
    prefers_ov = dataclasses.replace(x86, runtime="openvino")
    runtime_name, note = resolve_runtime(prefers_ov, None)
    assert runtime_name == "ort" and "OpenVINO, the default of 'x86-cpu', is not installed" in note


@pytest.mark.openvino
def test_one_file_on_two_runtimes_side_by_side(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    model = linear_export(tmp_path / "m")
    out = tmp_path / "b.json"
    result = CliRunner().invoke(app, ["bench", str(model), "--device", "x86-cpu", "--compare-runtime", "openvino",
                                      "--data", "builtin", "--limit", "64", "--json", str(out), *FAST])  # fmt: skip
    assert result.exit_code in (0, 1, 4), result.output
    report = json.loads(out.read_text())
    assert report["environment"]["runner"]["runtime"] == "onnxruntime"
    assert report["compare"]["dense_runtime"] == "openvino" and report["compare"]["dense_artifact"] == str(model)
    assert report["accuracy"]["model"]["top1"] == report["accuracy"]["dense"]["top1"]  # one file, two runtimes
    assert "model (onnxruntime)" in result.output and "compare (openvino)" in result.output
    same = CliRunner().invoke(app, ["bench", str(model), "--device", "x86-cpu", "--compare-runtime", "onnxruntime"])
    assert same.exit_code == 2 and "is the runtime the model runs on already" in same.output


def _cpu_has(*flags: str) -> bool:
    from hiap.devices.host import detect_host

    return bool(set(flags) & set(detect_host().cpu_flags))


BF16_CPU = pytest.mark.skipif(
    not _cpu_has("avx512_bf16", "amx_bf16"),
    reason="this CPU has neither avx512_bf16 nor amx_bf16: OpenVINO computes in f32 here whatever the runner sets",
)


@pytest.mark.openvino
@BF16_CPU
def test_an_fp32_file_stays_fp32_where_openvino_would_choose_bf16(tmp_path: Path) -> None:
    """On a BF16 CPU the plugin's own default is bf16 (1e-3 off on this model); the runner pins f32 and reports it."""
    import openvino as ov

    from hiap.runtime.harness import run_batched
    from hiap.runtime.ort_runner import OrtRunner
    from hiap.runtime.ov_runner import OvRunner

    model = linear_export(tmp_path / "m")
    default = ov.Core().compile_model(str(model), "CPU").get_property("INFERENCE_PRECISION_HINT")
    assert str(getattr(default, "get_type_name", lambda: default)()) == "bf16"  # what the runner must override
    x = np.load(tmp_path / "m" / "golden.npz")["inputs"]
    with (
        OvRunner(model, threads=1) as f32,
        OvRunner(model, threads=1, precision="bf16") as bf16,
        OrtRunner(model) as ort,
    ):
        ref = run_batched(ort, x, 1)
        assert f32.inference_precision == "f32" and np.abs(run_batched(f32, x, 1) - ref).max() < 1e-5
        assert bf16.inference_precision == "bf16" and np.abs(run_batched(bf16, x, 1) - ref).max() > 1e-4


@BF16_CPU
@pytest.mark.openvino
def test_bench_precision_bf16_and_fp16_compute_and_report_that_precision(tmp_path: Path) -> None:
    model = linear_export(tmp_path / "m")
    for precision, ov_name in (("bf16", "bf16"), ("fp16", "f16")):
        if precision == "fp16" and not _cpu_has("avx512_fp16", "amx_fp16"):
            continue
        out = tmp_path / f"{precision}.json"
        result = CliRunner().invoke(app, ["bench", str(model), "--device", "x86-cpu", "--precision", precision,
                                          "--json", str(out), *FAST])  # fmt: skip
        assert result.exit_code == 4, result.output  # no --data: accuracy not measured
        report = json.loads(out.read_text())
        assert report["precision"] == precision and report["environment"]["runner"]["inference_precision"] == ov_name
        assert report["environment"]["runner"]["runtime"] == "openvino"
        limit = {b["budget"]: b["limit"] for b in report["budgets"]}["fidelity_max_abs_diff"]
        assert limit == {"bf16": 0.1, "fp16": 0.02}[precision]  # judged by its precision's limits
        assert f"images, {precision})" in result.output


@pytest.mark.parametrize(
    ("args", "flags", "message"),
    [
        (["--precision", "int4"], None, "choose fp32, bf16 or fp16"),
        (["--precision", "bf16", "--runtime", "onnxruntime"], None, "ONNX Runtime's CPU provider computes"),
        (["--precision", "bf16"], [], "this CPU lacks avx512_bf16 or amx_bf16"),
        (["--precision", "fp16"], ["avx2"], "this CPU lacks avx512_fp16 or amx_fp16"),
        (["--precision", "bf16", "--device", "rpi4", "--allow-mismatch"], None, "device 'rpi4' lists"),
        (["--precision", "fp16", "--device", "cuda-gpu", "--allow-mismatch"], None, "builds TensorRT engines"),
    ],
)
def test_bench_precision_refusals_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], flags: list[str] | None, message: str
) -> None:
    import hiap.devices.host

    if flags is not None:
        real = hiap.devices.host.detect_host

        def host_with_flags() -> hiap.devices.host.Host:
            host = real()
            host.cpu_flags = flags
            return host

        monkeypatch.setattr(hiap.devices.host, "detect_host", host_with_flags)
    model = linear_export(tmp_path / "m")
    device = [] if "--device" in args else ["--device", "x86-cpu"]
    result = CliRunner().invoke(app, ["bench", str(model), *device, *args, *FAST])
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


@pytest.mark.openvino
def test_openvino_runner_compiles_a_dynamic_batch_for_one_static_batch(tmp_path: Path) -> None:
    from onnx import TensorProto, helper, numpy_helper, save

    from hiap.runtime.ov_runner import OvRunner

    weight = np.arange(8, dtype=np.float32).reshape(4, 2)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["logits"])], "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(weight, "w")],
    )  # fmt: skip
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    with OvRunner(tmp_path / "m.onnx") as dynamic:
        assert dynamic.inputs[0].shape == (None, 4)
    with OvRunner(tmp_path / "m.onnx", static_batch=3) as fixed:
        assert fixed.inputs[0].shape == (3, 4) and fixed.outputs[0].shape == (3, 2)
        x = np.ones((3, 4), np.float32)
        assert np.allclose(fixed.infer({"input": x})["logits"], x @ weight)
