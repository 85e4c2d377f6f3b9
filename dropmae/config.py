"""Typed, validated configuration whose sections mirror params.yaml.

Every section is a frozen dataclass. Loading is strict: an unknown key, a value of the
wrong type or a value out of range raises ConfigError naming the dotted key, so a bad
params.yaml stops a run before any expensive work starts.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dropmae.models.dropmae import ENCODER_SPECS, MASKING_MODES

METHODS = ("twinmae", "dropmae")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
PAIR_INPUTS = ("frames", "video")


class ConfigError(ValueError):
    """A configuration value is unknown, mistyped or out of range; the message names the key."""


@dataclass(frozen=True)
class SourceConfig:
    """One named pretraining data source."""

    videos: str  # a Kinetics-style tree root or a CSV list file (path[,label])


@dataclass(frozen=True)
class ExtractionConfig:
    short_side: int | None = 256
    frame_stride: int = 1
    jpeg_quality: int = 90
    workers: int = 8
    max_bad_fraction: float = 0.1
    val_fraction: float = 0.01


@dataclass(frozen=True)
class DataConfig:
    sources: dict[str, SourceConfig] = field(default_factory=dict)
    frames_root: str = "data/frames"
    extraction: ExtractionConfig = field(default_factory=ExtractionConfig)


@dataclass(frozen=True)
class ModelConfig:
    encoder: str = "base"
    img_size: int = 224
    patch_size: int = 16
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16


@dataclass(frozen=True)
class PretrainConfig:
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    epochs: list[int] = field(default_factory=lambda: [400, 800, 1600])
    mask_ratio: float = 0.75
    masking: str = "joint"
    asad_p: float = 0.1  # P of the recipe; used by the dropmae method, 0 for twinmae
    norm_pix_loss: bool = True
    frame_gap: int = 50
    shared_crop: bool = False
    crop_scale: list[float] = field(default_factory=lambda: [0.2, 1.0])
    input: str = "frames"  # read pairs from extracted frames or decode the videos directly
    batch_size: int = 64  # per process
    accum_iter: int = 1
    blr: float = 1.5e-4  # lr = blr * effective batch / 256
    min_lr: float = 0.0
    weight_decay: float = 0.05
    warmup_epochs: int = 40
    precision: str = "auto"  # bf16 on GPU and fp32 on CPU when auto
    num_workers: int = 10
    seed: int = 0
    keep_epochs: list[int] = field(default_factory=list)  # epochs whose checkpoint is kept besides -last
    checkpoint_every_steps: int = 0  # also write checkpoint-last every k optimiser steps (0: per epoch only)
    log_every_steps: int = 20


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)


# ----------------------------------------------------------------------------- parsing
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it converted to the dataclass form."""
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {' or '.join(_type_name(o) for o in options)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return _build(tp, value, key)
    if origin is list:
        (item_type,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(item, item_type, f"{key}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        _, item_type = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {str(k): _coerce(v, item_type, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {tp} for {key}")


def _build(cls: type, values: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown key {where}{unknown[0]!s}" + (f" (and {unknown[1:]})" if len(unknown) > 1 else "")
            + f"; allowed under {prefix or 'the top level'}: {sorted(names)}"
        )
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = _coerce(value, hints[name], f"{prefix}.{name}" if prefix else name)
    return cls(**kwargs)


def _require(condition: bool, key: str, message: str, value: Any) -> None:
    if not condition:
        raise ConfigError(f"{key}: {message}, got {value!r}")


def validate(config: Config) -> Config:
    """Range checks that types alone cannot express."""
    ex = config.data.extraction
    _require(ex.short_side is None or ex.short_side > 0, "data.extraction.short_side", "must be positive or null", ex.short_side)
    _require(ex.frame_stride >= 1, "data.extraction.frame_stride", "must be >= 1", ex.frame_stride)
    _require(1 <= ex.jpeg_quality <= 100, "data.extraction.jpeg_quality", "must be in [1, 100]", ex.jpeg_quality)
    _require(ex.workers >= 1, "data.extraction.workers", "must be >= 1", ex.workers)
    _require(0 <= ex.max_bad_fraction <= 1, "data.extraction.max_bad_fraction", "must be in [0, 1]", ex.max_bad_fraction)
    _require(0 <= ex.val_fraction < 1, "data.extraction.val_fraction", "must be in [0, 1)", ex.val_fraction)
    for name in config.data.sources:
        _require(name.replace("_", "").replace("-", "").isalnum(), f"data.sources.{name}", "source names are letters, digits, - and _", name)

    m = config.model
    _require(m.encoder in ENCODER_SPECS, "model.encoder", f"must be one of {sorted(ENCODER_SPECS)}", m.encoder)
    _require(m.patch_size > 0, "model.patch_size", "must be positive", m.patch_size)
    _require(m.img_size > 0 and m.img_size % m.patch_size == 0, "model.img_size", f"must be a positive multiple of model.patch_size ({m.patch_size})", m.img_size)
    _require(m.decoder_dim > 0 and m.decoder_depth > 0, "model.decoder_dim", "decoder width and depth must be positive", (m.decoder_dim, m.decoder_depth))
    _require(m.decoder_heads > 0 and m.decoder_dim % m.decoder_heads == 0, "model.decoder_heads", f"must divide model.decoder_dim ({m.decoder_dim})", m.decoder_heads)
    _require(m.decoder_dim % 4 == 0, "model.decoder_dim", "must be divisible by 4 (2-D sin-cos table)", m.decoder_dim)

    p = config.pretrain
    _require(len(p.methods) > 0 and all(x in METHODS for x in p.methods), "pretrain.methods", f"must be a non-empty list from {list(METHODS)}", p.methods)
    _require(len(p.epochs) > 0 and all(e > 0 for e in p.epochs), "pretrain.epochs", "must be a non-empty list of positive integers", p.epochs)
    _require(0 < p.mask_ratio < 1, "pretrain.mask_ratio", "must be in (0, 1)", p.mask_ratio)
    _require(p.masking in MASKING_MODES, "pretrain.masking", f"must be one of {list(MASKING_MODES)}", p.masking)
    _require(0 <= p.asad_p < 1, "pretrain.asad_p", "must be in [0, 1)", p.asad_p)
    _require(p.frame_gap >= 2, "pretrain.frame_gap", "must be >= 2 (a pair needs two distinct frames)", p.frame_gap)
    _require(len(p.crop_scale) == 2 and 0 < p.crop_scale[0] <= p.crop_scale[1] <= 1, "pretrain.crop_scale", "must be [low, high] with 0 < low <= high <= 1", p.crop_scale)
    _require(p.input in PAIR_INPUTS, "pretrain.input", f"must be one of {list(PAIR_INPUTS)}", p.input)
    _require(p.batch_size > 0, "pretrain.batch_size", "must be positive", p.batch_size)
    _require(p.accum_iter > 0, "pretrain.accum_iter", "must be positive", p.accum_iter)
    _require(p.blr > 0, "pretrain.blr", "must be positive", p.blr)
    _require(p.min_lr >= 0, "pretrain.min_lr", "must be >= 0", p.min_lr)
    _require(p.weight_decay >= 0, "pretrain.weight_decay", "must be >= 0", p.weight_decay)
    _require(p.warmup_epochs >= 0, "pretrain.warmup_epochs", "must be >= 0", p.warmup_epochs)
    _require(p.precision in PRECISIONS, "pretrain.precision", f"must be one of {list(PRECISIONS)}", p.precision)
    _require(p.num_workers >= 0, "pretrain.num_workers", "must be >= 0", p.num_workers)
    _require(all(e > 0 for e in p.keep_epochs), "pretrain.keep_epochs", "must be positive epochs", p.keep_epochs)
    _require(p.checkpoint_every_steps >= 0, "pretrain.checkpoint_every_steps", "must be >= 0", p.checkpoint_every_steps)
    _require(p.log_every_steps > 0, "pretrain.log_every_steps", "must be positive", p.log_every_steps)
    return config


def config_from_dict(values: dict) -> Config:
    if not isinstance(values, dict):
        raise ConfigError(f"the configuration must be a mapping of sections, got {type(values).__name__}")
    return validate(_build(Config, values))


def config_to_dict(config: Config) -> dict:
    """Plain data (for checkpoints and logs)."""
    return dataclasses.asdict(config)


def deep_merge(base: dict, overlay: dict) -> dict:
    """Overlay mappings key by key; lists and scalars are replaced whole."""
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_override(assignment: str) -> dict:
    """``pretrain.epochs=[2,4]`` -> {"pretrain": {"epochs": [2, 4]}} (value parsed as YAML)."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like section.key=value")
    dotted, raw = assignment.split("=", 1)
    parts = dotted.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {assignment!r} has an empty key")
    value: Any = yaml.safe_load(raw) if raw.strip() else ""
    for part in reversed(parts):
        value = {part: value}
    return value


def load_config(paths: list[str | Path] | str | Path, overrides: list[str] = ()) -> Config:
    """Read YAML files (later ones overlay earlier ones), apply ``key=value`` overrides, validate."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    values: dict = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {path} is not valid YAML: {error}") from error
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections")
        values = deep_merge(values, loaded)
    for assignment in overrides:
        values = deep_merge(values, parse_override(assignment))
    return config_from_dict(values)


@dataclass(frozen=True)
class PretrainRun:
    """One cell of the pretraining grid: a method and an epoch budget on one source."""

    method: str
    epochs: int
    source: str | None = None

    def drop_probability(self, config: Config) -> float:
        return config.pretrain.asad_p if self.method == "dropmae" else 0.0


def resolve_run(config: Config, method: str | None, epochs: int | None, source: str | None = None) -> PretrainRun:
    """Pick one cell of the grid; with one method or one epoch budget configured it is the default."""
    p = config.pretrain
    if method is None:
        if len(p.methods) != 1:
            raise ConfigError(f"pretrain.methods lists {p.methods}: choose one with --method")
        method = p.methods[0]
    if method not in METHODS:
        raise ConfigError(f"method must be one of {list(METHODS)}, got {method!r}")
    if epochs is None:
        if len(p.epochs) != 1:
            raise ConfigError(f"pretrain.epochs lists {p.epochs}: choose one with --epochs")
        epochs = p.epochs[0]
    if epochs <= 0:
        raise ConfigError(f"epochs must be positive, got {epochs}")
    if source is not None and source not in config.data.sources:
        raise ConfigError(f"data.sources has no source {source!r}; configured: {sorted(config.data.sources)}")
    return PretrainRun(method=method, epochs=epochs, source=source)
