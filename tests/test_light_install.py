"""The device install (`pip install hiap`, no train extra): `hiap --help` and `hiap bench` work, and the commands
that need torch or the ONNX tools say in one line which extra to install and exit 2, without a traceback."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_onnx import linear_export

from hiap.cli import TRAIN_EXTRA

ROOT = Path(__file__).resolve().parents[1]
# Runs the CLI as if the train extra were not installed: its packages fail to import as a missing package does.
WITHOUT_TRAIN_EXTRA = """
import importlib.abc, sys
EXTRA = set(sys.argv[1].split(','))
class _NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in EXTRA:
            raise ModuleNotFoundError(f'No module named {name!r}', name=name)
        return None
sys.meta_path.insert(0, _NotInstalled())
sys.argv = ['hiap'] + sys.argv[2:]
from hiap.cli import main
main()
"""


def _hiap(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", WITHOUT_TRAIN_EXTRA, ",".join(sorted(TRAIN_EXTRA)), *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)


def test_the_simulated_install_has_no_train_extra() -> None:
    probe = WITHOUT_TRAIN_EXTRA.replace("from hiap.cli import main\nmain()", "import torch")
    done = subprocess.run(
        [sys.executable, "-c", probe, "torch"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1 and "ModuleNotFoundError: No module named 'torch'" in done.stderr


@pytest.mark.parametrize(
    ("command", "args"),
    [
        ("train", ["--epochs", "1", "--out", "OUT/run"]),
        ("pipeline", ["--out", "OUT/run"]),
        ("export", ["OUT/run"]),
        ("inspect", ["deit_tiny_patch16_224"]),
        ("inspect", ["OUT/model.onnx"]),
        ("report", ["OUT"]),
    ],
)
def test_training_commands_name_the_extra_they_need(tmp_path: Path, command: str, args: list[str]) -> None:
    linear_export(tmp_path)  # a real model.onnx and a real folder, so only the missing extra can stop them
    done = _hiap(command, *(a.replace("OUT", str(tmp_path)) for a in args))
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and not done.stdout, done.stderr[-2000:]
    line = rf"error: hiap {command} needs the training extra \((\w+) is not installed\): pip install 'hiap\[train\]'"
    match = re.fullmatch(line, lines[0])
    assert match and match.group(1) in TRAIN_EXTRA, lines[0]
    assert not (tmp_path / "run").exists()


def test_a_latency_table_is_read_without_the_train_extra(tmp_path: Path) -> None:
    """The device side of hiap profile: the board that measured a table prints it."""

    def cell(ms: float) -> dict:
        return {"ms": ms, "p50": ms, "p90": ms}

    geometry = {"num_tokens": 5, "dim": 8, "depth": 2, "num_heads": 2, "head_dim": 8, "hidden": 32}
    table = {"overhead": cell(0.01), "fixed": cell(0.05), "attention": [[cell(0.03)], [cell(0.05)]],
             "ffn": [cell(0.02), cell(0.0345)]}  # fmt: skip
    body = {"schema": "hiap-lut", "schema_version": 1, "device": "rpi5", "runtime": "onnxruntime", "precision": "fp32",
            "threads": {}, "model": "m", "geometry": geometry, "align": 8, "chain": 1,
            "grid": {"heads": [1, 2], "value_widths": [8], "ffn_widths": [16, 32]}, "tables": {"1": table},
            "measured_elsewhere": "this aarch64 host is emulated (qemu-user)"}  # fmt: skip
    (tmp_path / "lut.json").write_text(json.dumps(body))
    done = _hiap("inspect", str(tmp_path / "lut.json"))
    assert done.returncode == 0, done.stderr[-2000:]
    # The FFN branch of 32 neurons: its cell less one call's overhead, per copy of the chain.
    text = " ".join(done.stdout.split())
    assert "0.0245" in text and "on rpi5" in text, text
    assert "warning: not measured on rpi5: this aarch64 host is emulated" in text


def test_help_and_bench_work_without_the_train_extra(tmp_path: Path) -> None:
    done = _hiap("--help")
    assert done.returncode == 0 and "bench" in done.stdout and "train" in done.stdout, done.stderr[-2000:]
    pruned, dense = linear_export(tmp_path / "pruned", seed=0), linear_export(tmp_path / "dense", seed=1)
    out = tmp_path / "bench.json"
    done = _hiap("bench", str(pruned), "--device", "x86-cpu", "--data", "builtin", "--limit", "64", "--compare",
                 str(dense), "--max-acc-drop", "100", "--iterations", "5", "--warmup", "1", "--min-seconds", "0",
                 "--json", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:] + done.stdout[-2000:]
    report = json.loads(out.read_text())
    assert report["verdict"] == "met" and report["fidelity"]["max_abs_diff"] < 1e-5
    assert report["accuracy"]["model"]["images"] == report["accuracy"]["dense"]["images"] == 64
    assert report["compare"]["mac_ratio"] == pytest.approx(1.0) and "all budgets met" in done.stdout
