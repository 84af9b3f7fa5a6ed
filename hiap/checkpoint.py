"""Run checkpoints: one safetensors file (weights, gate logits, optimizer and RNG tensors) plus JSON metadata.

Nothing in a checkpoint is pickled: tensors go through safetensors, everything else is JSON in the file's
string metadata. Writes go to a temporary file in the same folder, are fsynced, then renamed over the old
checkpoint, so a crash never leaves a half-written file under the real name; a sha256 of every tensor's bytes in
the metadata catches a file damaged after it was written (disk, copy), which safetensors alone may load.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hiap import __version__, faults
from hiap.base.errors import HiapError
from hiap.base.jsonfile import parse_json

FORMAT = "hiap-checkpoint"
# 2: the tensors_sha256 digest is required (version 1 files, from writers that may have had none, are still read).
FORMAT_VERSION = "2"
CHECKPOINT_NAME = "checkpoint.safetensors"


@dataclass
class Checkpoint:
    model: dict[str, torch.Tensor]
    gates: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None
    rng: dict[str, torch.Tensor]
    config: dict[str, Any]
    state: dict[str, Any]  # epoch, step, controller, model name, dense figures


def _flatten_optimizer(opt_state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    tensors = {}
    for idx, per_param in opt_state["state"].items():
        for key, value in per_param.items():
            tensors[f"optim.{idx}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in opt_state["param_groups"]]
    return tensors, groups


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], groups: list[dict[str, Any]]) -> dict[str, Any]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}


def tensors_digest(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> str:
    """sha256 over the metadata entries and the names, dtypes, shapes and bytes of every tensor, in name order."""
    h = hashlib.sha256()
    for key in sorted(metadata or {}):
        if key != "tensors_sha256":
            h.update(f"{key}={metadata[key]}|".encode())  # type: ignore[index]
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_checkpoint(path: Path, ckpt: Checkpoint) -> None:
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    tensors.update({f"model.{k}": v.detach().cpu().contiguous() for k, v in ckpt.model.items()})
    tensors.update({f"gates.{k}": v.detach().cpu().contiguous() for k, v in ckpt.gates.items()})
    tensors.update({f"rng.{k}": v.detach().cpu().contiguous() for k, v in ckpt.rng.items()})
    groups: list[dict[str, Any]] = []
    if ckpt.optimizer is not None:
        opt_tensors, groups = _flatten_optimizer(ckpt.optimizer)
        tensors.update(opt_tensors)
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "hiap_version": __version__,
        "config": json.dumps(ckpt.config),
        "state": json.dumps(ckpt.state),
        "optimizer_groups": json.dumps(groups),
        "has_optimizer": "1" if ckpt.optimizer is not None else "0",
    }
    metadata["tensors_sha256"] = tensors_digest(tensors, metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file(tensors, str(tmp), metadata=metadata)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    faults.point("checkpoint-write")
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename durable (the directory entry), where the platform allows opening a directory."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Temporary checkpoint files a killed process left behind (never loaded: they may be partial)."""
    stale = sorted(folder.glob(f".{CHECKPOINT_NAME}.tmp-*"))
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def load_checkpoint(path: Path) -> Checkpoint:
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise HiapError(f"No checkpoint at '{path}': pass a run directory or its {CHECKPOINT_NAME}.")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    except Exception as exc:  # truncated or corrupted files raise various safetensors errors
        raise HiapError(f"Checkpoint '{path}' is truncated or corrupted ({exc}).") from None
    if meta.get("format") != FORMAT:
        raise HiapError(f"'{path}' is a safetensors file but not a hiap checkpoint (no '{FORMAT}' metadata).")
    # Required from format version 2 on: a damaged byte in the digest's own key name would otherwise switch the
    # check off (safetensors writes the metadata keys in no fixed order, so any byte of the header may be that key).
    digest = meta.get("tensors_sha256")
    optional = meta.get("format_version") == "1"
    if (digest is None and not optional) or (digest is not None and digest != tensors_digest(tensors, meta)):
        raise HiapError(f"Checkpoint '{path}' fails its checksum: it was damaged after it was written.")
    if "config" not in meta or "state" not in meta:
        raise HiapError(f"Checkpoint '{path}' has damaged metadata (no config or state).")
    where = f"Checkpoint '{path}' metadata"
    config, state = parse_json(meta["config"], where), parse_json(meta["state"], where, allow_nan=True)
    groups = parse_json(meta.get("optimizer_groups", "[]"), where)
    if not isinstance(config, dict) or not isinstance(state, dict) or not isinstance(groups, list):
        raise HiapError(f"Checkpoint '{path}' has damaged metadata (config and state must be objects).")
    _check_state(state, path)

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

    optimizer = None
    if meta.get("has_optimizer") == "1":
        optimizer = _unflatten_optimizer({k: v for k, v in tensors.items() if k.startswith("optim.")}, groups)
    from hiap.gated import with_qk_logits

    return Checkpoint(
        model=part("model."), gates=with_qk_logits(part("gates.")), optimizer=optimizer, rng=part("rng."),
        config=config, state=state,
    )  # fmt: skip


def _check_state(state: dict[str, Any], path: Path) -> None:
    """The state fields a checkpoint's readers rebuild the model from, checked: a file with a valid checksum can
    still have been written by someone else."""

    def bad(key: str, want: str) -> HiapError:
        return HiapError(f"Checkpoint '{path}' state '{key}' must be {want}, got {state.get(key)!r:.60}.")

    if not isinstance(state.get("model"), str) or not state["model"]:
        raise bad("model", "a model name")
    classes = state.get("num_classes")
    if classes is not None and (type(classes) is not int or classes < 1):
        raise bad("num_classes", "a positive integer")
    kwargs = state.get("model_kwargs")
    if kwargs is not None and (not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs)):
        raise bad("model_kwargs", "an object of constructor arguments")
    floors = state.get("floors")
    if floors is not None:
        from hiap.gated import Floors

        known = set(Floors.__dataclass_fields__)
        numbers = isinstance(floors, dict) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in floors.values()
        )
        if not numbers or not set(floors) <= known:
            raise bad("floors", f"an object of numbers with keys among {sorted(known)}")


def export_weights(checkpoint: Path, out: Path) -> None:
    """Write a checkpoint's weights alone (timm names) with its run summary as metadata: a shippable file."""
    from safetensors.torch import save_file

    ckpt = load_checkpoint(checkpoint)
    keys = ("model", "model_kwargs", "epoch", "val_acc", "num_classes", "classes", "data_config")
    summary = {k: ckpt.state.get(k) for k in keys}
    meta = {"format": "hiap-weights", "hiap_version": __version__, "model": str(ckpt.state["model"])}
    meta["summary"] = json.dumps(summary)
    meta["config"] = json.dumps(ckpt.config)
    tmp = out.with_name(out.name + ".tmp")
    save_file({k: v.contiguous() for k, v in ckpt.model.items()}, str(tmp), metadata=meta)
    os.replace(tmp, out)


if __name__ == "__main__":
    import sys

    export_weights(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"wrote {sys.argv[2]}")


def gated_from_checkpoint(ckpt: Checkpoint, where: str, meta: bool = False) -> Any:
    """The run's model rebuilt (its geometry and class count) as a GatedViT with the run's floors and gate logits
    (every gate open when the run was dense); weights are not loaded. `meta`: shapes only, no memory (inspect)."""
    from hiap.gated import Floors, GatedViT
    from hiap.models import create_model

    state = ckpt.state
    vit = create_model(state["model"], num_classes=state.get("num_classes"), meta=meta,
                       model_kwargs=state.get("model_kwargs"))  # fmt: skip
    floors = state.get("floors")
    # What the run's pruner decided (qk_gates asked for, a MAC budget, no qk-norm), as its state records it.
    pruner = state.get("pruner")
    qk_gates = bool(pruner.get("qk_gates", False)) if isinstance(pruner, dict) else False
    gated = GatedViT(vit, floors=Floors(**floors) if floors else Floors(), qk_gates=qk_gates)
    if ckpt.gates:
        try:
            gated.gates.load_state_dict(ckpt.gates)
        except RuntimeError as exc:
            raise HiapError(
                f"Checkpoint '{where}' gates do not fit model '{state['model']}' ({str(exc).splitlines()[0]})."
            ) from None
    return gated
