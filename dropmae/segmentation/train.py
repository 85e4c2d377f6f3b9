"""Fine-tuning DropSeg: STCN's main-training recipe, with frame pairs, as a task of the shared loop.

AdamW over two groups (the pretrained encoder at lr x backbone_lr_scale; mask embedding and
decoder at lr), a step decay of the lr at ``lr_drop_epoch``, and STCN's bootstrapped
cross-entropy: every pixel until ``bootstrap_start_epoch``, then a linear ramp down to the
hardest ``bootstrap_fraction`` of the pixels at ``bootstrap_end_epoch`` (STCN counts this in
iterations; here in epochs, updated once per epoch, so the schedule scales with a run's
length). Resume, AMP, DDP, signals and checkpoints are the loop's.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from dropmae.config import Config, config_to_dict
from dropmae.engine.finetune import finetune_downstream, load_finetuned
from dropmae.engine.loop import TrainingOutcome, TrainingTask
from dropmae.models.encoder import LoadReport
from dropmae.segmentation.datasets import (
    SegmentationSequence,
    read_segmentation_benchmark,
)
from dropmae.segmentation.losses import bootstrap_fraction, bootstrapped_cross_entropy
from dropmae.segmentation.model import DropSeg, dropseg_from_checkpoint
from dropmae.segmentation.processing import (
    SegmentationCropSettings,
    SegmentationPairDataset,
)


def segmenter_model_arguments(config: Config) -> dict:
    s = config.segmentation
    return dict(image_size=s.image_size, decoder_channels=s.decoder_channels, drop_path_rate=s.drop_path_rate)


def build_segmenter_model(config: Config, pretrained: str | Path | None) -> tuple[DropSeg, LoadReport | None]:
    """A segmenter initialised from a pretraining checkpoint (its own encoder size), or from scratch
    with params.yaml's model.encoder when ``pretrained`` is None."""
    if pretrained is not None:
        return dropseg_from_checkpoint(pretrained, **segmenter_model_arguments(config))
    model = DropSeg(encoder=config.model.encoder, patch_size=config.model.patch_size, **segmenter_model_arguments(config))
    return model, None


def segmentation_training_sets(config: Config) -> list[tuple[str, list[SegmentationSequence], float]]:
    """(name, sequences, weight) of every segmentation.train set, read and checked before training starts."""
    s = config.segmentation
    if not s.train:
        raise ValueError("segmentation.train names no training set")
    sets = []
    for name, train_set in s.train.items():
        bench = s.benchmarks[name]
        sequences = read_segmentation_benchmark(bench.format, bench.root, train_set.split)
        # A pair needs two annotated frames (test splits annotate the first frame only).
        usable = [seq for seq in sequences if len(seq.annotations) >= 2]
        if not usable:
            raise ValueError(f"segmentation.train.{name}: {bench.root} ({train_set.split}) has no sequence "
                             "with two annotated frames")
        sets.append((name, usable, train_set.weight))
    return sets


class SegmenterTask(TrainingTask):
    config_section = "segmentation"

    def __init__(self, config: Config, model: DropSeg, dataset: SegmentationPairDataset, name: str,
                 pretrained: str | None) -> None:
        self.config, self.model, self.dataset, self.name = config, model, dataset, name
        self.pretrained = pretrained
        self.top_fraction = 1.0

    def build_optimizer(self, fused: bool) -> torch.optim.Optimizer:
        s = self.config.segmentation
        return torch.optim.AdamW(self.model.parameter_groups(s.backbone_lr_scale), lr=s.lr,
                                 weight_decay=s.weight_decay, fused=fused)

    def learning_rate(self, epoch_progress: float) -> float:
        s = self.config.segmentation
        return s.lr * (s.lr_drop_factor if math.floor(epoch_progress) >= s.lr_drop_epoch else 1.0)

    def begin_epoch(self, epoch: int) -> None:
        s = self.config.segmentation
        self.top_fraction = bootstrap_fraction(epoch, s.bootstrap_start_epoch, s.bootstrap_end_epoch,
                                               s.bootstrap_fraction)

    def compute_loss(self, model, batch):
        logits = model(batch["reference_rgb"], batch["reference_mask"], batch["query_rgb"])
        target = batch["query_mask"]
        loss = bootstrapped_cross_entropy(logits, target, self.top_fraction)
        with torch.no_grad():
            predicted = logits.detach() > 0
            truth = target > 0.5
            union = (predicted | truth).flatten(1).sum(1)
            iou = torch.where(union > 0, (predicted & truth).flatten(1).sum(1) / union.clamp(min=1), 1.0)
        return loss, {"iou": iou.mean().item(), "top_fraction": self.top_fraction}

    def describe_data(self) -> str:
        return self.dataset.describe()

    def start_record(self) -> dict:
        return {"segmenter": self.name, "pretrained": self.pretrained, "samples_per_epoch": len(self.dataset)}

    def checkpoint_fields(self) -> dict:
        return {"config": config_to_dict(self.config), "pretrained": self.pretrained,
                "architecture": {"encoder": self.model.encoder, "patch_size": self.model.patch_size}}


def finetune_segmenter(
    config: Config,
    pretrained: str | Path | None,
    output_dir: str | Path,
    *,
    name: str = "dropseg",
    device: str | torch.device | None = None,
    stop_after_steps: int | None = None,
    progress: bool = True,
) -> TrainingOutcome:
    """Fine-tune (or resume) a segmenter from ``pretrained`` (None: no pretraining) into ``output_dir``."""
    s = config.segmentation
    return finetune_downstream(
        s,
        read_data=lambda: segmentation_training_sets(config),
        build_model=lambda: build_segmenter_model(config, pretrained),
        build_task=lambda model, sets: SegmenterTask(
            config, model,
            SegmentationPairDataset(sets, s.samples_per_epoch, SegmentationCropSettings.from_config(s), seed=s.seed),
            name, None if pretrained is None else str(pretrained)),
        output_dir=output_dir, name=name, device=device, stop_after_steps=stop_after_steps, progress=progress,
    )


def load_finetuned_segmenter(path: str | Path, device: str | torch.device = "cpu") -> tuple[DropSeg, Config]:
    """A fine-tuned segmenter in eval mode, and the config it was trained with, from its checkpoint."""
    return load_finetuned(path, lambda config, encoder, patch_size: DropSeg(
        encoder=encoder, patch_size=patch_size, **segmenter_model_arguments(config)), device)
