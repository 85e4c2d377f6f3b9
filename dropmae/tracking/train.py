"""Fine-tuning DropTrack: OSTrack's recipe as a task of the shared training loop.

AdamW over two groups (the ViT backbone at lr x backbone_lr_scale, the head at lr), weight
decay on every parameter as OSTrack does, a step decay of the lr at ``lr_drop_epoch``,
gradient clipping, and the candidate-elimination keep ratio annealed from 1 to
``ce_keep_ratio`` with a cosine between ``ce_start_epoch`` and ``ce_start_epoch +
ce_warm_epochs``. Resume, AMP, DDP, signals and checkpoints are the loop's.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from dropmae.config import Config, config_to_dict
from dropmae.engine.finetune import finetune_downstream, load_finetuned
from dropmae.engine.loop import TrainingOutcome, TrainingTask
from dropmae.models.encoder import LoadReport
from dropmae.tracking.datasets import TrackingSequence, read_benchmark
from dropmae.tracking.losses import tracking_loss
from dropmae.tracking.model import DropTrack, droptrack_from_checkpoint
from dropmae.tracking.processing import CropSettings, TrackingPairDataset

HEAD_PREFIX = "box_head."


def keep_ratio_at(epoch: int, base_ratio: float, start_epoch: int, warm_epochs: int) -> float:
    """1 before ``start_epoch``, ``base_ratio`` from ``start_epoch + warm_epochs``, a half cosine between
    (OSTrack's adjust_keep_rate with one step per epoch)."""
    if epoch < start_epoch:
        return 1.0
    if epoch >= start_epoch + warm_epochs:
        return base_ratio
    progress = (epoch - start_epoch) / warm_epochs
    return base_ratio + (1.0 - base_ratio) * 0.5 * (math.cos(progress * math.pi) + 1.0)


def tracker_model_arguments(config: Config) -> dict:
    t = config.tracking
    return dict(template_size=t.template_size, search_size=t.search_size, ce_locations=tuple(t.ce_locations),
                ce_keep_ratio=t.ce_keep_ratio, head_channels=t.head_channels, drop_path_rate=t.drop_path_rate)


def build_tracker_model(config: Config, pretrained: str | Path | None) -> tuple[DropTrack, LoadReport | None]:
    """A tracker initialised from a pretraining checkpoint (its own encoder size), or from scratch
    with params.yaml's model.encoder when ``pretrained`` is None."""
    if pretrained is not None:
        return droptrack_from_checkpoint(pretrained, **tracker_model_arguments(config))
    model = DropTrack(encoder=config.model.encoder, patch_size=config.model.patch_size, **tracker_model_arguments(config))
    return model, None


def training_sequences(config: Config) -> list[tuple[str, list[TrackingSequence], float]]:
    """(name, sequences, weight) of every tracking.train set, read and checked before training starts."""
    t = config.tracking
    if not t.train:
        raise ValueError("tracking.train names no training set")
    sets = []
    for name, train_set in t.train.items():
        bench = t.benchmarks[name]
        sequences = read_benchmark(bench.format, bench.root, train_set.split)
        if train_set.sequence_list:
            wanted = [line.strip() for line in Path(train_set.sequence_list).read_text().splitlines() if line.strip()]
            by_name = {s.name: s for s in sequences}
            unknown = [n for n in wanted if n not in by_name]
            if unknown:
                raise ValueError(f"tracking.train.{name}.sequence_list {train_set.sequence_list}: "
                                 f"{len(unknown)} names not in {bench.root} ({train_set.split}), e.g. {unknown[0]!r}")
            sequences = [by_name[n] for n in wanted]
        # Test splits (first box only) cannot give training pairs.
        usable = [s for s in sequences if len(s.boxes) == len(s.frames)]
        if not usable:
            raise ValueError(f"tracking.train.{name}: {bench.root} ({train_set.split}) has no fully annotated sequences")
        sets.append((name, usable, train_set.weight))
    return sets


class TrackerTask(TrainingTask):
    config_section = "tracking"

    def __init__(self, config: Config, model: DropTrack, dataset: TrackingPairDataset, name: str,
                 pretrained: str | None) -> None:
        self.config, self.model, self.dataset, self.name = config, model, dataset, name
        self.pretrained = pretrained
        self.keep_ratio = 1.0

    def build_optimizer(self, fused: bool) -> torch.optim.Optimizer:
        t = self.config.tracking
        head = [p for n, p in self.model.named_parameters() if n.startswith(HEAD_PREFIX) and p.requires_grad]
        backbone = [p for n, p in self.model.named_parameters() if not n.startswith(HEAD_PREFIX) and p.requires_grad]
        groups = [{"params": head, "lr_scale": 1.0}, {"params": backbone, "lr_scale": t.backbone_lr_scale}]
        return torch.optim.AdamW(groups, lr=t.lr, weight_decay=t.weight_decay, fused=fused)

    def learning_rate(self, epoch_progress: float) -> float:
        t = self.config.tracking
        # StepLR stepped once per epoch: the drop applies from the first step of lr_drop_epoch.
        lr = t.lr * (t.lr_drop_factor if math.floor(epoch_progress) >= t.lr_drop_epoch else 1.0)
        if epoch_progress < t.warmup_epochs:  # optional linear warmup, per step (off in the recipe)
            lr *= epoch_progress / t.warmup_epochs
        return lr

    def begin_epoch(self, epoch: int) -> None:
        t = self.config.tracking
        self.keep_ratio = keep_ratio_at(epoch, t.ce_keep_ratio, t.ce_start_epoch, t.ce_warm_epochs)

    def compute_loss(self, model, batch):
        t = self.config.tracking
        outputs = model(batch["template"], batch["search"], ce_keep_ratio=self.keep_ratio)
        loss, stats = tracking_loss(outputs, batch["search_box"], (t.focal_weight, t.giou_weight, t.l1_weight))
        stats = {key: value for key, value in stats.items() if key != "loss"}
        stats["keep_ratio"] = self.keep_ratio
        return loss, stats

    def describe_data(self) -> str:
        return self.dataset.describe()

    def start_record(self) -> dict:
        return {"tracker": self.name, "pretrained": self.pretrained, "samples_per_epoch": len(self.dataset)}

    def checkpoint_fields(self) -> dict:
        return {"config": config_to_dict(self.config), "pretrained": self.pretrained,
                "architecture": {"encoder": self.model.encoder, "patch_size": self.model.patch_size}}


def finetune_tracker(
    config: Config,
    pretrained: str | Path | None,
    output_dir: str | Path,
    *,
    name: str = "droptrack",
    device: str | torch.device | None = None,
    stop_after_steps: int | None = None,
    progress: bool = True,
) -> TrainingOutcome:
    """Fine-tune (or resume) a tracker from ``pretrained`` (None: no pretraining) into ``output_dir``."""
    t = config.tracking
    return finetune_downstream(
        t,
        read_data=lambda: training_sequences(config),
        build_model=lambda: build_tracker_model(config, pretrained),
        build_task=lambda model, sets: TrackerTask(
            config, model, TrackingPairDataset(sets, t.samples_per_epoch, CropSettings.from_config(t), seed=t.seed),
            name, None if pretrained is None else str(pretrained)),
        output_dir=output_dir, name=name, device=device, stop_after_steps=stop_after_steps, progress=progress,
    )


def load_finetuned_tracker(path: str | Path, device: str | torch.device = "cpu") -> tuple[DropTrack, Config]:
    """A fine-tuned tracker in eval mode, and the config it was trained with, from its checkpoint
    (checkpoint-last.pth or the stage's model.pth)."""
    return load_finetuned(path, lambda config, encoder, patch_size: DropTrack(
        encoder=encoder, patch_size=patch_size, **tracker_model_arguments(config)), device)
