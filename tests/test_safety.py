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


@pytest.mark.slow
@pytest.mark.parametrize("text, message", [
    ("data:\n  sources: {k400: {videos: v}\n", 'config file params.yaml is not valid YAML: while parsing a flow mapping\n'
                                              '  in "params.yaml", line 2'),
    ("", "config file params.yaml is empty"),
    ("data:\n  sources: {}\n", "data.sources is empty; name at least one video source"),
])
def test_snakemake_names_the_file_and_what_is_missing(tmp_path, text, message):
    from workflow_support import snakemake

    repo = copy_repository(tmp_path / "repo")
    (repo / "params.yaml").write_text(text)
    done = snakemake(repo, "-n", check=False)
    assert done.returncode != 0 and message in done.stdout + done.stderr, done.stderr[-2000:]
    assert "StopIteration" not in done.stderr


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


# ----------------------------------------------------------------------------- pretraining runs
def _cli(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "dropmae.cli", *arguments]


@pytest.mark.slow
def test_a_checkpoint_of_another_run_is_not_resumed(frames_root, tmp_path):
    from conftest import tiny_config
    from dropmae.config import Cell
    from dropmae.engine.checkpoint import LAST_CHECKPOINT, load_checkpoint
    from dropmae.engine.pretrain import pretrain

    run_dir = tmp_path / "run"
    pretrain(tiny_config(), Cell("dropmae", 2), frames_root, run_dir, stop_after_steps=2, progress=False)
    written = (run_dir / LAST_CHECKPOINT).read_bytes()
    with pytest.raises(ConfigError, match=r"belongs to another run; it differs in method \(checkpoint 'dropmae', "
                       r"this run 'twinmae'\); pretrain.mask_ratio \(checkpoint 0.75, this run 0.9\)"):
        pretrain(tiny_config(mask_ratio=0.9), Cell("twinmae", 2), frames_root, run_dir, progress=False)
    with pytest.raises(ConfigError, match=r"epochs \(checkpoint 2, this run 1\)"):  # fewer epochs than written
        pretrain(tiny_config(), Cell("dropmae", 1), frames_root, run_dir, progress=False)
    assert (run_dir / LAST_CHECKPOINT).read_bytes() == written  # left as it was
    # Operational keys (workers, logging, checkpoint cadence) do not make it another run.
    outcome = pretrain(tiny_config(log_every_steps=5, checkpoint_every_steps=1), Cell("dropmae", 2), frames_root,
                       run_dir, progress=False)
    assert outcome.status == "completed" and load_checkpoint(run_dir / LAST_CHECKPOINT)["epoch"] == 2


def _write_tiny_params(path: Path, epochs: int) -> Path:
    from conftest import TINY

    values = json.loads(json.dumps(TINY))
    values["pretrain"]["epochs"] = [epochs]
    path.write_text(yaml.safe_dump(values))
    return path


def _wait_for_a_step(process: subprocess.Popen, run_dir: Path, timeout: float = 120) -> None:
    import time

    log = run_dir / "log.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if log.is_file() and '"event": "step"' in log.read_text():
            return
        if process.poll() is not None:
            pytest.fail(f"trainer exited early: {process.stdout.read()}")
        time.sleep(0.2)
    pytest.fail("no training step logged")


@pytest.mark.slow
def test_a_second_trainer_on_the_same_run_is_refused_and_ctrl_c_checkpoints(frames_root, tmp_path):
    """Two real trainer processes: the second stops at once naming the first; Ctrl-C (SIGINT) then
    stops the first with a checkpoint and exit code 75, and the same command resumes it."""
    import signal

    from dropmae.engine.checkpoint import LAST_CHECKPOINT, load_checkpoint

    params = _write_tiny_params(tmp_path / "params.yaml", epochs=500)
    run_dir = tmp_path / "run"
    command = _cli("pretrain", "--config", str(params), "--data", str(frames_root), "--output", str(run_dir), "--quiet")
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=tool_environment())
    try:
        _wait_for_a_step(first, run_dir)
        second = subprocess.run(command, capture_output=True, text=True, env=tool_environment(), timeout=120)
        assert second.returncode == 1
        assert f"another trainer (process {first.pid}) is writing {run_dir}" in second.stderr
        assert "Traceback" not in second.stderr
        first.send_signal(signal.SIGINT)
        output, _ = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 75, output
    assert "interrupted (SIGINT) after global step" in output and "rerun the same command to resume" in output
    step = load_checkpoint(run_dir / LAST_CHECKPOINT)["global_step"]
    assert step > 0
    events = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "interrupted" and events[-1]["reason"] == "SIGINT"


@pytest.mark.slow
def test_unreadable_checkpoints_and_stale_temporaries(frames_root, tmp_path):
    import torch

    from dropmae.engine.checkpoint import LAST_CHECKPOINT, CheckpointError, load_checkpoint

    params = _write_tiny_params(tmp_path / "params.yaml", epochs=1)
    run_dir = tmp_path / "run"
    command = _cli("pretrain", "--config", str(params), "--data", str(frames_root), "--output", str(run_dir), "--quiet")
    stale = run_dir / ".checkpoint-last.pth.k2j4x9.tmp"  # what kill -9 during a save leaves
    run_dir.mkdir()
    stale.write_bytes(b"half a checkpoint")
    assert subprocess.run(command, capture_output=True, text=True, env=tool_environment()).returncode == 0
    assert not stale.exists()
    last = run_dir / LAST_CHECKPOINT
    whole = last.read_bytes()

    last.write_bytes(whole[: len(whole) // 2])  # truncated (a copy cut short, a full disk elsewhere)
    with pytest.raises(CheckpointError, match=rf"checkpoint {last} is unreadable \(truncated or not a checkpoint"):
        load_checkpoint(last)
    done = subprocess.run(command, capture_output=True, text=True, env=tool_environment())
    assert done.returncode == 1
    assert f"checkpoint {last} is unreadable" in done.stderr and "Move it aside" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1

    torch.save({"model": argparse.Namespace(x=1)}, last)  # a pickle of an arbitrary object
    done = subprocess.run(command, capture_output=True, text=True, env=tool_environment())
    assert done.returncode == 1 and f"checkpoint {last} is unreadable" in done.stderr
    assert "weights_only=False" not in done.stderr  # never advise loading arbitrary code


def test_a_full_disk_during_a_checkpoint_write_is_named_and_keeps_the_last_checkpoint(tmp_path):
    """A real full file system (a 256 KiB tmpfs) under torch.save."""
    import torch

    from dropmae.engine.checkpoint import DiskFullError, atomic_torch_save, load_checkpoint

    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "256k")
    try:
        path = disk / "checkpoint-last.pth"
        atomic_torch_save({"model": torch.zeros(1000)}, path)  # 4 kB: fits
        with pytest.raises(DiskFullError, match=rf"no space left on the device while writing {path}"):
            atomic_torch_save({"model": torch.zeros(200_000)}, path)  # 800 kB: does not
        assert load_checkpoint(path)["model"].shape == (1000,)  # the previous checkpoint is intact
        assert [p.name for p in disk.iterdir()] == [path.name]  # no temporary left
    finally:
        subprocess.run(["umount", str(disk)], check=False)


# ----------------------------------------------------------------------------- command line and files
@pytest.mark.parametrize("arguments, code, message", [
    (["config", "--config", "missing.yaml"], 2, "configuration error: config file missing.yaml does not exist"),
    (["config", "--config", "params.yaml", "--set", "pretrain.epochs=[1,"], 2,
     "configuration error: override 'pretrain.epochs=[1,': the value is not valid YAML"),
    (["config", "--config", "params.yaml", "--set", "pretrain.blr=.inf"], 2, "pretrain.blr: must be a finite number"),
    pytest.param(["extract-frames", "--config", "params.yaml", "--source", "no-such-videos", "--output", "out"], 1,
                 "error: ", marks=pytest.mark.slow),
    pytest.param(["reconstruct", "--checkpoint", "none.pth", "--data", "d", "--output", "o.png"], 1,
                 "error: FileNotFoundError: checkpoint none.pth does not exist", marks=pytest.mark.slow),
])
def test_expected_errors_are_one_message_without_traceback(tmp_path, arguments, code, message):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    done = subprocess.run(_cli(*arguments), cwd=tmp_path, capture_output=True, text=True, env=tool_environment())
    assert done.returncode == code, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
    debug = subprocess.run(_cli("--debug", *arguments), cwd=tmp_path, capture_output=True, text=True,
                           env=tool_environment())
    assert "Traceback" in debug.stderr


def test_an_extraction_over_its_bad_video_limit_is_one_message(tmp_path, bad_videos):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    done = subprocess.run(_cli("extract-frames", "--config", "params.yaml", "--source", str(bad_videos["zero_byte"].parent),
                               "--output", "out", "--quiet"), cwd=tmp_path, capture_output=True, text=True,
                          env=tool_environment())
    assert done.returncode == 1
    assert "videos failed" in done.stderr and "max_bad_fraction" in done.stderr and "Traceback" not in done.stderr


def test_outputs_honour_the_umask(tmp_path, demo_tree):
    import os

    import torch

    from dropmae.engine.checkpoint import atomic_torch_save

    previous = os.umask(0o002)  # a team's shared folder: group-writable
    try:
        atomic_torch_save({"x": torch.zeros(1)}, tmp_path / "checkpoint-last.pth")
    finally:
        os.umask(previous)
    assert (tmp_path / "checkpoint-last.pth").stat().st_mode & 0o777 == 0o664
    # A fresh process: extraction's workers take the umask their process started with.
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    subprocess.run(_cli("extract-frames", "--config", "params.yaml", "--set", "data.extraction.workers=1",
                        "--set", "data.extraction.short_side=32", "--source", str(demo_tree), "--output", "frames",
                        "--quiet"), cwd=tmp_path, env=tool_environment(), check=True, preexec_fn=lambda: os.umask(0o002))
    video = next(next((tmp_path / "frames/frames").iterdir()).iterdir())
    assert video.is_dir() and video.stat().st_mode & 0o777 == 0o775
    assert next(video.iterdir()).stat().st_mode & 0o777 == 0o664


@pytest.mark.slow
def test_sigterm_to_the_waiting_stage_cancels_its_local_job(frames_root, tmp_path):
    """`dropmae stage pretrain` waits on a submitit job; SIGTERM to it (kill, a CI timeout) must end
    the job too (checkpoint, then stop) instead of orphaning it beside the rerun."""
    import fcntl
    import signal
    import time

    from conftest import TINY
    from test_launch import LOCAL

    values = json.loads(json.dumps(TINY))
    values["pretrain"]["epochs"] = [500]
    values["launcher"] = LOCAL
    values["data"] = {"sources": {"demo": {"videos": str(frames_root)}}, "frames_root": "frames"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(values))
    (tmp_path / "frames").mkdir()
    (tmp_path / "frames" / "demo").symlink_to(frames_root, target_is_directory=True)
    run_dir = tmp_path / "runs/pretrain/demo/dropmae_ep500"
    waiter = subprocess.Popen(_cli("stage", "pretrain", "--source", "demo", "--method", "dropmae", "--epochs", "500"),
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=tool_environment())
    try:
        _wait_for_a_step(waiter, run_dir, timeout=240)
        waiter.send_signal(signal.SIGTERM)
        output, _ = waiter.communicate(timeout=300)  # the job ends its step first; slow on a loaded machine
    finally:
        waiter.kill()
    assert waiter.returncode == 143, output
    assert "interrupted; rerun the same command to resume" in output
    deadline = time.time() + 120
    with open(run_dir / ".lock") as lock:  # the job holds it while it trains
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                assert time.time() < deadline, "the local job kept training after its waiter was terminated"
                time.sleep(0.5)
    events = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "interrupted" and events[-1]["reason"] == "SIGINT"  # the waiter Ctrl-Cs its local job
