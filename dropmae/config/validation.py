"""Strict parsing of params.yaml values into the typed sections, and the range and cross-key
checks that types alone cannot express; every failure is a ConfigError naming the dotted key."""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any

from dropmae.config.sections import (
    DEMO_TRACKING_BENCHMARK,
    DEMO_VIDEOS,
    EXECUTORS,
    METHODS,
    NAME_PATTERN,
    PAIR_INPUTS,
    PRECISIONS,
    SEGMENTATION_FORMATS,
    TRACKING_FORMATS,
    Config,
    ConfigError,
    study_epochs,
    study_pretrain,
)
from dropmae.models.specs import ASAD_KERNELS, ENCODER_SPECS, EXTERNAL_FORMATS, MASKING_MODES
from dropmae.presets import SEGMENTATION_PRESETS, TRACKING_PRESETS


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
        return build_section(tp, value, key)
    if origin is list:
        (item_type,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(item, item_type, f"{key}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        _, item_type = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        for name in value:
            if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
                raise ConfigError(f"{key}.{name}: names are letters, digits, _ and - (not first), got {name!r}")
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
        if not math.isfinite(value):  # .inf / .nan pass every range check written with < and >
            raise ConfigError(f"{key}: must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {tp} for {key}")


def build_section(cls: type, values: dict, prefix: str = ""):
    """``cls`` (a section dataclass) from plain ``values``: unknown keys and mistyped values are errors."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown key {where}{unknown[0]!s}" + (f" (and {unknown[1:]})" if len(unknown) > 1 else "")
            + f"; allowed under {prefix or 'the top level'}: {sorted(names)}"
        )
    required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING and f.name not in values]
    if required:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"missing key {where}{required[0]} (required: {required})")
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = _coerce(value, hints[name], f"{prefix}.{name}" if prefix else name)
    return cls(**kwargs)


def _require(condition: bool, key: str, message: str, value: Any) -> None:
    if not condition:
        raise ConfigError(f"{key}: {message}, got {value!r}")


def validate(config: Config, *, check_study: bool = True) -> Config:
    """Range checks that types alone cannot express (``check_study=False``: all but attention_study)."""
    ex = config.data.extraction
    _require(ex.short_side is None or ex.short_side > 0, "data.extraction.short_side", "must be positive or null", ex.short_side)
    _require(ex.frame_stride >= 1, "data.extraction.frame_stride", "must be >= 1", ex.frame_stride)
    _require(1 <= ex.jpeg_quality <= 100, "data.extraction.jpeg_quality", "must be in [1, 100]", ex.jpeg_quality)
    _require(ex.workers >= 1, "data.extraction.workers", "must be >= 1", ex.workers)
    _require(0 <= ex.max_bad_fraction <= 1, "data.extraction.max_bad_fraction", "must be in [0, 1]", ex.max_bad_fraction)
    _require(0 <= ex.val_fraction < 1, "data.extraction.val_fraction", "must be in [0, 1)", ex.val_fraction)
    _require(ex.video_timeout_s > 0, "data.extraction.video_timeout_s", "must be positive (seconds)", ex.video_timeout_s)
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
    _require(p.asad_kernel in ASAD_KERNELS, "pretrain.asad_kernel", f"must be one of {list(ASAD_KERNELS)}", p.asad_kernel)
    _require(p.frame_gap >= 2, "pretrain.frame_gap", "must be >= 2 (a pair needs two distinct frames)", p.frame_gap)
    _require(len(p.crop_scale) == 2 and 0 < p.crop_scale[0] <= p.crop_scale[1] <= 1, "pretrain.crop_scale", "must be [low, high] with 0 < low <= high <= 1", p.crop_scale)
    for key in ("color_jitter_p", "grayscale_p"):
        _require(0 <= getattr(p, key) <= 1, f"pretrain.{key}", "must be a probability in [0, 1]", getattr(p, key))
    _require(not p.decode_on_device or (p.color_jitter_p == 0 and p.grayscale_p == 0), "pretrain.decode_on_device",
             "cannot be true with pretrain.color_jitter_p or pretrain.grayscale_p > 0 (colour changes need the "
             "pixels on the CPU)", p.decode_on_device)
    _require(p.input in PAIR_INPUTS, "pretrain.input", f"must be one of {list(PAIR_INPUTS)}", p.input)
    _require(not p.decode_on_device or p.input == "packed", "pretrain.input",
             "must be packed when pretrain.decode_on_device is true", p.input)
    _require(p.input != "packed" or ex.pack, "data.extraction.pack",
             "must be true when pretrain.input is packed (the pack is written by the extraction)", ex.pack)
    _require(p.batch_size > 0, "pretrain.batch_size", "must be positive", p.batch_size)
    _require(p.repeated_sampling >= 1, "pretrain.repeated_sampling", "must be >= 1", p.repeated_sampling)
    _require(p.batch_size % p.repeated_sampling == 0, "pretrain.batch_size",
             f"must be a multiple of pretrain.repeated_sampling ({p.repeated_sampling}): a step reads "
             "batch_size / repeated_sampling videos", p.batch_size)
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
    _require(len(set(p.methods)) == len(p.methods), "pretrain.methods", "must not repeat a method", p.methods)
    _require(len(set(p.epochs)) == len(p.epochs), "pretrain.epochs", "must not repeat an epoch budget", p.epochs)

    a = config.analysis
    _require(a.heldout_pairs > 0, "analysis.heldout_pairs", "must be positive", a.heldout_pairs)
    _require(a.batch_size > 0, "analysis.batch_size", "must be positive", a.batch_size)
    _require(a.figure_pairs > 0, "analysis.figure_pairs", "must be positive", a.figure_pairs)
    _require(a.table_source is None or a.table_source in config.data.sources, "analysis.table_source",
             f"must name one of data.sources {sorted(config.data.sources)} or be null", a.table_source)
    _require(a.datasource_method in p.methods, "analysis.datasource_method", f"must be one of pretrain.methods {p.methods}",
             a.datasource_method)
    _require(a.datasource_epochs is None or a.datasource_epochs in p.epochs, "analysis.datasource_epochs",
             f"must be one of pretrain.epochs {p.epochs} or null", a.datasource_epochs)

    launcher = config.launcher
    _require(launcher.executor in EXECUTORS, "launcher.executor", f"must be one of {list(EXECUTORS)}", launcher.executor)
    for job_name in ("pretrain", "finetune"):
        job = getattr(launcher, job_name)
        for key in ("nodes", "cpus_per_task", "time_min"):
            _require(getattr(job, key) > 0, f"launcher.{job_name}.{key}", "must be positive", getattr(job, key))
        _require(job.gpus_per_node >= 0, f"launcher.{job_name}.gpus_per_node", "must be >= 0", job.gpus_per_node)
        _require(job.tasks_per_node is None or job.tasks_per_node > 0, f"launcher.{job_name}.tasks_per_node",
                 "must be positive or null", job.tasks_per_node)
        _require(job.mem_gb_per_node > 0, f"launcher.{job_name}.mem_gb_per_node", "must be positive", job.mem_gb_per_node)
        _require(job.max_requeues >= 0, f"launcher.{job_name}.max_requeues", "must be >= 0", job.max_requeues)
        _require(job.signal_delay_s >= 0, f"launcher.{job_name}.signal_delay_s", "must be >= 0", job.signal_delay_s)
    for name in ("extract", "analyse", "evaluate", "benchmark"):
        resources = getattr(launcher, name)
        for key in ("cpus", "mem_gb", "time_min"):
            _require(getattr(resources, key) > 0, f"launcher.{name}.{key}", "must be positive", getattr(resources, key))
        _require(resources.gpus >= 0, f"launcher.{name}.gpus", "must be >= 0", resources.gpus)
    _validate_tracking(config)
    _validate_segmentation(config)
    _validate_external_encoders(config)
    if check_study:
        _validate_attention_study(config)
    return config


def _validate_attention_study(config: Config) -> None:
    a = config.attention_study
    _require(len(a.seeds) >= 2 and len(set(a.seeds)) == len(a.seeds) and min(a.seeds) >= 0, "attention_study.seeds",
             "must be at least 2 distinct seeds >= 0 (the interval is over seeds)", a.seeds)
    _require(a.source is None or a.source in config.data.sources, "attention_study.source",
             f"must name one of data.sources {sorted(config.data.sources)} or be null", a.source)
    _require(a.heldout_pairs > 0, "attention_study.heldout_pairs", "must be positive", a.heldout_pairs)
    _require(a.batch_size > 0, "attention_study.batch_size", "must be positive", a.batch_size)
    _require(len(a.settings) > 0, "attention_study.settings", "must name at least one setting", a.settings)
    for name in a.settings:
        _require(name.replace("_", "").replace("-", "").isalnum(), f"attention_study.settings.{name}",
                 "setting names are letters, digits, - and _ (they name run folders)", name)
        _require(study_epochs(config, name) > 0, f"attention_study.settings.{name}.epochs",
                 "must be positive (with attention_study.pretrain.epochs)", study_epochs(config, name))
        # The whole config as this setting trains, range-checked like pretrain.* itself.
        try:
            validate(dataclasses.replace(config, pretrain=study_pretrain(config, name)), check_study=False)
        except ConfigError as error:
            raise ConfigError(f"attention_study.settings.{name} (with attention_study.pretrain): {error}") from None


def _validate_benchmark_sets(prefix: str, section: Any, formats: tuple[str, ...]) -> None:
    """A downstream section's benchmarks (known format, safe name), and train / evaluate sets naming them."""
    for name, bench in section.benchmarks.items():
        _require(bench.format in formats, f"{prefix}.benchmarks.{name}.format", f"must be one of {list(formats)}", bench.format)
        _require(name.replace("_", "").replace("-", "").isalnum(), f"{prefix}.benchmarks.{name}", "benchmark names are letters, digits, - and _", name)
    for part in ("train", "evaluate"):
        for name in getattr(section, part):
            _require(name in section.benchmarks, f"{prefix}.{part}.{name}", f"must name one of {prefix}.benchmarks {sorted(section.benchmarks)}", name)
    for name, train_set in section.train.items():
        _require(train_set.weight > 0, f"{prefix}.train.{name}.weight", "must be positive", train_set.weight)


def _validate_tracking(config: Config) -> None:
    t = config.tracking
    _require(t.preset is None or t.preset in TRACKING_PRESETS, "tracking.preset", f"must be one of {sorted(TRACKING_PRESETS)} or null", t.preset)
    _validate_benchmark_sets("tracking", t, TRACKING_FORMATS)
    for name in t.evaluate:
        _require(t.benchmarks[name].format != "coco", f"tracking.evaluate.{name}", "COCO has image pairs, not sequences to track", name)
    for key in ("template_size", "search_size"):
        size = getattr(t, key)
        _require(size > 0 and size % config.model.patch_size == 0, f"tracking.{key}", f"must be a positive multiple of model.patch_size ({config.model.patch_size})", size)
    for key in ("template_factor", "search_factor", "epochs", "samples_per_epoch", "batch_size", "lr", "head_channels", "max_frame_gap", "log_every_steps"):
        _require(getattr(t, key) > 0, f"tracking.{key}", "must be positive", getattr(t, key))
    _require(t.head_channels % 8 == 0, "tracking.head_channels", "must be divisible by 8 (the head halves it three times)", t.head_channels)
    for key in ("center_jitter", "scale_jitter", "weight_decay", "grad_clip_norm", "focal_weight", "giou_weight", "l1_weight",
                "clip_margin", "num_workers", "checkpoint_every_steps", "ce_start_epoch", "ce_warm_epochs", "drop_path_rate",
                "warmup_epochs"):
        _require(getattr(t, key) >= 0, f"tracking.{key}", "must be >= 0", getattr(t, key))
    for key in ("grayscale_probability", "brightness_jitter", "flip_probability", "hue_rotation_probability",
                "backbone_lr_scale", "lr_drop_factor"):
        _require(0 <= getattr(t, key) <= 1, f"tracking.{key}", "must be in [0, 1]", getattr(t, key))
    _require(0 < t.ce_keep_ratio <= 1, "tracking.ce_keep_ratio", "must be in (0, 1]", t.ce_keep_ratio)
    depth = ENCODER_SPECS[config.model.encoder].depth
    # Checked against model.encoder only when trackers are built (both sets named): a config that
    # only pretrains a small encoder need not also adjust the tracker's CE blocks.
    _require(not (t.train and t.evaluate) or all(0 <= b < depth for b in t.ce_locations) and len(set(t.ce_locations)) == len(t.ce_locations),
             "tracking.ce_locations", f"must be distinct block indices in [0, {depth}) of the {config.model.encoder} encoder", t.ce_locations)
    _require(t.warmup_epochs <= t.lr_drop_epoch, "tracking.warmup_epochs",
             f"must be <= tracking.lr_drop_epoch ({t.lr_drop_epoch}): the lr would drop before it had risen", t.warmup_epochs)
    _require(t.precision in PRECISIONS, "tracking.precision", f"must be one of {list(PRECISIONS)}", t.precision)


def _validate_segmentation(config: Config) -> None:
    s = config.segmentation
    _require(s.preset is None or s.preset in SEGMENTATION_PRESETS, "segmentation.preset", f"must be one of {sorted(SEGMENTATION_PRESETS)} or null", s.preset)
    _validate_benchmark_sets("segmentation", s, SEGMENTATION_FORMATS)
    _require(s.image_size > 0 and s.image_size % config.model.patch_size == 0, "segmentation.image_size",
             f"must be a positive multiple of model.patch_size ({config.model.patch_size})", s.image_size)
    for key in ("max_frame_skip", "epochs", "samples_per_epoch", "batch_size", "lr", "decoder_channels", "log_every_steps"):
        _require(getattr(s, key) > 0, f"segmentation.{key}", "must be positive", getattr(s, key))
    for key in ("min_object_pixels", "weight_decay", "grad_clip_norm", "num_workers", "checkpoint_every_steps",
                "bootstrap_start_epoch", "drop_path_rate", "brightness_jitter", "contrast_jitter", "saturation_jitter"):
        _require(getattr(s, key) >= 0, f"segmentation.{key}", "must be >= 0", getattr(s, key))
    for key in ("reverse_probability", "flip_probability", "backbone_lr_scale", "lr_drop_factor"):
        _require(0 <= getattr(s, key) <= 1, f"segmentation.{key}", "must be in [0, 1]", getattr(s, key))
    _require(0 < s.bootstrap_fraction <= 1, "segmentation.bootstrap_fraction", "must be in (0, 1]", s.bootstrap_fraction)
    _require(s.bootstrap_end_epoch >= s.bootstrap_start_epoch, "segmentation.bootstrap_end_epoch",
             f"must be >= segmentation.bootstrap_start_epoch ({s.bootstrap_start_epoch})", s.bootstrap_end_epoch)
    for key in ("crop_scale", "crop_ratio"):
        low_high = getattr(s, key)
        _require(len(low_high) == 2 and 0 < low_high[0] <= low_high[1], f"segmentation.{key}", "must be [low, high] with 0 < low <= high", low_high)
    _require(s.crop_scale[1] <= 1, "segmentation.crop_scale", "the area fraction cannot exceed 1", s.crop_scale)
    for key, side in (("frame_short_side", s.frame_short_side), ("probe.frame_short_side", s.probe.frame_short_side)):
        _require(side is None or side >= config.model.patch_size, f"segmentation.{key}", f"must be null or >= model.patch_size ({config.model.patch_size})", side)
    for key in ("topk", "n_context", "temperature"):
        _require(getattr(s.probe, key) > 0, f"segmentation.probe.{key}", "must be positive", getattr(s.probe, key))
    _require(s.probe.neighbourhood >= 0, "segmentation.probe.neighbourhood", "must be >= 0", s.probe.neighbourhood)
    _require(s.precision in PRECISIONS, "segmentation.precision", f"must be one of {list(PRECISIONS)}", s.precision)


def _validate_external_encoders(config: Config) -> None:
    """Names usable as folder names, a known format, a label for the table; the DAG files their
    rows under runs/pretrain/external/<name>, so no data source may be called "external"."""
    for name, encoder in config.external_encoders.items():
        key = f"external_encoders.{name}"
        _require(name.replace("_", "").replace("-", "").isalnum(), key, "names are letters, digits, - and _", name)
        _require(encoder.format in EXTERNAL_FORMATS, f"{key}.format", f"must be one of {list(EXTERNAL_FORMATS)}",
                 encoder.format)
        _require(bool(encoder.label.strip()), f"{key}.label", "must name the row for the tables", encoder.label)
        _require(bool(encoder.path.strip()), f"{key}.path", "must name the checkpoint file", encoder.path)
    if config.external_encoders:
        _require("external" not in config.data.sources, "data.sources.external",
                 "the name 'external' is taken by external_encoders' rows", "external")


def check_data_paths(config: Config, root: str | Path = ".") -> None:
    """Every data source exists on disk (or is the demo tree the DAG builds); run before submitting jobs."""
    for name, source in config.data.sources.items():
        if source.videos == DEMO_VIDEOS:
            continue
        path = Path(root) / source.videos
        if not path.exists():
            raise ConfigError(f"data.sources.{name}.videos: {source.videos} does not exist "
                              "(a video tree root or a CSV list of videos)")
    # The demo benchmark (both layouts) is built by the DAG, so it need not exist yet.
    for prefix, section in (("tracking", config.tracking), ("segmentation", config.segmentation)):
        for name in {*section.train, *section.evaluate}:
            bench = section.benchmarks[name]
            if bench.root == DEMO_TRACKING_BENCHMARK or bench.root.startswith(DEMO_TRACKING_BENCHMARK + "/"):
                continue
            if not (Path(root) / bench.root).exists():
                raise ConfigError(f"{prefix}.benchmarks.{name}.root: {bench.root} does not exist (a {bench.format} benchmark folder)")
    for name, encoder in config.external_encoders.items():
        if not (Path(root) / encoder.path).is_file():
            raise ConfigError(f"external_encoders.{name}.path: {encoder.path} is not a file (a {encoder.format} checkpoint)")


