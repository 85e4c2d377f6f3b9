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
import json
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from dropmae.data.pairs import seed_worker
from dropmae.data.sampler import ResumableEpochSampler
from dropmae.engine.checkpoint import (
    LAST_CHECKPOINT,
    atomic_copy,
    atomic_torch_save,
    capture_rng_state,
    epoch_checkpoint_name,
    load_checkpoint,
    restore_rng_state,
)
from dropmae.engine.distributed import DistributedContext, gather_objects
from dropmae.seeding import derive_seed

METRICS_LOG = "log.jsonl"
SUMMARY_FILE = "summary.json"
# SIGTERM: SLURM preemption, scancel or scontrol requeue; SIGUSR1 / SIGUSR2: the warning SLURM
# sends before a time limit (submitit asks for SIGUSR2).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


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


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
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


def _agree_any(flag: bool, context: DistributedContext, device: torch.device) -> bool:
    """True on every rank when it is true on any (a signal may reach the ranks at different steps)."""
    if not context.enabled:
        return flag
    value = torch.tensor([float(flag)], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


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
    s = settings
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    amp_dtype = autocast_dtype(s.precision, device)
    model, dataset = task.model, task.dataset
    dataset.set_rank(context.rank)
    sampler = ResumableEpochSampler(len(dataset), s.seed, context.rank, context.world_size)
    micro_batches_per_epoch = sampler.samples_per_rank // s.batch_size
    steps_per_epoch = micro_batches_per_epoch // s.accum_iter
    if steps_per_epoch == 0:
        raise ValueError(
            f"{task.describe_data()} give {sampler.samples_per_rank} samples per process per epoch, "
            f"fewer than {task.config_section}.batch_size x {task.config_section}.accum_iter = "
            f"{s.batch_size * s.accum_iter}"
        )
    optimizer = task.build_optimizer(fused=device.type == "cuda")
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    start_epoch, start_step, global_step = 0, 0, 0
    last_path = output_dir / LAST_CHECKPOINT
    if last_path.is_file():
        state = load_checkpoint(last_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, start_step, global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        rng_states = state["rng"]
        if len(rng_states) != context.world_size:
            raise RuntimeError(f"{last_path} was written by {len(rng_states)} processes; this run has {context.world_size}")
        restore_rng_state(rng_states[context.rank])

    train_model = model
    if context.enabled:
        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if s.compile:  # compiled after wrapping, so DDP's bucketed all-reduce is split into the graph
        train_model = torch.compile(train_model)

    log = _MetricsLog(output_dir / METRICS_LOG, context.is_main)
    if context.is_main and start_epoch == 0 and start_step == 0:
        log.write(event="start", **task.start_record(), steps_per_epoch=steps_per_epoch, samples=len(dataset),
                  world_size=context.world_size)

    def save(epoch: int, step_in_epoch: int) -> None:
        rng_states = gather_objects(capture_rng_state(), context)
        if not context.is_main:
            return
        atomic_torch_save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "epoch": epoch,
                "step_in_epoch": step_in_epoch,
                "global_step": global_step,
                "steps_per_epoch": steps_per_epoch,
                "rng": rng_states,
                **task.checkpoint_fields(),
            },
            last_path,
        )

    if start_epoch >= s.epochs:
        return TrainingOutcome("completed", start_epoch, global_step, last_path, None)

    last_loss: float | None = None
    steps_this_call = 0
    autocast = (
        torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    )
    bar = tqdm(
        total=steps_per_epoch * s.epochs,
        initial=global_step,
        desc=task.name,
        unit="step",
        disable=not (progress and context.is_main),
    )
    with _StopRequest() as stop, bar:
        for epoch in range(start_epoch, s.epochs):
            first_step = start_step if epoch == start_epoch else 0
            dataset.set_epoch(epoch)
            task.begin_epoch(epoch)
            sampler.set_epoch(epoch, start=first_step * s.accum_iter * s.batch_size)
            loader = DataLoader(
                dataset,
                batch_size=s.batch_size,
                sampler=sampler,
                num_workers=s.num_workers,
                worker_init_fn=seed_worker,
                collate_fn=task.collate_fn,
                # Worker base seeds come from this generator, not the global RNG, so
                # (re)starting a loader mid-epoch leaves the model's RNG stream alone.
                generator=torch.Generator().manual_seed(derive_seed(s.seed, epoch, context.rank)),
                pin_memory=device.type == "cuda",
                drop_last=True,
                persistent_workers=False,
            )
            batches = iter(loader)
            model.train()
            epoch_losses = []
            epoch_stats: dict[str, list[float]] = {}
            interrupted = False
            bar.set_description(f"{task.name} epoch {epoch + 1}/{s.epochs}")
            for step in range(first_step, steps_per_epoch):
                lr = task.learning_rate(epoch + step / steps_per_epoch)
                for group in optimizer.param_groups:
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
                                f"(global step {global_step}, micro-batch {micro}); "
                                f"{last_path} is left as the last good checkpoint"
                            )
                        scaler.scale(loss / s.accum_iter).backward()
                    step_loss += loss_value / s.accum_iter
                    for key, value in stats.items():
                        epoch_stats.setdefault(key, []).append(value)
                if s.grad_clip_norm:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip_norm)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                global_step += 1
                steps_this_call += 1
                last_loss = step_loss
                epoch_losses.append(step_loss)
                bar.update(1)
                bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}", refresh=False)
                if global_step % s.log_every_steps == 0:
                    log.write(event="step", epoch=epoch, step=step, global_step=global_step, lr=lr, loss=step_loss)

                interrupted = _agree_any(
                    stop.signal_name is not None or (stop_after_steps is not None and steps_this_call >= stop_after_steps),
                    context,
                    device,
                )
                periodic = s.checkpoint_every_steps > 0 and global_step % s.checkpoint_every_steps == 0
                if (interrupted or periodic) and step + 1 < steps_per_epoch:
                    save(epoch, step + 1)
                if interrupted and step + 1 < steps_per_epoch:
                    reason = stop.signal_name or "stop_after_steps"
                    log.write(event="interrupted", reason=reason, epoch=epoch, step=step + 1, global_step=global_step)
                    return TrainingOutcome("interrupted", epoch, global_step, last_path, last_loss, reason)
            del batches, loader

            save(epoch + 1, 0)
            if context.is_main and (epoch + 1) in s.keep_epochs:
                atomic_copy(last_path, output_dir / epoch_checkpoint_name(epoch + 1))
            mean_loss = sum(epoch_losses) / max(len(epoch_losses), 1)
            means = {key: sum(values) / len(values) for key, values in epoch_stats.items()}
            log.write(event="epoch", epoch=epoch + 1, global_step=global_step, train_loss=mean_loss, time=time.time(),
                      **means)
            if interrupted and epoch + 1 < s.epochs:
                reason = stop.signal_name or "stop_after_steps"
                log.write(event="interrupted", reason=reason, epoch=epoch + 1, step=0, global_step=global_step)
                return TrainingOutcome("interrupted", epoch + 1, global_step, last_path, last_loss, reason)

    if context.is_main:
        summary = {"task": task.name, **task.start_record(), "epochs": s.epochs, "global_step": global_step,
                   "final_loss": last_loss, "checkpoint": str(last_path)}
        (output_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return TrainingOutcome("completed", s.epochs, global_step, last_path, last_loss)
