"""Process-group setup from torchrun's or SLURM's environment."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _first_slurm_host() -> str:
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST", "")
    if not nodelist:
        return "127.0.0.1"
    # scontrol expands compressed node lists such as "gpu[01-04]"; it is there inside any SLURM job.
    hosts = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    return hosts.stdout.split()[0]


def context_from_environment() -> DistributedContext:
    """Rank and world size from torchrun (RANK, WORLD_SIZE, LOCAL_RANK) or a SLURM task."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistributedContext(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        context = DistributedContext(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)))
        env.setdefault("MASTER_ADDR", _first_slurm_host())
        env.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000))
        return context
    return DistributedContext()


def init_distributed(context: DistributedContext | None = None) -> DistributedContext:
    """Join the process group when the world has more than one process (idempotent)."""
    context = context or context_from_environment()
    if context.enabled and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(context.local_rank)
        dist.init_process_group(backend=backend, rank=context.rank, world_size=context.world_size)
    return context


def gather_objects(obj, context: DistributedContext) -> list:
    """Every rank's ``obj`` (a list of one on a single process)."""
    if not context.enabled:
        return [obj]
    gathered = [None] * context.world_size
    dist.all_gather_object(gathered, obj)
    return gathered
