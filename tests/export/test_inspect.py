"""`hiap inspect` of what holds a plan but no checkpoint: hiap.api.export's folder and hiap.api.save_pruned's
weights are described by their plan (model, structure per block, GMACs against dense), as a plan.json is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import hiap.api as hp
from hiap.cli import app
from hiap.models import create_model

TINY = "hiap_vit_fmnist_tiny"  # 4 blocks of 4 heads x 16, FFN 256


def _inspect(target: Path) -> dict:
    result = CliRunner().invoke(app, ["inspect", str(target), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.fixture(scope="module")
def pruned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """hiap.api.export's folder and save_pruned's weights of one tiny pruned ViT."""
    root = tmp_path_factory.mktemp("api")
    torch.manual_seed(0)
    model = create_model(TINY)
    pruner = hp.Pruner(model, 16, budget=0.5, model_name=TINY,
                       options=hp.PruneOptions(gate_lr=1.0, search_fraction=0.5))  # fmt: skip
    optimizer = torch.optim.AdamW([{"params": list(pruner.weight_parameters())}, *pruner.param_groups()], lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(16):
        x, y = torch.randn(4, 1, 28, 28, generator=gen), torch.randint(0, 10, (4,), generator=gen)
        loss = pruner.penalty(torch.nn.functional.cross_entropy(model(x), y))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        pruner.step(optimizer)
    hp.export(pruner, root / "export", preprocessing=hp.data_config(model), sample_inputs=x)
    plan = hp.materialize(pruner)
    hp.save_pruned(model, root / "pruned.safetensors", plan)
    return {"folder": root / "export", "weights": root / "pruned.safetensors"}


def test_inspect_describes_an_api_export_folder_by_its_plan(pruned: dict[str, Path]) -> None:
    folder = pruned["folder"]
    assert not (folder / "checkpoint.safetensors").exists() and (folder / "plan.json").is_file()
    report = _inspect(folder)
    plan = json.loads((folder / "plan.json").read_text())
    assert report == _inspect(folder / "plan.json") | {"target": str(folder)}
    assert report["model"] == TINY and report["plan_hash"] == plan["hash"]
    assert [b["heads"] for b in report["blocks"]] == [b["heads"] for b in plan["blocks"]]
    assert [b["neurons"] for b in report["blocks"]] == [len(b["neurons"]) for b in plan["blocks"]]
    assert report["gmacs"] == pytest.approx(plan["gmacs"]) and report["gmacs"] < report["dense_gmacs"]
    assert report["dense_gmacs"] == pytest.approx(plan["dense_gmacs"])
    table = CliRunner().invoke(app, ["inspect", str(folder)])
    assert table.exit_code == 0 and f"GMACs {report['gmacs']:.4f} (dense {report['dense_gmacs']:.4f})" in table.output


def test_inspect_describes_save_pruned_weights_by_the_plan_in_their_header(pruned: dict[str, Path]) -> None:
    from safetensors import safe_open

    weights = pruned["weights"]
    with safe_open(str(weights), framework="pt") as f:
        plan = json.loads(f.metadata()[hp.PLAN_KEY])
    report = _inspect(weights)
    assert report["target"] == str(weights) and report["model"] == TINY and report["plan_hash"] == plan["hash"]
    assert [b["heads"] for b in report["blocks"]] == [b["heads"] for b in plan["blocks"]]
    assert report["gmacs"] == pytest.approx(plan["gmacs"]) and report["gmacs"] < report["dense_gmacs"]
    # the export folder and the weights hold the same structure (one pruner, exported before materialize)
    assert report["blocks"] == _inspect(pruned["folder"])["blocks"]


def test_inspect_refuses_a_damaged_plan_in_the_header_in_one_line(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    bad = tmp_path / "w.safetensors"
    save_file({"x": torch.zeros(1)}, str(bad), metadata={hp.PLAN_KEY: json.dumps({"schema_version": 1})})
    result = CliRunner().invoke(app, ["inspect", str(bad)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip() == f"error: The plan in the header of '{bad}': missing field 'model'."
