"""Bad input, fuzzed and from a corpus: every case is a one-line HiapError (exit 2 at the CLI), never a traceback,
and nothing that existed is overwritten."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from mutations import mutate, one_line_error
from PIL import Image
from typer.testing import CliRunner

from hiap.base.errors import HiapError
from hiap.checkpoint import load_checkpoint
from hiap.cli import app
from hiap.config import resolve_config
from hiap.export.plan import read_plan_json, structure_from_dict
from hiap.gated import describe_vit
from hiap.models import create_model
from hiap.runtime.data import Preprocessing, image_folder_batches
from hiap.runtime.ort_runner import OrtRunner

FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(-5, 300), st.floats(allow_nan=False), st.text(max_size=8))
JSON = st.recursive(
    JSON_LEAF,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


# -- configs ---------------------------------------------------------------------------------------------------


@FUZZ
@given(body=st.dictionaries(st.one_of(st.sampled_from(["epochs", "lr", "kd", "target_macs", "gate_mode", "k_min"]),
                                      st.text(max_size=8), st.integers()), JSON, max_size=4))  # fmt: skip
@example(body={"\n": None})  # found by this test: an unknown key holding a newline broke the one-line error
def test_fuzzed_yaml_configs_are_accepted_or_refused_in_one_line(tmp_path: Path, body: dict) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(body))
    one_line_error(resolve_config, path, {})


@pytest.mark.parametrize("raw", [b"\xff\xfe\x00bad", b"epochs: [1, 2\n", b"1: 2\n", b"- a\n"])
def test_unreadable_yaml_corpus(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(raw)
    assert one_line_error(resolve_config, path, {}) is not None


# -- plans -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_plan(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from hiap.export.plan import make_plan
    from hiap.models import data_config

    vit = create_model("hiap_vit_fmnist_tiny", num_classes=10)
    geom = describe_vit(vit)
    return make_plan("hiap_vit_fmnist_tiny", geom, geom.dense_structure(), data_config(vit), 10).to_dict()


@FUZZ
@given(path=st.lists(st.integers(0, 50), min_size=1, max_size=5), value=JSON)
def test_fuzzed_plans_validate_in_one_line(tmp_path: Path, good_plan: dict, path: list, value: object) -> None:
    file = tmp_path / "plan.json"
    file.write_text(json.dumps(mutate(good_plan, path, value)))
    geom = describe_vit(create_model("hiap_vit_fmnist_tiny", num_classes=10, meta=True))

    def load() -> None:
        structure_from_dict(read_plan_json(file)["blocks"], geom)

    one_line_error(load)


# -- checkpoints -------------------------------------------------------------------------------------------------


@FUZZ
@given(cut=st.floats(0.0, 0.999), flips=st.lists(st.integers(0, 10**9), min_size=1, max_size=3))
def test_truncated_or_damaged_checkpoints_never_load(tmp_path: Path, tiny_run: Path, cut: float, flips: list) -> None:
    raw = (tiny_run / "checkpoint.safetensors").read_bytes()
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(raw[: int(len(raw) * cut)])
    assert one_line_error(load_checkpoint, truncated) is not None
    damaged = bytearray(raw)
    for pos in {f % len(raw) for f in flips}:  # distinct bytes: flipping one twice would restore it
        damaged[pos] ^= 0x5A
    flipped = tmp_path / "f.safetensors"
    flipped.write_bytes(bytes(damaged))
    assert one_line_error(load_checkpoint, flipped) is not None  # header damage or the checksum


def test_checkpoint_of_another_model_is_refused(tmp_path: Path, tiny_run: Path) -> None:
    from hiap.export.plan import make_plan
    from hiap.models import data_config

    vit = create_model("hiap_vit_fmnist", num_classes=10)
    geom = describe_vit(vit)
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(make_plan("hiap_vit_fmnist", geom, geom.dense_structure(), data_config(vit), 10)
                               .to_dict()))  # fmt: skip
    weights = tmp_path / "w.safetensors"
    from hiap.checkpoint import export_weights

    export_weights(tiny_run, weights)
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.onnx").write_text("keep me")
    args = ["export", "--model", "hiap_vit_fmnist", "--plan", str(plan), "--pretrained", str(weights), "--out",
            str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "do not fit model" in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert (out / "model.onnx").read_text() == "keep me"


# -- ONNX and engines ----------------------------------------------------------------------------------------------


@FUZZ
@given(cut=st.floats(0.0, 0.95))
def test_truncated_onnx_is_refused(tmp_path: Path, exported_pair: dict, cut: float) -> None:
    from hiap.export.inspect import inspect_onnx

    raw = exported_pair["pruned"].read_bytes()
    file = tmp_path / "m.onnx"
    file.write_bytes(raw[: int(len(raw) * cut)])

    def open_it() -> None:
        with OrtRunner(file):
            pass

    assert one_line_error(open_it) is not None
    assert one_line_error(inspect_onnx, file) is not None


def test_random_bytes_as_an_engine(tmp_path: Path) -> None:
    engine = tmp_path / "m.engine"
    engine.write_bytes(random.Random(0).randbytes(4096))
    for device in ("cuda-gpu", "x86-cpu"):
        result = CliRunner().invoke(app, ["bench", str(engine), "--device", device, "--allow-mismatch"])
        assert result.exit_code == 2, result.output
        assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


# -- images ------------------------------------------------------------------------------------------------------

MODES = st.sampled_from(["L", "RGB", "RGBA", "CMYK", "P", "I;16", "1", "LA", "I", "F"])


@FUZZ
@given(mode=MODES, w=st.integers(1, 70), h=st.integers(1, 70), corrupt=st.booleans(), channels=st.sampled_from([1, 3]))
def test_images_of_any_mode_or_size_decode_or_are_refused(
    tmp_path: Path, mode: str, w: int, h: int, corrupt: bool, channels: int
) -> None:
    folder = tmp_path / "data" / "a"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w), dtype=np.uint8)).convert(mode)
    suffix = {"CMYK": ".jpg", "I": ".tiff", "F": ".tiff", "I;16": ".tiff"}.get(mode, ".png")
    path = folder / f"x{suffix}"
    img.save(path)
    if corrupt:
        path.write_bytes(path.read_bytes()[:20])
    pre = Preprocessing((channels, 16, 16), (0.5,) * channels, (0.5,) * channels, "bicubic", 0.9)
    try:
        x, y = next(image_folder_batches(tmp_path / "data", pre))
    except HiapError as exc:
        assert corrupt and "cannot be read" in str(exc) and "\n" not in str(exc)
        return
    assert x.shape == (1, channels, 16, 16) and x.dtype == np.float32 and np.isfinite(x).all()
    assert list(y) == [0]


# -- CLI corpus: exit 2, one line, nothing overwritten ---------------------------------------------------------------


def test_cli_bad_input_corpus_leaves_existing_files_alone(tmp_path: Path, tiny_run: Path) -> None:
    sentinel_dir = tmp_path / "out"
    sentinel_dir.mkdir()
    for name in ("plan.json", "model.onnx", "golden.npz", "export_report.json"):
        (sentinel_dir / name).write_text("keep me")
    bad_plan = tmp_path / "plan.json"
    bad_plan.write_text(json.dumps({"schema_version": 1, "model": "hiap_vit_fmnist_tiny", "num_classes": "ten",
                                    "input_size": [1, 28, 28], "mean": [0.5], "std": [0.5], "blocks": []}))  # fmt: skip
    not_ckpt = tmp_path / "x.safetensors"
    not_ckpt.write_bytes(b"\x00" * 64)
    bad_yaml = tmp_path / "c.yaml"
    bad_yaml.write_text("epochs: many\n")
    cases = [
        (["export", str(not_ckpt), "--out", str(sentinel_dir)], "truncated or corrupted"),
        (["export", "--model", "hiap_vit_fmnist_tiny", "--plan", str(bad_plan), "--out", str(sentinel_dir)],
         "'num_classes' must be an integer >= 0"),
        (["export", str(tiny_run), "--out", str(sentinel_dir), "--align", "0"], "--align must be >= 1"),
        (["export", str(tiny_run), "--out", str(sentinel_dir), "--align", "12"],
         "landed on value widths padded to multiples of 8 (value_align)"),
        (["export", str(tiny_run), "--out", str(sentinel_dir), "--target", "jetson-nano-2"], "Unknown device"),
        (["train", "--config", str(bad_yaml), "--out", str(sentinel_dir)], "'epochs' must be int"),
        (["inspect", str(not_ckpt)], "truncated or corrupted"),
        (["bench", str(tmp_path / "none.onnx")], "does not exist"),
    ]  # fmt: skip
    for args, message in cases:
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)
        assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output, result.output
        for name in ("plan.json", "model.onnx", "golden.npz", "export_report.json"):
            assert (sentinel_dir / name).read_text() == "keep me", (args, name)


def test_a_checkpoint_whose_checksum_key_is_damaged_is_refused(tmp_path: Path, tiny_run: Path) -> None:
    """safetensors writes the metadata keys in no fixed order, so a random damaged byte may hit the checksum's own
    key name: the check must not then switch itself off."""
    raw = (tiny_run / "checkpoint.safetensors").read_bytes()
    at = raw.index(b'"tensors_sha256"') + 1
    damaged = tmp_path / "k.safetensors"
    damaged.write_bytes(raw[:at] + bytes([raw[at] ^ 0x5A]) + raw[at + 1 :])
    assert "fails its checksum" in (one_line_error(load_checkpoint, damaged) or "")
