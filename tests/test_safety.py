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
from conftest import write_mp4
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


# ----------------------------------------------------------------------------- extraction
def _records(out_dir: Path) -> dict[str, dict]:
    return {record["video_id"]: record for record in
            (json.loads(path.read_text()) for path in sorted((out_dir / ".status").rglob("*.json")))}


def test_content_verdicts_are_final_and_other_failures_are_retried(tmp_path, bad_videos, real_frames):
    from dropmae.data.extract import ExtractionSettings, extract_frames
    from dropmae.data.video_index import VideoEntry

    entries = [VideoEntry(video_id=kind, path=path, label="") for kind, path in bad_videos.items()]
    settings = ExtractionSettings(short_side=32, workers=1, max_bad_fraction=1.0, val_fraction=0.0)
    first = extract_frames(entries, tmp_path, settings, progress=False).set_index("video_id")["reason"]
    stamps = {path.name: path.stat().st_mtime_ns for path in (tmp_path / ".status").iterdir()}
    # The cause outside the video is fixed: the "unreadable" path is now a real clip.
    bad_videos["unreadable"].rmdir()
    write_mp4(bad_videos["unreadable"], real_frames)
    try:
        second = extract_frames(entries, tmp_path, settings, progress=False).set_index("video_id")
    finally:
        bad_videos["unreadable"].unlink()
        bad_videos["unreadable"].mkdir()
    assert first["unreadable"].startswith("unreadable")
    assert second.loc["unreadable", "status"] == "ok"  # retried once the cause was gone
    for kind in ("missing", "zero_byte", "not_a_video", "truncated", "truncated_indexed", "corrupt", "single_frame"):
        assert second.loc[kind, "reason"] == first[kind]
        assert (tmp_path / ".status" / f"{kind}.json").stat().st_mtime_ns == stamps[f"{kind}.json"], kind  # not redone


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")


def test_videos_that_hit_a_full_disk_are_retried_once_there_is_room(tmp_path, demo_tree):
    """A real full file system (a 96 KiB tmpfs): the videos that did not fit are recorded with the
    OSError and extracted by the next run, after the disk is enlarged."""
    from dropmae.data.extract import ExtractionError, ExtractionSettings, extract_frames

    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "96k")
    try:
        settings = ExtractionSettings(short_side=64, workers=1, max_bad_fraction=0.0, val_fraction=0.0)
        with pytest.raises(ExtractionError, match="No space left on device"):
            extract_frames(demo_tree, disk / "frames", settings, progress=False)
        first = _records(disk / "frames")
        full = sorted(video for video, record in first.items() if "No space left" in record["reason"])
        done = sorted(video for video, record in first.items() if record["status"] == "ok")
        assert full and done, first
        stamps = {video: (disk / "frames/.status" / f"{video}.json").stat().st_mtime_ns for video in done}
        subprocess.run(["mount", "-o", "remount,size=16m", str(disk)], check=True)
        manifest = extract_frames(demo_tree, disk / "frames", settings, progress=False)
        assert (manifest["status"] == "ok").all()
        for video in done:  # nothing done is redone
            assert (disk / "frames/.status" / f"{video}.json").stat().st_mtime_ns == stamps[video]
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_a_video_over_its_time_limit_is_recorded_as_timeout_and_the_run_goes_on(tmp_path, demo_tree):
    from dropmae.data.extract import ExtractionSettings, extract_frames

    hurried = ExtractionSettings(short_side=64, workers=2, max_bad_fraction=1.0, val_fraction=0.0,
                                 video_timeout_s=0.001)  # no video decodes in a millisecond
    manifest = extract_frames(demo_tree, tmp_path, hurried, progress=False)
    assert len(manifest) == 6 and (manifest["status"] == "failed").all()
    assert manifest["reason"].str.startswith("timeout: decoding took longer than video_timeout_s=0.001 s").all()
    assert not (tmp_path / ".tmp").exists()  # the killed workers' half-written frames are gone
    again = extract_frames(demo_tree, tmp_path, ExtractionSettings(short_side=64, workers=2, val_fraction=0.0),
                           progress=False)
    assert (again["status"] == "ok").all()  # a timeout is retried by the next run
