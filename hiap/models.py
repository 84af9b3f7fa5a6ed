"""Model creation: the built-in Fashion-MNIST ViT and any timm ViT, weight loading, preprocessing facts."""

from __future__ import annotations

import ast
import contextlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hiap.base.errors import HiapError, did_you_mean

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


# Model kwargs that hiap sets itself: a user's value would be overridden or would contradict the run.
RESERVED_MODEL_KWARGS = {"num_classes": "--data decides the class count", "drop_path_rate": "use the drop_path key",
                         "pretrained": "use --pretrained"}  # fmt: skip


def parse_model_kwargs(items: list[str]) -> dict[str, Any]:
    """KEY=VALUE strings (timm train.py's --model-kwargs) -> dict; values are Python literals, else strings."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise HiapError(f"--model-kwargs '{item}': expected KEY=VALUE such as img_size=32 or patch_size=4.")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw  # a bare word: a string such as global_pool=avg
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


def check_model_kwargs(kwargs: dict[str, Any]) -> None:
    for key in kwargs:
        if not isinstance(key, str) or not key.isidentifier():
            raise HiapError(f"Model kwarg {key!r} is not a name: keys are timm VisionTransformer arguments.")
        if key in RESERVED_MODEL_KWARGS:
            raise HiapError(f"Model kwarg '{key}' is set by hiap ({RESERVED_MODEL_KWARGS[key]}); remove it.")


# Far beyond any ViT hiap prunes (ViT-g/14 is 1.0e9), far below what a host can hold in float32.
MAX_PARAMS = 4e9


def create_model(
    name: str,
    num_classes: int | None = None,
    drop_path_rate: float = 0.0,
    meta: bool = False,
    model_kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """Build `name` (built-in or timm) with random weights; `meta` builds shapes only (for cost queries).

    `model_kwargs` go to the constructor (timm.create_model's kwargs), so `img_size=32, patch_size=4, depth=6`
    builds the 6-block ViT-Tiny for 32x32 images from `vit_tiny_patch16_224`; every later command rebuilds the same
    geometry from the kwargs recorded in the run."""
    import timm
    from timm.models.vision_transformer import VisionTransformer

    check_model_name(name)
    extra = dict(model_kwargs or {})
    check_model_kwargs(extra)
    if not meta:
        # Shapes first: a plan or run record with num_classes 10**9 or embed_dim 10**6 would otherwise allocate
        # until the process is killed.
        shapes = create_model(name, num_classes, drop_path_rate, meta=True, model_kwargs=extra)
        count = sum(p.numel() for p in shapes.parameters())
        if count > MAX_PARAMS:
            raise HiapError(f"Model '{name}' with num_classes {num_classes} and kwargs {extra!r:.80} has {count:.3g} "
                            f"parameters, more than the {MAX_PARAMS:.0e} hiap builds: check those values.")  # fmt: skip
    device = torch.device("meta") if meta else None
    try:
        with torch.device(device) if device is not None else contextlib.nullcontext():
            if name in BUILTIN_MODELS:
                kwargs = dict(BUILTIN_MODELS[name]) | extra
                if num_classes is not None:
                    kwargs["num_classes"] = num_classes
                model = VisionTransformer(**kwargs, drop_path_rate=drop_path_rate)
                c = BUILTIN_DATA_CFG[name]["input_size"][0]
                img = kwargs["img_size"]
                size = img if isinstance(img, (list, tuple)) else [img, img]
                chans = int(kwargs.get("in_chans", c))
                base = BUILTIN_DATA_CFG[name]
                # grayscale statistics repeated per channel: the built-in data feeds its one channel to each
                mean, std = (tuple(base[k]) * chans if chans != c else base[k] for k in ("mean", "std"))
                cfg = dict(base, num_classes=kwargs["num_classes"], architecture=name, mean=mean, std=std,
                           input_size=(chans, int(size[0]), int(size[1])))  # fmt: skip
                model.pretrained_cfg = cfg
                model.default_cfg = cfg
            else:
                kwargs = extra if num_classes is None else extra | {"num_classes": num_classes}
                model = timm.create_model(name, pretrained=False, drop_path_rate=drop_path_rate, **kwargs)
    except TypeError as exc:  # an argument the constructor does not take
        raise HiapError(f"Model '{name}' does not accept model kwargs {sorted(extra)} ({exc}).") from None
    except (ValueError, AssertionError, RuntimeError) as exc:  # values the constructor refuses (timm asserts)
        why = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise HiapError(f"Model '{name}' cannot be built with num_classes {num_classes} and kwargs {extra!r:.80} "
                        f"({why}).") from None  # fmt: skip
    model.hiap_model_name = name
    model.hiap_model_kwargs = extra
    return model


def data_config(model: nn.Module) -> dict[str, Any]:
    """Preprocessing facts of a model: input_size (C, H, W), mean, std, interpolation, crop_pct."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    input_size = tuple(int(v) for v in cfg["input_size"])
    # timm's pretrained_cfg keeps the input size of the pretrained weights (224) when img_size is overridden: the
    # geometry the model was built with decides. Its crop_pct belongs to the 224 pipeline (resize 248, crop 224),
    # so a model built for another size evaluates at crop_pct 1 (resize the short side to the input, centre crop),
    # which is how images already at the model's size (CIFAR's 32x32) are used.
    built = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if built is not None:
        built_size = (int(model.patch_embed.proj.in_channels), int(built[0]), int(built[1]))
        if built_size != input_size:
            input_size, cfg["crop_pct"] = built_size, 1.0
    return {
        "input_size": input_size,
        "mean": tuple(float(v) for v in cfg["mean"]),
        "std": tuple(float(v) for v in cfg["std"]),
        "interpolation": str(cfg.get("interpolation", "bicubic")),
        "crop_pct": float(cfg.get("crop_pct", 1.0)),
    }


# The VisionTransformer arguments that decide a geometry hiap rebuilds from a name and its recorded kwargs.
GEOMETRY_KWARGS = ("img_size", "patch_size", "in_chans", "depth", "embed_dim", "num_heads", "mlp_ratio")


def geometry_kwargs(vit: nn.Module) -> dict[str, Any]:
    """The geometry arguments a built timm ViT was constructed with (read from its modules)."""
    embed = vit.patch_embed
    first = vit.blocks[0]
    return {
        "img_size": [int(v) for v in embed.img_size],
        "patch_size": [int(v) for v in embed.patch_size],
        "in_chans": int(embed.proj.in_channels),
        "depth": len(vit.blocks),
        "embed_dim": int(vit.embed_dim),
        "num_heads": int(first.attn.num_heads),
        "mlp_ratio": first.mlp.fc1.out_features / vit.embed_dim,
    }


def constructor_kwargs(vit: nn.Module, name: str) -> dict[str, Any]:
    """The model_kwargs that rebuild `vit`'s geometry from `name`: the geometry arguments that differ from the
    name's defaults (all of them when `name` is not a model hiap can build)."""
    built = geometry_kwargs(vit)
    try:
        default = geometry_kwargs(create_model(name, num_classes=0, meta=True))
    except HiapError:
        return built
    return {k: v for k, v in built.items() if v != default[k]}


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
    state = _fit_resolution(model, state, source, notes)
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


def _fit_resolution(model: nn.Module, state: dict[str, torch.Tensor], source: str, notes: list[str]) -> dict:
    """Weights of another input size fit by resampling the position embedding (timm's resample_abs_pos_embed);
    another patch size is refused: resampling patch kernels changes what every token means."""
    own = model.state_dict()
    key = "patch_embed.proj.weight"
    if key in state and key in own and state[key].shape[-2:] != own[key].shape[-2:]:
        raise HiapError(
            f"Weights '{source}' use patch size {tuple(state[key].shape[-2:])} but the model is built with "
            f"{tuple(own[key].shape[-2:])}: keep the weights' patch_size (change img_size instead) or train from "
            "--pretrained none."
        )
    theirs, ours = state.get("pos_embed"), own.get("pos_embed")
    # Same width, other token count: another input size (a width mismatch is another model, reported by the caller).
    if theirs is not None and ours is not None and theirs.shape[-1] == ours.shape[-1] and theirs.shape != ours.shape:
        from timm.layers import resample_abs_pos_embed

        prefix = 0 if getattr(model, "no_embed_class", False) else int(getattr(model, "num_prefix_tokens", 1))
        grid = tuple(model.patch_embed.grid_size)
        old = state["pos_embed"]
        state = dict(state)
        state["pos_embed"] = resample_abs_pos_embed(old, list(grid), num_prefix_tokens=prefix, verbose=False)
        if state["pos_embed"].shape != own["pos_embed"].shape:
            raise HiapError(f"Weights '{source}': position embedding {tuple(old.shape)} cannot be resampled to "
                            f"{tuple(own['pos_embed'].shape)}.")  # fmt: skip
        notes.append(f"position embedding of '{source}' resampled from {tuple(old.shape)} to the {grid} grid")
    return state


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
