"""The pretraining engine: AdamW, per-iteration schedule, AMP, DDP, exact resume.

One call of :func:`pretrain` trains one cell of the grid (a method and an epoch budget)
into an output folder. It resumes automatically from ``checkpoint-last.pth`` there and
continues bit for bit as an uninterrupted run would (on the CPU): the data order and
every augmentation are pure functions of (seed, epoch, index), the sampler can start
mid-epoch, and the checkpoint carries every RNG state the step draws from.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from timm.optim import param_groups_weight_decay
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from dropmae.config import Config, PretrainRun, config_to_dict
from dropmae.data.pairs import FramePairDataset, VideoFramePairDataset, seed_worker
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
from dropmae.engine.distributed import DistributedContext, gather_objects, init_distributed
from dropmae.engine.schedule import learning_rate_at, scaled_learning_rate
from dropmae.models.dropmae import DropMAE
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


def build_model(config: Config, run: PretrainRun) -> DropMAE:
    m, p = config.model, config.pretrain
    return DropMAE(
        img_size=m.img_size,
        patch_size=m.patch_size,
        encoder=m.encoder,
        decoder_embed_dim=m.decoder_dim,
        decoder_depth=m.decoder_depth,
        decoder_num_heads=m.decoder_heads,
        mask_ratio=p.mask_ratio,
        masking=p.masking,
        norm_pix_loss=p.norm_pix_loss,
        asad_p=run.drop_probability(config),
    )


def build_pair_dataset(config: Config, data_path: str | Path, split: str = "train") -> Dataset:
    """Frame pairs from an extraction folder (input: frames) or from videos (input: video)."""
    p = config.pretrain
    common = dict(
        input_size=config.model.img_size,
        max_gap=p.frame_gap,
        crop_scale=tuple(p.crop_scale),
        shared_crop=p.shared_crop,
        seed=p.seed,
    )
    if p.input == "frames":
        return FramePairDataset(data_path, split=split, **common)
    return VideoFramePairDataset(data_path, **common)


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for full fp32."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


class _StopRequest:
    """Turns SIGTERM / SIGUSR1 into a flag the loop checks after each optimiser step."""

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


def pretrain(
    config: Config,
    run: PretrainRun,
    data_path: str | Path,
    output_dir: str | Path,
    *,
    device: str | torch.device | None = None,
    stop_after_steps: int | None = None,
    progress: bool = True,
) -> TrainingOutcome:
    """Train (or resume) one pretraining cell into ``output_dir``.

    ``stop_after_steps`` ends the run after that many optimiser steps *of this call*,
    writing checkpoint-last as an interruption would (used to test exact resume).
    """
    p = config.pretrain
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    context = init_distributed()
    device = resolve_device(device)
    if device.type == "cuda":
        device = torch.device("cuda", context.local_rank)
    amp_dtype = autocast_dtype(p.precision, device)

    torch.manual_seed(derive_seed(p.seed, context.rank))
    model = build_model(config, run).to(device)
    dataset = build_pair_dataset(config, data_path)
    dataset.set_rank(context.rank)
    sampler = ResumableEpochSampler(len(dataset), p.seed, context.rank, context.world_size)
    micro_batches_per_epoch = sampler.samples_per_rank // p.batch_size
    steps_per_epoch = micro_batches_per_epoch // p.accum_iter
    if steps_per_epoch == 0:
        raise ValueError(
            f"{data_path}: {len(dataset)} videos give {sampler.samples_per_rank} pairs per process per epoch, "
            f"fewer than pretrain.batch_size x pretrain.accum_iter = {p.batch_size * p.accum_iter}"
        )
    effective_batch = p.batch_size * p.accum_iter * context.world_size
    peak_lr = scaled_learning_rate(p.blr, effective_batch)
    optimizer = torch.optim.AdamW(
        param_groups_weight_decay(model, p.weight_decay),
        lr=peak_lr,
        betas=(0.9, 0.95),
        fused=device.type == "cuda",
    )
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

    log = _MetricsLog(output_dir / METRICS_LOG, context.is_main)
    if context.is_main and start_epoch == 0 and start_step == 0:
        log.write(event="start", run=asdict(run), effective_batch=effective_batch, peak_lr=peak_lr,
                  steps_per_epoch=steps_per_epoch, videos=len(dataset), world_size=context.world_size)

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
                "config": config_to_dict(config),
                "run": asdict(run),
            },
            last_path,
        )

    if start_epoch >= run.epochs:
        return TrainingOutcome("completed", start_epoch, global_step, last_path, None)

    last_loss: float | None = None
    steps_this_call = 0
    autocast = (
        torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    )
    bar = tqdm(
        total=steps_per_epoch * run.epochs,
        initial=global_step,
        desc=run.method,
        unit="step",
        disable=not (progress and context.is_main),
    )
    with _StopRequest() as stop, bar:
        for epoch in range(start_epoch, run.epochs):
            first_step = start_step if epoch == start_epoch else 0
            dataset.set_epoch(epoch)
            sampler.set_epoch(epoch, start=first_step * p.accum_iter * p.batch_size)
            loader = DataLoader(
                dataset,
                batch_size=p.batch_size,
                sampler=sampler,
                num_workers=p.num_workers,
                worker_init_fn=seed_worker,
                # Worker base seeds come from this generator, not the global RNG, so
                # (re)starting a loader mid-epoch leaves the model's RNG stream alone.
                generator=torch.Generator().manual_seed(derive_seed(p.seed, epoch, context.rank)),
                pin_memory=device.type == "cuda",
                drop_last=True,
                persistent_workers=False,
            )
            batches = iter(loader)
            model.train()
            epoch_losses = []
            interrupted = False
            bar.set_description(f"{run.method} epoch {epoch + 1}/{run.epochs}")
            for step in range(first_step, steps_per_epoch):
                lr = learning_rate_at(epoch + step / steps_per_epoch, peak_lr, p.min_lr, p.warmup_epochs, run.epochs)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                step_loss = 0.0
                for micro in range(p.accum_iter):
                    frames = next(batches).to(device, non_blocking=True)
                    sync = contextlib.nullcontext()
                    if context.enabled and micro < p.accum_iter - 1:
                        sync = train_model.no_sync()
                    with sync:
                        with autocast:
                            loss, _, _ = train_model(frames)
                        loss_value = loss.item()
                        if not math.isfinite(loss_value):
                            raise NonFiniteLossError(
                                f"non-finite loss {loss_value} at epoch {epoch}, step {step} "
                                f"(global step {global_step}, micro-batch {micro}); "
                                f"{last_path} is left as the last good checkpoint"
                            )
                        scaler.scale(loss / p.accum_iter).backward()
                    step_loss += loss_value / p.accum_iter
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                global_step += 1
                steps_this_call += 1
                last_loss = step_loss
                epoch_losses.append(step_loss)
                bar.update(1)
                bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}", refresh=False)
                if global_step % p.log_every_steps == 0:
                    log.write(event="step", epoch=epoch, step=step, global_step=global_step, lr=lr, loss=step_loss)

                interrupted = _agree_any(
                    stop.signal_name is not None or (stop_after_steps is not None and steps_this_call >= stop_after_steps),
                    context,
                    device,
                )
                periodic = p.checkpoint_every_steps > 0 and global_step % p.checkpoint_every_steps == 0
                if (interrupted or periodic) and step + 1 < steps_per_epoch:
                    save(epoch, step + 1)
                if interrupted and step + 1 < steps_per_epoch:
                    reason = stop.signal_name or "stop_after_steps"
                    log.write(event="interrupted", reason=reason, epoch=epoch, step=step + 1, global_step=global_step)
                    return TrainingOutcome("interrupted", epoch, global_step, last_path, last_loss, reason)
            del batches, loader

            save(epoch + 1, 0)
            if context.is_main and (epoch + 1) in p.keep_epochs:
                atomic_copy(last_path, output_dir / epoch_checkpoint_name(epoch + 1))
            mean_loss = sum(epoch_losses) / max(len(epoch_losses), 1)
            log.write(event="epoch", epoch=epoch + 1, global_step=global_step, train_loss=mean_loss, time=time.time())
            if interrupted and epoch + 1 < run.epochs:
                reason = stop.signal_name or "stop_after_steps"
                log.write(event="interrupted", reason=reason, epoch=epoch + 1, step=0, global_step=global_step)
                return TrainingOutcome("interrupted", epoch + 1, global_step, last_path, last_loss, reason)

    if context.is_main:
        summary = {"run": asdict(run), "epochs": run.epochs, "global_step": global_step, "final_loss": last_loss,
                   "checkpoint": str(last_path)}
        (output_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return TrainingOutcome("completed", run.epochs, global_step, last_path, last_loss)
