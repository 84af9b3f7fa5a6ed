import copy
from pathlib import Path

import pytest
from vit_zoo import make_vit

from hiap.base.errors import HiapError
from hiap.cost import BlockStructure, Structure
from hiap.export.plan import make_plan, read_plan_json, structure_from_dict
from hiap.gated import describe_vit

GEOM = describe_vit(make_vit("plain"))  # 2 blocks, 3 heads of 16, hidden 192
CFG = {"input_size": (3, 32, 32), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
BLOCK = BlockStructure(heads=(0, 2), value_dims=((1, 2), (0, 15)), ffn=True, neurons=(0, 7, 100))
STRUCTURE = Structure(blocks=(BLOCK, BlockStructure(heads=(1,), value_dims=((3,),), ffn=False, neurons=())))


def _body() -> dict:
    return make_plan("plain", GEOM, STRUCTURE, CFG, 7, class_names=list("abcdefg")).to_dict()


def test_plan_round_trip_and_hash(tmp_path: Path) -> None:
    plan = make_plan("plain", GEOM, STRUCTURE, CFG, 7)
    plan.write(tmp_path / "plan.json")
    body = read_plan_json(tmp_path / "plan.json")
    assert structure_from_dict(body["blocks"], GEOM) == STRUCTURE
    assert body["hash"] == _body()["hash"]
    changed = copy.deepcopy(body)
    changed["blocks"][0]["neurons"] = [0, 7]
    changed.pop("hash")
    from hiap.export.plan import plan_hash

    assert plan_hash(changed) != body["hash"]


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda b: b["blocks"][0].update(heads=[0, 3]), "block 0 'heads': indices must lie in [0, 3)"),
        (lambda b: b["blocks"][0].update(heads=[2, 0]), "block 0 'heads': indices must be sorted"),
        (lambda b: b["blocks"][1].update(neurons=[5]), "block 1 'neurons': must be empty when 'ffn' is false"),
        (lambda b: b["blocks"][0].update(neurons=[1, 1]), "block 0 'neurons': duplicate indices"),
        (lambda b: b["blocks"][0].update(value_dims=[[1]]), "block 0 'value_dims': expected one list per kept head"),
        (lambda b: b["blocks"][0].update(value_dims=[[1], []]), "block 0 'value_dims'[1]: must keep at least one"),
        (lambda b: b["blocks"][0].update(ffn="yes"), "block 0 'ffn': expected true or false"),
        (lambda b: b["blocks"][0].update(heads="0,1"), "block 0 'heads': expected a list of integers"),
        (lambda b: b["blocks"].pop(), "expected 2 blocks"),
        (lambda b: b["blocks"][1].pop("ffn"), "block 1: expected the fields"),
        (lambda b: b["blocks"][0].update(qk_dims=[[0]]), "block 0 'qk_dims': expected one list per kept head"),
        (lambda b: b["blocks"][0].update(qk_dims=[[0], [16]]), "block 0 'qk_dims'[1]: indices must lie in [0, 16)"),
        (lambda b: b["blocks"][0].update(qk_dims=[[0], []]), "block 0 'qk_dims'[1]: must keep at least one"),
    ],
)
def test_hand_edited_plan_errors_name_block_and_field(edit, message: str) -> None:
    body = _body()
    edit(body)
    with pytest.raises(HiapError) as err:
        structure_from_dict(body["blocks"], GEOM)
    assert message in str(err.value)


@pytest.mark.parametrize("text, message", [("{", "not valid JSON"), ("[]", "must hold a JSON object, not list"),
                                           ('{"schema_version": 1}', "missing field 'model'")])  # fmt: skip
def test_unreadable_plan_files(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "plan.json"
    f.write_text(text)
    with pytest.raises(HiapError, match=message):
        read_plan_json(f)


def test_pruned_qk_dims_make_a_version_2_plan_and_full_ones_stay_version_1(tmp_path: Path) -> None:
    """q/k dims are written only where some are pruned: a plan keeping them all is the version-1 file it always was
    (same hash), one that prunes them is version 2 and round-trips."""
    assert _body()["schema_version"] == 1 and "qk_dims" not in _body()["blocks"][0]
    every_qk_dim = dict(_body()["blocks"][0], qk_dims=[list(range(16))] * 2)  # hand-written, all kept
    assert structure_from_dict([every_qk_dim, _body()["blocks"][1]], GEOM).blocks[0] == BLOCK  # qk_dims None
    pruned = BlockStructure(heads=BLOCK.heads, value_dims=BLOCK.value_dims, ffn=True, neurons=BLOCK.neurons,
                            qk_dims=((0, 5), (3,)))  # fmt: skip
    structure = Structure(blocks=(pruned, STRUCTURE.blocks[1]))
    plan = make_plan("plain", GEOM, structure, CFG, 7)
    plan.write(tmp_path / "plan.json")
    read = read_plan_json(tmp_path / "plan.json")
    assert read["schema_version"] == 2 and read["blocks"][0]["qk_dims"] == [[0, 5], [3]]
    assert "qk_dims" not in read["blocks"][1]
    assert structure_from_dict(read["blocks"], GEOM) == structure
    assert read["hash"] != _body()["hash"]
    assert plan.gmacs < make_plan("plain", GEOM, Structure(blocks=(BLOCK, STRUCTURE.blocks[1])), CFG, 7).gmacs


def test_qk_dims_refused_for_a_qk_norm_model() -> None:
    geom = describe_vit(make_vit("qk_norm"))
    block = dict(_body()["blocks"][0], qk_dims=[[0], [1]])
    with pytest.raises(HiapError, match="qk-norm"):
        structure_from_dict([block, _body()["blocks"][1]], geom)


def test_a_headless_backbones_plan_reads_and_inspects_and_bad_class_counts_are_refused(tmp_path: Path) -> None:
    """num_classes 0: a timm ViT built with num_classes=0 under the user's own head (the API's own-head case)."""
    import json

    from typer.testing import CliRunner

    from hiap.cli import app
    from hiap.models import create_model, data_config

    name = "hiap_vit_fmnist_tiny"
    backbone = create_model(name, num_classes=0, meta=True)
    geom = describe_vit(backbone)
    pruned = Structure(blocks=(BlockStructure(heads=(1, 3), value_dims=((0, 5), (2,)), ffn=True, neurons=(4, 9)),
                               *geom.dense_structure().blocks[1:]))  # fmt: skip
    make_plan(name, geom, pruned, data_config(backbone), 0).write(tmp_path / "plan.json")
    body = read_plan_json(tmp_path / "plan.json")
    assert body["num_classes"] == 0 and structure_from_dict(body["blocks"], geom) == pruned
    result = CliRunner().invoke(app, ["inspect", str(tmp_path / "plan.json"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["blocks"][0]["heads"] == [1, 3] and report["blocks"][0]["neurons"] == 2
    assert report["gmacs"] == pytest.approx(body["gmacs"]) and report["gmacs"] < report["dense_gmacs"]
    assert report["dense_gmacs"] == pytest.approx(geom.dense_macs / 1e9) == pytest.approx(body["dense_gmacs"])
    for bad in (-1, 1.5, True):
        (tmp_path / "bad.json").write_text(json.dumps(body | {"num_classes": bad}))
        with pytest.raises(HiapError, match=r"field 'num_classes' must be an integer >= 0 \(0: a headless backbone\)"):
            read_plan_json(tmp_path / "bad.json")
    refused = CliRunner().invoke(app, ["inspect", str(tmp_path / "bad.json")])
    assert refused.exit_code == 2 and "'num_classes' must be an integer >= 0" in refused.output
