"""Hostile input to every reader: nesting bombs, alias bombs, non-finite numbers, files that are not files, link
loops, decompression bombs, metadata that lies about the graph, and fuzzed profiles, latency tables, ONNX metadata
and checkpoint metadata. Each is accepted or refused in one line (exit 2 at the CLI), never a traceback, a hang or
a MemoryError, and nothing that existed is changed."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mutations import mutate, one_line_error
from PIL import Image
from typer.testing import CliRunner

from hiap.base.errors import HiapError
from hiap.base.jsonfile import MAX_DEPTH, parse_json, parse_yaml, read_json_object
from hiap.base.lut import read_lut
from hiap.cli import app
from hiap.config import resolve_config
from hiap.devices.profile import read_profile
from hiap.runtime.base import TensorSpec
from hiap.runtime.data import Preprocessing, image_folder_files, load_image
from hiap.runtime.harness import random_feeds

FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
JSON_LEAF = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(), st.text(max_size=8)
)  # NaN and inf included: the readers must refuse or carry them, never crash
JSON = st.recursive(
    JSON_LEAF,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=10,
)
ROOT = Path(__file__).resolve().parents[1]


def _cli_refuses(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, (args, result.output)
    assert message in result.output, (args, result.output)
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output, result.output


# -- the bounded readers ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, message",
    [
        ("[" * 100_000 + "]" * 100_000, "nests deeper than"),  # the parser's own recursion limit
        ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "nests deeper than"),  # within it, beyond hiap's
        ('{"std": [NaN]}', "non-finite number NaN"),
        ('{"a": Infinity}', "non-finite number Infinity"),
        ('{"n": ' + "9" * 5000 + "}", "not valid JSON"),  # Python refuses 5,000-digit ints
        ('{"a": 1', "not valid JSON"),
    ],
)
def test_json_bombs_and_non_finite_numbers_are_refused_in_one_line(text: str, message: str) -> None:
    assert message in (one_line_error(parse_json, text, "Plan 'p.json'") or "")


def test_hiap_run_records_may_carry_nan() -> None:
    assert np.isnan(parse_json('{"loss": NaN}', "metrics", allow_nan=True)["loss"])


def test_a_yaml_alias_bomb_is_refused_before_it_expands(tmp_path: Path) -> None:
    lines = ['a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
              f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]"
              for i in range(8)]  # fmt: skip  # 9**9 strings once expanded
    lines.append("epochs: *i")
    config = tmp_path / "bomb.yaml"
    config.write_text("\n".join(lines) + "\n")
    start = time.monotonic()
    text = one_line_error(resolve_config, config, {}) or ""
    assert "YAML alias" in text and "line 2" in text and time.monotonic() - start < 5
    profile = tmp_path / "bomb-profile.yaml"
    profile.write_text("\n".join(lines) + "\n")
    assert "YAML alias" in (one_line_error(read_profile, profile) or "")
    _cli_refuses(["train", "--config", str(config)], "YAML alias")


def test_deep_yaml_is_refused() -> None:
    assert "nests deeper than" in (one_line_error(parse_yaml, "a: " + "[" * 5000 + "]" * 5000, "Config") or "")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs a FIFO")
def test_a_fifo_is_not_read(tmp_path: Path) -> None:
    """Reading a FIFO blocks until a writer comes: every reader refuses what is not a regular file."""
    fifo = tmp_path / "plan.json"
    os.mkfifo(fifo)
    assert "is not a regular file" in (one_line_error(read_json_object, fifo, "Plan") or "")
    _cli_refuses(["inspect", str(fifo)], "is not a regular file")
    _cli_refuses(["train", "--config", str(fifo)], "is not a regular file")


def test_a_deeply_nested_plan_at_the_cli(tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text('{"schema_version": 1, "blocks": ' + "[" * 50_000 + "]" * 50_000 + "}")
    before = plan.read_bytes()
    _cli_refuses(["inspect", str(plan)], "nests deeper than")
    assert plan.read_bytes() == before


# -- device profiles and latency tables, fuzzed --------------------------------------------------------------------


@FUZZ
@given(path=st.lists(st.integers(0, 50), min_size=1, max_size=4), value=JSON)
def test_fuzzed_profiles_are_accepted_or_refused_in_one_line(tmp_path: Path, path: list, value: object) -> None:
    good = yaml.safe_load((ROOT / "devices" / "profiles" / "x86-cpu.yaml").read_text())
    file = tmp_path / "p.yaml"
    file.write_text(yaml.safe_dump(mutate(good, path, value)))
    one_line_error(read_profile, file)


def test_a_profile_key_holding_a_newline_is_refused_in_one_line(tmp_path: Path) -> None:
    """Found by the fuzz test above: an unknown key is quoted with its escapes, so the error stays one line."""
    good = yaml.safe_load((ROOT / "devices" / "profiles" / "x86-cpu.yaml").read_text())
    good["budgets"]["\n"] = 1
    file = tmp_path / "p.yaml"
    file.write_text(yaml.safe_dump(good))
    assert "'budgets.\\n' is not a profile field" in str(one_line_error(read_profile, file))


@FUZZ
@given(path=st.lists(st.integers(0, 50), min_size=1, max_size=6), value=JSON)
def test_fuzzed_latency_tables_are_accepted_or_refused_in_one_line(tmp_path: Path, path: list, value: object) -> None:
    good = json.loads((ROOT / "benchmarks" / "results" / "arm_lut" / "lut-rpi5-emulated.json").read_text())
    file = tmp_path / "lut.json"
    file.write_text(json.dumps(mutate(good, path, value)))
    one_line_error(read_lut, file)


# -- ONNX metadata ---------------------------------------------------------------------------------------------------

GOOD_META = {"input_size": "[1, 28, 28]", "mean": "[0.286]", "std": "[0.353]", "interpolation": "bicubic",
             "crop_pct": "1.0", "class_names": '["a", "b"]'}  # fmt: skip


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("std", "[0]", "'std' must be positive numbers"),
        ("std", "[-1.0]", "'std' must be positive numbers"),
        ("mean", "[NaN]", "'mean' must be a list of 1 numbers"),
        ("mean", "[0.1, 0.2]", "'mean' must be a list of 1 numbers"),
        ("input_size", "[1, 100000, 100000]", "at most 16 channels and 4096 pixels"),
        ("input_size", "[1, 28]", "'input_size' must be [C, H, W]"),
        ("input_size", '"big"', "'input_size' must be [C, H, W]"),
        ("input_size", "[1, 28, 28.5]", "'input_size' must be [C, H, W]"),
        ("crop_pct", "0", "'crop_pct' must be a number in (0, 1]"),
        ("interpolation", "cubic-ish", "'interpolation' must be one of"),
        ("class_names", "[1, 2]", "'class_names' must be a list of strings"),
    ],
)
def test_preprocessing_metadata_is_checked(key: str, value: str, message: str) -> None:
    text = one_line_error(Preprocessing.from_metadata, GOOD_META | {key: value}, "m.onnx") or ""
    assert message in text, text


def test_good_preprocessing_metadata_reads() -> None:
    pre = Preprocessing.from_metadata(GOOD_META, "m.onnx")
    assert pre.input_size == (1, 28, 28) and pre.std == (0.353,) and pre.class_names == ("a", "b")


@FUZZ
@given(key=st.sampled_from(sorted(GOOD_META)), value=st.one_of(JSON.map(json.dumps), st.text(max_size=12)))
def test_fuzzed_onnx_metadata_is_accepted_or_refused_in_one_line(key: str, value: str) -> None:
    pre = None
    try:
        pre = Preprocessing.from_metadata(GOOD_META | {key: value}, "m.onnx")
    except HiapError as exc:
        assert "\n" not in str(exc)
    if pre is not None:  # what is accepted can be used: finite statistics, a positive std
        assert all(np.isfinite(pre.mean)) and all(s > 0 for s in pre.std) and 0 < pre.crop_pct <= 1


def test_a_graph_whose_input_disagrees_with_its_metadata(tmp_path: Path, exported_pair: dict) -> None:
    """The graph takes 1 channel, the metadata says 3: refused before timing, not a runtime traceback."""
    import onnx

    model = onnx.load(str(exported_pair["pruned"]))
    for prop in model.metadata_props:
        if prop.key in ("input_size", "mean", "std"):
            prop.value = {"input_size": json.dumps([3, 28, 28]), "mean": "[0.5, 0.5, 0.5]",
                          "std": "[0.5, 0.5, 0.5]"}[prop.key]  # fmt: skip
    file = tmp_path / "model.onnx"
    onnx.save(model, str(file))
    _cli_refuses(["bench", str(file), "--device", "x86-cpu", "--allow-mismatch", "--data", "builtin"],
                 "declares input")  # fmt: skip


def test_a_vast_declared_input_is_refused_before_numpy_allocates_it() -> None:
    class Huge:
        def __init__(self) -> None:
            self.inputs = [TensorSpec("x", (None, 3, 1_000_000, 1_000_000), "float32")]

    assert "not an image batch hiap can feed" in (one_line_error(random_feeds, Huge(), 1) or "")


# -- image folders ---------------------------------------------------------------------------------------------------


def test_a_symlink_loop_under_the_data_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "data" / "cat"
    folder.mkdir(parents=True)
    Image.new("L", (8, 8)).save(folder / "a.png")
    (folder / "again").symlink_to(folder, target_is_directory=True)
    assert "symbolic link loop" in (one_line_error(image_folder_files, tmp_path / "data") or "")
    from hiap.data import ImageFolderData

    train = tmp_path / "tree"
    for split in ("train", "val"):
        (train / split / "cat").mkdir(parents=True)
        Image.new("L", (8, 8)).save(train / split / "cat" / "a.png")
    (train / "val" / "cat" / "loop").symlink_to(train / "val", target_is_directory=True)
    cfg = {"input_size": (1, 8, 8), "mean": (0.5,), "std": (0.5,), "interpolation": "bicubic", "crop_pct": 1.0}
    assert "symbolic link loop" in (one_line_error(ImageFolderData, train, cfg) or "")


def test_linked_folders_without_a_loop_are_read_once(tmp_path: Path) -> None:
    elsewhere = tmp_path / "store" / "cats"
    elsewhere.mkdir(parents=True)
    Image.new("L", (8, 8)).save(elsewhere / "a.png")
    (tmp_path / "data" / "cat").mkdir(parents=True)
    (tmp_path / "data" / "cat" / "linked").symlink_to(elsewhere, target_is_directory=True)
    classes, files = image_folder_files(tmp_path / "data")
    assert classes == ["cat"] and [p.name for p, _ in files] == ["a.png"]


def test_a_decompression_bomb_is_refused_in_one_line(tmp_path: Path) -> None:
    """A few KB of PNG that declares 40,000 x 40,000 pixels: PIL refuses to decode it; so does hiap, in one line."""
    path = tmp_path / "bomb.png"
    Image.new("1", (40_000, 40_000)).save(path)  # 1 bit per pixel compresses to almost nothing
    assert path.stat().st_size < 1_000_000
    pre = Preprocessing((1, 16, 16), (0.5,), (0.5,))
    assert "cannot be read (DecompressionBombError)" in (one_line_error(load_image, path, pre) or "")


# -- sizes that would exhaust memory, and how a crash ends --------------------------------------------------------


@pytest.mark.parametrize(
    "edit",
    [{"num_classes": 10**9}, {"model_kwargs": {"embed_dim": 2**20}}],
)
def test_a_plan_of_an_absurd_model_size_is_refused_before_allocating(tmp_path: Path, edit: dict) -> None:
    from hiap.export.plan import make_plan
    from hiap.gated import describe_vit
    from hiap.models import create_model, data_config

    vit = create_model("hiap_vit_fmnist_tiny", num_classes=10)
    geom = describe_vit(vit)
    body = make_plan("hiap_vit_fmnist_tiny", geom, geom.dense_structure(), data_config(vit), 10).to_dict() | edit
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(body))
    args = ["export", "--model", "hiap_vit_fmnist_tiny", "--plan", str(plan), "--pretrained", "none", "--out",
            str(tmp_path / "out")]  # fmt: skip
    _cli_refuses(args, "more than the 4e+09 hiap builds")
    assert not (tmp_path / "out").exists()


def test_how_a_command_ends_on_a_full_disk_a_bug_and_ctrl_c(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed write (full disk, read-only folder) is one line and exit 2; a bug keeps its traceback and exits 70,
    never 1 (which hiap bench uses for a failed budget); Ctrl-C says what the interrupted command leaves."""
    import errno

    import hiap.export.artifact
    import hiap.inspect

    def full_disk(*_: object, **__: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "model.onnx"))

    monkeypatch.setattr(hiap.inspect, "inspect_target", full_disk)
    result = CliRunner().invoke(app, ["inspect", "deit_tiny_patch16_224"])
    assert result.exit_code == 2 and "No space left on device" in result.output
    assert len(result.output.strip().splitlines()) == 1

    def bug(*_: object, **__: object) -> None:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(hiap.inspect, "inspect_target", bug)
    result = CliRunner().invoke(app, ["inspect", "deit_tiny_patch16_224"])
    assert result.exit_code == 70 and "internal error in hiap inspect (a bug)" in result.output

    def ctrl_c(*_: object, **__: object) -> None:
        raise KeyboardInterrupt

    from hiap.export.plan import make_plan
    from hiap.gated import describe_vit
    from hiap.models import create_model, data_config

    vit = create_model("hiap_vit_fmnist_tiny", num_classes=10)
    geom = describe_vit(vit)
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(make_plan("hiap_vit_fmnist_tiny", geom, geom.dense_structure(), data_config(vit),
                                         10).to_dict()))  # fmt: skip
    monkeypatch.setattr(hiap.export.artifact, "export_source", ctrl_c)
    result = CliRunner().invoke(app, ["export", "--model", "hiap_vit_fmnist_tiny", "--plan", str(plan),
                                      "--pretrained", "none", "--out", str(tmp_path / "o")])  # fmt: skip
    assert result.exit_code == 130 and "nothing was written over" in result.output
    assert "--resume" not in result.output


# -- crafted checkpoints: valid checksums, hostile contents ---------------------------------------------------------


@FUZZ
@given(
    part=st.sampled_from(["state", "config", "gates"]),
    path=st.lists(st.integers(0, 60), min_size=1, max_size=3),
    value=JSON,
)
def test_crafted_checkpoints_are_inspected_or_refused_in_one_line(
    tmp_path: Path, tiny_run: Path, part: str, path: list, value: object
) -> None:
    """A checkpoint rewritten with a valid checksum around hostile metadata (or a gate of another shape), as
    someone crafting one would: `hiap inspect` and `hiap report` read it or refuse it in one line, exit 2."""
    import dataclasses

    import torch

    from hiap.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(tiny_run / "checkpoint.safetensors")
    if part == "gates":
        name = sorted(ckpt.gates)[path[0] % len(ckpt.gates)]
        shape = [1 + (i % 5) for i in path]
        ckpt = dataclasses.replace(ckpt, gates=ckpt.gates | {name: torch.zeros(shape)})
    else:
        ckpt = dataclasses.replace(ckpt, **{part: mutate(getattr(ckpt, part), path, value)})
    run = tmp_path / "crafted"
    run.mkdir(exist_ok=True)
    save_checkpoint(run / "checkpoint.safetensors", ckpt)
    for args in (["inspect", str(run)], ["inspect", str(run), "--json"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code in (0, 2), (args, result.output, result.exception)
        if result.exit_code == 2:
            assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


@pytest.mark.parametrize(
    "part, update, message",
    [
        ("state", {"model": 123}, "state 'model' must be a model name"),
        ("state", {"num_classes": "x"}, "state 'num_classes' must be a positive integer"),
        ("state", {"floors": {"bogus": 1}}, "state 'floors' must be an object of numbers"),
        ("state", {"floors": 5}, "state 'floors' must be an object of numbers"),
        ("state", {"model_kwargs": [1, 2]}, "state 'model_kwargs' must be an object"),
        ("gates", {"head": [7]}, "gates do not fit model"),
    ],
)
def test_crafted_checkpoint_fields(tmp_path: Path, tiny_run: Path, part: str, update: dict, message: str) -> None:
    import dataclasses

    import torch

    from hiap.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(tiny_run / "checkpoint.safetensors")
    if part == "gates":
        update = {k: torch.zeros(v) for k, v in update.items()}
    save_checkpoint(
        tmp_path / "checkpoint.safetensors", dataclasses.replace(ckpt, **{part: getattr(ckpt, part) | update})
    )
    _cli_refuses(["inspect", str(tmp_path)], message)
    _cli_refuses(["export", str(tmp_path), "--out", str(tmp_path / "out")], message)


def test_a_bench_report_that_cannot_be_written_is_still_printed(
    tmp_path: Path, exported_pair: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only folder refuses the JSON report (and the cleanup of its temporary file): the measured table is
    printed first, then one line naming the file, exit 2."""
    import hiap.base.atomic

    def read_only(*_: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(hiap.base.atomic.os, "replace", read_only)
    monkeypatch.setattr(Path, "unlink", lambda *_, **__: read_only())
    result = CliRunner().invoke(app, ["bench", str(exported_pair["pruned"]), "--device", "x86-cpu", "--allow-mismatch",
                                      "--min-seconds", "0.05", "--json", str(tmp_path / "b.json")])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "p50 ms" in result.output and f"Cannot write '{tmp_path / 'b.json'}': Permission denied" in result.output


# -- the rest of the readers, and what inspect says -----------------------------------------------------------------


def test_deep_json_in_a_latency_table_and_run_records(tmp_path: Path) -> None:
    from hiap.report import _records

    deep = "[" * 20_000 + "]" * 20_000
    (tmp_path / "lut.json").write_text('{"schema": "hiap-lut", "grid": ' + deep + "}")
    assert "nests deeper than" in (one_line_error(read_lut, tmp_path / "lut.json") or "")
    (tmp_path / "metrics.jsonl").write_text('{"epoch": ' + deep + "}\n")
    assert "nests deeper than" in (one_line_error(_records, tmp_path) or "")


def _graph(tmp_path: Path, op: str, external: str | None = None) -> Path:
    """A one-node ONNX graph of op `op`; with `external`, its weight stored in that external-data location."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    w = helper.make_tensor("w", TensorProto.FLOAT, [1, 4], [1.0, 2.0, 3.0, 4.0])
    if external is not None:
        w.data_location = TensorProto.EXTERNAL
        w.ClearField("float_data")
        w.external_data.add(key="location", value=external)
    graph = helper.make_graph([helper.make_node(op, ["x", "w"], ["y"])], "g", [x], [y], [w])
    path = tmp_path / f"{op.lower()}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_inspect_refuses_an_onnx_file_onnx_runtime_cannot_load(tmp_path: Path) -> None:
    _cli_refuses(["inspect", str(_graph(tmp_path, "NoSuchOp"))], "ONNX Runtime cannot load it")


def test_an_external_data_path_outside_the_folder_is_named_as_such(tmp_path: Path) -> None:
    from hiap.runtime.ort_runner import OrtRunner

    path = _graph(tmp_path, "Add", external="../../etc/passwd")

    def open_it() -> None:
        with OrtRunner(path):
            pass

    text = one_line_error(open_it) or ""
    assert "refers to external data ONNX Runtime will not read" in text and "corrupt" not in text
    assert not text.endswith(("-", "'")) and len(text) < 600  # cut at a word, not mid-word


def test_inspect_of_a_broken_json_file_does_not_call_it_a_plan(tmp_path: Path) -> None:
    (tmp_path / "lut.json").write_text("{")
    _cli_refuses(["inspect", str(tmp_path / "lut.json")], "(a plan or latency table) is not valid JSON")


def test_an_onnx_runtime_error_while_running_is_one_line(tmp_path: Path) -> None:
    """A graph that loads but fails on its input (a reshape to a size the input does not have): one line."""
    import onnx
    from onnx import TensorProto, helper

    from hiap.runtime.ort_runner import OrtRunner

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    shape = helper.make_tensor("shape", TensorProto.INT64, [1], [3])
    graph = helper.make_graph([helper.make_node("Reshape", ["x", "shape"], ["y"])], "g", [x], [y], [shape])
    path = tmp_path / "reshape.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))

    def run_it() -> None:
        with OrtRunner(path) as runner:
            runner.infer({"x": np.zeros((1, 4), np.float32)})

    assert "ONNX Runtime cannot run" in (one_line_error(run_it) or "")
