"""Bad input, faults and interruptions: hostile names, failed videos, mixed-up runs, broken
checkpoints and signals each end in a clear message, and nothing already done is lost."""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dropmae.config import ConfigError, config_from_dict, json_schema, load_config
from dropmae.workflow.dvc_stage import fill_stage_arguments, stage_item
from workflow_support import REPO, copy_repository, run, tool_environment

HOSTILE_SOURCE = "x;touch PWNED;echo"


# ----------------------------------------------------------------------------- names and values
@pytest.mark.parametrize("section", ["data.sources", "tracking.benchmarks", "segmentation.benchmarks"])
def test_mapping_names_outside_the_pattern_are_rejected_naming_the_key(section):
    top, key = section.split(".")
    entry = {"videos": "v"} if top == "data" else {"format": "got10k", "root": "r"}
    with pytest.raises(ConfigError, match=rf"{section}\.x;touch PWNED;echo: names are letters"):
        config_from_dict({top: {key: {HOSTILE_SOURCE: entry}}})
    with pytest.raises(ConfigError, match="names are letters"):
        config_from_dict({top: {key: {"-v": entry}}})  # would read as an option


def test_schema_carries_the_name_pattern():
    sources = json_schema()["properties"]["data"]["properties"]["sources"]
    assert sources["propertyNames"]["pattern"] == r"^[A-Za-z0-9_][A-Za-z0-9_-]*$"
    written = json.loads((REPO / "rules/schemas/params.schema.json").read_text())
    assert written == json_schema(), "regenerate rules/schemas/params.schema.json with `dropmae schema`"


@pytest.mark.parametrize("key", ["pretrain.blr", "pretrain.weight_decay", "pretrain.min_lr"])
@pytest.mark.parametrize("value", [math.inf, math.nan])
def test_non_finite_numbers_are_rejected_naming_the_key(key, value):
    section, name = key.split(".")
    with pytest.raises(ConfigError, match=rf"{key}: must be a finite number"):
        config_from_dict({section: {name: value}})


def test_yaml_inf_in_a_file_is_rejected(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("data:\n  sources:\n    k400: {videos: v}\npretrain:\n  blr: .inf\n")
    with pytest.raises(ConfigError, match=r"pretrain.blr: must be a finite number, got inf"):
        load_config(path)


def test_empty_sources_and_empty_files_say_what_is_missing(tmp_path):
    empty = tmp_path / "params.yaml"
    empty.write_text("# nothing yet\n")
    with pytest.raises(ConfigError, match=rf"config file {empty} is empty"):
        load_config(empty)
    no_sources = tmp_path / "no_sources.yaml"
    no_sources.write_text("data:\n  sources: {}\n")
    with pytest.raises(ConfigError, match="data.sources: is empty; name at least one video source"):
        load_config(no_sources)


# ----------------------------------------------------------------------------- DVC stages
def _two_source_config():
    return config_from_dict({"data": {"sources": {"k400": {"videos": "a"}, "my-clips": {"videos": "b"}}},
                             "pretrain": {"methods": ["twinmae", "dropmae"], "epochs": [400, 800]}})


def test_a_dvc_stage_name_gives_the_stage_its_item():
    config = _two_source_config()
    assert stage_item(config, "extract_frames@my-clips") == {"source": "my-clips"}
    assert stage_item(config, "pretrain@my-clips-dropmae-800") == {"source": "my-clips", "method": "dropmae",
                                                                   "epochs": 800}
    assert stage_item(config, "table_pretraining") is None
    with pytest.raises(ConfigError, match="pretrain@k400-dropmae-1600.*no item of params.yaml"):
        stage_item(config, "pretrain@k400-dropmae-1600")

    args = argparse.Namespace(stage="finetune-tracker", tracker=None)
    fill_stage_arguments(args, config, {"DVC_STAGE": "finetune_tracker@k400-twinmae-400"})
    assert args.tracker == "k400/twinmae_ep400"
    args = argparse.Namespace(stage="finetune-tracker", tracker=None)
    fill_stage_arguments(args, config, {"DVC_STAGE": "finetune_tracker_random_init@my-clips"})
    assert args.tracker == "my-clips/random_init"
    args = argparse.Namespace(stage="pretrain", source="k400", method=None, epochs=None)  # given ones are kept
    fill_stage_arguments(args, config, {"DVC_STAGE": "pretrain@my-clips-dropmae-800"})
    assert (args.source, args.method, args.epochs) == ("k400", "dropmae", 800)
    with pytest.raises(ConfigError, match="evaluate_tracker_scratch@demo"):  # no tracking.evaluate configured
        fill_stage_arguments(argparse.Namespace(tracker="scratch", benchmark=None), config,
                             {"DVC_STAGE": "evaluate_tracker_scratch@demo"})


@pytest.mark.slow
def test_dvc_repro_rejects_a_hostile_source_name_before_any_shell_runs_it(tmp_path):
    """The source name reaches no command line: the stage's own validation stops it (exit 2,
    naming the key) and the `touch` inside the name never runs."""
    repo = copy_repository(tmp_path / "repo")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["sources"] = {HOSTILE_SOURCE: {"videos": "videos"}}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (repo / "videos").mkdir()
    run(["git", "init", "-q"], repo)
    run(["dvc", "init", "-q"], repo)
    repro = run(["dvc", "repro", "extract_frames"], repo, timeout=300, check=False)
    assert repro.returncode != 0
    assert not (repo / "PWNED").exists(), "the shell ran the command inside the source name"
    output = repro.stdout + repro.stderr
    assert "configuration error: data.sources.x;touch PWNED;echo: names are letters" in output, output[-3000:]
