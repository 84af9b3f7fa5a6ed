"""An export folder is never lost or mixed: another export is replaced only with --force, the new one is built
beside it and swapped in after every check, a refused one goes to OUT.failed, and a killed one leaves OUT as it was."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from export.artifact import export_source
from export.plan import make_plan
from export.source import source_from_plan
from hiap.base.errors import HiapError
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
    import export.artifact as artifact

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
