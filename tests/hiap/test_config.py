from pathlib import Path

import pytest

from hiap.base.errors import HiapError
from hiap.config import TrainConfig, resolve_config


def test_precedence_defaults_then_file_then_flags(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("epochs: 3\nlr: 0.001\ntarget_macs: 0.4\n")
    cfg = resolve_config(f, {"lr": 0.002, "epochs": None})
    assert (cfg.epochs, cfg.lr, cfg.target_macs, cfg.batch_size) == (3, 0.002, "0.4", TrainConfig().batch_size)


@pytest.mark.parametrize(
    "text, message",
    [
        ("epoch: 3\n", "unknown key 'epoch'. Did you mean 'epochs'?"),
        ("epochs: three\n", "'epochs' must be int"),
        ("kd: 1\n", "'kd' must be bool"),
        ("- 1\n- 2\n", "must hold a mapping"),
        ("epochs: [\n", "not valid YAML"),
        ("gate_mode: medium\n", "'gate_mode' must be 'hard' or 'soft'"),
        ("k_min: 0\n", "'k_min' must be >= 1"),
        ("min_value_frac: 1.5\n", "'min_value_frac' must lie in [0, 1]"),
    ],
)
def test_bad_config_files_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(HiapError) as err:
        resolve_config(f, {})
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(HiapError, match="does not exist"):
        resolve_config(tmp_path / "nope.yaml", {})


def test_a_malformed_target_is_refused_with_the_config_before_any_data_is_read(tmp_path: Path) -> None:
    """The target is parsed with the rest of the config: a bad one is named even when the data is missing too."""
    from hiap.train import Trainer

    f = tmp_path / "c.yaml"
    f.write_text("target_macs: half\n")
    with pytest.raises(HiapError, match="--target-macs 'half'"):
        resolve_config(f, {})
    cfg = TrainConfig(target_macs="half", data=str(tmp_path / "missing"), out=str(tmp_path / "run"))
    with pytest.raises(HiapError, match="--target-macs 'half'"):
        Trainer(cfg).run()


def test_the_search_keys_have_one_owner_and_docs_api_lists_them_all() -> None:
    """PruneOptions owns the search keys: TrainConfig takes them flat, nests them, reads them through, writes them
    flat; docs/api.md lists exactly its fields."""
    import dataclasses
    import re

    from hiap.config import SEARCH_KEYS, PruneOptions, TrainConfig, apply_overrides

    names = [f.name for f in dataclasses.fields(PruneOptions)]
    assert not set(SEARCH_KEYS) & {f.name for f in dataclasses.fields(TrainConfig)}  # no mirror fields
    cfg = TrainConfig(gate_lr=0.2, compensate=True, seed=4)
    assert cfg.prune == PruneOptions(gate_lr=0.2, compensate=True, seed=4) and cfg.gate_lr == 0.2
    flat = cfg.to_dict()
    assert set(flat) == set(TrainConfig.key_names()) and "prune" not in flat and flat["gate_lr"] == 0.2
    assert apply_overrides(TrainConfig(), flat, "config.yaml") == cfg  # a written config reads back the same
    assert dataclasses.replace(cfg, seed=5).prune.seed == 5  # the run's seed keys the gate noise too
    api = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()
    row = next(line for line in api.splitlines() if line.startswith("| `options` |"))
    listed = re.findall(r"`(\w+)`", row.split("same names and defaults", 1)[1].split(")", 1)[0])
    assert listed == names
