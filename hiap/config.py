"""Run configuration: one dataclass per command; defaults in code, then --config YAML, then CLI flags."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from hiap.base.atomic import write_text_atomic
from hiap.base.errors import HiapError, did_you_mean
from hiap.base.jsonfile import parse_yaml, read_text


@dataclass(frozen=True)
class Target:
    """A MAC target given as a fraction of dense or as an absolute count."""

    text: str
    fraction: float | None = None
    macs: int | None = None

    def resolve(self, dense_macs: int) -> int:
        return round(self.fraction * dense_macs) if self.fraction is not None else int(self.macs)


def parse_target(text: str) -> Target:
    """'0.5' -> half of dense; '3.1G', '450M', '2e9' -> absolute MACs."""
    t = str(text).strip()
    m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([GgMmKk]?)", t)
    if not m:
        raise HiapError(f"--target-macs '{text}' is not a fraction (0.5) or an absolute count (3.1G, 450M).")
    value, unit = float(m.group(1)), m.group(2).upper()
    if unit:
        return Target(text=t, macs=round(value * {"G": 1e9, "M": 1e6, "K": 1e3}[unit]))
    if 0.0 < value <= 1.0:
        return Target(text=t, fraction=value)
    if value > 1000:
        return Target(text=t, macs=round(value))
    raise HiapError(f"--target-macs '{text}' is ambiguous: give a fraction in (0, 1] or a count with a unit (3.1G).")


class _NamedOptions(type):
    """Options built by keyword: an unknown name is a HiapError with a did-you-mean, not Python's TypeError."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        known = [f.name for f in fields(cls)]  # type: ignore[arg-type]
        for key in kwargs:
            if key not in known:
                raise HiapError(f"Unknown option '{key}' of {cls.__name__}.{did_you_mean(key, known)} Known: "
                                f"{', '.join(known)}.")  # fmt: skip
        return super().__call__(*args, **kwargs)


@dataclass(frozen=True)
class PruneOptions(metaclass=_NamedOptions):
    """How the gates search: the Pruner's options, and hiap train's config keys of the same names (TrainConfig.prune;
    each key's meaning is its comment here)."""

    gate_lr: float = 0.05  # gate logits move much faster than weights (paper leaves it open; see docs)
    # weights of the decoupled MAC penalties; the budget controller scales both
    lambda_macro: float = 2.0
    lambda_micro: float = 1.0  # together, so their ratio (paper's best: 2:1) is kept
    # the run must end this close to the target (relative) or `hiap train` exits 3
    target_tolerance: float = 0.01
    # Share of the run in which the gates learn (budget ramp, temperature anneal, freezes, all compressed into it);
    # after it the exported structure is fixed and only its weights train (1.0: search for the whole run). The gate
    # lr is gate_lr / search_fraction, so a shorter search moves the gates as far per unit of its progress as a
    # whole-run search does (at gate_lr itself a 0.3 search lagged its budget ramp and collapsed the network).
    # 0.15 (the fixed structure then trains 85 % of the run) was ahead of 0.3 at 0.5, 0.33 and 0.2 of the MACs on the
    # built-in data's search split (benchmarks/results/builtin_ablation.md).
    search_fraction: float = 0.15
    # Where the fixed structure's weights start when the search ends before the run does: 'gated' (the weights the
    # search trained) or 'start' (the weights the run started from, the kept units copied; the weight lr and its
    # AdamW state restart for the remaining steps, as a one-shot prune-then-fine-tune would).
    adapt_from: str = "start"
    # When a short search lands, every kept head of a block is filled to the value width the export emits (its
    # widest kept head rounded up to this alignment, the export's --align) with its next-best value dims, instead
    # of the zero padding the exporter would add; the landing counts them. 0: no fill.
    value_align: int = 8
    # Integral gain of the budget controller, per step per unit of cost error (fraction of dense); 0: auto, 0.5 for a
    # MAC target and 2.0 for a latency target. A table prices heads and whole FFN branches high and neurons low, so
    # after the macro freeze the fine knobs need a stronger pull: on the built-in model at 0.4 ms, gain 0.5 ended
    # 2.7 % over the target, 2.0 0.25 %.
    controller_gain: float = 0.0
    # Weight of the penalty on uneven per-block kept fractions (loss.allocation_loss) while searching; 0: off.
    even_allocation: float = 0.0
    # weight of the gate-entropy term after the budget ramp (see loss.polarization_loss)
    polarization: float = 0.0
    tau_start: float = 2.0
    tau_end: float = 0.5
    gate_mode: str = "hard"  # 'hard' (0/1 forward, straight-through gradient) or 'soft'
    gate_init: float = 3.0  # initial logit: every gate starts open (sigmoid(3) = 0.95)
    # Micro-gate logits start at gate_init + gate_init_importance * (their unit's standardised log l1-magnitude in
    # its block, clipped to +-2); 0: every gate starts alike (GatedViT.init_from_importance). 1 with qk_gates: chosen
    # on the built-in data's search-3k split (benchmarks/results/builtin_ablation.md).
    gate_init_importance: float = 1.0
    # What that order is: 'l1' (weight magnitude) or 'variance' (each unit's output variance on the calibration
    # images times its output column's squared norm; hiap train measures it on 1,024 of its training images).
    importance: str = "l1"
    # False: FFN blocks are only narrowed, never removed (their gates are fixed open, logit 10).
    ffn_block_gates: bool = True
    # Under a MAC budget below this fraction of dense, FFN blocks are only narrowed (never removed whole) and each may
    # narrow to 2 % of its neurons, wherever the floors reach the budget that way with 15 % to spare; 0: never. On the
    # plateau setting's carved split (benchmarks/results/plateau-search.md) removing whole blocks won at 0.33 and
    # lost at 0.2; below 0.06 only removing blocks reaches the budget.
    narrow_ffn_below: float = 0.25
    # True: each head's q/k dims carry micro gates too (removed from q and k at export; the softmax scale stays
    # 1/sqrt(head_dim)). Beyond the paper, which keeps Q and K whole; false is the paper's search space. MAC budgets
    # and latency tables with a q/k axis (older tables price attention at full q/k width), not with qk-norm; there
    # the gates stay open.
    qk_gates: bool = True
    k_min: int = 1  # heads kept per block at least
    min_value_frac: float = 0.25  # value dims kept per kept head at least
    min_neuron_frac: float = 0.1  # neurons kept per kept FFN at least
    min_qk_frac: float = 0.125  # q/k dims kept per kept head at least (where gated)
    # True: when the search ends, each removed FFN neuron's and value dim's mean output (measured on the start over
    # calibration images before training; hiap train takes 1,024 of its training images) is folded into the bias
    # of the fc2 or proj that read it (hiap.compensate), so the kept network keeps the start's mean activations.
    compensate: bool = False
    seed: int = 0  # keys the gate noise: sample of step t is a function of (seed, t) only, the same on every rank

    def needs_calibration(self) -> bool:
        """The options that read the start's unit statistics (hiap.compensate) on calibration images."""
        return self.compensate or self.importance == "variance"

    def validate(self) -> None:
        """Every value of its type and in range, or a HiapError naming the key."""
        for f in fields(self):
            value, default = getattr(self, f.name), f.default
            if isinstance(default, bool) or isinstance(value, bool):
                ok = isinstance(value, bool) and isinstance(default, bool)
            elif isinstance(default, float):
                ok = isinstance(value, (int, float))
            else:
                ok = isinstance(value, type(default))
            if not ok:
                raise HiapError(f"Option '{f.name}' must be a {type(default).__name__}, got {value!r}.")
        for key in ("gate_lr", "tau_start", "tau_end"):
            if not getattr(self, key) > 0:  # `not >` also refuses NaN
                raise HiapError(f"Config '{key}' must be > 0, got {getattr(self, key)}.")
        if not 0.0 < self.search_fraction <= 1.0:
            raise HiapError(f"Config 'search_fraction' must lie in (0, 1], got {self.search_fraction}.")
        if self.value_align < 0:
            raise HiapError(f"Config 'value_align' must be >= 0 (0: no fill), got {self.value_align}.")
        if self.adapt_from not in ("gated", "start"):
            raise HiapError(f"Config 'adapt_from' must be 'gated' or 'start', got '{self.adapt_from}'.")
        for key in ("even_allocation", "controller_gain", "target_tolerance", "polarization"):
            if not getattr(self, key) >= 0:
                raise HiapError(f"Config '{key}' must be >= 0, got {getattr(self, key)}.")
        for key in ("min_value_frac", "min_neuron_frac", "min_qk_frac", "narrow_ffn_below"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise HiapError(f"Config '{key}' must lie in [0, 1], got {getattr(self, key)}.")
        if self.importance not in ("l1", "variance"):
            raise HiapError(f"Config 'importance' must be 'l1' or 'variance', got '{self.importance}'.")
        if self.gate_mode not in ("hard", "soft"):
            raise HiapError(f"Config 'gate_mode' must be 'hard' or 'soft', got '{self.gate_mode}'.")
        if self.k_min < 1:
            raise HiapError(f"Config 'k_min' must be >= 1 (a block keeps at least one head), got {self.k_min}.")
        if not (self.lambda_macro >= 0 and self.lambda_micro >= 0) or self.lambda_macro + self.lambda_micro == 0:
            raise HiapError("Config 'lambda_macro' and 'lambda_micro' must be >= 0 and not both 0.")
        if not math.isfinite(self.gate_init) or not math.isfinite(self.gate_init_importance):
            raise HiapError("Config 'gate_init' and 'gate_init_importance' must be finite numbers.")


# The search's keys as YAML, the CLI and TrainConfig(...) spell them, flat; `seed` is the run's own key (it also
# keys the data order), copied into the nested options.
SEARCH_KEYS = tuple(f.name for f in fields(PruneOptions) if f.name != "seed")


class _FlatSearchKeys(type):
    """TrainConfig(...) takes the search keys flat and nests them in `prune` (over a `prune` given beside them)."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        flat = {k: kwargs.pop(k) for k in [k for k in kwargs if k in SEARCH_KEYS]}
        if flat:
            kwargs["prune"] = dataclasses.replace(kwargs.get("prune") or PruneOptions(), **flat)
        return super().__call__(*args, **kwargs)


@dataclass
class TrainConfig(metaclass=_FlatSearchKeys):
    """Everything `hiap train` needs; written resolved as config.yaml beside every run."""

    model: str = "hiap_vit_fmnist"  # built-in model or any timm ViT name
    # Constructor arguments of the model (timm's --model-kwargs), e.g. {img_size: 32, patch_size: 4, depth: 6};
    # recorded in the checkpoint, plan and ONNX metadata so every later command rebuilds the same geometry.
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    data: str = "builtin"  # 'builtin' or an ImageFolder root with train/ and val/
    pretrained: str = "auto"  # 'auto' (shipped checkpoint for the built-in model), 'none', 'timm' or a file
    dense: bool = False  # train the plain model without gates (how the shipped dense checkpoint is made)
    target_macs: str = "0.5"  # fraction of dense MACs (0.5) or absolute (3.1G, 450M)
    # A latency budget instead: the exported network's latency on a device, predicted by that device's measured
    # table (hiap profile's lut.json) at batch latency_batch; 0: the MAC target holds.
    target_latency_ms: float = 0.0
    lut: str = ""
    latency_batch: int = 1
    epochs: int = 6
    train_images: int = 0  # use only the first N training images of each epoch's order (0: all); smoke runs
    batch_size: int = 128
    lr: float = 5e-4  # weights; AdamW
    weight_decay: float = 0.05  # weights only; gate logits never decay
    warmup_epochs: float = 0.0  # linear warm-up of the weight lr, then cosine to min_lr_ratio * lr
    min_lr_ratio: float = 0.01
    label_smoothing: float = 0.1
    drop_path: float = 0.0
    # Training augmentation of ImageFolder data, with timm's names. crop_pad > 0: random crop of the image padded
    # by that many pixels (the standard for 32x32 data) instead of timm's random-resized-crop (scale, ratio);
    # -1 (auto) pads by 1/8 of the input size for inputs up to 64 px and uses random-resized-crop above, since
    # timm's ImageNet default (crops down to 8 % of the image) destroys small images. The built-in data keeps its
    # own fixed augmentation (crop of the image padded by 2, flip).
    crop_pad: int = -1
    scale: tuple[float, float] = (0.08, 1.0)  # random-resized-crop area range
    ratio: tuple[float, float] = (0.75, 1.3333333333333333)  # random-resized-crop aspect range
    hflip: float = 0.5
    color_jitter: float = 0.0  # brightness/contrast/saturation strength (timm's ImageNet default is 0.4)
    auto_augment: str = ""  # a timm policy such as 'rand-m9-mstd0.5-inc1' or 'augmix-m5-w4-d2'; '' none
    data_cache: str = "auto"  # decode ImageFolder images into memory once: 'auto' (small images), 'on', 'off'
    # How the gates search: hiap.config.PruneOptions, whose keys YAML, the CLI and this constructor take flat
    # (TrainConfig(gate_lr=0.1) is TrainConfig(prune=PruneOptions(gate_lr=0.1))); read through as cfg.gate_lr.
    prune: PruneOptions = field(default_factory=PruneOptions)
    kd: bool = True  # distil from the frozen dense starting network
    kd_alpha: float = 0.7
    kd_temperature: float = 4.0
    seed: int = PruneOptions.seed
    device: str = "auto"  # 'auto', 'cpu', 'cuda' or 'cuda:N'
    amp: bool = True  # bfloat16 autocast on CUDA (ignored on CPU, where runs stay deterministic)
    workers: int = 2  # DataLoader workers for ImageFolder data
    on_nonfinite: str = "stop"  # a NaN/inf loss or gradient: 'stop' (name the step and last good checkpoint) or 'skip'
    out: str = ""  # output directory; default runs/<name>
    name: str = ""  # run name; default derived from model and target

    def validate(self) -> None:
        for key in ("epochs", "batch_size", "lr", "kd_temperature"):
            if not getattr(self, key) > 0:  # `not >` also refuses NaN
                raise HiapError(f"Config '{key}' must be > 0, got {getattr(self, key)}.")
        self.prune_options().validate()
        if not self.dense:
            self.target()  # a malformed --target-macs is refused before any model or data is loaded
        if self.target_latency_ms < 0:
            raise HiapError(f"Config 'target_latency_ms' must be > 0 (0: a MAC target), got {self.target_latency_ms}.")
        if self.target_latency_ms and not self.lut:
            raise HiapError("--target-latency-ms needs the device's latency table: pass --lut lut.json (measure it "
                            "with hiap profile --device DEVICE).")  # fmt: skip
        if self.lut and not self.target_latency_ms and not self.dense:
            raise HiapError("--lut is the table of a latency target: pass --target-latency-ms MS with it.")
        if self.latency_batch < 1:
            raise HiapError(f"Config 'latency_batch' must be >= 1, got {self.latency_batch}.")
        for key in ("kd_alpha", "label_smoothing", "drop_path", "min_lr_ratio"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise HiapError(f"Config '{key}' must lie in [0, 1], got {getattr(self, key)}.")
        if self.on_nonfinite not in ("stop", "skip"):
            raise HiapError(f"Config 'on_nonfinite' must be 'stop' or 'skip', got '{self.on_nonfinite}'.")
        if self.warmup_epochs < 0 or self.warmup_epochs >= self.epochs:
            raise HiapError(f"Config 'warmup_epochs' must lie in [0, epochs), got {self.warmup_epochs}.")
        if self.crop_pad < -1:
            raise HiapError(
                f"Config 'crop_pad' must be -1 (auto), 0 (random-resized-crop) or pixels, got {self.crop_pad}."
            )
        for key, bounds in (("scale", (0.0, 1.0)), ("ratio", (0.0, float("inf")))):
            lo, hi = getattr(self, key)
            if not (bounds[0] < lo <= hi <= bounds[1]):
                raise HiapError(f"Config '{key}' must be two numbers lo <= hi in ({bounds[0]:g}, {bounds[1]:g}], "
                                f"got {list(getattr(self, key))}.")  # fmt: skip
        if not 0.0 <= self.hflip <= 1.0 or self.color_jitter < 0:
            raise HiapError("Config 'hflip' must lie in [0, 1] and 'color_jitter' be >= 0.")
        if self.data_cache not in ("auto", "on", "off"):
            raise HiapError(f"Config 'data_cache' must be auto, on or off, got '{self.data_cache}'.")
        from hiap.models import check_model_kwargs

        check_model_kwargs(self.model_kwargs)
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise HiapError(f"Config 'device' must be auto, cpu, cuda or cuda:N, got '{self.device}'.")

    def __post_init__(self) -> None:
        if not isinstance(self.prune, PruneOptions):
            raise HiapError(f"Config 'prune' must be a PruneOptions, got {type(self.prune).__name__}.")
        if self.prune.seed != self.seed:
            self.prune = dataclasses.replace(self.prune, seed=self.seed)

    def __getattr__(self, name: str) -> Any:
        # Only for names that are not attributes: the search keys read through to their one owner, `prune`.
        prune = self.__dict__.get("prune")
        if prune is not None and name in SEARCH_KEYS:
            return getattr(prune, name)
        raise AttributeError(f"'TrainConfig' has no attribute '{name}'")

    @classmethod
    def key_names(cls) -> list[str]:
        """Every config key, flat, in the order config.yaml lists them."""
        own = [f.name for f in fields(cls)]  # type: ignore[arg-type]
        at = own.index("prune")
        return own[:at] + list(SEARCH_KEYS) + own[at + 1 :]

    def prune_options(self) -> PruneOptions:
        """The keys that shape the gate search, as the Pruner takes them."""
        return self.prune

    def target(self) -> Target:
        """The MAC target of a budgeted run, parsed from target_macs."""
        return parse_target(self.target_macs)

    def to_dict(self) -> dict[str, Any]:
        """Every key flat (config.yaml, the checkpoint's record). Lists, not tuples: the same value after a round
        trip through YAML or the checkpoint's JSON."""
        own = dataclasses.asdict(self)
        flat = {k: own[k] if k in own else own["prune"][k] for k in self.key_names()}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in flat.items()}


def _coerce(key: str, value: Any, default: Any, source: str) -> Any:
    """Check a value from YAML against the field's type; bool is not an int, an int is a float."""
    kind = type(default)
    if kind is tuple:  # a pair of numbers: YAML gives a list
        ok = isinstance(value, (list, tuple)) and len(value) == len(default)
        ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        if not ok:
            raise HiapError(
                f"{source}: '{key}' must be {len(default)} numbers such as {list(default)}, got {value!r:.80}."
            )
        return tuple(float(v) for v in value)
    if kind is dict and isinstance(value, dict):
        return dict(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool) and key == "target_macs":
        return str(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise HiapError(f"{source}: '{key}' must be {kind.__name__}, got {type(value).__name__} ({value!r:.80}).")
    return value


def apply_overrides(cfg: TrainConfig, values: dict[str, Any], source: str) -> TrainConfig:
    """Return a copy of `cfg` with `values` applied; unknown keys and wrong types are errors."""
    names = cfg.key_names()
    updates = {}
    for key, value in values.items():
        if not isinstance(key, str):
            raise HiapError(f"{source}: key {key!r:.60} is not a name; keys are config field names such as 'epochs'.")
        key = key.replace("-", "_")
        if key not in names:
            raise HiapError(f"{source}: unknown key {key!r:.60}." + did_you_mean(key, names))  # repr: one line
        updates[key] = _coerce(key, value, getattr(cfg, key), source)
    return dataclasses.replace(cfg, **updates)


def load_yaml(path: Path) -> dict[str, Any]:
    data = parse_yaml(read_text(path, "Config file"), f"Config file '{path}'")
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
