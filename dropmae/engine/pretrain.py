"""Pretraining: a TwinMAE / DropMAE cell as a task of the shared training loop.

AdamW (betas 0.9, 0.95; no decay on biases and norms), lr = blr x effective batch / 256 with a
per-iteration warmup and half-cycle cosine, MSE on masked patches (the loss lives in the model).
Resume, AMP, DDP, stop signals and checkpoints are the loop's (:mod:`dropmae.engine.loop`).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from timm.optim import param_groups_weight_decay
from torch.utils.data import Dataset

from dropmae.config import PRETRAIN_OPERATIONAL_KEYS, Cell, Config, ConfigError, config_from_dict, config_to_dict
from dropmae.data.device_decode import EncodedPairBatch, collate_encoded, decode_pairs
from dropmae.data.pairs import FramePairDataset, PackedFramePairDataset, VideoFramePairDataset, normalize_frames
from dropmae.engine.checkpoint import load_checkpoint
from dropmae.engine.distributed import init_distributed
from dropmae.engine.loop import (  # noqa: F401  (re-exported: the pretraining API predates the loop)
    METRICS_LOG,
    STOP_SIGNALS,
    SUMMARY_FILE,
    LoopSettings,
    NonFiniteLossError,
    TrainingOutcome,
    TrainingTask,
    autocast_dtype,
    resolve_device,
    run_training,
)
from dropmae.engine.schedule import learning_rate_at, scaled_learning_rate
from dropmae.models.dropmae import DropMAE
from dropmae.seeding import derive_seed


def training_signature(config: Config, run: Cell) -> dict:
    """What a pretraining run's weights depend on, besides its data: the method, the epoch budget
    (the lr schedule spans it), the model and every pretrain key that is not operational."""
    values = config_to_dict(config)
    return {"method": run.method, "epochs": run.epochs, "model": values["model"],
            "pretrain": {k: v for k, v in values["pretrain"].items() if k not in PRETRAIN_OPERATIONAL_KEYS}}


def _flatten(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        flat.update(_flatten(value, name + ".") if isinstance(value, dict) else {name: value})
    return flat


def signature_differences(written: dict, wanted: dict) -> list[str]:
    """'key (checkpoint X, this run Y)' for every key whose value differs."""
    old, new = _flatten(written), _flatten(wanted)
    missing = "(not set)"
    return [f"{key} (checkpoint {old.get(key, missing)!r}, this run {new.get(key, missing)!r})"
            for key in sorted(old.keys() | new.keys()) if old.get(key, missing) != new.get(key, missing)]


def build_model(config: Config, run: Cell) -> DropMAE:
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
        asad_kernel=p.asad_kernel,
    )


def load_pretrained(checkpoint_path: str | Path) -> tuple[DropMAE, dict]:
    """The model of a pretraining checkpoint (in eval mode) and the checkpoint itself: a strict
    load of the whole model, built from the checkpoint's own config and run."""
    state = load_checkpoint(checkpoint_path)
    model = build_model(config_from_dict(state["config"]), Cell(**state["run"]))
    model.load_state_dict(state["model"])
    return model.eval(), state


def build_pair_dataset(config: Config, data_path: str | Path, split: str = "train") -> Dataset:
    """Frame pairs from an extraction folder (input: frames or packed) or from videos (input: video)."""
    p = config.pretrain
    common = dict(
        input_size=config.model.img_size,
        max_gap=p.frame_gap,
        crop_scale=tuple(p.crop_scale),
        shared_crop=p.shared_crop,
        color_jitter_p=p.color_jitter_p,
        grayscale_p=p.grayscale_p,
        seed=p.seed,
        repeats=p.repeated_sampling,
    )
    if p.input == "frames":
        return FramePairDataset(data_path, split=split, **common)
    if p.input == "packed":
        return PackedFramePairDataset(data_path, split=split, decode_on_device=p.decode_on_device, **common)
    return VideoFramePairDataset(data_path, **common)


def pretrain_loop_settings(config: Config, run: Cell) -> LoopSettings:
    p = config.pretrain
    return LoopSettings(
        # The loader's batch counts videos; each gives pretrain.repeated_sampling pairs.
        epochs=run.epochs, batch_size=p.batch_size // p.repeated_sampling, accum_iter=p.accum_iter, num_workers=p.num_workers, seed=p.seed,
        precision=p.precision, compile=p.compile, checkpoint_every_steps=p.checkpoint_every_steps,
        log_every_steps=p.log_every_steps, keep_epochs=tuple(p.keep_epochs),
    )


class PretrainTask(TrainingTask):
    """One pretraining cell: a method and an epoch budget."""

    config_section = "pretrain"

    def __init__(self, config: Config, run: Cell, model: DropMAE, dataset: Dataset, data_path: str | Path,
                 world_size: int) -> None:
        self.config, self.run, self.model, self.dataset = config, run, model, dataset
        self.name = run.method
        self.data_path = data_path
        p = config.pretrain
        self.effective_batch = p.batch_size * p.accum_iter * world_size
        self.pairs_per_sample = p.repeated_sampling  # the loader's items are videos, each giving this many pairs
        self.device = next(model.parameters()).device
        if p.decode_on_device:
            self.collate_fn = collate_encoded
        self.peak_lr = scaled_learning_rate(p.blr, self.effective_batch)

    def build_optimizer(self, fused: bool) -> torch.optim.Optimizer:
        groups = param_groups_weight_decay(self.model, self.config.pretrain.weight_decay)
        return torch.optim.AdamW(groups, lr=self.peak_lr, betas=(0.9, 0.95), fused=fused)

    def learning_rate(self, epoch_progress: float) -> float:
        p = self.config.pretrain
        return learning_rate_at(epoch_progress, self.peak_lr, p.min_lr, p.warmup_epochs, self.run.epochs)

    def compute_loss(self, model, frames):
        if isinstance(frames, EncodedPairBatch):  # pretrain.decode_on_device
            frames = decode_pairs(frames, self.config.model.img_size, self.device)
        if frames.dim() == 6:  # repeated sampling: [videos, pairs per video, 2, C, H, W]
            frames = frames.flatten(0, 1)
        loss, _, _ = model(normalize_frames(frames))  # packed input arrives as uint8 crops
        return loss, {}

    def describe_data(self) -> str:
        return f"{self.data_path}: {len(self.dataset)} videos"

    def start_record(self) -> dict:
        return {"run": asdict(self.run), "effective_batch": self.effective_batch, "peak_lr": self.peak_lr,
                "videos": len(self.dataset)}

    def checkpoint_fields(self) -> dict:
        return {"config": config_to_dict(self.config), "run": asdict(self.run)}

    def check_resumable(self, state: dict, path: Path) -> None:
        """A checkpoint of another method, epoch budget or recipe is not continued under this one."""
        try:
            written = training_signature(config_from_dict(state["config"]), Cell(**state["run"]))
        except (ConfigError, KeyError, TypeError) as error:
            raise ConfigError(f"{path} was not written by this version's pretraining ({error}); move it aside "
                              "to start over, or give another output folder") from None
        differences = signature_differences(written, training_signature(self.config, self.run))
        if differences:
            raise ConfigError(f"{path} belongs to another run; it differs in " + "; ".join(differences)
                              + ". Use the checkpoint's settings to resume it, or give another output folder "
                              "(or move it aside) to start over")


def pretrain(
    config: Config,
    run: Cell,
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
    context = init_distributed()
    device = resolve_device(device)
    if device.type == "cuda":
        device = torch.device("cuda", context.local_rank)
    torch.manual_seed(derive_seed(config.pretrain.seed, context.rank))
    model = build_model(config, run).to(device)
    dataset = build_pair_dataset(config, data_path)
    task = PretrainTask(config, run, model, dataset, data_path, context.world_size)
    return run_training(task, pretrain_loop_settings(config, run), output_dir, context, device,
                        stop_after_steps=stop_after_steps, progress=progress)
