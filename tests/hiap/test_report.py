import json
from pathlib import Path

from PIL import Image
from tiny_config import tiny_config
from typer.testing import CliRunner

from hiap.cli import app
from hiap.train import Trainer


def test_report_plots_a_run_and_metrics_carry_what_it_needs(tmp_path: Path) -> None:
    run = tmp_path / "run"
    Trainer(tiny_config(run, batch_size=64, target_tolerance=0.01)).run()
    records = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    hist = records[-1]["gate_histogram"]
    # every kind that learns (q/k dims too, gated by default), each gate counted once
    assert {k: sum(v) for k, v in hist.items()} == {"head": 16, "value": 256, "ffn": 4, "neuron": 1024, "qk": 256}
    trace = [t for r in records for t in r["trace"]]
    assert [t[0] for t in trace] == list(range(16))  # 8 steps an epoch: every step is traced
    assert trace[0][1] == 2.0 and all(0 < t[2] <= 1 and 0 < t[3] <= 1 for t in trace)
    result = CliRunner().invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    for name in ("topology.png", "annealing.png", "macs.png"):
        with Image.open(run / "report" / name) as img:
            assert img.size[0] > 300 and img.size[1] > 200
    bad = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert bad.exit_code == 2 and "no metrics.jsonl" in bad.output
