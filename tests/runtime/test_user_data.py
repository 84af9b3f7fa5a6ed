"""A user's own ImageFolder data through export and bench: golden.npz from the run's val/ split, `--data` taking the
training root or its val/, the accuracy drop only against the split the run validated on, and a verdict that
never reports an unmeasured budget as met."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from hiap.cli import app
from hiap.runtime.data import Preprocessing, image_folder_batches

FAST = ["--device", "x86-cpu", "--iterations", "5", "--warmup", "1", "--min-seconds", "0"]
VAL_PER_CLASS = 5  # 10 val images: golden.npz takes the first 8


def _image_tree(root: Path, counts: dict[str, int], seed: int = 0) -> None:
    """root/<split>/<class>/<i>.png, grey noise images of uneven sizes (so load_image resizes and crops)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in counts.items():
        for cls in ("cat", "dog"):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (30 + i, 34), dtype=np.uint8)).save(d / f"{i}.png")


@pytest.fixture(scope="module")
def user_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 1-epoch tiny run on an ImageFolder tree and its export (trained and exported once for the module)."""
    torch = pytest.importorskip("torch")

    from hiap.config import TrainConfig
    from hiap.export.artifact import export_source
    from hiap.export.source import source_from_run
    from hiap.train import Trainer

    torch.manual_seed(0)
    base = tmp_path_factory.mktemp("user_data")
    root = base / "data"
    _image_tree(root, {"train": 8, "val": VAL_PER_CLASS})
    run = base / "run"
    # gate_init / gate_lr: a 4-step schedule that can still reach its target (training refuses shorter ones)
    cfg = TrainConfig(model="hiap_vit_fmnist_tiny", pretrained="none", epochs=1, batch_size=4, data=str(root),
                      workers=0, gate_init=1.0, gate_lr=1.0, out=str(run))  # fmt: skip
    Trainer(cfg).run()
    export_source(source_from_run(run), run / "export", simplify=False)
    return {"root": root, "run": run, "onnx": run / "export" / "model.onnx"}


def _meta(onnx_path: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}


def _bench(onnx_path: Path, tmp_path: Path, *args: str) -> tuple[int, str, dict]:
    out = tmp_path / f"bench{len(list(tmp_path.glob('bench*.json')))}.json"
    result = CliRunner().invoke(app, ["bench", str(onnx_path), *FAST, *args, "--json", str(out)])
    assert result.exit_code != 2, result.output  # a user error here is a test bug
    return result.exit_code, " ".join(result.output.split()), json.loads(out.read_text())


def test_export_writes_golden_from_the_runs_val_split_as_the_device_prepares_it(user_run: dict) -> None:
    export = user_run["run"] / "export"
    report = json.loads((export / "export_report.json").read_text())
    assert report["golden"] == {"images": 8, "source": str(user_run["root"] / "val")}
    golden = np.load(export / "golden.npz")
    assert golden["inputs"].shape == (8, 1, 28, 28) and golden["logits"].shape == (8, 2)
    from hiap.runtime.data import split_fingerprint

    meta = _meta(user_run["onnx"])
    pre = Preprocessing.from_metadata(meta, "test")
    x, _ = next(image_folder_batches(user_run["root"] / "val", pre, batch_size=8))
    assert np.array_equal(golden["inputs"], x)  # bit for bit what the bench's own preprocessing gives
    assert any(c["inputs"] == "validation" and c["passed"] for c in report["parity"]["checks"])
    assert json.loads(meta["val_split"]) == split_fingerprint(user_run["root"] / "val") == report["val_split"]
    assert report["val_split"]["images"] == 2 * VAL_PER_CLASS


def test_bench_takes_the_training_root_or_its_val_and_reports_the_drop_vs_training(
    user_run: dict, tmp_path: Path
) -> None:
    onnx_path, root = user_run["onnx"], user_run["root"]
    code, text, from_root = _bench(onnx_path, tmp_path, "--data", str(root), "--max-acc-drop", "100")
    code_val, _, from_val = _bench(onnx_path, tmp_path, "--data", str(root / "val"), "--max-acc-drop", "100")
    assert code == code_val == 0, text
    acc = from_root["accuracy"]
    assert acc["model"] == from_val["accuracy"]["model"] and acc["model"]["images"] == 2 * VAL_PER_CLASS
    assert acc["data"] == str(root / "val") and "training root" in acc["data_note"]
    meta = _meta(onnx_path)
    key = "dense_val_acc" if json.loads(meta["dense_val_acc"]) is not None else "reference_val_acc"
    assert acc["split"]["same"] and acc["reference_top1"] == pytest.approx(100 * json.loads(meta[key]))
    drop = {b["budget"]: b for b in from_root["budgets"]}["accuracy_drop_pp"]
    assert drop["value"] == pytest.approx(acc["reference_top1"] - acc["model"]["top1"]) and drop["passed"] is True
    # fidelity ran on the export's golden.npz of real validation images
    assert from_root["fidelity"]["images"] == 8 and from_root["fidelity"]["golden"].endswith("export/golden.npz")
    assert from_root["fidelity"]["max_abs_diff"] <= 1e-4
    assert from_root["verdict"] == "met" and "all budgets met" in text


def test_another_folder_or_a_limit_is_not_the_runs_split(user_run: dict, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(user_run["root"] / "val", other)
    (other / "dog" / "4.png").unlink()  # one image fewer: another split
    code, text, report = _bench(user_run["onnx"], tmp_path, "--data", str(other), "--max-acc-drop", "100")
    assert code == 4, text
    assert report["accuracy"]["model"]["images"] == 2 * VAL_PER_CLASS - 1  # accuracy is measured, the drop is not
    drop = {b["budget"]: b for b in report["budgets"]}["accuracy_drop_pp"]
    assert drop["passed"] is None and "not the split the run validated on" in drop["reason"]
    assert report["verdict"] == "not measured" and report["passed"] is False
    assert "budgets met: latency, fidelity; not measured: accuracy (--data is not the split" in text
    assert "all budgets met" not in text
    code, text, report = _bench(user_run["onnx"], tmp_path, "--data", str(user_run["root"]), "--limit", "3")
    assert code == 4 and report["accuracy"]["model"]["images"] == 3
    assert "--limit 3 evaluates 3 of the 10 images the run validated on" in report["accuracy"]["reference_unavailable"]


def test_a_failed_budget_beats_unmeasured_ones_and_names_both(user_run: dict, tmp_path: Path) -> None:
    code, text, report = _bench(user_run["onnx"], tmp_path, "--budget-ms", "0.00001")
    assert code == 1 and report["verdict"] == "failed"
    assert "a budget failed: latency_p50_ms, latency_p99_ms; not measured: accuracy (no --data given" in text


def test_export_without_the_runs_data_folder_still_exports_and_says_so(user_run: dict, tmp_path: Path) -> None:
    from hiap.export.artifact import export_source
    from hiap.export.source import source_from_run

    root = user_run["root"]
    src = source_from_run(user_run["run"])
    moved = tmp_path / "moved"
    root.rename(moved)
    try:
        report = export_source(src, tmp_path / "export", simplify=False)
        code, text, bench = _bench(tmp_path / "export" / "model.onnx", tmp_path, "--data", str(moved))
    finally:
        moved.rename(root)
    assert report["golden"] is None and "is not there" in report["golden_reason"] and report["val_split"] is None
    assert not (tmp_path / "export" / "golden.npz").exists() and report["parity"]["passed"]
    assert len(report["notes"]) == 1 and str(root / "val") in report["notes"][0]  # the CLI prints them
    assert code == 4 and bench["fidelity"] is None
    assert "records no validation split" in bench["accuracy"]["reference_unavailable"]
    assert "not measured: accuracy (the model's metadata records no validation split" in text
    assert "fidelity (no golden.npz" in text


def test_a_data_folder_changed_since_training_gives_golden_but_no_split_to_match(
    user_run: dict, tmp_path: Path
) -> None:
    import dataclasses

    from hiap.export.artifact import export_source
    from hiap.export.source import source_from_run

    changed = tmp_path / "changed"
    shutil.copytree(user_run["root"], changed)
    (changed / "val" / "dog").rename(changed / "val" / "wolf")
    src = dataclasses.replace(source_from_run(user_run["run"]), data=str(changed))
    report = export_source(src, tmp_path / "export", simplify=False)
    assert report["golden"] == {"images": 8, "source": str(changed / "val")}  # real images serve fidelity anyway
    assert report["val_split"] is None and "not the split the run validated on" in report["val_split_reason"]
    assert json.loads(_meta(tmp_path / "export" / "model.onnx")["val_split"]) is None


def test_pipeline_on_imagefolder_data_measures_accuracy_and_fidelity(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    root = tmp_path / "data"
    _image_tree(root, {"train": 8, "val": VAL_PER_CLASS})
    profile = tmp_path / "fast-cpu.yaml"  # the x86-cpu profile with a short protocol, to keep the test quick
    text = (Path(__file__).parents[2] / "devices" / "profiles" / "x86-cpu.yaml").read_text()
    profile.write_text(text.replace("name: x86-cpu", "name: fast-cpu").replace("aliases: [x86, cpu]", "aliases: []")
                       .replace("{warmup: 20, iterations: 200, min_seconds: 2.0}",
                                "{warmup: 1, iterations: 5, min_seconds: 0}"))  # fmt: skip
    cfg = tmp_path / "c.yaml"
    # A dense run: a 4-step search cannot land a target (and a target of the whole model is refused), while this
    # test is about the pipeline reading the user's images, which a dense run does the same way.
    cfg.write_text(
        f"model: hiap_vit_fmnist_tiny\npretrained: none\nbatch_size: 4\nworkers: 0\ndata: {root}\ndense: true\n"
    )
    args = ["pipeline", "--config", str(cfg), "--epochs", "1", "--out", str(tmp_path / "run"),
            "--bench-device", str(profile), "--max-acc-drop", "100"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "run" / "bench.json").read_text())
    acc = report["accuracy"]
    assert acc["model"]["images"] == acc["dense"]["images"] == 2 * VAL_PER_CLASS and acc["split"]["same"]
    assert report["fidelity"]["images"] == 8 and report["verdict"] == "met"


def test_bench_reads_the_images_training_reads_and_tells_roots_by_structure(tmp_path: Path) -> None:
    """torchvision's ImageFolder (what `hiap train` validates on) walks class folders recursively and takes .pgm:
    the bench's listing must be the same images in the same order, or "the same split" would not be."""
    from PIL import Image

    ImageFolder = pytest.importorskip("torchvision.datasets").ImageFolder

    tree = tmp_path / "tree"
    for i, rel in enumerate(("b/2.png", "b/10.png", "b/sub/1.png", "a/z.pgm", "a/x/y.PNG", "a/notes.txt")):
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith("txt"):
            (tree / rel).write_text("not an image")
        else:
            img = Image.fromarray(np.full((4, 4), 40 * i, np.uint8))
            img.save(tree / rel, format="PNG" if "png" in rel.lower() else "PPM")
    theirs = ImageFolder(str(tree))
    pre = Preprocessing((1, 4, 4), (0.0,), (1.0,), "bilinear", 1.0)
    x, y = next(image_folder_batches(tree, pre))
    assert list(y) == [label for _, label in theirs.samples]
    expected = [np.asarray(theirs.loader(path).convert("L"), np.float32)[None] / 255 for path, _ in theirs.samples]
    assert np.allclose(x, np.stack(expected))

    from hiap.runtime.data import image_folder_files, is_training_root

    classes, files = image_folder_files(tree)
    assert classes == theirs.classes
    assert [(str(f), theirs.class_to_idx[c]) for f, c in files] == theirs.samples
    assert not is_training_root(tree)
    (tmp_path / "root" / "train" / "a").mkdir(parents=True)
    shutil.copytree(tree, tmp_path / "root" / "val")
    assert is_training_root(tmp_path / "root")
    flat = tmp_path / "classes"  # a class-folder tree whose classes are called train and val
    for cls in ("train", "val"):
        (flat / cls).mkdir(parents=True)
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(flat / cls / "0.png")
    assert not is_training_root(flat)


def test_int8_export_of_an_image_folder_run_calibrates_on_its_train_split(user_run: dict, tmp_path: Path) -> None:
    """The run's own training images are the calibration data: its train/ (16 images here) is too few, and the
    error names it; more images from that tree then calibrate and validate on the run's val/."""
    from hiap.base.errors import HiapError
    from hiap.export.artifact import Int8Options, export_source
    from hiap.export.quantize import Recipe
    from hiap.export.source import source_from_run

    src = source_from_run(user_run["run"])
    with pytest.raises(HiapError, match=rf"'{user_run['root'] / 'train'}' holds 16 images; at least 32"):
        export_source(src, tmp_path / "refused", int8=Int8Options(Recipe()))
    assert not (tmp_path / "refused").exists()
    import dataclasses
    import shutil

    root = tmp_path / "data"  # a copy with more training images; the module's tree stays as it was
    shutil.copytree(user_run["root"], root)
    _image_tree(root, {"train": 24}, seed=1)  # 48 images now (the first 8 per class overwritten)
    bigger = dataclasses.replace(src, data=str(root))
    report = export_source(bigger, tmp_path / "int8", simplify=False, int8=Int8Options(Recipe(), max_drop_pp=100))
    assert report["quantization"]["calibration"]["source"] == str(root / "train")
    assert report["quantization"]["calibration"]["images"] == 48
    check = report["int8_check"]
    assert check["source"] == str(root / "val") and check["images"] == 2 * VAL_PER_CLASS
    assert {"fp32_top1", "int8_top1", "drop_pp"} <= set(check)
