"""Typed, validated configuration whose sections mirror params.yaml.

Every section is a frozen dataclass. Loading is strict: an unknown key, a value of the
wrong type or a value out of range raises ConfigError naming the dotted key, so a bad
params.yaml stops a run before any expensive work starts.

Read in this order: sections.py (the dataclasses and the values keys allow), validation.py
(parsing into them and the range checks), loading.py (YAML files, overlays, overrides and
presets merged, then load_config), schema.py (the JSON Schema), cell.py (one pretraining cell).
Every public name is importable from dropmae.config itself.
"""

from dropmae.config.cell import Cell, resolve_run
from dropmae.config.loading import (
    REPLACED_WHOLE,
    apply_presets,
    apply_whole_replacements,
    config_from_dict,
    config_to_dict,
    deep_merge,
    load_config,
    parse_override,
    read_config_file,
)
from dropmae.config.schema import json_schema
from dropmae.config.sections import (
    DEMO_TRACKING_BENCHMARK,
    DEMO_VIDEOS,
    EXECUTORS,
    METHODS,
    NAME_PATTERN,
    PAIR_INPUTS,
    PRECISIONS,
    PRETRAIN_OPERATIONAL_KEYS,
    SEGMENTATION_FORMATS,
    STUDY_FIXED_PRETRAIN_KEYS,
    TRACKING_FORMATS,
    AnalysisConfig,
    AttentionStudyConfig,
    Config,
    ConfigError,
    DataConfig,
    ExternalEncoderConfig,
    ExtractionConfig,
    JobResources,
    LauncherConfig,
    ModelConfig,
    PretrainConfig,
    PretrainLaunchConfig,
    PretrainOverrides,
    ProbeConfig,
    SegmentationBenchmark,
    SegmentationConfig,
    SegmentationEvalSet,
    SegmentationTrainSet,
    SourceConfig,
    TrackingBenchmark,
    TrackingConfig,
    TrackingEvalSet,
    TrackingTrainSet,
    study_epochs,
    study_pretrain,
    tasks_per_node_of,
)
from dropmae.config.validation import build_section, check_data_paths, validate

__all__ = [
    "DEMO_TRACKING_BENCHMARK", "DEMO_VIDEOS", "EXECUTORS", "METHODS", "NAME_PATTERN", "PAIR_INPUTS", "PRECISIONS", "PRETRAIN_OPERATIONAL_KEYS", "REPLACED_WHOLE",
    "SEGMENTATION_FORMATS", "STUDY_FIXED_PRETRAIN_KEYS", "TRACKING_FORMATS",
    "AnalysisConfig", "AttentionStudyConfig", "Cell", "Config", "ConfigError", "DataConfig", "ExtractionConfig",
    "ExternalEncoderConfig", "JobResources", "LauncherConfig", "ModelConfig", "PretrainConfig", "PretrainLaunchConfig", "PretrainOverrides",
    "ProbeConfig", "SegmentationBenchmark", "SegmentationConfig", "SegmentationEvalSet", "SegmentationTrainSet",
    "SourceConfig", "TrackingBenchmark", "TrackingConfig", "TrackingEvalSet", "TrackingTrainSet",
    "apply_presets", "apply_whole_replacements", "build_section", "check_data_paths", "config_from_dict",
    "config_to_dict", "deep_merge", "json_schema", "load_config", "parse_override", "read_config_file", "resolve_run",
    "study_epochs", "study_pretrain", "tasks_per_node_of", "validate",
]
