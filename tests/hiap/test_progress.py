"""Terminal output of a run: the end-of-run table's figures and verdict, the progress line and the epoch line."""

from __future__ import annotations

import io
import re

from rich.console import Console

from hiap.progress import TrainProgress, summary_table

SUMMARY = {"model": "hiap_vit_fmnist_tiny", "dense_gmacs": 0.003541, "pruned_gmacs": 0.0018, "target_gmacs": 0.00177,
           "target_error": 0.0169, "target_met": True, "dense_params": 205_066, "pruned_params": 120_500,
           "kept_heads": [4, 2, 1, 3], "kept_value_dims": [[16, 16, 8, 8], [4, 16], [16], [8, 8, 8]],
           "kept_ffn": [True, False, True, True], "kept_neurons": [200, 0, 30, 64], "num_heads": 4, "head_dim": 16,
           "hidden": 256, "dense_val_acc": 0.8512, "val_acc": 0.8321, "run_dir": "runs/x"}  # fmt: skip


def _text(renderable: object) -> str:
    console = Console(file=io.StringIO(), width=160, color_system=None)
    console.print(renderable)
    return console.file.getvalue()


def _row(text: str, label: str) -> list[str]:
    """The cells of the table row whose first cell is `label`."""
    for line in text.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line)]
        if len(cells) > 2 and cells[1] == label:
            return cells[2:-1]
    raise AssertionError(f"no row {label!r} in\n{text}")


def test_summary_table_puts_dense_beside_pruned() -> None:
    table = summary_table(SUMMARY)
    text = _text(table)
    assert table.title == "hiap train: hiap_vit_fmnist_tiny"
    assert _row(text, "") == ["dense", "pruned"]
    assert _row(text, "GMACs") == ["0.0035", "0.0018"]
    assert _row(text, "target GMACs") == ["", "0.0018 (+1.69% off)"]
    assert _row(text, "params (M)") == ["0.205", "0.120"]
    assert _row(text, "heads") == ["16", "10"]
    assert _row(text, "value dims") == [str(4 * 16 * 4), str(48 + 20 + 16 + 24)]
    assert _row(text, "FFN blocks") == ["4", "3"]
    assert _row(text, "FFN neurons") == ["1024", "294"]
    assert _row(text, "val top-1") == ["0.8512", "0.8321"]
    assert table.caption == "run: runs/x  (checkpoint.safetensors, metrics.jsonl, summary.json, config.yaml)"


def test_a_missed_target_says_missed() -> None:
    missed = _text(summary_table(SUMMARY | {"target_met": False, "target_error": -0.0412}))
    assert _row(missed, "target GMACs") == ["", "0.0018 (-4.12% off, MISSED)"]
    no_verdict = {k: v for k, v in SUMMARY.items() if k != "target_met"}  # runs from before the verdict: not missed
    assert "MISSED" not in _text(summary_table(no_verdict)) and "MISSED" not in _text(summary_table(SUMMARY))


def test_dense_run_labels_its_columns_start_and_trained() -> None:
    table = summary_table(SUMMARY | {"dense": True})
    assert table.title == "hiap train --dense: hiap_vit_fmnist_tiny" and _row(_text(table), "") == ["start", "trained"]


def test_progress_line_and_epoch_line() -> None:
    out = io.StringIO()
    console = Console(file=out, width=200, color_system=None)
    with TrainProgress(console, total_steps=10, done_steps=4, target_fraction=0.5) as bar:
        assert bar.progress.tasks[0].completed == 4  # a resumed run starts where its checkpoint left off
        bar.advance(2, 3, {"loss": 1.23456, "tau": 0.6667, "expected_frac": 0.5123, "hard_frac": 0.498})
        task = bar.progress.tasks[0]
        assert task.completed == 5 and task.fields["epoch"] == "2/3"
        assert task.fields["info"] == "loss 1.235 tau 0.67 MACs E 51.2% hard 49.8% / target 50.0%"
        bar.advance(2, 3, {"loss": 0.5, "tau": 0.5})  # a dense run has no MAC fractions
        assert bar.progress.tasks[0].fields["info"] == "loss 0.500 tau 0.50"
        bar.advance(2, 3, {"skipped": 1.0})
        assert bar.progress.tasks[0].fields["info"] == "step skipped (non-finite)"
        assert bar.progress.tasks[0].completed == 7
        record = {"epoch": 2, "val_acc": 0.81234, "hard_gmacs": 0.0018, "target_gmacs": 0.00177, "kept_heads": [4, 2],
                  "kept_neurons": [10, 20], "epoch_seconds": 12.34, "skipped_steps": 0}  # fmt: skip
        bar.epoch_done(record)
        bar.epoch_done(record | {"skipped_steps": 3})
    lines = [ln for ln in out.getvalue().splitlines() if ln.startswith("epoch 2:")]
    assert lines == [
        "epoch 2: val acc 0.8123, hard 1.80 MMACs (target 1.77), heads 6, neurons 30, 12.3 s",
        "epoch 2: val acc 0.8123, hard 1.80 MMACs (target 1.77), heads 6, neurons 30, 12.3 s, 3 non-finite steps "
        "skipped so far",
    ]
