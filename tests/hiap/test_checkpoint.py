"""Run checkpoints: a bit-exact round trip of weights, gates, optimizer and RNG; damage is one HiapError line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from hiap.base.errors import HiapError
from hiap.checkpoint import CHECKPOINT_NAME, Checkpoint, export_weights, load_checkpoint, save_checkpoint
from hiap.gated import GatedViT
from hiap.models import create_model, read_state_dict

STATE = {"model": "hiap_vit_fmnist_tiny", "epoch": 3, "step": 12, "val_acc": 0.5, "num_classes": 10,
         "classes": ["a", "b"], "controller": {"strength": 0.25}, "model_kwargs": {},
         "dense_val_acc": None}  # fmt: skip
CONFIG = {"lr": 0.001, "epochs": 4, "target_macs": "0.5"}


def _setup() -> tuple[GatedViT, torch.optim.Optimizer]:
    gated = GatedViT(create_model("hiap_vit_fmnist_tiny", num_classes=10))
    opt = torch.optim.AdamW([{"params": list(gated.vit.parameters()), "weight_decay": 0.05},
                             {"params": list(gated.gates.parameters()), "lr": 0.1, "weight_decay": 0.0,
                              "betas": (0.8, 0.9)}], lr=1e-3)  # fmt: skip
    return gated, opt


def _step(gated: GatedViT, opt: torch.optim.Optimizer, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(4, 1, 28, 28, generator=g), torch.randint(0, 10, (4,), generator=g)
    masks = gated.sample_masks(1.0, torch.Generator().manual_seed(seed))
    opt.zero_grad()
    torch.nn.functional.cross_entropy(gated(x, masks), y).backward()
    opt.step()


def _checkpoint(gated: GatedViT, opt: torch.optim.Optimizer | None) -> Checkpoint:
    model = dict(gated.vit.state_dict())
    # dtypes and shapes a state dict can also hold: the digest and the round trip must keep them
    model |= {"extra.half": torch.arange(6, dtype=torch.bfloat16).view(2, 3), "extra.count": torch.tensor(7),
              "extra.empty": torch.zeros(0, 4)}  # fmt: skip
    return Checkpoint(
        model=model,
        gates={k: v.detach() for k, v in gated.gates.as_dict().items()},
        optimizer=opt.state_dict() if opt is not None else None,
        rng={"torch": torch.get_rng_state()},
        config=CONFIG,
        state=STATE,
    )


def _saved(tmp_path: Path, optimizer: bool = True) -> tuple[Path, Checkpoint, GatedViT, torch.optim.Optimizer]:
    gated, opt = _setup()
    _step(gated, opt, 1)
    ckpt = _checkpoint(gated, opt if optimizer else None)
    path = tmp_path / "run" / CHECKPOINT_NAME
    save_checkpoint(path, ckpt)
    return path, ckpt, gated, opt


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Checkpoint]:
    """One saved checkpoint for the tests that only read it (or damage a copy): models cost a second to build."""
    path, ckpt, _, _ = _saved(tmp_path_factory.mktemp("ckpt"))
    return path, ckpt


def _copy(saved: tuple[Path, Checkpoint], tmp_path: Path) -> Path:
    path = tmp_path / "run" / CHECKPOINT_NAME
    path.parent.mkdir()
    path.write_bytes(saved[0].read_bytes())
    return path


def _rewrite(path: Path, edit) -> None:
    """Rewrite a checkpoint with the same tensors and edited string metadata."""
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    save_file(tensors, str(path), metadata=edit(meta))


def test_round_trip_is_bit_exact_and_leaves_only_the_checkpoint(saved: tuple[Path, Checkpoint]) -> None:
    path, ckpt = saved
    assert sorted(p.name for p in path.parent.iterdir()) == [CHECKPOINT_NAME]  # no temporary file left
    back = load_checkpoint(path.parent)  # a run directory names its checkpoint
    for saved, loaded in ((ckpt.model, back.model), (ckpt.gates, back.gates), (ckpt.rng, back.rng)):
        assert sorted(loaded) == sorted(saved)
        for k in saved:
            assert loaded[k].dtype == saved[k].dtype and torch.equal(loaded[k], saved[k]), k
    assert back.config == CONFIG and back.state == STATE
    groups = back.optimizer["param_groups"]
    assert [g["lr"] for g in groups] == [1e-3, 0.1] and groups[1]["betas"] == (0.8, 0.9)
    assert [g["params"] for g in groups] == [g["params"] for g in ckpt.optimizer["param_groups"]]
    with safe_open(str(path), framework="pt") as f:
        names = list(f.keys())
    assert {n.split(".")[0] for n in names} == {"model", "gates", "rng", "optim"}


def test_restored_optimizer_and_rng_continue_exactly_as_the_uninterrupted_run(tmp_path: Path) -> None:
    path, _, gated, opt = _saved(tmp_path)
    expected = torch.rand(8)  # what the generator state in the checkpoint draws next
    back = load_checkpoint(path)
    fresh, fresh_opt = _setup()
    fresh.vit.load_state_dict({k: v for k, v in back.model.items() if not k.startswith("extra.")})
    fresh.gates.load_state_dict(back.gates)
    fresh_opt.load_state_dict(back.optimizer)
    _step(gated, opt, 2)
    _step(fresh, fresh_opt, 2)
    for (name, a), b in zip(gated.named_parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b), name  # Adam moments and step counts came back exactly
    assert not torch.equal(torch.rand(8), expected)  # building models moved the generator on
    torch.set_rng_state(back.rng["torch"])
    assert torch.equal(torch.rand(8), expected)


def test_without_optimizer_state_the_optimizer_is_none(tmp_path: Path) -> None:
    path, _, _, _ = _saved(tmp_path, optimizer=False)
    back = load_checkpoint(path)
    assert back.optimizer is None and back.state == STATE


def test_edited_metadata_fails_the_checksum(saved: tuple[Path, Checkpoint], tmp_path: Path) -> None:
    """The digest covers the JSON metadata too: a hand edit of the epoch (still valid JSON) does not load."""
    path = _copy(saved, tmp_path)
    _rewrite(path, lambda m: m | {"state": json.dumps(STATE | {"epoch": 4})})
    with pytest.raises(HiapError, match="fails its checksum: it was damaged after it was written") as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m | {"config": "{not json"}, "Checkpoint '{path}' metadata is not valid JSON (Expecting"),
        (
            lambda m: {k: v for k, v in m.items() if k != "state"},
            "Checkpoint '{path}' has damaged metadata (no config or state).",
        ),
        (lambda m: m | {"format": "x"}, "'{path}' is a safetensors file but not a hiap checkpoint (no"),
    ],
    ids=["broken-json", "missing-key", "other-format"],
)
def test_damaged_metadata_is_one_line_error(saved: tuple[Path, Checkpoint], tmp_path: Path, edit, message: str) -> None:
    path = _copy(saved, tmp_path)
    # Without the digest (a version 1 checkpoint, from a writer that had none), the metadata is parsed and must fail
    # cleanly.
    _rewrite(path, lambda m: edit({k: v for k, v in m.items() if k != "tensors_sha256"} | {"format_version": "1"}))
    with pytest.raises(HiapError) as err:
        load_checkpoint(path)
    assert str(err.value).startswith(message.format(path=path))
    assert "\n" not in str(err.value)


def test_missing_checkpoint_names_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(HiapError) as err:
        load_checkpoint(tmp_path)
    assert str(err.value) == f"No checkpoint at '{tmp_path / CHECKPOINT_NAME}': pass a run directory or its " + (
        f"{CHECKPOINT_NAME}.")  # fmt: skip


def test_export_weights_writes_only_the_weights_and_the_run_summary(
    saved: tuple[Path, Checkpoint], tmp_path: Path
) -> None:
    path, ckpt = _copy(saved, tmp_path), saved[1]
    out = tmp_path / "w.safetensors"
    export_weights(path, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "w.safetensors"]  # no temporary file left
    with safe_open(str(out), framework="pt") as f:
        meta, names = f.metadata(), list(f.keys())
    assert sorted(names) == sorted(ckpt.model)  # timm names: no gates, optimizer or RNG, no 'model.' prefix
    assert meta["format"] == "hiap-weights" and meta["model"] == "hiap_vit_fmnist_tiny"
    assert json.loads(meta["summary"]) == {"model": "hiap_vit_fmnist_tiny", "model_kwargs": {}, "epoch": 3,
                                           "val_acc": 0.5, "num_classes": 10, "classes": ["a", "b"],
                                           "data_config": None}  # fmt: skip
    assert json.loads(meta["config"]) == CONFIG
    state, _ = read_state_dict(out)
    assert all(torch.equal(state[k], ckpt.model[k]) for k in ckpt.model)
