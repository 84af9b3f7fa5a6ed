"""`hiap bench --sweep`: every runtime x precision the profile allows, run here or skipped with the reason, each
against the dense file on the profile's default runtime, and the fastest that meets every budget named."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from hiap.cli import app

FAST = ["--iterations", "10", "--warmup", "1", "--min-seconds", "0"]


def test_sweep_runs_every_combination_and_names_the_fastest_that_meets_every_budget(
    exported_pair: dict, tmp_path: Path
) -> None:
    out = tmp_path / "sweep.json"
    args = ["bench", str(exported_pair["pruned"]), "--device", "x86-cpu", "--sweep", "--compare",
            str(exported_pair["dense"]), "--data", "builtin", "--limit", "64", *FAST, "--json", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    body = json.loads(out.read_text())
    rows = {(r["runtime"], r["precision"]): r for r in body["rows"]}
    assert list(rows) == [("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "fp16"),
                          ("onnxruntime", "int8"), ("openvino", "int8")]  # fmt: skip
    assert all(("report" in r) != bool(r.get("skipped")) for r in rows.values())  # run, or a reason why not
    assert "no INT8 file: pass --int8" in rows[("onnxruntime", "int8")]["skipped"]
    ort = rows[("onnxruntime", "fp32")]["report"]
    assert (
        ort["precision"] == "fp32"
        and ort["compare"]["speedup_p50"] > 0
        and ort["accuracy"]["reference_top1"] is not None
    )
    for (runtime, precision), row in rows.items():
        if "report" in row and runtime == "openvino":  # timed against the dense file on ONNX Runtime
            assert row["report"]["compare"]["dense_runtime"] == "onnxruntime"
            assert row["report"]["precision"] == precision  # the precision it was computed in
    met = [r for r in rows.values() if "report" in r and r["report"]["verdict"] == "met"]
    if met:
        best = min(met, key=lambda r: r["report"]["latency"]["model"]["p50"])
        assert body["fastest"] == {"runtime": best["runtime"], "precision": best["precision"]}
        assert result.exit_code == 0 and f"fastest meeting every budget: {best['runtime']}" in result.output
    else:
        assert body["fastest"] is None and result.exit_code == body["exit_code"] != 0


def test_sweep_refuses_the_options_it_sets_itself(exported_pair: dict, tmp_path: Path) -> None:
    for extra, message in ((["--runtime", "openvino"], "--sweep runs every runtime and precision itself"),
                           (["--int8", str(tmp_path / "none.onnx")], "--int8 '"),
                           (["--data", str(tmp_path / "no-such-folder")], "is not a folder"),  # once, not per row
                           ([], None)):  # fmt: skip
        args = ["bench", str(exported_pair["pruned"]), "--device", "x86-cpu", *extra, *FAST]
        if message is None:
            args += ["--int8", str(exported_pair["dense"])]  # --int8 without --sweep
            message = "--int8 names the INT8 file of a --sweep"
        else:
            args.append("--sweep")
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
