from pathlib import Path

import numpy as np
import onnx
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from vit_zoo import VARIANTS, make_vit

from hiap.cost import BlockStructure, Structure, structure_macs, structure_params
from hiap.export.compact import build_compact, padded_structure
from hiap.export.onnx_io import onnx_cost, ort_run, torch2onnx
from hiap.gated import GatedViT, masks_to_structure


def test_compact_onnx_parity_and_counts(tmp_path: Path) -> None:
    vit = make_vit("registers", fused=False)
    geom = GatedViT(vit).geometry
    blocks = (
        BlockStructure(heads=(0, 2), value_dims=((1, 2, 3), tuple(range(11))), ffn=True, neurons=tuple(range(50))),
        BlockStructure(heads=(1,), value_dims=((4,),), ffn=False, neurons=()),
    )
    structure = Structure(blocks=blocks)
    compact = build_compact(vit, structure, align=8)
    path = tmp_path / "m.onnx"
    torch2onnx(compact, (3, 32, 32), path, metadata={"plan_hash": "abc"})
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        ref = compact(torch.from_numpy(x)).numpy()
    assert np.abs(ort_run(path, x) - ref).max() <= 1e-4
    emitted = padded_structure(structure, geom.head_dim, 8)
    macs, params = onnx_cost(path)
    assert macs == structure_macs(geom, emitted)
    assert params == structure_params(geom, emitted)
    assert {p.key: p.value for p in onnx.load(str(path)).metadata_props}["plan_hash"] == "abc"


def test_hiap_export_of_a_trained_run(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from hiap.cli import app

    runner = CliRunner()
    run = tmp_path / "run"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "train_images: 256\nbatch_size: 32\ngate_lr: 1.0\ntarget_tolerance: 1\n"
    )  # 8 steps at gate_lr 1: the shortest schedule accepted
    args = ["train", "--model", "hiap_vit_fmnist_tiny", "--pretrained", "none", "--epochs", "1"]
    assert runner.invoke(app, [*args, "--config", str(cfg), "--out", str(run), "--target-macs", "0.6"]).exit_code == 0
    result = runner.invoke(app, ["export", str(run)])
    assert result.exit_code == 0, result.output
    report = json.loads((run / "export" / "export_report.json").read_text())
    assert report["parity"]["passed"] and report["parity"]["max_abs_diff"] <= 1e-4
    assert report["counts_match"]
    assert report["onnx_gmacs"] == report["gmacs"] and report["onnx_params"] == report["params"]
    plan = json.loads((run / "export" / "plan.json").read_text())
    meta = {p.key: p.value for p in onnx.load(str(run / "export" / "model.onnx")).metadata_props}
    assert meta["plan_hash"] == plan["hash"] == report["plan_hash"]
    assert json.loads(meta["class_names"])[0] == "t-shirt/top"
    golden = np.load(run / "export" / "golden.npz")
    assert golden["inputs"].shape == (8, 1, 28, 28) and golden["logits"].shape == (8, 10)
    assert report["simplified"] and report["nodes_before_after_simplify"][1] < report["nodes_before_after_simplify"][0]
    from_onnx = json.loads(runner.invoke(app, ["inspect", str(run / "export" / "model.onnx"), "--json"]).output)
    from_plan = json.loads(runner.invoke(app, ["inspect", str(run / "export" / "plan.json"), "--json"]).output)
    assert from_onnx["gmacs"] == report["gmacs"] and from_onnx["plan_hash"] == report["plan_hash"]
    assert from_plan["params"] == json.loads((run / "summary.json").read_text())["pruned_params"]
    assert runner.invoke(app, ["export", str(run), "--format", "engine"]).exit_code == 2
    result = runner.invoke(app, ["export", str(run), "--no-simplify", "--align", "1", "--out", str(tmp_path / "e1")])
    assert result.exit_code == 0, result.output
    plain = json.loads((tmp_path / "e1" / "export_report.json").read_text())
    assert not plain["simplified"] and plain["parity"]["passed"] and plain["counts_match"]
    assert plain["padding_gmacs"] <= report["padding_gmacs"] and plain["gmacs"] <= report["gmacs"]
    result = runner.invoke(app, ["export", str(run), "--dynamic-batch", "--out", str(tmp_path / "dyn")])
    assert result.exit_code == 0, result.output
    x = np.random.default_rng(3).standard_normal((3, 1, 28, 28)).astype(np.float32)
    assert ort_run(tmp_path / "dyn" / "model.onnx", x).shape == (3, 10)


def test_export_from_model_and_hand_edited_plan(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from hiap.cli import app

    runner = CliRunner()
    run = tmp_path / "run"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "train_images: 128\nbatch_size: 16\ngate_lr: 1.0\ntarget_tolerance: 1\n"
    )  # 8 steps at gate_lr 1: the shortest schedule accepted
    train = ["train", "--model", "hiap_vit_fmnist_tiny", "--pretrained", "none", "--epochs", "1", "--config", str(cfg)]
    assert runner.invoke(app, [*train, "--out", str(run)]).exit_code == 0
    assert runner.invoke(app, ["export", str(run), "--no-simplify"]).exit_code == 0
    plan = json.loads((run / "export" / "plan.json").read_text())
    plan["blocks"][1].update(heads=[], value_dims=[])  # hand edit: block 1 runs its FFN only
    if "qk_dims" in plan["blocks"][1]:
        plan["blocks"][1]["qk_dims"] = []  # one list per kept head, as for value_dims
    plan["blocks"][2].update(ffn=False, neurons=[])  # block 2 runs attention only
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(plan))
    ckpt = str(run / "checkpoint.safetensors")
    args = ["export", "--model", "hiap_vit_fmnist_tiny", "--plan", str(edited), "--pretrained", ckpt]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "e")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "e" / "export_report.json").read_text())
    assert report["parity"]["passed"] and report["counts_match"]
    assert report["plan_hash"] != plan["hash"]
    result = runner.invoke(app, ["export", "--model", "deit_tiny_patch16_224", "--plan", str(edited)])
    assert result.exit_code == 2 and "is for model 'hiap_vit_fmnist_tiny'" in result.output
    plan["blocks"][0]["neurons"] = [5, 3]
    edited.write_text(json.dumps(plan))
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "e2")])
    assert result.exit_code == 2 and "block 0 'neurons': indices must be sorted" in result.output
    assert runner.invoke(app, ["export"]).exit_code == 2
    plan["blocks"][0]["neurons"] = [3, 5]
    edited.write_text(json.dumps(plan))
    for opset, ok in ((13, False), (14, True), (21, False)):  # below 14 the graph's MACs cannot be counted
        result = runner.invoke(app, [*args, "--out", str(tmp_path / f"o{opset}"), "--opset", str(opset)])
        if ok:
            assert result.exit_code == 0, result.output
        else:
            assert result.exit_code == 2 and "hiap exports opsets 14 to 20" in result.output
            assert not (tmp_path / f"o{opset}").exists()  # refused before anything is written


@settings(max_examples=12, deadline=None)
@given(variant=st.sampled_from(sorted(VARIANTS)), seed=st.integers(0, 2**31 - 1), align=st.sampled_from([1, 8]))
def test_random_plans_onnx_parity_and_counts(tmp_path_factory, variant: str, seed: int, align: int) -> None:
    vit = make_vit(variant, fused=False)
    gated = GatedViT(vit).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in gated.gates.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 2)
    masks = gated.hard_masks()
    structure = masks_to_structure(masks)
    path = tmp_path_factory.mktemp("onnx") / "m.onnx"
    c, (h, w) = vit.patch_embed.proj.in_channels, vit.patch_embed.img_size
    torch2onnx(build_compact(vit, structure, align=align), (c, h, w), path)
    x = np.random.default_rng(seed).standard_normal((1, c, h, w)).astype(np.float32)
    with torch.no_grad():
        ref = gated(torch.from_numpy(x), masks).numpy()
    assert np.abs(ort_run(path, x) - ref).max() <= 1e-4
    emitted = padded_structure(structure, gated.geometry.head_dim, align)
    assert onnx_cost(path) == (structure_macs(gated.geometry, emitted), structure_params(gated.geometry, emitted))


def test_all_kept_plan_equals_timms_own_onnx_export(tmp_path: Path) -> None:
    vit = make_vit("layerscale", fused=False)
    structure = GatedViT(vit).geometry.dense_structure()
    ours, theirs = tmp_path / "ours.onnx", tmp_path / "timm.onnx"
    torch2onnx(build_compact(vit, structure, align=1), (3, 32, 32), ours)
    torch2onnx(vit, (3, 32, 32), theirs)
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    assert np.abs(ort_run(ours, x) - ort_run(theirs, x)).max() <= 1e-5
    assert onnx_cost(ours) == onnx_cost(theirs)


def test_dense_export_of_a_run_is_the_model_it_started_from(tmp_path: Path) -> None:
    import json

    from safetensors.torch import save_file
    from typer.testing import CliRunner

    from hiap.cli import app
    from hiap.models import create_model

    start = create_model("hiap_vit_fmnist_tiny", num_classes=10).eval()
    weights = tmp_path / "start.safetensors"
    save_file({k: v.contiguous() for k, v in start.state_dict().items()}, str(weights))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "train_images: 256\nbatch_size: 32\ngate_lr: 1.0\ntarget_tolerance: 1\n"
    )  # 8 steps at gate_lr 1: the shortest schedule accepted
    run = tmp_path / "run"
    args = ["train", "--model", "hiap_vit_fmnist_tiny", "--pretrained", str(weights), "--epochs", "1"]
    assert CliRunner().invoke(app, [*args, "--config", str(cfg), "--out", str(run)]).exit_code == 0
    result = CliRunner().invoke(app, ["export", str(run), "--dense", "--no-simplify"])
    assert result.exit_code == 0, result.output
    x = np.random.default_rng(1).standard_normal((1, 1, 28, 28)).astype(np.float32)
    with torch.no_grad():
        ref = start(torch.from_numpy(x)).numpy()
    assert np.abs(ort_run(run / "export-dense" / "model.onnx", x) - ref).max() <= 1e-4
    meta = {p.key: p.value for p in onnx.load(str(run / "export-dense" / "model.onnx")).metadata_props}
    summary = json.loads((run / "summary.json").read_text())
    assert json.loads(meta["reference_val_acc"]) == summary["dense_val_acc"]


def test_random_init_export_with_onnxsim_counts_zero_constants_it_drops(tmp_path: Path) -> None:
    """Random-init timm weights have all-zero biases; onnxsim folds some of those no-op adds away. The exporter's
    own file must still hold exactly the plan's parameters, and the simplified one may only lose zeros."""
    import json

    from hiap.export.artifact import export_source
    from hiap.export.plan import make_plan
    from hiap.export.source import source_from_plan
    from hiap.models import create_model, data_config

    vit = create_model("deit_tiny_patch16_224", num_classes=10)
    geom = GatedViT(vit).geometry
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(make_plan("deit_tiny_patch16_224", geom, geom.dense_structure(), data_config(vit), 10)
                               .to_dict()))  # fmt: skip
    report = export_source(source_from_plan("deit_tiny_patch16_224", plan, "none"), tmp_path / "out")
    assert report["counts_match"] and report["parity"]["passed"]
    assert report["onnx_params_before_simplify"] == report["params"] == geom.dense_params
    assert report["zero_params_removed_by_onnxsim"] > 0  # onnxsim did drop zero biases here (1,344 measured)
    assert report["onnx_gmacs"] == report["gmacs"]


def test_plan_only_exports_without_data_keep_working_and_say_why_there_is_no_golden(tmp_path: Path) -> None:
    """A plan of the built-in model gets golden inputs from the built-in split but no split fingerprint (a plan
    does not say what it was trained on); with no data known at all the export still succeeds, quietly."""
    import dataclasses
    import json

    from hiap.export.artifact import export_source
    from hiap.export.plan import make_plan
    from hiap.export.source import source_from_plan
    from hiap.models import create_model, data_config

    vit = create_model("hiap_vit_fmnist_tiny", num_classes=10)
    geom = GatedViT(vit).geometry
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(make_plan("hiap_vit_fmnist_tiny", geom, geom.dense_structure(), data_config(vit),
                                         10).to_dict()))  # fmt: skip
    src = source_from_plan("hiap_vit_fmnist_tiny", plan, "none")
    report = export_source(src, tmp_path / "builtin", simplify=False)
    assert report["golden"] == {"images": 8, "source": "builtin validation split"} and report["val_split"] is None
    assert np.load(tmp_path / "builtin" / "golden.npz")["inputs"].shape == (8, 1, 28, 28)
    report = export_source(dataclasses.replace(src, builtin_data=False), tmp_path / "none", simplify=False)
    assert report["parity"]["passed"] and report["golden"] is None and "no validation data" in report["golden_reason"]
    assert not (tmp_path / "none" / "golden.npz").exists() and report["notes"] == []
