"""Learning-rate schedule of the recipe: per-iteration linear warmup, then half-cycle cosine."""

from __future__ import annotations

import math


def scaled_learning_rate(base_lr_per_256: float, effective_batch: int) -> float:
    """lr = blr * effective batch / 256 (the linear scaling rule of MAE)."""
    return base_lr_per_256 * effective_batch / 256


def learning_rate_at(epoch_progress: float, peak_lr: float, min_lr: float, warmup_epochs: float, total_epochs: float) -> float:
    """lr at a fractional epoch (epoch + step / steps_per_epoch)."""
    if epoch_progress < warmup_epochs:
        return peak_lr * epoch_progress / warmup_epochs
    span = max(total_epochs - warmup_epochs, 1e-12)
    progress = min((epoch_progress - warmup_epochs) / span, 1.0)
    return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
