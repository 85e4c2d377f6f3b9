"""Pretraining cells as submitit jobs: multi-node DDP on SLURM (or submitit's local executor),
checkpointed and requeued on preemption or time-out, with a waiter that returns the result or
raises the job's own error.

Preemption paths:
- SLURM's time-limit warning (submitit asks for SIGUSR2 ``signal_delay_s`` early): the engine
  finishes the step and writes checkpoint-last, then the signal is handed back to submitit,
  which calls :meth:`PretrainJob.checkpoint` and requeues the job.
- SIGTERM (preemption with requeue, ``scontrol requeue``, ``scancel``): the engine writes
  checkpoint-last and the task exits without a result, so SLURM's decision stands: a requeued
  job resumes from the checkpoint, a cancelled one is reported as failed by the waiter.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import psutil
import submitit
from submitit.helpers import Checkpointable

from dropmae.config import (
    Cell,
    Config,
    ConfigError,
    LauncherConfig,
    config_from_dict,
    config_to_dict,
    tasks_per_node_of,
)

JOB_RECORD = "job.json"
# squeue states after which a job produces nothing more (it may still be listed for MinJobAge).
TERMINAL_STATES = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL",
                   "OUT_OF_MEMORY", "PREEMPTED", "TIMEOUT", "SPECIAL_EXIT", "REVOKED"}


class LaunchError(RuntimeError):
    """A training job failed or vanished; the message carries the job's own error."""


def _preempt_signal_name() -> str:
    # submitit's own switch for the signal it asks SLURM to send before a time limit.
    return "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")


def _export_distributed_environment(env: submitit.JobEnvironment) -> None:
    """torchrun-style variables from submitit's view of the job, read by engine.distributed."""
    os.environ.update(
        RANK=str(env.global_rank),
        WORLD_SIZE=str(env.num_tasks),
        LOCAL_RANK=str(env.local_rank),
        MASTER_ADDR=env.hostnames[0] if env.hostnames else "127.0.0.1",
        MASTER_PORT=str(20000 + int(str(env.job_id).split("_")[0]) % 20000),
    )


def job_header(env: submitit.JobEnvironment, what: str, output_dir: str) -> str:
    """The first line of a task's log: what runs where (node, rank, world size, GPU), for whoever reads it."""
    import socket

    import torch

    if torch.cuda.is_available():
        index = env.local_rank % torch.cuda.device_count()  # the GPU engine.distributed gives this task
        device = f"GPU {index} {torch.cuda.get_device_name(index)}"
    else:
        device = "no GPU (CPU)"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
    return (f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {what} job {env.job_id} on node {socket.gethostname()}: "
            f"rank {env.global_rank} of world size {env.num_tasks} (local rank {env.local_rank}, node "
            f"{env.node} of {env.num_nodes}), {device}, CUDA_VISIBLE_DEVICES={visible}, "
            f"{torch.get_num_threads()} CPU threads; output {output_dir}")


class TrainingJob(Checkpointable):
    """One training run (a pretraining cell, a tracker or a segmenter fine-tuning), run by every task of a submitit job.

    Holds plain data only (the config as a dict), so the pickle submitit writes does not depend
    on the package's classes staying the same between submission and requeue. Checkpointable's
    own checkpoint() resubmits this callable as it is: all training state is on disk in
    output_dir/checkpoint-last.pth, and the requeued call resumes from it.
    """

    resources_key = "pretrain"  # the launcher.* section whose job this is

    def __init__(self, config: dict, output_dir: str) -> None:
        self.config = config
        self.output_dir = output_dir

    def train(self):
        """Run (or resume) the training; returns the loop's TrainingOutcome."""
        raise NotImplementedError

    def __call__(self) -> dict:
        import torch

        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            _export_distributed_environment(env)
        torch.set_num_threads(self.config["launcher"][self.resources_key]["cpus_per_task"])
        print(job_header(env, type(self).__name__, self.output_dir), flush=True)
        outcome = self.train()
        if outcome.status == "completed":
            return {"status": outcome.status, "epoch": outcome.epoch, "global_step": outcome.global_step,
                    "checkpoint": str(outcome.checkpoint), "last_loss": outcome.last_loss}
        if outcome.reason == _preempt_signal_name() and env.global_rank == 0:
            # The checkpoint is on disk; submitit's handler now calls checkpoint() and requeues.
            signal.raise_signal(getattr(signal, outcome.reason))
        # No result file: the job's state (requeued or cancelled) tells the waiter what happened.
        raise SystemExit(0)


class PretrainJob(TrainingJob):
    """One pretraining cell."""

    def __init__(self, config: dict, run: dict, data_path: str, output_dir: str) -> None:
        super().__init__(config, output_dir)
        self.run = run
        self.data_path = data_path

    def train(self):
        from dropmae.engine.pretrain import pretrain  # imported in the job, after the environment is set

        return pretrain(config_from_dict(self.config), Cell(**self.run), self.data_path, self.output_dir,
                        progress=False)


class FinetuneJob(TrainingJob):
    """One downstream fine-tuning, from a pretraining checkpoint or (pretrained None) from scratch."""

    resources_key = "finetune"

    def __init__(self, config: dict, name: str, pretrained: str | None, output_dir: str) -> None:
        super().__init__(config, output_dir)
        self.name = name
        self.pretrained = pretrained


class FinetuneTrackerJob(FinetuneJob):
    """One tracker (DropTrack) fine-tuning."""

    def train(self):
        from dropmae.tracking.train import finetune_tracker

        return finetune_tracker(config_from_dict(self.config), self.pretrained, self.output_dir, name=self.name,
                                progress=False)


class FinetuneSegmenterJob(FinetuneJob):
    """One segmenter (DropSeg) fine-tuning."""

    def train(self):
        from dropmae.segmentation.train import finetune_segmenter

        return finetune_segmenter(config_from_dict(self.config), self.pretrained, self.output_dir, name=self.name,
                                  progress=False)


def build_executor(launcher: LauncherConfig, folder: Path, name: str, resources_key: str = "pretrain") -> submitit.Executor:
    """submitit's SLURM executor, or its local executor (one node, same job code), from launcher.<resources_key>."""
    job = getattr(launcher, resources_key)
    tasks_per_node = tasks_per_node_of(job)
    if launcher.executor == "local":
        if job.nodes != 1:
            raise ConfigError(f"launcher.{resources_key}.nodes: the local executor runs one node, got {job.nodes}")
        executor = submitit.LocalExecutor(folder=folder, max_num_timeout=job.max_requeues)
        executor.update_parameters(timeout_min=job.time_min, nodes=1, tasks_per_node=tasks_per_node,
                                   gpus_per_node=job.gpus_per_node, signal_delay_s=job.signal_delay_s)
        return executor
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=job.max_requeues)
    additional = {"requeue": True} if launcher.requeue else {}
    if launcher.account:
        additional["account"] = launcher.account
    parameters = dict(
        name=name,
        timeout_min=job.time_min,
        nodes=job.nodes,
        tasks_per_node=tasks_per_node,
        cpus_per_task=job.cpus_per_task,
        mem_gb=job.mem_gb_per_node,
        slurm_signal_delay_s=job.signal_delay_s,
        slurm_additional_parameters=additional,
    )
    if job.gpus_per_node:
        parameters["gpus_per_node"] = job.gpus_per_node
    if job.partition:
        parameters["slurm_partition"] = job.partition
    if launcher.qos:
        parameters["slurm_qos"] = launcher.qos
    if launcher.constraint:
        parameters["slurm_constraint"] = launcher.constraint
    executor.update_parameters(**parameters)
    return executor


def slurm_state(job_id: str) -> str | None:
    """The job's state from squeue (which works without SLURM accounting), or None once it is gone."""
    result = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%T", "--states=all"],
                            capture_output=True, text=True)
    states = result.stdout.split()
    return states[0] if result.returncode == 0 and states else None


def _job_logs(job: submitit.Job, lines: int = 40) -> str:
    parts = []
    for path in (job.paths.stderr, job.paths.stdout):
        try:
            text = Path(path).read_text(errors="replace").splitlines()
        except OSError:
            continue
        parts.append(f"--- last lines of {path}:\n" + "\n".join(text[-lines:]))
    return "\n".join(parts) or f"(no logs in {job.paths.folder})"


def wait_for_result(job: submitit.Job, executor_kind: str, poll_s: float = 5.0,
                    report: Callable[[str], None] = print) -> dict:
    """Block until the job returns; raise LaunchError with the job's error or last log lines.

    submitit's own watcher needs sacct; clusters without accounting only have squeue, so the
    job's state comes from squeue here, and a job that leaves the queue without a result fails.
    """
    last_state = None
    gone_since = None
    while True:
        if job.paths.result_pickle.exists() or (executor_kind == "local" and job.done()):
            try:
                results = job.results()
            except submitit.core.utils.FailedJobError as error:
                raise LaunchError(f"job {job.job_id} failed:\n{error}") from None
            except submitit.core.utils.UncompletedJobError as error:
                raise LaunchError(f"job {job.job_id} ended without a result: {error}\n"
                                  + _job_logs(job)) from None
            return results[0]
        if executor_kind == "slurm":
            state = slurm_state(job.job_id)
            if state != last_state:
                report(f"job {job.job_id}: {state or 'no longer listed by squeue'}")
                last_state = state
            if state is None or state in TERMINAL_STATES:
                gone_since = gone_since or time.monotonic()
                # A requeue may pass through an ending state, and a result file may lag behind the
                # state on a network file system: look again for a little while.
                if time.monotonic() - gone_since > max(3 * poll_s, 10):
                    if job.paths.result_pickle.exists():
                        continue
                    raise LaunchError(f"job {job.job_id} ended ({state or 'left the queue'}) "
                                      "without a result\n" + _job_logs(job))
            else:
                gone_since = None
        time.sleep(poll_s)


def _recorded_job(folder: Path, executor_kind: str, num_tasks: int) -> submitit.Job | None:
    """A still-active SLURM job submitted for this cell by an earlier, interrupted waiter."""
    record = folder / JOB_RECORD
    if executor_kind != "slurm" or not record.is_file():
        return None
    job_id = json.loads(record.read_text())["job_id"]
    state = slurm_state(job_id)
    if state is None or state in TERMINAL_STATES:
        return None
    return submitit.SlurmJob(folder=folder, job_id=job_id, tasks=tuple(range(num_tasks)))


class _WaiterTerminated(KeyboardInterrupt):
    """SIGTERM reached the waiter (kill, a CI timeout, dvc or Snakemake stopping)."""

    exit_code = 128 + signal.SIGTERM


@contextlib.contextmanager
def _sigterm_as_keyboard_interrupt():
    """SIGTERM ends the waiter like Ctrl-C: its local job is cancelled instead of orphaned (a rerun
    would otherwise start a second trainer beside it)."""
    def handle(signum, _frame):
        raise _WaiterTerminated(signal.Signals(signum).name)

    try:
        previous = signal.signal(signal.SIGTERM, handle)
    except ValueError:  # not the main thread: leave the signal alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


LOCAL_STOP_GRACE_S = 300.0


def _stop_local_job(job: submitit.Job, report: Callable[[str], None],
                    grace_s: float = LOCAL_STOP_GRACE_S) -> None:
    """Ctrl-C the local job's tasks themselves and wait for their checkpoint.

    submitit's ``LocalJob.cancel`` interrupts the job's controller process, which forwards SIGINT
    to the tasks and SIGKILLs them one second later: a step plus a checkpoint write on a loaded
    machine takes longer, and the run would lose its last epochs. A local job's id is its
    controller's process id; the tasks are that process's children.
    """
    try:
        controller = psutil.Process(int(job.job_id))
        tasks = controller.children()
    except (psutil.NoSuchProcess, ValueError):
        return
    for task in tasks:
        with contextlib.suppress(psutil.NoSuchProcess):
            task.send_signal(signal.SIGINT)
    report(f"stopping local job {job.job_id}: its trainer finishes the step and writes checkpoint-last")
    _, still_running = psutil.wait_procs(tasks, timeout=grace_s)
    if still_running:
        report(f"local job {job.job_id} did not stop within {grace_s:.0f} s; killing it")
    job.cancel()  # ends the controller (and kills whatever task is left)
    with contextlib.suppress(psutil.NoSuchProcess, psutil.TimeoutExpired):
        controller.wait(timeout=10)


def launch_training(config: Config, job_callable: TrainingJob, output_dir: str | Path, name: str,
                    report: Callable[[str], None] = print, poll_s: float = 5.0) -> dict:
    """Run one training job through submitit and wait for it; returns the job's summary.

    A SLURM job left running by an interrupted waiter is attached to instead of submitted twice.
    """
    output_dir = Path(output_dir)
    folder = output_dir / "submitit"
    folder.mkdir(parents=True, exist_ok=True)
    launcher = config.launcher
    resources = getattr(launcher, job_callable.resources_key)
    num_tasks = resources.nodes * tasks_per_node_of(resources)
    started = time.time()
    job = _recorded_job(folder, launcher.executor, num_tasks)
    if job is not None:
        report(f"attaching to running job {job.job_id} (submitted earlier for {output_dir})")
    else:
        executor = build_executor(launcher, folder, name=name, resources_key=job_callable.resources_key)
        job = executor.submit(job_callable)
        (folder / JOB_RECORD).write_text(json.dumps({"job_id": str(job.job_id), "executor": launcher.executor,
                                                     "submitted": started}) + "\n")
        report(f"submitted {launcher.executor} job {job.job_id} for {name} ({num_tasks} task(s)); logs in {folder}")
    try:
        with _sigterm_as_keyboard_interrupt():
            result = wait_for_result(job, launcher.executor, poll_s=poll_s, report=report)
    except KeyboardInterrupt:
        if launcher.executor == "local":
            _stop_local_job(job, report)  # a local job dies with its waiter; it resumes from its checkpoint next time
        else:
            report(f"job {job.job_id} keeps running; rerunning attaches to it")
        raise
    result.update(job_id=str(job.job_id), executor=launcher.executor, wall_time_s=time.time() - started)
    return result


def launch_pretraining(config: Config, run: Cell, data_path: str | Path, output_dir: str | Path,
                       report: Callable[[str], None] = print, poll_s: float = 5.0) -> dict:
    """One pretraining cell through submitit (launcher.pretrain resources)."""
    job = PretrainJob(config_to_dict(config), asdict(run), str(data_path), str(output_dir))
    return launch_training(config, job, output_dir, f"dropmae-{run.source}-{run.method}-ep{run.epochs}", report, poll_s)


def _launch_finetuning(job_class: type[FinetuneJob], prefix: str, config: Config, name: str,
                       pretrained: str | Path | None, output_dir: str | Path, report: Callable[[str], None],
                       poll_s: float) -> dict:
    job = job_class(config_to_dict(config), name, None if pretrained is None else str(pretrained), str(output_dir))
    return launch_training(config, job, output_dir, f"{prefix}-{name.replace('/', '-')}", report, poll_s)


def launch_tracker_finetuning(config: Config, name: str, pretrained: str | Path | None, output_dir: str | Path,
                              report: Callable[[str], None] = print, poll_s: float = 5.0) -> dict:
    """One tracker fine-tuning through submitit (launcher.finetune resources)."""
    return _launch_finetuning(FinetuneTrackerJob, "droptrack", config, name, pretrained, output_dir, report, poll_s)


def launch_segmenter_finetuning(config: Config, name: str, pretrained: str | Path | None, output_dir: str | Path,
                                report: Callable[[str], None] = print, poll_s: float = 5.0) -> dict:
    """One segmenter fine-tuning through submitit (launcher.finetune resources)."""
    return _launch_finetuning(FinetuneSegmenterJob, "dropseg", config, name, pretrained, output_dir, report, poll_s)
