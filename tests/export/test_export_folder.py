"""An export folder is never lost or mixed: another export is replaced only with --force, the new one is built
beside it and swapped in after every check, a refused one goes to OUT.failed, and a killed one leaves OUT as it was."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from hiap.base.errors import HiapError
from hiap.export.artifact import export_source
from hiap.export.plan import make_plan
from hiap.export.source import source_from_plan
from hiap.gated import GatedViT
from hiap.models import create_model, data_config


def _source(tmp_path: Path, seed: int = 0):
    torch.manual_seed(seed)
    vit = create_model("hiap_vit_fmnist_tiny", num_classes=10)
    geom = GatedViT(vit).geometry
    plan = tmp_path / f"plan-{seed}.json"
    plan.write_text(json.dumps(make_plan("hiap_vit_fmnist_tiny", geom, geom.dense_structure(), data_config(vit),
                                         10).to_dict()))  # fmt: skip
    torch.manual_seed(seed)
    return source_from_plan("hiap_vit_fmnist_tiny", plan, "none")


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_an_existing_export_is_replaced_only_with_force_and_never_mixed(tmp_path: Path) -> None:
    out = tmp_path / "export"
    first = export_source(_source(tmp_path, 0), out, simplify=False)
    before = _digest(out)
    with pytest.raises(HiapError, match="holds an export already: pass --force"):
        export_source(_source(tmp_path, 1), out, simplify=False)
    assert _digest(out) == before
    (tmp_path / "file").write_text("x")
    with pytest.raises(HiapError, match="is a file"):
        export_source(_source(tmp_path, 1), tmp_path / "file", simplify=False)
    second = export_source(_source(tmp_path, 1), out, simplify=False, force=True)
    assert second["plan_hash"] == first["plan_hash"] and _digest(out) != before  # other weights, every file new
    assert json.loads((out / "export_report.json").read_text())["metadata"]["plan_hash"] == second["plan_hash"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # nothing staged is left


def test_a_refused_or_killed_export_leaves_the_folder_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hiap.export.artifact as artifact

    out = tmp_path / "export"
    export_source(_source(tmp_path, 0), out, simplify=False)
    before = _digest(out)
    (tmp_path / ".export.partial-999999999").mkdir()  # left by a process killed mid-export: removed next time
    refused = _source(tmp_path, 1)
    with torch.no_grad():
        refused.vit.blocks[0].mlp.fc1.weight.fill_(float("nan"))  # parity cannot pass
    with pytest.raises(HiapError, match=r"Export parity failed .* report written to .*export\.failed"):
        export_source(refused, out, simplify=False, force=True)
    assert _digest(out) == before and (tmp_path / "export.failed" / "export_report.json").is_file()

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # Ctrl-C while the ONNX file is being written

    monkeypatch.setattr(artifact, "torch2onnx", killed)
    with pytest.raises(KeyboardInterrupt):
        export_source(_source(tmp_path, 2), out, simplify=False, force=True)
    assert _digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_kill_between_the_two_renames_is_undone_by_the_next_export(tmp_path: Path) -> None:
    """The one moment `out` is absent: the old export renamed aside, the new one not yet in. The next export puts
    the old one back first (so a refusal leaves it, not nothing)."""
    out = tmp_path / "export"
    export_source(_source(tmp_path, 0), out, simplify=False)
    before = _digest(out)
    out.rename(tmp_path / ".export.old-999999999")  # as left by a SIGKILL after the first rename
    with pytest.raises(HiapError, match="holds an export already: pass --force"):
        export_source(_source(tmp_path, 1), out, simplify=False)
    assert _digest(out) == before and not list(tmp_path.glob(".export.old-*"))


def _whole(out: Path) -> None:
    """The four files of `out` belong together: one plan hash, one alignment, and golden.npz's logits are what
    model.onnx computes on its inputs."""
    import numpy as np
    import onnx

    from hiap.runtime.harness import load_golden, run_batched
    from hiap.runtime.ort_runner import default_runner

    assert sorted(p.name for p in out.iterdir()) == ["export_report.json", "golden.npz", "model.onnx", "plan.json"]
    report = json.loads((out / "export_report.json").read_text())
    meta = {p.key: p.value for p in onnx.load(str(out / "model.onnx"), load_external_data=False).metadata_props}
    assert report["metadata"]["plan_hash"] == meta["plan_hash"] == json.loads((out / "plan.json").read_text())["hash"]
    assert report["metadata"]["align"] == meta["align"]
    x, logits = load_golden(out / "golden.npz")
    with default_runner(out / "model.onnx") as runner:
        got = run_batched(runner, x, 1)
    assert np.abs(got - logits).max() < 1e-4


def test_an_export_killed_at_random_points_leaves_one_whole_export(tmp_path: Path) -> None:
    """SIGKILL `hiap export --force` over an existing export at points spread over its run: afterwards the folder
    holds one whole export, the old or a new one, never a mix of two (each run exports at another --align, so the
    files of two runs differ)."""
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    vit = create_model("hiap_vit_fmnist_tiny", num_classes=10)
    geom = GatedViT(vit).geometry
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(make_plan("hiap_vit_fmnist_tiny", geom, geom.dense_structure(), data_config(vit),
                                         10).to_dict()))  # fmt: skip
    out = tmp_path / "export"

    def export_cmd(align: int) -> list[str]:
        return [sys.executable, "-m", "hiap", "export", "--model", "hiap_vit_fmnist_tiny", "--plan", str(plan),
                "--pretrained", "none", "--no-simplify", "--align", str(align), "--out", str(out),
                "--force"]  # fmt: skip

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start = time.monotonic()
    subprocess.run(export_cmd(8), check=True, env=env, capture_output=True)
    whole = time.monotonic() - start
    rng = random.Random(0)
    for align in (1, 2, 3, 4):
        proc = subprocess.Popen(export_cmd(align), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.2, 1.1) * whole)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _whole(out)
    subprocess.run(export_cmd(8), check=True, env=env, capture_output=True)  # and the next one cleans up
    _whole(out)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
