"""Model creation: the built-in Fashion-MNIST ViT and any timm ViT, weight loading, preprocessing facts."""

from __future__ import annotations

import contextlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hiap.errors import HiapError, did_you_mean

# The built-in model: a small timm VisionTransformer sized for 28x28 Fashion-MNIST so that the default run
# (prune the shipped dense checkpoint to half its MACs) finishes in about 3 minutes on 2 CPU cores.
# patch 7 gives a 4x4 grid + class token = 17 tokens; 4 heads of 32 dims; FFN 512.
BUILTIN_MODELS: dict[str, dict[str, Any]] = {
    "hiap_vit_fmnist": dict(
        img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=128, depth=6, num_heads=4, mlp_ratio=4.0
    ),
    # A quarter-size sibling for smoke runs and tests (no shipped checkpoint).
    "hiap_vit_fmnist_tiny": dict(
        img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=64, depth=4, num_heads=4, mlp_ratio=4.0
    ),
}
# Fashion-MNIST pixel statistics over all 70,000 images (the values used throughout the literature).
_FMNIST_CFG = dict(input_size=(1, 28, 28), mean=(0.2860,), std=(0.3530,), interpolation="bilinear", crop_pct=1.0)
BUILTIN_DATA_CFG: dict[str, dict[str, Any]] = {"hiap_vit_fmnist": _FMNIST_CFG, "hiap_vit_fmnist_tiny": _FMNIST_CFG}
BUILTIN_CHECKPOINTS = {"hiap_vit_fmnist": "hiap_vit_fmnist_dense.safetensors"}
DEFAULT_MODEL = "hiap_vit_fmnist"


def known_model_names() -> list[str]:
    import timm

    return list(BUILTIN_MODELS) + timm.list_models("*vit*") + timm.list_models("deit*")


def check_model_name(name: str) -> None:
    import timm

    if name in BUILTIN_MODELS or timm.is_model(name):
        return
    raise HiapError(
        f"Unknown model '{name}': expected '{DEFAULT_MODEL}' or a timm ViT name such as deit_small_patch16_224."
        + did_you_mean(name, known_model_names())
    )


def create_model(
    name: str, num_classes: int | None = None, drop_path_rate: float = 0.0, meta: bool = False
) -> nn.Module:
    """Build `name` (built-in or timm) with random weights; `meta` builds shapes only (for cost queries)."""
    import timm
    from timm.models.vision_transformer import VisionTransformer

    check_model_name(name)
    device = torch.device("meta") if meta else None
    with torch.device(device) if device is not None else contextlib.nullcontext():
        if name in BUILTIN_MODELS:
            kwargs = dict(BUILTIN_MODELS[name])
            if num_classes is not None:
                kwargs["num_classes"] = num_classes
            model = VisionTransformer(**kwargs, drop_path_rate=drop_path_rate)
            cfg = dict(BUILTIN_DATA_CFG[name], num_classes=kwargs["num_classes"], architecture=name)
            model.pretrained_cfg = cfg
            model.default_cfg = cfg
        else:
            kwargs = {} if num_classes is None else {"num_classes": num_classes}
            model = timm.create_model(name, pretrained=False, drop_path_rate=drop_path_rate, **kwargs)
    model.hiap_model_name = name
    return model


def data_config(model: nn.Module) -> dict[str, Any]:
    """Preprocessing facts of a model: input_size (C, H, W), mean, std, interpolation, crop_pct."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    return {
        "input_size": tuple(int(v) for v in cfg["input_size"]),
        "mean": tuple(float(v) for v in cfg["mean"]),
        "std": tuple(float(v) for v in cfg["std"]),
        "interpolation": str(cfg.get("interpolation", "bicubic")),
        "crop_pct": float(cfg.get("crop_pct", 1.0)),
    }


def builtin_checkpoint_path(name: str) -> Path | None:
    file = BUILTIN_CHECKPOINTS.get(name)
    if file is None:
        return None
    path = Path(str(resources.files("hiap") / "assets" / file))
    return path if path.is_file() else None


def read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read weights without unpickling arbitrary objects: safetensors, or torch.load(weights_only=True)."""
    if not path.is_file():
        raise HiapError(f"Weights file '{path}' does not exist: pass a .safetensors or .pt/.pth state dict.")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
        except Exception as exc:  # safetensors raises several types for bad headers and truncation
            raise HiapError(f"Weights file '{path}' is not a readable safetensors file ({exc}).") from None
        if meta.get("format") == "hiap-checkpoint":
            tensors = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
        return tensors, meta
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise HiapError(
            f"Weights file '{path}' could not be read as a tensor-only state dict ({type(exc).__name__}); "
            "convert it to .safetensors."
        ) from None
    for key in ("model", "state_dict", "model_state"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise HiapError(f"Weights file '{path}' does not hold a state dict of tensors.")
    return obj, {}


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """Load a timm-named state dict; a classifier of another class count is left fresh. Returns notes."""
    own = model.state_dict()
    notes = []
    head_keys = [k for k in state if k.split(".")[0] in ("head", "head_dist") and k in own]
    mismatched_head = [k for k in head_keys if state[k].shape != own[k].shape]
    if mismatched_head:
        notes.append(
            f"classifier of '{source}' has another class count; it starts fresh ({', '.join(mismatched_head)})"
        )
        state = {k: v for k, v in state.items() if k not in mismatched_head}
    bad_shape = [k for k in state if k in own and state[k].shape != own[k].shape]
    missing = [k for k in own if k not in state and k not in mismatched_head]
    unexpected = [k for k in state if k not in own]
    if bad_shape or missing or unexpected:
        detail = "; ".join(
            f"{label}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
            for label, keys in (("wrong shape", bad_shape), ("missing", missing), ("unexpected", unexpected))
            if keys
        )
        raise HiapError(f"Weights '{source}' do not fit model '{getattr(model, 'hiap_model_name', '?')}' ({detail}).")
    model.load_state_dict(state, strict=False)
    return notes


def load_pretrained(model: nn.Module, name: str, pretrained: str) -> tuple[str, list[str]]:
    """Apply `pretrained` ('auto', 'none', 'timm' or a file) to `model`; return (description, notes)."""
    if pretrained == "none":
        return "random init", []
    if pretrained == "auto":
        path = builtin_checkpoint_path(name)
        if path is None:
            return "random init", [
                f"no pretrained weights for '{name}' (pass --pretrained FILE or --pretrained timm): HiAP expects a "
                "trained network, pruning a random one is only useful for latency studies"
            ]
        state, meta = read_state_dict(path)
        notes = load_weights(model, state, str(path))
        acc = json.loads(meta.get("summary", "{}")).get("val_acc")
        return f"built-in dense checkpoint ({path.name}{f', val acc {acc:.4f}' if acc is not None else ''})", notes
    if pretrained == "timm":
        import timm

        try:
            src = timm.create_model(name, pretrained=True)
        except Exception as exc:
            raise HiapError(
                f"Could not fetch timm weights for '{name}' ({type(exc).__name__}); download them where you are "
                "online and pass --pretrained FILE."
            ) from None
        notes = load_weights(model, src.state_dict(), f"timm:{name}")
        return f"timm hub weights of {name}", notes
    path = Path(pretrained)
    state, _ = read_state_dict(path)
    notes = load_weights(model, state, str(path))
    return str(path), notes
