"""Helpers for tests that run the real Snakemake / DVC workflow in a scratch copy of the repository."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ANYWHERE = shutil.ignore_patterns("__pycache__", ".pytest_cache", "*.egg-info")
# Outputs and environments of the checkout the tests run from, at its top level only.
TOP_LEVEL = {".git", ".venv", ".snakemake", ".dvc", "dvc.lock", "data", "runs", "results", "logs", "demo-output"}


def _ignored(directory: str, names: list[str]) -> set[str]:
    ignored = set(ANYWHERE(directory, names))
    if Path(directory) == REPO:
        ignored |= TOP_LEVEL & set(names)
    return ignored

# The smallest DAG that still runs every stage: a micro model on 32x32 pairs, one epoch, one
# CPU task through submitit's local executor.
TINY_OVERLAY = {
    "data": {
        "sources": {"demo": {"videos": "data/demo-videos"}},
        "extraction": {"short_side": 48, "workers": 1, "val_fraction": 0.5},
    },
    "model": {"encoder": "micro", "img_size": 32, "patch_size": 8, "decoder_dim": 32, "decoder_depth": 1,
              "decoder_heads": 2},
    "pretrain": {"epochs": [1], "frame_gap": 8, "batch_size": 2, "num_workers": 0, "keep_epochs": [],
                 "checkpoint_every_steps": 0, "warmup_epochs": 0, "log_every_steps": 1},
    "analysis": {"heldout_pairs": 2, "batch_size": 2, "figure_pairs": 1},
    # No trackers here (TINY_TRACKING turns them on): empty training and evaluation sets.
    "tracking": {"preset": "demo_micro", "benchmarks": {}, "train": {}, "evaluate": {}},
    "segmentation": {"preset": "demo_micro", "benchmarks": {}, "train": {}, "evaluate": {}},
    "launcher": {
        "executor": "local",
        "pretrain": {"partition": None, "nodes": 1, "gpus_per_node": 0, "cpus_per_task": 1,
                     "mem_gb_per_node": 2, "time_min": 20},
        "extract": {"partition": None, "cpus": 1, "mem_gb": 1, "time_min": 10},
        "analyse": {"partition": None, "cpus": 1, "mem_gb": 1, "time_min": 10, "gpus": 0},
        "finetune": {"partition": None, "nodes": 1, "gpus_per_node": 0, "cpus_per_task": 1,
                     "mem_gb_per_node": 2, "time_min": 20},
        "evaluate": {"partition": None, "cpus": 1, "mem_gb": 1, "time_min": 10, "gpus": 0},
        "benchmark": {"partition": None, "cpus": 1, "mem_gb": 1, "time_min": 10, "gpus": 0},
    },
}

# TINY_OVERLAY plus trackers on the demo benchmark: one epoch of 16 pairs per tracker.
TINY_TRACKING = {
    "benchmarks": {"demo": {"format": "got10k", "root": "data/demo-benchmark/got10k"}},
    "train": {"demo": {"split": "train"}},
    "evaluate": {"demo": {"split": "val"}},
    "template_size": 16, "search_size": 32, "epochs": 1, "samples_per_epoch": 16, "batch_size": 8,
    "ce_locations": [1], "head_channels": 16,
}


# TINY_OVERLAY plus segmenters and the probe on the demo benchmark's DAVIS copy: one epoch of
# 16 pairs per segmenter, frames segmented at half their size, a small memory for the probe.
TINY_SEGMENTATION = {
    "benchmarks": {"demo": {"format": "davis2017", "root": "data/demo-benchmark/davis"}},
    "train": {"demo": {"split": "train"}},
    "evaluate": {"demo": {"split": "val"}},
    "image_size": 32, "decoder_channels": 16, "epochs": 1, "samples_per_epoch": 16, "batch_size": 8,
    "frame_short_side": 48,
    "probe": {"topk": 3, "n_context": 2, "neighbourhood": 2, "frame_short_side": 48},
}


def with_tracking(overlay: dict) -> dict:
    merged = json.loads(json.dumps(overlay))
    merged["tracking"].update(TINY_TRACKING)
    return merged


def with_segmentation(overlay: dict) -> dict:
    merged = json.loads(json.dumps(overlay))
    merged["segmentation"].update(TINY_SEGMENTATION)
    return merged


def tool_environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    env.pop("SNAKEMAKE_PROFILE", None)
    return env


def copy_repository(destination: Path) -> Path:
    """The workflow's files (not data, runs, results or environments) in a scratch folder."""
    shutil.copytree(REPO, destination, ignore=_ignored, symlinks=True)
    return destination


def seed_demo_videos(repo: Path, demo_tree: Path) -> None:
    """Put the small fixture clips where the demo_videos rule would write the full demo tree."""
    shutil.copytree(demo_tree, repo / "data" / "demo-videos")


def write_yaml(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def run(command: list[str], cwd: Path, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=tool_environment(), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n"
                             f"{result.stderr[-6000:]}")
    return result


def snakemake(repo: Path, *arguments: str, configfiles: list[str] = (), check: bool = True,
              timeout: float = 600) -> subprocess.CompletedProcess:
    # --configfile takes several values, so it comes last.
    command = ["snakemake", *arguments]
    if configfiles:
        command += ["--configfile", *configfiles]
    return run(command, repo, timeout=timeout, check=check)


def job_counts(output: str) -> dict[str, int]:
    """Rule -> number of jobs, from the 'Job stats' table Snakemake prints."""
    counts = {}
    table = output.split("Job stats:", 1)
    if len(table) < 2:
        return counts
    for line in table[1].splitlines()[3:]:
        match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not match:
            break
        if match.group(1) != "total":
            counts[match.group(1)] = int(match.group(2))
    return counts


def dry_run_jobs(output: str) -> list[dict]:
    """The jobs of a dry run: rule, inputs and outputs of each."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", output):
        header = re.match(r"(?:local)?rule (\w+):", block)
        if not header:
            continue
        fields = {}
        for name in ("input", "output"):
            match = re.search(rf"^\s+{name}: (.*)$", block, flags=re.MULTILINE)
            fields[name] = [p.strip() for p in match.group(1).split(",")] if match else []
        jobs.append({"rule": header.group(1), **fields})
    return jobs


def run_log_events(run_dir: Path) -> list[dict]:
    """The records of a pretraining run's log.jsonl (none yet if it has not started)."""
    path = run_dir / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def wait_for_step(run_dir: Path, step: int, timeout: float = 120) -> None:
    """Block until a pretraining job has logged optimiser step ``step``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(e.get("global_step", 0) >= step for e in run_log_events(run_dir) if e["event"] == "step"):
            return
        time.sleep(0.05)
    raise AssertionError(f"no step {step} in {run_dir / 'log.jsonl'} after {timeout} s")
