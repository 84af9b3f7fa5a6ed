"""`hiap profile` end to end on the tiny built-in model with a small grid: probes written and timed into a valid,
self-describing lut.json (in one go, or made on one side and measured on the other), shown by inspect and report,
trained to with --target-latency-ms, predicted by export and compared by bench; bad input in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hiap.base.errors import HiapError
from hiap.devices.lut import ROUNDS, all_calls, steady_ms

SMALL = ["--model", "hiap_vit_fmnist_tiny", "--ffn-step", "64", "--iterations", "40", "--warmup", "2", "--rounds", "5"]


def test_steady_latency_is_the_median_of_the_fastest_round() -> None:
    rng = np.random.default_rng(0)
    rounds = [rng.normal(1.0, 0.01, 10) for _ in range(ROUNDS)]
    for i in range(0, ROUNDS, 2):  # a slow spell over every other round: the median of all calls moves with it
        rounds[i] = rounds[i] * 1.7
    samples = [r.tolist() for r in rounds]
    assert steady_ms(samples) == pytest.approx(min(float(np.median(r)) for r in rounds))
    assert abs(steady_ms(samples) - 1.0) < 0.02 < abs(float(np.median(all_calls(samples))) - 1.0)


@pytest.fixture(scope="module")
def cli():
    pytest.importorskip("torch")
    from typer.testing import CliRunner

    from hiap.cli import app

    runner = CliRunner()

    def run(args: list[str]) -> tuple[int, str]:
        result = runner.invoke(app, args)
        if result.exception and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result.exit_code, result.output

    return run


@pytest.fixture(scope="module")
def lut(tmp_path_factory: pytest.TempPathFactory, cli) -> Path:
    out = tmp_path_factory.mktemp("lut") / "lut.json"
    code, text = cli(["profile", *SMALL, "--out", str(out)])
    assert code == 0, text
    return out


def test_profile_writes_a_self_describing_table(lut: Path) -> None:
    from hiap.base.lut import read_lut

    table = read_lut(lut)
    body = table.body
    assert (table.device, table.runtime, table.precision, table.align, table.chain) == (
        "x86-cpu", "onnxruntime", "fp32", 8, 4)  # fmt: skip
    assert table.heads == (1, 2, 3, 4) and table.value_widths == (8, 16) and table.ffn_widths == (64, 128, 192, 256)
    assert body["geometry"] == {"num_tokens": 17, "dim": 64, "depth": 4, "num_heads": 4, "head_dim": 16,
                                "hidden": 256}  # fmt: skip
    assert body["threads"] == {"intra_op_threads": 2, "inter_op_threads": 1}
    assert body["protocol"]["iterations"] == 40 and body["protocol"]["rounds"] == 5 and body["validated"] is True
    for key in ("host", "runner", "date", "hiap_version", "model_kwargs"):
        assert key in body
    cells = table.at(1)
    # A chain of four branches costs more than one call that only copies its input; the dense FFN more than the
    # narrowest (timings on a shared machine: only orderings that hold by a wide margin).
    assert all(c.ms > cells.overhead.ms for row in cells.attention + cells.attention_qk for c in row)
    # The q/k axis (this model has no qk-norm): q/k widths on the value grid, its full width the attention branch
    # at full value width (one probe, not timed twice).
    assert table.qk_widths == (8, 16) and body["grid"]["qk_widths"] == [8, 16]
    assert [row[-1] for row in cells.attention_qk] == [row[-1] for row in cells.attention]
    assert cells.ffn[-1].ms > cells.ffn[0].ms
    assert all(c.p90 >= c.p50 > 0 for c in cells.ffn)


def test_probes_made_on_one_side_are_measured_on_the_other(tmp_path: Path, cli) -> None:
    probes = tmp_path / "probes"
    code, text = cli(["profile", "--model", "hiap_vit_fmnist_tiny", "--ffn-step", "128", "--probes-only", str(probes)])
    assert code == 0, text
    manifest = json.loads((probes / "probes.json").read_text())
    # overhead, fixed, 4 head counts x 2 value widths, 4 x 1 narrower q/k width, 2 FFN widths
    assert len(manifest["probes"]) == 2 + 4 * 2 + 4 + 2
    assert [p["kind"] for p in manifest["probes"]][:3] == ["overhead", "fixed", "attention"]
    import onnx

    meta = {m.key: m.value for m in onnx.load(str(probes / "attn_h3_w16.onnx")).metadata_props}
    assert json.loads(meta["hiap_probe"]) == {"kind": "attention", "heads": 3, "width": 16}
    meta = {m.key: m.value for m in onnx.load(str(probes / "attn_h3_q8.onnx")).metadata_props}
    assert json.loads(meta["hiap_probe"]) == {"kind": "attention_qk", "heads": 3, "qk_width": 8}
    code, text = cli(["profile", "--probes", str(probes), "--iterations", "20", "--warmup", "1",
                      "--out", str(tmp_path / "lut.json")])  # fmt: skip
    assert code == 0, text
    assert json.loads((tmp_path / "lut.json").read_text())["grid"]["ffn_widths"] == [128, 256]
    # An existing table is not replaced without --force; a probe folder with a file missing is named.
    before = (tmp_path / "lut.json").read_bytes()
    code, text = cli(["profile", "--probes", str(probes), "--out", str(tmp_path / "lut.json")])
    assert code == 2 and "exists: pass --force" in text
    assert (tmp_path / "lut.json").read_bytes() == before
    code, text = cli(["profile", "--probes", str(probes), "--rounds", "0", "--out", str(tmp_path / "other.json")])
    assert code == 2 and "--rounds must be >= 1, got 0" in text and not (tmp_path / "other.json").exists()
    listed = (probes / "probes.json").read_text()
    manifest["probes"] = [p for p in manifest["probes"] if p["file"] != "attn_h2_q8.onnx"]
    (probes / "probes.json").write_text(json.dumps(manifest))
    code, text = cli(["profile", "--probes", str(probes), "--out", str(tmp_path / "other.json")])
    assert code == 2 and "is incomplete" in text  # a cell of the q/k axis without its probe
    (probes / "probes.json").write_text(listed)
    (probes / "ffn_k128.onnx").unlink()
    code, text = cli(["profile", "--probes", str(probes), "--out", str(tmp_path / "other.json")])
    assert code == 2 and "'ffn_k128.onnx' that is missing" in text
    code, text = cli(["profile", "--probes", str(tmp_path), "--out", str(tmp_path / "other.json")])
    assert code == 2 and "holds no probes.json" in text
    assert not (tmp_path / "other.json").exists()


def test_inspect_and_report_show_the_table(lut: Path, tmp_path: Path, cli) -> None:
    code, text = cli(["inspect", str(lut)])
    assert code == 0 and "attention branch" in text and "FFN branch" in text and "x86-cpu" in text
    assert "kept heads x q/k width" in text  # the q/k axis of a model without qk-norm
    code, text = cli(["report", str(lut), "--out", str(tmp_path)])
    assert code == 0 and (tmp_path / "lut.png").stat().st_size > 10_000


def test_latency_target_end_to_end(lut: Path, tmp_path: Path, cli) -> None:
    """Train to a latency on the measured table, export (prediction in the report and the file), bench (predicted
    vs measured on the same device; not compared on another)."""
    from hiap.base.lut import read_lut
    from hiap.latency import LatencyCost

    table = read_lut(lut)
    cells = table.at(1)
    dense = cells.fixed.ms + 4 * (table.branch_ms(cells.attention[-1][-1], 1) + table.branch_ms(cells.ffn[-1], 1))
    target = round(0.8 * dense, 4)
    run = tmp_path / "run"
    code, text = cli(["train", "--model", "hiap_vit_fmnist_tiny", "--pretrained", "none", "--batch-size", "64",
                      "--gate-lr", "1.0", "--target-tolerance", "1", "--epochs", "2", "--config",
                      str(_config(tmp_path)), "--target-latency-ms", str(target), "--lut", str(lut), "--out",
                      str(run)])  # fmt: skip
    assert code == 0, text
    assert "target ms" in text
    summary = json.loads((run / "summary.json").read_text())
    assert summary["budget"] == "latency" and summary["target_latency_ms"] == target
    assert summary["dense_latency_ms"] == pytest.approx(dense, rel=1e-9)
    assert summary["latency_table"]["digest"] == table.digest
    code, text = cli(["export", str(run)])
    assert code == 0, text
    report = json.loads((run / "export" / "export_report.json").read_text())
    pred = report["predicted_latency"]
    assert pred["device"] == "x86-cpu" and pred["table"] == table.digest
    assert pred["ms"]["1"] == pytest.approx(summary["predicted_latency_ms"], abs=1e-6)  # recorded to 6 decimals
    from hiap.export.plan import read_plan_json, structure_from_dict
    from hiap.gated import describe_vit
    from hiap.models import create_model

    geom = describe_vit(create_model("hiap_vit_fmnist_tiny"))
    plan = structure_from_dict(read_plan_json(run / "export" / "plan.json")["blocks"], geom)
    assert pred["ms"]["1"] == pytest.approx(
        LatencyCost(table, geom, "hiap_vit_fmnist_tiny").structure_ms(plan), abs=1e-6
    )
    assert json.loads(report["metadata"]["predicted_latency"]) == pred
    bench_json = tmp_path / "bench.json"
    code, text = cli(["bench", str(run / "export" / "model.onnx"), "--device", "x86-cpu", "--iterations", "50",
                      "--min-seconds", "0", "--json", str(bench_json)])  # fmt: skip
    assert "latency table predicted" in text, text
    compared = json.loads(bench_json.read_text())["prediction"]
    assert compared["compared"] is True and compared["predicted_ms"] == pred["ms"]["1"]
    # Like with like: the table's statistic (median of the fastest round) on both sides, the p50 shown beside it.
    latency = json.loads(bench_json.read_text())["latency"]["model"]
    assert compared["measured_ms"] == latency["steady"] <= latency["p50"] == compared["measured_p50_ms"]
    assert compared["error"] == pytest.approx(compared["measured_ms"] / compared["predicted_ms"] - 1)
    assert "both the median of the fastest round" in " ".join(text.split())
    code, text = cli(["bench", str(run / "export" / "model.onnx"), "--device", "rpi5", "--allow-mismatch",
                      "--iterations", "20", "--min-seconds", "0", "--json", str(bench_json)])  # fmt: skip
    assert "prediction is for device x86-cpu, this bench runs rpi5" in " ".join(text.split())
    # A table that does not fit the export is refused when given, skipped with a note when it is the run's own.
    code, text = cli(["export", str(run), "--align", "4", "--out", str(tmp_path / "e4")])
    assert code == 0 and json.loads((tmp_path / "e4" / "export_report.json").read_text())["predicted_latency"] is None
    code, text = cli(["export", str(run), "--align", "4", "--lut", str(lut), "--out", str(tmp_path / "e5")])
    assert code == 2 and "--align 8, not 4" in text and not (tmp_path / "e5").exists()
    code, text = cli(["export", str(run), "--lut", str(lut), "--target", "rpi5", "--out", str(tmp_path / "e6")])
    assert code == 2 and "measured on device 'x86-cpu', not 'rpi5'" in text


def _config(tmp_path: Path) -> Path:
    f = tmp_path / "tiny.yaml"
    f.write_text("train_images: 256\n")
    return f


def test_bad_latency_inputs_are_one_line_errors(lut: Path, tmp_path: Path, cli) -> None:
    code, text = cli(["train", "--target-latency-ms", "1", "--out", str(tmp_path / "r")])
    assert code == 2 and "needs the device's latency table: pass --lut" in text
    code, text = cli(["train", "--lut", str(lut), "--out", str(tmp_path / "r")])
    assert code == 2 and "pass --target-latency-ms" in text
    code, text = cli(["train", "--target-latency-ms", "0.0001", "--lut", str(lut), "--out", str(tmp_path / "r")])
    want = "measured for hiap_vit_fmnist_tiny with dim=64, but the model (hiap_vit_fmnist) has dim=128"
    assert code == 2 and want in " ".join(text.split())
    code, text = cli(["train", "--model", "hiap_vit_fmnist_tiny", "--pretrained", "none", "--target-latency-ms",
                      "0.0001", "--lut", str(lut), "--out", str(tmp_path / "r")])  # fmt: skip
    assert code == 2 and "below the fastest network the floors allow on x86-cpu" in " ".join(text.split())
    assert not (tmp_path / "r" / "checkpoint.safetensors").exists()
    code, text = cli(["profile", "--device", "rpi5", "--model", "hiap_vit_fmnist_tiny", "--out", str(tmp_path / "l")])
    assert code == 2 and "--allow-mismatch" in text


def test_a_tensorrt_table_is_labelled_not_validated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TensorRT probes have not run against measured networks: the table says so, with the engine's precision."""
    import hiap.devices.lut as lut_mod
    from hiap.devices.profile import load_profile

    grid = {"heads": [1, 2], "value_widths": [8], "ffn_widths": [16]}
    probes = [{"kind": "overhead", "file": "overhead.onnx"}, {"kind": "fixed", "file": "fixed.onnx"},
              {"kind": "attention", "heads": 1, "width": 8, "file": "attn_h1_w8.onnx"},
              {"kind": "attention", "heads": 2, "width": 8, "file": "attn_h2_w8.onnx"},
              {"kind": "ffn", "neurons": 16, "file": "ffn_k16.onnx"}]  # fmt: skip
    for p in probes:
        (tmp_path / p["file"]).write_bytes(b"")
    geometry = {"num_tokens": 5, "dim": 8, "depth": 2, "num_heads": 2, "head_dim": 8, "hidden": 16}
    manifest = {"schema": "hiap-probes", "model": "m", "geometry": geometry, "align": 8, "chain": 4, "grid": grid,
                "batches": [1], "probes": probes}  # fmt: skip
    (tmp_path / "probes.json").write_text(json.dumps(manifest))

    def fake_time(files, profile, runtime, batches, iterations, warmup, progress=None, rounds=ROUNDS, precision="fp32"):
        samples = {(1, f): [[1.0 + i]] * rounds for i, f in enumerate(files)}
        return samples, {"runtime": "tensorrt", "version": "10.3"}

    monkeypatch.setattr(lut_mod, "time_in_rounds", fake_time)
    body = lut_mod.measure_lut(tmp_path, load_profile("jetson-orin-nano"), iterations=ROUNDS, warmup=0)
    assert body["validated"] is False and "not validated" in body["note"]
    assert (body["runtime"], body["precision"], body["device"]) == ("tensorrt", "fp16", "jetson-orin-nano")
    assert body["tables"]["1"]["ffn"][0]["ms"] == 5.0  # the fifth file's calls


def test_an_int8_table_times_quantized_probes(tmp_path: Path, cli) -> None:
    """An INT8 table times quantized probes and says so; an unknown precision and a table's bad fields are one
    line. (A bf16 table of these probes: test_a_bf16_table_of_int8_probes_is_refused, where OpenVINO is.)"""
    import onnx

    from hiap.base.lut import read_lut

    probes = tmp_path / "probes"
    code, text = cli(["profile", "--model", "hiap_vit_fmnist_tiny", "--ffn-step", "128", "--precision", "int8",
                      "--probes-only", str(probes)])  # fmt: skip
    assert code == 0, text
    manifest = json.loads((probes / "probes.json").read_text())
    assert manifest["precision"] == "int8"
    ffn = onnx.load(str(probes / manifest["probes"][-1]["file"]))
    assert {p.key: p.value for p in ffn.metadata_props}["precision"] == "int8"
    assert any(n.op_type in ("QuantizeLinear", "DynamicQuantizeLinear") for n in ffn.graph.node)
    code, text = cli(["profile", "--probes", str(probes), "--device", "x86-cpu", "--iterations", "10", "--warmup",
                      "1", "--rounds", "2", "--out", str(tmp_path / "int8.json")])  # fmt: skip
    assert code == 0 and read_lut(tmp_path / "int8.json").precision == "int8", text
    code, text = cli(
        ["profile", "--model", "hiap_vit_fmnist_tiny", "--precision", "int4", "--out", str(tmp_path / "y")]
    )
    assert code == 2 and "choose fp32, int8, int8-dynamic, bf16 or fp16" in text
    body = json.loads((tmp_path / "int8.json").read_text())
    for field, value, message in (("precision", "int4", "'precision' must be one of"),
                                  ("validated", "no", "'validated' must be true or false")):  # fmt: skip
        (tmp_path / "bad.json").write_text(json.dumps(body | {field: value}))
        with pytest.raises(HiapError, match=message):
            read_lut(tmp_path / "bad.json")


def _skip_without_bf16() -> None:
    """bf16 tables are timed on OpenVINO (the tests' marker) on a CPU with bf16 instructions: skip where it has none."""
    from hiap.devices.host import detect_host

    if not {"avx512_bf16", "amx_bf16"} & set(detect_host().cpu_flags):
        pytest.skip("this CPU has neither avx512_bf16 nor amx_bf16: no bf16 table can be measured here")


@pytest.mark.openvino
def test_a_bf16_table_of_int8_probes_is_refused(tmp_path: Path, cli) -> None:
    """--precision bf16 computes FP32 probes at bf16: a probe set of INT8 files is refused before anything is timed
    (a hand-written manifest: the refusal comes before the files are opened)."""
    _skip_without_bf16()
    grid = {"heads": [1], "value_widths": [8], "ffn_widths": [16]}
    probes = [{"kind": "overhead", "file": "overhead.onnx"}, {"kind": "fixed", "file": "fixed.onnx"},
              {"kind": "attention", "heads": 1, "width": 8, "file": "attn_h1_w8.onnx"},
              {"kind": "ffn", "neurons": 16, "file": "ffn_k16.onnx"}]  # fmt: skip
    for p in probes:
        (tmp_path / p["file"]).write_bytes(b"")
    geometry = {"num_tokens": 5, "dim": 8, "depth": 2, "num_heads": 1, "head_dim": 8, "hidden": 16}
    manifest = {"schema": "hiap-probes", "model": "m", "geometry": geometry, "align": 8, "chain": 4, "grid": grid,
                "batches": [1], "probes": probes, "precision": "int8"}  # fmt: skip
    (tmp_path / "probes.json").write_text(json.dumps(manifest))
    code, text = cli(["profile", "--probes", str(tmp_path), "--device", "x86-cpu", "--precision", "bf16",
                      "--out", str(tmp_path / "x.json")])  # fmt: skip
    assert code == 2 and f"--precision bf16 computes FP32 probes at bf16; '{tmp_path}' holds int8 probes." in text
    assert not (tmp_path / "x.json").exists()


@pytest.mark.openvino
def test_a_bf16_table_times_the_fp32_probes_at_bf16(tmp_path: Path, cli) -> None:
    _skip_without_bf16()
    from hiap.base.lut import read_lut

    code, text = cli(
        ["profile", *SMALL, "--device", "x86-cpu", "--precision", "bf16", "--out", str(tmp_path / "b.json")]
    )
    table = read_lut(tmp_path / "b.json")
    assert code == 0 and table.precision == "bf16" and table.runtime == "openvino", text
    assert table.body["runner"]["inference_precision"] == "bf16"
