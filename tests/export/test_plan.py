import copy
from pathlib import Path

import pytest
from vit_zoo import make_vit

from export.plan import make_plan, read_plan_json, structure_from_dict
from hiap.base.errors import HiapError
from hiap.cost import BlockStructure, Structure
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
    from export.plan import plan_hash

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
