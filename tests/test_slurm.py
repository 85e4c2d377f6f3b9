"""On a real one-node SLURM cluster on localhost: the DAG through the slurm profile, and a
pretraining job that is requeued mid-run and ends with the weights of an uninterrupted run."""

from __future__ import annotations

import subprocess
from dataclasses import asdict
import json

import pytest
import torch
import yaml

from conftest import tiny_config
from dropmae.config import Cell, config_to_dict
from dropmae.engine.checkpoint import LAST_CHECKPOINT, load_checkpoint
from dropmae.engine.pretrain import pretrain
from dropmae.launch.submitit_launch import LaunchError, PretrainJob, build_executor, slurm_state, wait_for_result
from workflow_support import (
    TINY_OVERLAY,
    copy_repository,
    run_log_events,
    seed_demo_videos,
    snakemake,
    wait_for_step,
    write_yaml,
)

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

SLURM = {"executor": "slurm", "pretrain": {"partition": "debug", "nodes": 1, "gpus_per_node": 0, "cpus_per_task": 1,
                                            "mem_gb_per_node": 1, "time_min": 10, "signal_delay_s": 30}}


def _straight_run(config, run, frames_root, output) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the job does (launcher.pretrain.cpus_per_task)
    try:
        return load_checkpoint(pretrain(config, run, frames_root, output, progress=False).checkpoint)
    finally:
        torch.set_num_threads(threads)


def test_a_requeued_job_resumes_from_its_checkpoint_and_ends_with_the_same_weights(slurm_cluster, frames_root,
                                                                                   tmp_path):
    config = tiny_config(launcher=SLURM, epochs=[150])  # 3 steps per epoch, 450 in all: a few seconds
    run = Cell("dropmae", 150)
    straight = _straight_run(config, run, frames_root, tmp_path / "straight")

    run_dir = tmp_path / "requeued"
    executor = build_executor(config.launcher, tmp_path / "submitit", name="requeue-test")
    job = executor.submit(PretrainJob(config_to_dict(config), asdict(run), str(frames_root), str(run_dir)))
    wait_for_step(run_dir, 20)
    subprocess.run(["scontrol", "requeue", str(job.job_id)], check=True)
    result = wait_for_result(job, "slurm", poll_s=1.0, report=lambda message: None)

    assert result["status"] == "completed" and result["global_step"] == straight["global_step"]
    interruptions = [e for e in run_log_events(run_dir) if e["event"] == "interrupted"]
    assert [e["reason"] for e in interruptions] == ["SIGTERM"]
    assert 20 <= interruptions[0]["global_step"] < straight["global_step"]
    shown = subprocess.run(["scontrol", "show", "job", str(job.job_id)], capture_output=True, text=True).stdout
    assert "Restarts=1" in shown
    resumed = load_checkpoint(run_dir / LAST_CHECKPOINT)
    for key, value in straight["model"].items():
        assert torch.equal(resumed["model"][key], value), key


def test_a_cancelled_job_fails_the_waiter_with_its_log(slurm_cluster, frames_root, tmp_path):
    config = tiny_config(launcher=SLURM, epochs=[150])
    executor = build_executor(config.launcher, tmp_path / "submitit", name="cancel-test")
    job = executor.submit(PretrainJob(config_to_dict(config), asdict(Cell("dropmae", 150)),
                                      str(frames_root), str(tmp_path / "run")))
    wait_for_step(tmp_path / "run", 5)
    subprocess.run(["scancel", str(job.job_id)], check=True)
    with pytest.raises(LaunchError, match="without a result"):
        wait_for_result(job, "slurm", poll_s=1.0, report=lambda message: None)
    assert slurm_state(job.job_id) == "CANCELLED"
    assert (tmp_path / "run" / LAST_CHECKPOINT).is_file()  # the work done so far is kept


def test_a_two_task_slurm_job_trains_with_ddp(slurm_cluster, frames_root, tmp_path):
    launcher = {**SLURM, "pretrain": {**SLURM["pretrain"], "tasks_per_node": 2}}
    config = tiny_config(launcher=launcher, epochs=[2])
    executor = build_executor(config.launcher, tmp_path / "submitit", name="ddp-test")
    job = executor.submit(PretrainJob(config_to_dict(config), asdict(Cell("dropmae", 2)), str(frames_root),
                                      str(tmp_path / "run")))
    result = wait_for_result(job, "slurm", poll_s=1.0, report=lambda message: None)
    assert result["status"] == "completed" and result["global_step"] == 2
    (start,) = [e for e in run_log_events(tmp_path / "run") if e["event"] == "start"]
    assert start["world_size"] == 2


def test_the_dag_runs_through_the_slurm_profile(slurm_cluster, demo_tree, tmp_path):
    if not slurm_cluster.fallback_linked:
        pytest.skip("Snakemake's jobs drop SLURM_CONF; this machine's own slurm.conf would be used")
    repo = copy_repository(tmp_path / "repo")
    seed_demo_videos(repo, demo_tree)
    overlay = yaml.safe_load(yaml.safe_dump(TINY_OVERLAY))
    overlay["launcher"]["executor"] = "slurm"
    for name in ("pretrain", "extract", "analyse"):
        overlay["launcher"][name]["partition"] = slurm_cluster.partition
    write_yaml(repo / "cluster.yaml", overlay)
    result = snakemake(repo, "--profile", "slurm", "results/table_datasources.csv", configfiles=["cluster.yaml"])
    output = result.stdout + result.stderr
    assert output.count("has been submitted with SLURM jobid") >= 2  # extract_frames and analyse
    summary = json.loads((repo / "runs/pretrain/demo/dropmae_ep1/run.json").read_text())
    assert summary["executor"] == "slurm" and summary["status"] == "completed"
    table = (repo / "results/table_datasources.csv").read_text().splitlines()
    assert len(table) == 2 and table[1].startswith("demo,dropmae,1,")
