"""Reading params.yaml and its overlays: YAML files merged in order, ``key=value`` overrides,
the task presets under the keys written beside them, then parsing and validation."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from dropmae.config.sections import Config, ConfigError
from dropmae.config.validation import build_section, validate
from dropmae.presets import SEGMENTATION_PRESETS, TRACKING_PRESETS


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


def config_from_dict(values: dict) -> Config:
    if not isinstance(values, dict):
        raise ConfigError(f"the configuration must be a mapping of sections, got {type(values).__name__}")
    return validate(build_section(Config, apply_presets(values)))


def config_to_dict(config: Config) -> dict:
    """Plain data (for checkpoints and logs)."""
    return dataclasses.asdict(config)


# Mappings an overlay replaces whole instead of key by key: the demo's sources must not keep
# the paper's K400 source of params.yaml, nor an overlay's study the settings it does not list.
REPLACED_WHOLE = (("data", "sources"), ("tracking", "benchmarks"), ("tracking", "train"), ("tracking", "evaluate"),
                  ("segmentation", "benchmarks"), ("segmentation", "train"), ("segmentation", "evaluate"),
                  ("attention_study", "settings"), ("external_encoders",))


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
    try:
        value: Any = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        raise ConfigError(f"override {assignment!r}: the value is not valid YAML "
                          f"({str(error).splitlines()[0]}); e.g. pretrain.epochs=[400,800]") from None
    for part in reversed(parts):
        value = {part: value}
    return value


def read_config_file(path: str | Path) -> dict:
    """One YAML config file as a mapping; a missing, unreadable, empty or malformed file is a
    ConfigError naming it (Snakefile calls this before Snakemake parses params.yaml itself)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        with path.open() as handle:  # a stream, so YAML's error marks name the file
            loaded = yaml.safe_load(handle)
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from error
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"config file {path} cannot be read: {error}") from error
    if loaded is None:  # an empty file would silently mean the defaults, with no data sources
        raise ConfigError(f"config file {path} is empty; it must hold a mapping of sections "
                          "(params.yaml: data.sources and the sections to change)")
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections")
    return loaded


def load_config(paths: list[str | Path] | str | Path, overrides: list[str] = ()) -> Config:
    """Read YAML files (later ones overlay earlier ones), apply ``key=value`` overrides, validate."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    values: dict = {}
    for path in paths:
        values = deep_merge(values, read_config_file(path))
    for assignment in overrides:
        values = deep_merge(values, parse_override(assignment))
    if isinstance(values.get("data"), dict) and values["data"].get("sources") == {}:
        raise ConfigError("data.sources: is empty; name at least one video source, e.g. "
                          "data.sources.k400.videos: /path/to/kinetics400/train")
    return config_from_dict(values)
