"""A run folder has one writer at a time, and resuming a finished run leaves it as it is."""

from __future__ import annotations

import fcntl
from pathlib import Path

import pytest
from tiny_config import tiny_config

from hiap.base.errors import HiapError
from hiap.config import TrainConfig
from hiap.train import LOCK_NAME, Trainer


def _tiny(out: Path, **overrides: object) -> TrainConfig:
    return tiny_config(out, **({"epochs": 1, "train_images": 256, "kd": False} | overrides))


def test_a_second_writer_of_a_run_folder_is_refused_before_it_writes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    with open(run / LOCK_NAME, "a+") as held:  # another `hiap train` holds the folder
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242")
        held.flush()
        with pytest.raises(HiapError, match=r"being written by another hiap train \(pid 4242\)"):
            Trainer(_tiny(run, seed=1)).run()
    assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]  # no config.yaml, no metrics of the second one
    Trainer(_tiny(run)).run()  # the holder is gone: the lock is free again
    assert (run / "summary.json").is_file()


def test_resuming_a_finished_run_leaves_its_summary_as_it_is(tmp_path: Path) -> None:
    run = tmp_path / "run"
    summary = Trainer(_tiny(run)).run()
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.name != LOCK_NAME}
    again = Trainer(_tiny(run), resume=True).run()
    assert again == summary | {}  # the finished run's own summary, seconds and run_dir included
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.name != LOCK_NAME} == before


def test_a_run_summary_names_the_cpu_it_ran_on(tiny_run: Path) -> None:
    import json

    from hiap.devices.host import detect_host

    summary = json.loads((tiny_run / "summary.json").read_text())
    host = detect_host()
    assert summary["cpu"] == host.cpu and summary["cpu_flags"] == host.cpu_flags
