"""The local SLURM cluster (fixture ``slurm_cluster``, tests/slurm_cluster.py): a real job runs to completion."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from slurm_cluster import LocalSlurmCluster, SlurmUnavailable


def wait_until(condition, timeout: float, poll: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(poll)
    return condition()


def test_sbatch_job_completes_and_node_is_idle_again(slurm_cluster, tmp_path):
    output = tmp_path / "job.out"
    job_id = slurm_cluster.sbatch("--partition=debug", "--ntasks=1", "--mem=10M", f"--output={output}",
                                  "--wrap", 'echo "hello from job $SLURM_JOB_ID"')

    assert slurm_cluster.wait_for_job(job_id, timeout=60) == "COMPLETED"  # polls squeue --states=all
    assert output.read_text().strip() == f"hello from job {job_id}"
    # Clients started without env= find the cluster through the SLURM_CONF the fixture put in os.environ.
    assert os.environ["SLURM_CONF"] == str(slurm_cluster.conf)

    def node_state() -> str:
        result = subprocess.run(["sinfo", "--noheader", "--format=%T"], check=False, capture_output=True, text=True)
        return result.stdout.strip()

    assert wait_until(lambda: node_state() == "idle", timeout=30), node_state()


def test_finished_job_is_in_accounting(slurm_cluster):
    if not slurm_cluster.accounting:
        pytest.skip("cluster runs without slurmdbd")
    job_id = slurm_cluster.sbatch("--output=/dev/null", "--wrap", "true")
    assert slurm_cluster.wait_for_job(job_id, timeout=60) == "COMPLETED"

    def sacct_state() -> str:  # the job's end reaches slurmdbd a moment after squeue shows it
        return slurm_cluster.run("sacct", "--noheader", "--allocations", "--parsable2", "--format=State",
                                 f"--jobs={job_id}", check=False).stdout.strip()

    assert wait_until(lambda: sacct_state() == "COMPLETED", timeout=30), sacct_state()


def test_start_refuses_without_root(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(SlurmUnavailable, match="not root"):
        LocalSlurmCluster().start()
