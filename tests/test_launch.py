"""Pretraining through submitit's local executor: the same job code as on SLURM, including the
time-limit signal that checkpoints and requeues a job, and errors that reach the waiter."""

from __future__ import annotations

import os
import signal
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from dropmae.config import Cell, ConfigError, config_to_dict
from dropmae.engine.checkpoint import LAST_CHECKPOINT, load_checkpoint
from dropmae.engine.pretrain import pretrain
from dropmae.launch.submitit_launch import (
    LaunchError,
    PretrainJob,
    _stop_local_job,
    build_executor,
    launch_pretraining,
    wait_for_result,
)
from workflow_support import run_log_events, wait_for_step

pytestmark = pytest.mark.slow

LOCAL = {"executor": "local", "pretrain": {"partition": None, "nodes": 1, "gpus_per_node": 0, "cpus_per_task": 1,
                                            "mem_gb_per_node": 2, "time_min": 20, "signal_delay_s": 5}}


def test_time_limit_signal_checkpoints_requeues_and_resumes_exactly(frames_root, tmp_path):
    config = tiny_config(launcher=LOCAL, epochs=[40])  # 3 steps per epoch, 120 in all
    run = Cell("dropmae", 40)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the job does (launcher.pretrain.cpus_per_task)
    try:
        straight = pretrain(config, run, frames_root, tmp_path / "straight", progress=False)
    finally:
        torch.set_num_threads(threads)

    run_dir = tmp_path / "requeued"
    executor = build_executor(config.launcher, tmp_path / "submitit", name="requeue-test")
    job = executor.submit(PretrainJob(config_to_dict(config), asdict(run), str(frames_root), str(run_dir)))
    wait_for_step(run_dir, 10)
    # The signal SLURM sends a job's tasks before its time limit (submitit asks for SIGUSR2).
    # Local jobs are a controller process with the task as its child.
    controller = job._process.pid
    (task,) = Path(f"/proc/{controller}/task/{controller}/children").read_text().split()
    os.kill(int(task), signal.SIGUSR2)
    result = wait_for_result(job, "local", poll_s=0.2)

    assert result["status"] == "completed" and result["global_step"] == straight.global_step
    interruptions = [e for e in run_log_events(run_dir) if e["event"] == "interrupted"]
    assert [e["reason"] for e in interruptions] == ["SIGUSR2"]
    assert 10 <= interruptions[0]["global_step"] < straight.global_step
    resumed, uninterrupted = load_checkpoint(run_dir / LAST_CHECKPOINT), load_checkpoint(straight.checkpoint)
    for key, value in uninterrupted["model"].items():
        assert torch.equal(resumed["model"][key], value), key


def test_a_failing_job_raises_its_own_error_in_the_waiter(tmp_path):
    config = tiny_config(launcher=LOCAL)
    with pytest.raises(LaunchError, match="manifest"):
        launch_pretraining(config, Cell("dropmae", 2, "demo"), tmp_path / "no-frames-here", tmp_path / "run",
                           report=lambda message: None, poll_s=0.2)


def test_stopping_a_local_job_waits_for_its_checkpoint_beyond_submitits_one_second(tmp_path):
    """submitit's own cancel SIGKILLs a local task one second after its SIGINT; a trainer that needs
    longer to finish its step and checkpoint must still get to write it."""
    import time

    marker = tmp_path / "checkpoint-written"
    started = tmp_path / "started"

    def slow_to_checkpoint() -> str:
        interrupted = []
        signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
        started.touch()
        while not interrupted:
            time.sleep(0.05)
        time.sleep(3.0)  # the step in flight and the checkpoint write
        marker.write_text("ok")
        return "stopped"

    config = tiny_config(launcher=LOCAL)
    job = build_executor(config.launcher, tmp_path / "submitit", name="slow").submit(slow_to_checkpoint)
    deadline = time.time() + 120
    while not started.exists():
        assert time.time() < deadline and job.get_info()["jobState"] == "RUNNING", job.stderr()
        time.sleep(0.1)
    messages = []
    _stop_local_job(job, messages.append, grace_s=60)
    assert marker.read_text() == "ok", messages
    assert job.get_info()["jobState"] != "RUNNING"
    assert any("finishes the step" in message for message in messages)


def test_the_local_executor_runs_one_node():
    config = tiny_config(launcher={**LOCAL, "pretrain": {**LOCAL["pretrain"], "nodes": 2}})
    with pytest.raises(ConfigError, match="launcher.pretrain.nodes"):
        build_executor(config.launcher, Path("unused"), name="x")


def test_a_two_task_job_trains_with_ddp_ranks_from_submitit(frames_root, tmp_path):
    launcher = {**LOCAL, "pretrain": {**LOCAL["pretrain"], "tasks_per_node": 2}}
    config = tiny_config(launcher=launcher, epochs=[2])  # 6 videos over 2 ranks, batch 2: 1 step per epoch
    result = launch_pretraining(config, Cell("dropmae", 2, "demo"), frames_root, tmp_path / "run",
                                report=lambda message: None, poll_s=0.2)
    assert result["status"] == "completed" and result["global_step"] == 2
    (start,) = [e for e in run_log_events(tmp_path / "run") if e["event"] == "start"]
    assert start["world_size"] == 2 and start["effective_batch"] == 4
    assert len(load_checkpoint(tmp_path / "run" / LAST_CHECKPOINT)["rng"]) == 2  # both ranks' RNG state
