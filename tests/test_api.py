"""The Python API (hiap.api): the three examples run at tiny sizes, bad input to every entry point is one HiapError
with the model left as it was, and a pruner's state resumes a loop exactly."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

import hiap.api as hp
from hiap.base.errors import HiapError
from hiap.cli import app

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--iterations", "20", "--warmup", "2", "--min-seconds", "0"]
VERDICTS = {"latency_p50_ms": True, "latency_p99_ms": True, "accuracy_drop_pp": None, "fidelity_max_abs_diff": True,
            "fidelity_top1_agreement": True}  # fmt: skip


def example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_vit(seed: int = 0, classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", num_classes=classes, img_size=32, patch_size=8, depth=2,
                             embed_dim=64, num_heads=2)  # fmt: skip


def image_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", 16), ("val", 4)):
        for c in ("a", "b", "c"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root


def bench(onnx: Path, tmp_path: Path, *extra: str) -> tuple[int, dict]:
    """The bench's exit code and each budget's verdict (True passed, None not measured)."""
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", str(onnx), "--device", "x86-cpu", *FAST, *extra, "--json", str(out)])
    return result.exit_code, {b["budget"]: b["passed"] for b in json.loads(out.read_text())["budgets"]}


def test_example_a_plain_loop_on_an_image_folder_prunes_exports_and_benches(tmp_path: Path) -> None:
    data = image_folder(tmp_path / "data")
    report = example("prune_imagefolder").main(["--data", str(data), "--out", str(tmp_path / "out"), "--gate-lr", "1"])
    assert report["parity"]["passed"] and report["counts_match"] is True
    assert abs(report["gmacs"] / report["dense_gmacs"] - 0.5) < 0.01  # landed on the target, as exported
    assert report["golden"] == {"images": 4, "source": "sample inputs given to the export"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "export_report.json", "golden.npz", "model.onnx", "plan.json", "pruned.safetensors"]  # fmt: skip
    plan = json.loads((tmp_path / "out" / "plan.json").read_text())
    assert plan["model"] == "vit_tiny_patch16_224" and plan["hash"] == report["plan_hash"]
    code, verdicts = bench(tmp_path / "out" / "model.onnx", tmp_path)
    assert code == 4 and verdicts == VERDICTS  # 4: accuracy not measured (no --data), never "passed"
    rebuilt = hp.load_pruned(tiny_vit(seed=5), tmp_path / "out" / "pruned.safetensors").eval()
    blocks = [type(b).__name__ for b in rebuilt.blocks]
    assert blocks == ["CompactBlock", "CompactBlock"]
    golden = np.load(tmp_path / "out" / "golden.npz")
    with torch.no_grad():
        out = rebuilt(torch.from_numpy(golden["inputs"])).numpy()
    np.testing.assert_allclose(out, golden["logits"], atol=1e-5)


def test_example_a_backbone_inside_the_users_model_prunes_only_the_backbone(tmp_path: Path) -> None:
    seg = example("prune_backbone")
    report = seg.main(["--out", str(tmp_path / "seg"), "--steps", "30", "--gate-lr", "1"])
    assert report["parity"]["passed"] and report["rebuilt_max_abs_diff"] == 0.0
    assert json.loads(report["metadata"]["wrapper"]) == {"class": "PatchSegmenter", "backbone": "backbone"}
    assert report["counts_match"] is None and report["onnx_gmacs"] > 0  # the head's MACs are not the plan's
    code, verdicts = bench(tmp_path / "seg" / "model.onnx", tmp_path)
    assert code == 4 and verdicts == VERDICTS

    model = seg.build()
    head = {k: v.clone() for k, v in model.head.state_dict().items()}
    pruner = hp.Pruner(model, 20, budget=0.5, options=hp.PruneOptions(gate_lr=1.0))
    assert pruner.backbone_path == "backbone" and not hasattr(model.head, "hiap_gates")
    optimizer = torch.optim.AdamW([{"params": list(pruner.weight_parameters())}, *pruner.param_groups()])
    for _ in range(20):
        pruner.step(optimizer)
    hp.materialize(pruner)
    assert type(model.head) is nn.Linear and all(torch.equal(v, head[k]) for k, v in model.head.state_dict().items())
    assert not any("hiap_gates" in k for k in model.state_dict())


def test_example_the_loop_under_torchrun_with_bf16_autocast(tmp_path: Path) -> None:
    script = ROOT / "examples" / "prune_ddp.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script),
           "--out", str(tmp_path / "ddp"), "--steps", "30", "--gate-lr", "1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((tmp_path / "ddp" / "ddp_summary.json").read_text())
    assert summary["world"] == 2 and summary["gate_spread"] == 0.0 and summary["parity"] is True
    assert abs(summary["gmacs"] / summary["dense_gmacs"] - 0.5) < 0.01


class TwoViTs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = tiny_vit(), tiny_vit()


@pytest.mark.parametrize(
    ("make", "kwargs", "message"),
    [
        (tiny_vit, {"total_steps": 0}, "total_steps must be a positive int"),
        (tiny_vit, {"budget": "half"}, "is not a fraction"),
        (tiny_vit, {"budget": 0.001}, "below"),
        (tiny_vit, {"budget": float("nan")}, "finite"),
        (tiny_vit, {"budget": [0.5]}, "budget must be a MAC fraction"),
        (tiny_vit, {"options": hp.PruneOptions(gate_lr=-1.0)}, "'gate_lr' must be > 0"),
        (tiny_vit, {"options": hp.PruneOptions(adapt_from="dense")}, "'adapt_from' must be"),
        (tiny_vit, {"total_steps": 5}, "too few to reach the target"),
        (tiny_vit, {"budget": hp.Latency(1.0, None)}, "needs the device's table"),  # type: ignore[arg-type]
        (lambda: nn.Linear(3, 3), {}, "holds no timm VisionTransformer"),
        (TwoViTs, {}, "holds 2 ViTs"),
    ],
)
def test_bad_input_to_the_pruner_is_one_line_and_leaves_the_model_as_it_was(make, kwargs, message) -> None:
    model = make()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modules = [type(m) for m in model.modules()]
    with pytest.raises(HiapError, match=message) as info:
        hp.Pruner(model, **({"total_steps": 200} | kwargs))
    assert "\n" not in str(info.value)
    assert [type(m) for m in model.modules()] == modules
    assert model.state_dict().keys() == before.keys() and all(
        torch.equal(v, before[k]) for k, v in model.state_dict().items()
    )


def test_wrapping_keeps_the_weight_names_and_refuses_a_second_wrap() -> None:
    model = tiny_vit()
    names = list(model.state_dict())
    pruner = hp.Pruner(model, 40, budget=0.5, options=hp.PruneOptions(gate_lr=1.0))
    assert [k for k in model.state_dict() if not k.startswith("hiap_gates.")] == names
    assert {id(p) for p in pruner.weight_parameters()} == {
        id(p) for n, p in model.named_parameters() if "gates" not in n
    }
    with pytest.raises(HiapError, match="already carries hiap gates"):
        hp.Pruner(model, 40, budget=0.5)
    with pytest.raises(HiapError, match="still running"):
        hp.materialize(pruner)
    with pytest.raises(HiapError, match=r"export\(pruner, out, ...\) takes the Pruner .* first, got VisionTransformer"):
        hp.export(model, "unused", preprocessing=hp.data_config(model))  # type: ignore[arg-type]


def _loop(model: nn.Module, pruner: hp.Pruner, optimizer: torch.optim.Optimizer, steps: range) -> None:
    gen = torch.Generator()
    for step in steps:
        gen.manual_seed(step)
        x, y = torch.randn(4, 3, 32, 32, generator=gen), torch.randint(0, 3, (4,), generator=gen)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(x)
        loss = pruner.penalty(nn.functional.cross_entropy(logits.float(), y))
        assert loss.dtype == torch.float32
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        pruner.step(optimizer)


def _setup(
    seed: int = 0, target: float = 0.5, value_align: int = 8
) -> tuple[nn.Module, hp.Pruner, torch.optim.Optimizer]:
    model = tiny_vit(seed)
    options = hp.PruneOptions(gate_lr=1.0, search_fraction=0.5, value_align=value_align)
    pruner = hp.Pruner(model, 24, budget=target, options=options)
    optimizer = torch.optim.AdamW([{"params": list(pruner.weight_parameters())}, *pruner.param_groups()], lr=1e-3)
    return model, pruner, optimizer


def test_a_loop_saved_and_restored_mid_run_ends_exactly_as_the_uninterrupted_one(tmp_path: Path) -> None:
    model, pruner, optimizer = _setup()
    _loop(model, pruner, optimizer, range(24))
    assert not pruner.searching and pruner.landed

    model2, pruner2, optimizer2 = _setup()
    _loop(model2, pruner2, optimizer2, range(7))  # killed mid-search: the checkpoint a user's loop writes
    saved = {"model": model2.state_dict(), "pruner": pruner2.state_dict(), "optimizer": optimizer2.state_dict()}
    torch.save(saved, tmp_path / "ckpt.pt")
    loaded = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    with pytest.raises(HiapError, match="started from other weights"):
        _setup(seed=9)[1].load_state_dict(loaded["pruner"])  # it would rewind to a start that is not the run's
    model3, pruner3, optimizer3 = _setup()  # another process, built from the same start
    model3.load_state_dict(loaded["model"])
    pruner3.load_state_dict(loaded["pruner"])
    optimizer3.load_state_dict(loaded["optimizer"])
    _loop(model3, pruner3, optimizer3, range(7, 24))
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), model3.state_dict().values(), strict=True)
    )
    assert pruner3.structure() == pruner.structure() and pruner3.landing_shift == pruner.landing_shift

    other = _setup(target=0.4)[1]
    with pytest.raises(HiapError, match="another budget"):
        other.load_state_dict(pruner.state_dict())
    with pytest.raises(HiapError, match="Not a hiap pruner state"):
        other.load_state_dict({"gates": {}})
    small = hp.Pruner(
        timm.create_model("vit_tiny_patch16_224", num_classes=3, img_size=32, patch_size=8, depth=1, embed_dim=64,
                          num_heads=2), 24, budget=0.5, options=hp.PruneOptions(gate_lr=1.0))  # fmt: skip
    with pytest.raises(HiapError, match="another model geometry"):
        small.load_state_dict(pruner.state_dict())
    assert other.step_count == 0 and small.step_count == 0  # refused before anything changed


def test_an_align_off_the_landings_grid_is_refused_and_the_plan_rebuilds_on_its_own_align(tmp_path: Path) -> None:
    model, pruner, optimizer = _setup()
    _loop(model, pruner, optimizer, range(24))
    assert pruner.landing_align == 8  # the search ended at step 12 of 24 and filled widths to multiples of 8
    for call in (lambda: hp.plan_of(pruner, align=3), lambda: hp.materialize(pruner, align=12),
                 lambda: hp.export(pruner, tmp_path / "e", preprocessing=hp.data_config(model), align=12)):  # fmt: skip
        with pytest.raises(HiapError, match=r"padded to multiples of 8 .* not (3|12)"):
            call()
    assert not (tmp_path / "e").exists() and not pruner.spent
    assert hp.plan_of(pruner, align=32).to_dict()["align"] == 32  # a multiple: a coarser grid on purpose
    assert hp.materialize(pruner, align=4).to_dict()["align"] == 4  # 4 divides the grid: the same widths

    # Without the fill any align goes, and the plan records it: a rebuild pads as the saved weights were padded.
    model, pruner, optimizer = _setup(value_align=0)
    _loop(model, pruner, optimizer, range(24))
    assert pruner.landing_align == 0
    assert any(len(v) <= 24 for b in pruner.structure().blocks for v in b.value_dims)  # 32 pads these wider than 8
    x = torch.randn(2, 3, 32, 32)
    plan = hp.materialize(pruner, align=32)
    model.eval()
    hp.save_pruned(model, tmp_path / "w.safetensors", plan)
    assert plan.to_dict()["align"] == 32
    rebuilt = hp.load_pruned(tiny_vit(seed=5), tmp_path / "w.safetensors").eval()
    assert torch.equal(rebuilt(x), model(x))
    with pytest.raises(HiapError, match="padded to align 32, not 8: leave align out"):
        hp.load_pruned(tiny_vit(), tmp_path / "w.safetensors", align=8)
    for bad in (0, "8", True):
        with pytest.raises(HiapError, match="'align' must be an int >= 1"):
            hp.apply_plan(tiny_vit(), plan.to_dict() | {"align": bad})


def test_save_load_and_export_refuse_bad_input_in_one_line_leaving_the_model_as_it_was(tmp_path: Path) -> None:
    model, pruner, optimizer = _setup()
    _loop(model, pruner, optimizer, range(24))
    with pytest.raises(HiapError, match="still carries gate logits"):
        hp.save_pruned(model, tmp_path / "w.safetensors", hp.plan_of(pruner))
    (tmp_path / "file").write_text("x")
    with pytest.raises(HiapError, match="is a file: give a folder"):
        hp.export(pruner, tmp_path / "file", preprocessing=hp.data_config(model))
    plan = hp.materialize(pruner)
    hp.save_pruned(model, tmp_path / "w.safetensors", plan)
    with pytest.raises(HiapError, match="Cannot write"):
        hp.save_pruned(model, tmp_path / "missing" / "w.safetensors", plan)
    deeper = timm.create_model("vit_tiny_patch16_224", num_classes=3, img_size=32, patch_size=8, depth=3,
                               embed_dim=64, num_heads=2)  # fmt: skip
    wider = tiny_vit(classes=5)
    for other, message in ((deeper, "Plan 'blocks': expected 3 blocks"), (wider, "does not fit this model")):
        before = {k: v.clone() for k, v in other.state_dict().items()}
        with pytest.raises(HiapError, match=message):
            hp.load_pruned(other, tmp_path / "w.safetensors")
        assert all(type(b).__name__ == "Block" for b in other.blocks)
        assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(HiapError, match="not a readable safetensors file"):
        hp.load_pruned(tiny_vit(), tmp_path / "bad.safetensors")


class Classifier(nn.Module):
    """A user's model: a headless timm ViT under an MLP classifier."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.backbone = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32, patch_size=8, depth=2,
                                          embed_dim=64, num_heads=2)  # fmt: skip
        self.head = nn.Sequential(nn.Linear(64, 32), nn.GELU(), nn.Linear(32, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def _normalised(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of an ImageFolder split as the user's loop feeds it: [0, 1] pixels, then their mean/std."""
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    normalise = transforms.Compose([transforms.ToTensor(), transforms.Normalize(CIFAR_MEAN, CIFAR_STD)])
    ds = ImageFolder(str(folder), transform=normalise)
    return torch.stack([x for x, _ in ds]), torch.tensor([y for _, y in ds])


def brightness_folder(root: Path) -> Path:
    """Three classes a model can learn in a few steps: dark, mid-grey and bright noisy images."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 16), ("val", 8)):
        for c, level in (("dark", 40), ("mid", 128), ("bright", 215)):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(rng.normal(level, 25, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")
    return root


def _trained_classifier(data: Path, steps: int = 40) -> tuple[Classifier, hp.Pruner]:
    model = Classifier()
    pruner = hp.Pruner(model, steps, budget=0.5, options=hp.PruneOptions(gate_lr=1.0),
                       model_name="vit_tiny_patch16_224")  # fmt: skip
    optimizer = torch.optim.AdamW([{"params": list(pruner.weight_parameters()), "lr": 3e-3}, *pruner.param_groups()])
    x, y = _normalised(data / "train")
    for step in range(steps):
        idx = torch.arange(step * 8, step * 8 + 8) % len(y)
        loss = pruner.penalty(nn.functional.cross_entropy(model(x[idx]), y[idx]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        pruner.step(optimizer)
    return model, pruner


def test_the_export_records_the_users_preprocessing_and_the_bench_evaluates_with_it(tmp_path: Path) -> None:
    import onnxruntime as ort

    data = brightness_folder(tmp_path / "data")
    model, pruner = _trained_classifier(data)
    assert hp.data_config(model)["input_size"] == (3, 32, 32)  # the backbone's built size, not timm's 224
    with pytest.raises(HiapError, match="needs the preprocessing your loop used"):
        hp.export(pruner, tmp_path / "none")
    report = hp.export(pruner, tmp_path / "out", preprocessing={"mean": CIFAR_MEAN, "std": CIFAR_STD})
    assert json.loads(report["metadata"]["mean"]) == list(CIFAR_MEAN)
    x, y = _normalised(data / "val")
    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"))
    logits = np.concatenate([session.run(None, {session.get_inputs()[0].name: x[i : i + 1].numpy()})[0]
                             for i in range(len(y))])  # fmt: skip
    expected = 100 * float((logits.argmax(-1) == y.numpy()).mean())
    out = tmp_path / "bench.json"
    CliRunner().invoke(app, ["bench", str(tmp_path / "out" / "model.onnx"), "--device", "x86-cpu", *FAST,
                             "--data", str(data), "--json", str(out)])  # fmt: skip
    assert expected > 60  # the model learned the task: a wrong normalisation would change its answers
    assert json.loads(out.read_text())["accuracy"]["model"]["top1"] == pytest.approx(expected, abs=1e-9)


def test_export_and_plans_only_after_the_search_and_a_dense_export_of_its_own(tmp_path: Path) -> None:
    model = Classifier()
    pre = {"mean": CIFAR_MEAN, "std": CIFAR_STD}
    dense = hp.export_dense(model, tmp_path / "dense", preprocessing=pre, model_name="vit_tiny_patch16_224")
    assert dense["gmacs"] == dense["dense_gmacs"] and dense["parity"]["passed"]
    model, pruner = _trained_classifier(image_folder(tmp_path / "data"), steps=40)
    with pytest.raises(HiapError, match="carries hiap gates"):
        hp.export_dense(model, tmp_path / "d2", preprocessing=pre)
    early = Classifier()
    early_pruner = hp.Pruner(early, 40, budget=0.5, options=hp.PruneOptions(gate_lr=1.0),
                             model_name="vit_tiny_patch16_224")  # fmt: skip
    for call in (lambda: hp.plan_of(early_pruner), lambda: hp.export(early_pruner, tmp_path / "e",
                                                                        preprocessing=pre)):  # fmt: skip
        with pytest.raises(HiapError, match="still running"):
            call()
    assert not (tmp_path / "e").exists()
    # A headless backbone built with its own kwargs: the plan records them and reads back from its file.
    plan = hp.plan_of(pruner)
    assert plan.num_classes == 0
    assert plan.model_kwargs == {"img_size": [32, 32], "patch_size": [8, 8], "depth": 2, "embed_dim": 64,
                                 "num_heads": 2}  # fmt: skip
    (tmp_path / "plan.json").write_text(json.dumps(plan.to_dict()))
    rebuilt = hp.apply_plan(Classifier(seed=3), tmp_path / "plan.json")
    assert [type(b).__name__ for b in rebuilt.backbone.blocks] == ["CompactBlock", "CompactBlock"]


class TupleOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.vit = tiny_vit()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.vit(x), x.mean()


def test_export_refuses_outputs_it_cannot_check_and_bad_samples_in_one_line(tmp_path: Path) -> None:
    model = TupleOut()
    pruner = hp.Pruner(model, 24, budget=0.5, options=hp.PruneOptions(gate_lr=1.0, search_fraction=0.5))
    optimizer = torch.optim.AdamW([{"params": list(pruner.weight_parameters())}, *pruner.param_groups()], lr=1e-3)
    for _ in range(24):
        x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 3, (4,))
        loss = pruner.penalty(nn.functional.cross_entropy(model(x)[0], y))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        pruner.step(optimizer)
    pre = hp.data_config(model)
    with pytest.raises(HiapError, match="returns a tuple, not one tensor"):
        hp.export(pruner, tmp_path / "t", preprocessing=pre)
    vit, vit_pruner, opt = _setup()
    _loop(vit, vit_pruner, opt, range(24))
    pre = hp.data_config(vit)
    cases = [({"sample_inputs": torch.zeros(2, 3, 16, 16)}, r"\[N, 3, 32, 32\], got \(2, 3, 16, 16\)"),
             ({"sample_inputs": torch.zeros(2, 3, 32, 32, dtype=torch.uint8)}, "torch.uint8: give them preprocessed"),
             ({"class_names": ["a", "b"]}, "2 names but the model outputs 3"),
             ({"preprocessing": {"mean": (0.5,), "std": (0.5,) * 3}}, "mean must be 3 finite numbers"),
             ({"preprocessing": {"mean": (0.5,) * 3, "std": (0.0,) * 3}}, "std must be > 0")]  # fmt: skip
    for kwargs, message in cases:
        with pytest.raises(HiapError, match=message):
            hp.export(vit_pruner, tmp_path / "v", **({"preprocessing": pre} | kwargs))
    assert not (tmp_path / "v").exists() and not (tmp_path / "t").exists()


def test_a_latency_targeted_export_records_the_tables_prediction(tmp_path: Path) -> None:
    from hiap.models import create_model

    spec = importlib.util.spec_from_file_location("lut_tables", ROOT / "tests" / "hiap" / "test_latency.py")
    assert spec is not None and spec.loader is not None
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    vit = create_model("hiap_vit_fmnist_tiny", num_classes=10)
    from hiap.gated import describe_vit

    lut = tmp_path / "lut.json"
    lut.write_text(json.dumps(tables.synthetic_lut(describe_vit(vit))))
    from hiap.base.lut import read_lut
    from hiap.latency import LatencyCost

    dense_ms = LatencyCost(read_lut(lut), describe_vit(vit), "hiap_vit_fmnist_tiny", 1).dense
    pruner = hp.Pruner(vit, 200, hp.Latency(0.6 * dense_ms, lut),
                       options=hp.PruneOptions(gate_lr=0.3), model_name="hiap_vit_fmnist_tiny")  # fmt: skip
    optimizer = torch.optim.AdamW([{"params": list(pruner.weight_parameters())}, *pruner.param_groups()], lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(pruner.search_steps):
        x = torch.randn(8, 1, 28, 28, generator=gen)
        loss = pruner.penalty(nn.functional.cross_entropy(vit(x), (x.mean((1, 2, 3)) > 0).long()))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        pruner.step(optimizer)
    report = hp.export(pruner, tmp_path / "out", preprocessing=hp.data_config(vit))
    predicted = report["predicted_latency"]
    assert predicted is not None and predicted["device"] == "x86-cpu"
    assert predicted["ms"]["1"] == pytest.approx(pruner.budget.of(pruner.geometry, pruner.structure()), rel=1e-5)


def test_the_api_writes_an_int8_file_calibrated_on_the_users_images(tmp_path: Path) -> None:
    data = brightness_folder(tmp_path / "data")
    _, pruner = _trained_classifier(data)
    report = hp.export(pruner, tmp_path / "int8", preprocessing={"mean": CIFAR_MEAN, "std": CIFAR_STD},
                       int8_data=data)  # fmt: skip
    assert report["metadata"]["precision"] == "int8"
    assert sorted(p.name for p in (tmp_path / "int8").iterdir()) == [
        "export_report.json", "golden.npz", "model-fp32.onnx", "model.onnx", "plan.json"]  # fmt: skip
    with pytest.raises(HiapError, match=r"int8_data '.*' is not a folder"):
        hp.export(pruner, tmp_path / "x", preprocessing={"mean": CIFAR_MEAN, "std": CIFAR_STD},
                  int8_data=tmp_path / "missing")  # fmt: skip
