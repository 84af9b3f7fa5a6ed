"""Run configuration: one dataclass per command; defaults in code, then --config YAML, then CLI flags."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from hiap.atomic import write_text_atomic
from hiap.errors import HiapError, did_you_mean


@dataclass
class TrainConfig:
    """Everything `hiap train` needs; written resolved as config.yaml beside every run."""

    model: str = "hiap_vit_fmnist"  # built-in model or any timm ViT name
    data: str = "builtin"  # 'builtin' or an ImageFolder root with train/ and val/
    pretrained: str = "auto"  # 'auto' (shipped checkpoint for the built-in model), 'none', 'timm' or a file
    dense: bool = False  # train the plain model without gates (how the shipped dense checkpoint is made)
    target_macs: str = "0.5"  # fraction of dense MACs (0.5) or absolute (3.1G, 450M)
    epochs: int = 6
    train_images: int = 0  # use only the first N training images of each epoch's order (0: all); smoke runs
    batch_size: int = 128
    lr: float = 5e-4  # weights; AdamW
    gate_lr: float = 0.05  # gate logits move much faster than weights (paper leaves it open; see docs)
    weight_decay: float = 0.05  # weights only; gate logits never decay
    warmup_epochs: float = 0.0  # linear warm-up of the weight lr, then cosine to min_lr_ratio * lr
    min_lr_ratio: float = 0.01
    label_smoothing: float = 0.1
    drop_path: float = 0.0
    lambda_macro: float = 2.0  # weights of the decoupled MAC penalties; the budget controller scales both
    lambda_micro: float = 1.0  # together, so their ratio (paper's best: 2:1) is kept
    controller_gain: float = 0.5  # integral gain of the budget controller, per step per unit of MAC error
    polarization: float = 0.0  # weight of the gate-entropy term after the budget ramp (see loss.polarization_loss)
    tau_start: float = 2.0
    tau_end: float = 0.5
    gate_mode: str = "hard"  # 'hard' (0/1 forward, straight-through gradient) or 'soft'
    gate_init: float = 3.0  # initial logit: every gate starts open (sigmoid(3) = 0.95)
    k_min: int = 1  # heads kept per block at least
    min_value_frac: float = 0.25  # value dims kept per kept head at least
    min_neuron_frac: float = 0.1  # neurons kept per kept FFN at least
    kd: bool = True  # distil from the frozen dense starting network
    kd_alpha: float = 0.7
    kd_temperature: float = 4.0
    seed: int = 0
    device: str = "auto"  # 'auto', 'cpu', 'cuda' or 'cuda:N'
    amp: bool = True  # bfloat16 autocast on CUDA (ignored on CPU, where runs stay deterministic)
    workers: int = 2  # DataLoader workers for ImageFolder data
    on_nonfinite: str = "stop"  # a NaN/inf loss or gradient: 'stop' (name the step and last good checkpoint) or 'skip'
    out: str = ""  # output directory; default runs/<name>
    name: str = ""  # run name; default derived from model and target

    def validate(self) -> None:
        positive = ("epochs", "batch_size", "lr", "gate_lr", "tau_start", "tau_end", "kd_temperature")
        for key in positive:
            if getattr(self, key) <= 0:
                raise HiapError(f"Config '{key}' must be > 0, got {getattr(self, key)}.")
        for key in ("min_value_frac", "min_neuron_frac", "kd_alpha", "label_smoothing", "drop_path", "min_lr_ratio"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise HiapError(f"Config '{key}' must lie in [0, 1], got {getattr(self, key)}.")
        if self.on_nonfinite not in ("stop", "skip"):
            raise HiapError(f"Config 'on_nonfinite' must be 'stop' or 'skip', got '{self.on_nonfinite}'.")
        if self.gate_mode not in ("hard", "soft"):
            raise HiapError(f"Config 'gate_mode' must be 'hard' or 'soft', got '{self.gate_mode}'.")
        if self.k_min < 1:
            raise HiapError(f"Config 'k_min' must be >= 1 (a block keeps at least one head), got {self.k_min}.")
        if self.lambda_macro < 0 or self.lambda_micro < 0 or self.lambda_macro + self.lambda_micro == 0:
            raise HiapError("Config 'lambda_macro' and 'lambda_micro' must be >= 0 and not both 0.")
        if self.warmup_epochs < 0 or self.warmup_epochs >= self.epochs:
            raise HiapError(f"Config 'warmup_epochs' must lie in [0, epochs), got {self.warmup_epochs}.")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise HiapError(f"Config 'device' must be auto, cpu, cuda or cuda:N, got '{self.device}'.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(key: str, value: Any, default: Any, source: str) -> Any:
    """Check a value from YAML against the field's type; bool is not an int, an int is a float."""
    kind = type(default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool) and key == "target_macs":
        return str(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise HiapError(f"{source}: '{key}' must be {kind.__name__}, got {type(value).__name__} ({value!r}).")
    return value


def apply_overrides(cfg: TrainConfig, values: dict[str, Any], source: str) -> TrainConfig:
    """Return a copy of `cfg` with `values` applied; unknown keys and wrong types are errors."""
    names = {f.name: f for f in fields(cfg)}
    updates = {}
    for key, value in values.items():
        if not isinstance(key, str):
            raise HiapError(f"{source}: key {key!r} is not a name; keys are config field names such as 'epochs'.")
        key = key.replace("-", "_")
        if key not in names:
            raise HiapError(f"{source}: unknown key '{key}'." + did_you_mean(key, names))
        updates[key] = _coerce(key, value, getattr(cfg, key), source)
    return dataclasses.replace(cfg, **updates)


def load_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise HiapError(f"Config file '{path}' does not exist.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise HiapError(f"Config file '{path}' is not UTF-8 text.") from None
    except yaml.YAMLError as exc:
        raise HiapError(f"Config file '{path}' is not valid YAML ({str(exc).splitlines()[0]}).") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise HiapError(f"Config file '{path}' must hold a mapping of keys to values, got {type(data).__name__}.")
    return data


def resolve_config(config_file: Path | None, cli_values: dict[str, Any]) -> TrainConfig:
    cfg = TrainConfig()
    if config_file is not None:
        cfg = apply_overrides(cfg, load_yaml(config_file), f"Config file '{config_file}'")
    cfg = apply_overrides(cfg, {k: v for k, v in cli_values.items() if v is not None}, "Command line")
    cfg.validate()
    return cfg


def write_yaml(path: Path, data: dict[str, Any]) -> None:
    write_text_atomic(path, yaml.safe_dump(data, sort_keys=False))
