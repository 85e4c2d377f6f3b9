"""The training loop every stage shares: pretraining and the downstream fine-tunings.

One call of :func:`run_training` trains a :class:`TrainingTask` into an output folder. It
resumes automatically from ``checkpoint-last.pth`` there and continues bit for bit as an
uninterrupted run would (on the CPU): the data order and every augmentation are pure functions
of (seed, epoch, index), the sampler can start mid-epoch, and the checkpoint carries every RNG
state the step draws from. AMP, gradient accumulation, DDP, SLURM's stop signals and atomic
checkpoints live here once; a task only says what the model, data, optimiser and schedule are.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import resource
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from dropmae.config import ConfigError
from dropmae.data.pairs import seed_worker
from dropmae.data.sampler import ResumableEpochSampler
from dropmae.engine.checkpoint import (
    LAST_CHECKPOINT,
    atomic_copy,
    atomic_torch_save,
    capture_rng_state,
    epoch_checkpoint_name,
    load_checkpoint,
    remove_stale_temporaries,
    restore_rng_state,
)
from dropmae.engine.curves import write_training_curves
from dropmae.engine.distributed import DistributedContext, gather_objects
from dropmae.progress import emit, format_duration, stdout_is_terminal
from dropmae.seeding import derive_seed

METRICS_LOG = "log.jsonl"
SUMMARY_FILE = "summary.json"
# Held (flock) by the trainer writing a run folder, so two trainers cannot interleave checkpoints.
RUN_LOCK = ".lock"
# SIGTERM: SLURM preemption, scancel or scontrol requeue; SIGUSR1 / SIGUSR2: the warning SLURM
# sends before a time limit (submitit asks for SIGUSR2); SIGINT: Ctrl-C, and how submitit cancels
# a local job. Each finishes the step, writes checkpoint-last and stops.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)


class RunLockedError(RuntimeError):
    """Another trainer is writing the same run folder."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left as it was."""


@dataclass
class TrainingOutcome:
    status: str  # "completed" or "interrupted"
    epoch: int  # epochs completed
    global_step: int
    checkpoint: Path
    last_loss: float | None
    reason: str | None = None  # why an interrupted run stopped: a signal name or "stop_after_steps"


@dataclass(frozen=True)
class LoopSettings:
    """The loop's knobs, filled from a config section (pretrain.* or tracking.*)."""

    epochs: int
    batch_size: int  # per process
    accum_iter: int = 1
    num_workers: int = 0
    seed: int = 0
    precision: str = "auto"
    checkpoint_every_steps: int = 0  # also write checkpoint-last every k optimiser steps (0: per epoch only)
    log_every_steps: int = 20
    keep_epochs: tuple[int, ...] = ()  # epochs whose checkpoint is kept besides -last
    grad_clip_norm: float | None = None  # clip the global gradient norm (None or 0: no clipping)
    compile: bool = False  # torch.compile the (DDP-wrapped) model used for the training steps


class TrainingTask:
    """What one run trains. Subclasses set ``name``, ``model`` and ``dataset`` (a map-style
    dataset with ``set_epoch`` and ``set_rank``) and implement the methods below."""

    name: str
    model: torch.nn.Module
    dataset: Dataset
    config_section: str = "train"  # where batch_size and accum_iter are set, for error messages
    collate_fn: Any = None  # the DataLoader's collate_fn (None: torch's default)
    pairs_per_sample: int = 1  # training pairs in one dataset item (pretraining's repeated sampling: several)

    def build_optimizer(self, fused: bool) -> torch.optim.Optimizer:
        raise NotImplementedError

    def learning_rate(self, epoch_progress: float) -> float:
        """lr at a fractional epoch; each parameter group gets it times its ``lr_scale`` (default 1)."""
        raise NotImplementedError

    def compute_loss(self, model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """(loss, logged statistics) of one micro-batch already on the device; ``model`` may be DDP-wrapped."""
        raise NotImplementedError

    def begin_epoch(self, epoch: int) -> None:
        """Per-epoch schedules other than the lr (e.g. the tracker's keep ratio)."""

    def describe_data(self) -> str:
        """Names the data in errors (e.g. a folder and what it holds)."""
        return f"{len(self.dataset)} samples"

    def start_record(self) -> dict:
        """Extra fields of the log's start event."""
        return {}

    def checkpoint_fields(self) -> dict:
        """Extra plain-data fields stored in every checkpoint (config, run)."""
        return {}

    def check_resumable(self, state: dict, path: Path) -> None:
        """Raise ConfigError, naming what differs, when checkpoint ``state`` (read from ``path``)
        was written by a run this one must not continue."""


def default_device() -> torch.device:
    """The GPU when there is one, else the CPU: the one device choice of training, evaluation and analysis."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device``, or :func:`default_device` when None."""
    if device is None:
        return default_device()
    return torch.device(device)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for full fp32."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


def move_to_device(batch: Any, device: torch.device) -> Any:
    """A tensor, or a dict / list / tuple of tensors, on ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {key: move_to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(value, device) for value in batch)
    return batch


class _StopRequest:
    """Turns SIGTERM / SIGUSR1 / SIGUSR2 into a flag the loop checks after each optimiser step."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "_StopRequest":
        for sig in STOP_SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave the signals alone
                pass
        return self

    def _handle(self, signum, _frame) -> None:
        if signum == signal.SIGINT and self.signal_name == "SIGINT":
            raise KeyboardInterrupt  # Ctrl-C twice: stop now, without waiting for the checkpoint
        self.signal_name = signal.Signals(signum).name

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class _MetricsLog:
    def __init__(self, path: Path, enabled: bool) -> None:
        self.path = path
        self.enabled = enabled

    def write(self, **record) -> None:
        if self.enabled:
            with self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: the CUDA caching allocator's peak allocation on a GPU, else the process's
    peak resident set size (the CPU has no allocator statistics)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _finite_or_none(value: float) -> float | None:
    """JSON has no NaN: an undefined rate is written as null."""
    return value if math.isfinite(value) else None


class _StepReporter:
    """The step line of the log and of stdout: step / total, epoch, lr, loss, pairs/s, ETA, peak memory.

    The rate is measured over the steps since the previous line; the ETA extrapolates the mean
    step time of this call (a resumed run does not count the steps of the earlier calls).
    """

    def __init__(self, run: "_Run", position: "_Position", to_stdout: bool) -> None:
        s = run.settings
        self.run, self.to_stdout = run, to_stdout
        self.total_steps = run.steps_per_epoch * s.epochs
        self.pairs_per_step = s.batch_size * s.accum_iter * run.context.world_size * run.task.pairs_per_sample
        self.started = self.last_time = time.monotonic()
        self.first_step = self.last_step = position.global_step

    def record(self, position: "_Position", epoch: int, step: int, lr: float, loss: float) -> dict:
        now = time.monotonic()
        window_steps, window_s = position.global_step - self.last_step, now - self.last_time
        pairs_per_s = window_steps * self.pairs_per_step / window_s if window_s > 0 else float("nan")
        done_this_call, elapsed = position.global_step - self.first_step, now - self.started
        eta_s = (self.total_steps - position.global_step) * elapsed / done_this_call if done_this_call else float("nan")
        self.last_time, self.last_step = now, position.global_step
        return dict(event="step", epoch=epoch, step=step, global_step=position.global_step,
                    total_steps=self.total_steps, lr=lr, loss=loss, pairs_per_s=_finite_or_none(pairs_per_s),
                    eta_s=_finite_or_none(eta_s),
                    peak_memory_mb=peak_memory_mb(self.run.device), time=time.time())

    def line(self, record: dict) -> str:
        run, memory = self.run, "GPU peak alloc" if self.run.device.type == "cuda" else "peak RSS"
        rate = "?" if record["pairs_per_s"] is None else f"{record['pairs_per_s']:.1f}"
        eta = format_duration(float("nan") if record["eta_s"] is None else record["eta_s"])
        return (f"{run.task.name} step {record['global_step']}/{record['total_steps']} "
                f"epoch {record['epoch'] + 1}/{run.settings.epochs} lr {record['lr']:.3e} loss {record['loss']:.4f} "
                f"pairs/s {rate} eta {eta} {memory} {record['peak_memory_mb']:.0f} MB")

    def report(self, position: "_Position", epoch: int, step: int, lr: float, loss: float, bar: tqdm) -> None:
        record = self.record(position, epoch, step, lr, loss)
        self.run.log.write(**record)
        if not self.to_stdout:
            return
        if bar.disable:
            emit(self.line(record))
        else:  # above the bar, which tqdm redraws below it
            bar.write(self.line(record))


def _agree_any(flag: bool, context: DistributedContext, device: torch.device) -> bool:
    """True on every rank when it is true on any (a signal may reach the ranks at different steps)."""
    if not context.enabled:
        return flag
    value = torch.tensor([float(flag)], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


@dataclass
class _Position:
    """Where a run stands: ``epoch`` epochs done and ``step`` optimiser steps into the next one,
    ``global_step`` steps in all; ``steps_this_call`` and ``last_loss`` of this call."""

    epoch: int = 0
    step: int = 0
    global_step: int = 0
    steps_this_call: int = 0
    last_loss: float | None = None


@dataclass
class _Run:
    """What stays fixed while one call trains: the task, its optimiser and scaler, the data order, where it writes."""

    task: TrainingTask
    settings: LoopSettings
    context: DistributedContext
    device: torch.device
    sampler: ResumableEpochSampler
    steps_per_epoch: int
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    output_dir: Path
    log: _MetricsLog

    @property
    def last_path(self) -> Path:
        return self.output_dir / LAST_CHECKPOINT


@dataclass
class _EpochResult:
    losses: list[float] = field(default_factory=list)  # per optimiser step
    stats: dict[str, list[float]] = field(default_factory=dict)  # per micro-batch
    stop_reason: str | None = None  # the ranks agreed to stop after the last step: a signal name or "stop_after_steps"
    finished: bool = False  # False: stopped mid-epoch, checkpoint-last written at the step reached


def _prepare(task: TrainingTask, settings: LoopSettings, output_dir: Path, context: DistributedContext,
             device: torch.device) -> _Run:
    """The output folder, this rank's data order, the optimiser and the gradient scaler."""
    s = settings
    output_dir.mkdir(parents=True, exist_ok=True)
    task.dataset.set_rank(context.rank)
    sampler = ResumableEpochSampler(len(task.dataset), s.seed, context.rank, context.world_size)
    micro_batches_per_epoch = sampler.samples_per_rank // s.batch_size
    steps_per_epoch = micro_batches_per_epoch // s.accum_iter
    if steps_per_epoch == 0:
        raise ValueError(
            f"{task.describe_data()} give {sampler.samples_per_rank} samples per process per epoch, "
            f"fewer than {task.config_section}.batch_size x {task.config_section}.accum_iter = "
            f"{s.batch_size * s.accum_iter}"
        )
    optimizer = task.build_optimizer(fused=device.type == "cuda")
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype(s.precision, device) == torch.float16)
    log = _MetricsLog(output_dir / METRICS_LOG, context.is_main)
    return _Run(task, s, context, device, sampler, steps_per_epoch, optimizer, scaler, output_dir, log)


def resume(run: _Run) -> _Position:
    """Model, optimiser, scaler and this rank's RNG state from checkpoint-last, if the folder has one."""
    if not run.last_path.is_file():
        return _Position()
    state = load_checkpoint(run.last_path)
    run.task.check_resumable(state, run.last_path)
    if state["epoch"] > run.settings.epochs:
        raise ConfigError(f"{run.last_path} has {state['epoch']} epochs done, more than the {run.settings.epochs} "
                          "asked for: ask for at least as many, or give another output folder")
    run.task.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scaler.load_state_dict(state["scaler"])
    rng_states = state["rng"]
    if len(rng_states) != run.context.world_size:
        raise RuntimeError(
            f"{run.last_path} was written by {len(rng_states)} processes; this run has {run.context.world_size}"
        )
    restore_rng_state(rng_states[run.context.rank])
    return _Position(state["epoch"], state["step_in_epoch"], state["global_step"])


def save_checkpoint(run: _Run, position: _Position) -> None:
    """checkpoint-last at ``position``, with every rank's RNG state (all ranks call it; the main one writes)."""
    rng_states = gather_objects(capture_rng_state(), run.context)
    if not run.context.is_main:
        return
    atomic_torch_save(
        {
            "model": run.task.model.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "scaler": run.scaler.state_dict(),
            "epoch": position.epoch,
            "step_in_epoch": position.step,
            "global_step": position.global_step,
            "steps_per_epoch": run.steps_per_epoch,
            "rng": rng_states,
            **run.task.checkpoint_fields(),
        },
        run.last_path,
    )


def _training_model(model: torch.nn.Module, context: DistributedContext, device: torch.device,
                    compile: bool) -> torch.nn.Module:
    """The model the steps run: DDP-wrapped when distributed, then compiled if asked."""
    if context.enabled:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if compile:  # compiled after wrapping, so DDP's bucketed all-reduce is split into the graph
        model = torch.compile(model)
    return model


def _init_loader_worker(worker_id: int) -> None:
    # Ctrl-C reaches the loader's workers too; the main process stops the run (a checkpoint,
    # then the workers are shut down), so a worker must not die of it first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    seed_worker(worker_id)


@contextlib.contextmanager
def run_folder_lock(output_dir: Path, enabled: bool = True):
    """Hold an exclusive lock on ``output_dir`` (a lock file in it) while a trainer writes there."""
    if not enabled:
        yield
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / RUN_LOCK
    handle = open(path, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise RunLockedError(f"another trainer (process {holder}) is writing {output_dir}; wait for it to "
                                 f"stop, or give another output folder") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock; the file stays (removing it would race a waiting trainer)


def train_one_epoch(run: _Run, train_model: torch.nn.Module, position: _Position, autocast: Any,
                    stop: _StopRequest, stop_after_steps: int | None, bar: tqdm,
                    reporter: _StepReporter) -> _EpochResult:
    """Epoch ``position.epoch`` from step ``position.step`` on; ``position`` moves with every optimiser step.

    Writes checkpoint-last every ``checkpoint_every_steps`` and, when the ranks agree to stop,
    at the step reached and returns early (``finished`` False). The checkpoint at the end of
    the epoch is the caller's.
    """
    task, s, context, device = run.task, run.settings, run.context, run.device
    epoch, steps_per_epoch = position.epoch, run.steps_per_epoch
    task.dataset.set_epoch(epoch)
    task.begin_epoch(epoch)
    run.sampler.set_epoch(epoch, start=position.step * s.accum_iter * s.batch_size)
    loader = DataLoader(
        task.dataset,
        batch_size=s.batch_size,
        sampler=run.sampler,
        num_workers=s.num_workers,
        worker_init_fn=_init_loader_worker,
        collate_fn=task.collate_fn,
        # Worker base seeds come from this generator, not the global RNG, so
        # (re)starting a loader mid-epoch leaves the model's RNG stream alone.
        generator=torch.Generator().manual_seed(derive_seed(s.seed, epoch, context.rank)),
        pin_memory=device.type == "cuda",
        drop_last=True,
        persistent_workers=False,
    )
    batches = iter(loader)
    task.model.train()
    result = _EpochResult()
    bar.set_description(f"{task.name} epoch {epoch + 1}/{s.epochs}")
    for step in range(position.step, steps_per_epoch):
        lr = task.learning_rate(epoch + step / steps_per_epoch)
        for group in run.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        step_loss = 0.0
        for micro in range(s.accum_iter):
            batch = move_to_device(next(batches), device)
            sync = contextlib.nullcontext()
            if context.enabled and micro < s.accum_iter - 1:
                sync = train_model.no_sync()
            with sync:
                with autocast:
                    loss, stats = task.compute_loss(train_model, batch)
                loss_value = loss.item()
                if not math.isfinite(loss_value):
                    raise NonFiniteLossError(
                        f"non-finite loss {loss_value} at epoch {epoch}, step {step} "
                        f"(global step {position.global_step}, micro-batch {micro}); "
                        f"{run.last_path} is left as the last good checkpoint"
                    )
                run.scaler.scale(loss / s.accum_iter).backward()
            step_loss += loss_value / s.accum_iter
            for key, value in stats.items():
                result.stats.setdefault(key, []).append(value)
        if s.grad_clip_norm:
            run.scaler.unscale_(run.optimizer)
            torch.nn.utils.clip_grad_norm_(task.model.parameters(), s.grad_clip_norm)
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.optimizer.zero_grad(set_to_none=True)
        position.step = step + 1
        position.global_step += 1
        position.steps_this_call += 1
        position.last_loss = step_loss
        result.losses.append(step_loss)
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}", refresh=False)
        # Every log_every_steps steps and at the end of each epoch (as MAE's MetricLogger), so a run
        # shorter than log_every_steps still logs its curve.
        if position.global_step % s.log_every_steps == 0 or position.step == steps_per_epoch:
            reporter.report(position, epoch, step, lr, step_loss, bar)

        stop_now = _agree_any(
            stop.signal_name is not None
            or (stop_after_steps is not None and position.steps_this_call >= stop_after_steps),
            context,
            device,
        )
        result.stop_reason = (stop.signal_name or "stop_after_steps") if stop_now else None
        periodic = s.checkpoint_every_steps > 0 and position.global_step % s.checkpoint_every_steps == 0
        if (stop_now or periodic) and position.step < steps_per_epoch:
            save_checkpoint(run, position)
        if stop_now and position.step < steps_per_epoch:
            return result
    del batches, loader  # the loader's workers end before the epoch's checkpoint is written
    result.finished = True
    return result


def _end_epoch(run: _Run, position: _Position, result: _EpochResult) -> None:
    """checkpoint-last (and a kept copy) after a completed epoch, and the epoch's line in the log."""
    save_checkpoint(run, position)
    if run.context.is_main and position.epoch in run.settings.keep_epochs:
        atomic_copy(run.last_path, run.output_dir / epoch_checkpoint_name(position.epoch))
    mean_loss = sum(result.losses) / max(len(result.losses), 1)
    means = {key: sum(values) / len(values) for key, values in result.stats.items()}
    run.log.write(event="epoch", epoch=position.epoch, global_step=position.global_step, train_loss=mean_loss,
                  time=time.time(), **means)


def _interrupted(run: _Run, position: _Position, reason: str) -> TrainingOutcome:
    run.log.write(event="interrupted", reason=reason, epoch=position.epoch, step=position.step,
                  global_step=position.global_step)
    return TrainingOutcome("interrupted", position.epoch, position.global_step, run.last_path, position.last_loss, reason)


def run_training(
    task: TrainingTask,
    settings: LoopSettings,
    output_dir: str | Path,
    context: DistributedContext,
    device: torch.device,
    *,
    stop_after_steps: int | None = None,
    progress: bool = True,
) -> TrainingOutcome:
    """Train (or resume) ``task`` into ``output_dir``; the model is already on ``device``.

    ``stop_after_steps`` ends the run after that many optimiser steps *of this call*,
    writing checkpoint-last as an interruption would (used to test exact resume).
    """
    # One process per run folder writes it: the main rank holds the folder's lock.
    with run_folder_lock(Path(output_dir), enabled=context.is_main):
        return _run_training(task, settings, Path(output_dir), context, device, stop_after_steps, progress)


def _run_training(task: TrainingTask, settings: LoopSettings, output_dir: Path, context: DistributedContext,
                  device: torch.device, stop_after_steps: int | None, progress: bool) -> TrainingOutcome:
    s = settings
    if context.is_main:  # the folder's lock is held: a temporary file here is a killed writer's
        remove_stale_temporaries(output_dir)
    run = _prepare(task, settings, output_dir, context, device)
    position = resume(run)
    train_model = _training_model(task.model, context, device, s.compile)
    if context.is_main and position.epoch == 0 and position.step == 0:
        run.log.write(event="start", **task.start_record(), steps_per_epoch=run.steps_per_epoch,
                      samples=len(task.dataset), world_size=context.world_size)
    if position.epoch >= s.epochs:
        if context.is_main and run.log.path.is_file():
            write_training_curves(run.log.path, run.output_dir)
        return TrainingOutcome("completed", position.epoch, position.global_step, run.last_path, None)

    amp_dtype = autocast_dtype(s.precision, device)
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    # The bar only on a terminal; a job log (a file) gets the reporter's lines instead.
    bar = tqdm(total=run.steps_per_epoch * s.epochs, initial=position.global_step, desc=task.name, unit="step",
               disable=not (progress and context.is_main and stdout_is_terminal()))
    reporter = _StepReporter(run, position, to_stdout=context.is_main)
    if context.is_main:
        emit(f"{task.name}: {'resuming at' if position.global_step else 'starting'} step {position.global_step}/"
             f"{reporter.total_steps} ({run.steps_per_epoch} steps per epoch x {s.epochs} epochs, "
             f"{reporter.pairs_per_step} pairs per step, {context.world_size} process(es) on {device}), "
             f"logging every {s.log_every_steps} steps to {run.log.path}")
    with _StopRequest() as stop, bar:
        while position.epoch < s.epochs:
            epoch = position.epoch
            result = train_one_epoch(run, train_model, position, autocast, stop, stop_after_steps, bar, reporter)
            if not result.finished:  # stopped mid-epoch; checkpoint-last holds the step reached
                return _interrupted(run, position, result.stop_reason)
            position.epoch, position.step = epoch + 1, 0
            _end_epoch(run, position, result)
            if result.stop_reason and position.epoch < s.epochs:
                return _interrupted(run, position, result.stop_reason)

    if context.is_main:
        summary = {"task": task.name, **task.start_record(), "epochs": s.epochs,
                   "global_step": position.global_step, "final_loss": position.last_loss,
                   "checkpoint": str(run.last_path)}
        (run.output_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        write_training_curves(run.log.path, run.output_dir)
        emit(f"{task.name}: finished {position.global_step} steps, last loss {position.last_loss}, "
             f"in {format_duration(time.monotonic() - reporter.started)}; wrote {run.last_path}")
    return TrainingOutcome("completed", s.epochs, position.global_step, run.last_path, position.last_loss)
