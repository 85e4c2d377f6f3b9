"""DropSeg's training loss: STCN's bootstrapped cross-entropy and its warm-up schedule.

Bootstrapping averages the loss over only the hardest pixels of each image. STCN (and the
DropSeg fork) starts with the plain mean and, between two iteration counts, narrows the share
of pixels linearly to 15 %:

    fraction(step) = 1                                                    step <  warm_start
                   = final + (1 - final) * (warm_end - step) / (warm_end - warm_start)
                                                                          warm_start <= step <= warm_end
                   = final                                                step >  warm_end

so it is exactly 1 at warm_start and exactly ``final`` at warm_end (STCN: warm_start 20,000,
warm_end 70,000, final 0.15, step = the 0-based training iteration). Each image keeps
int(pixels * fraction) pixels (STCN floors), at least one here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# STCN's BootstrappedCE defaults.
STCN_WARM_START = 20_000
STCN_WARM_END = 70_000
STCN_FINAL_FRACTION = 0.15


def bootstrap_fraction(
    step: int, warm_start: int = STCN_WARM_START, warm_end: int = STCN_WARM_END, final: float = STCN_FINAL_FRACTION
) -> float:
    """Share of the hardest pixels the loss averages over at training step ``step`` (see module doc)."""
    if not 0 <= warm_start <= warm_end:
        raise ValueError(f"need 0 <= warm_start <= warm_end, got warm_start={warm_start}, warm_end={warm_end}")
    if not 0.0 < final <= 1.0:
        raise ValueError(f"final fraction must be in (0, 1], got {final}")
    if step < warm_start:
        return 1.0
    if step >= warm_end:  # also covers warm_start == warm_end (a step, no ramp)
        return float(final)
    return final + (1.0 - final) * (warm_end - step) / (warm_end - warm_start)


def bootstrapped_cross_entropy(logits: torch.Tensor, target: torch.Tensor, top_fraction: float = 1.0) -> torch.Tensor:
    """Mean per-pixel cross-entropy over the ``top_fraction`` hardest pixels of each image -> scalar.

    logits [B, 1, H, W]: binary; target [B, 1, H, W] or [B, H, W] in {0, 1} (any dtype),
        per-pixel loss = binary cross-entropy with logits.
    logits [B, C, H, W], C >= 2: target [B, H, W] integer class indices, per-pixel softmax
        cross-entropy (STCN's form over background + objects).
    Each image keeps its k = max(1, int(H * W * top_fraction)) largest pixel losses; the result
    is their mean over all images (k is the same for every image). top_fraction = 1: plain mean.
    Computed in float32.
    """
    if not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    if logits.dim() != 4:
        raise ValueError(f"logits must be [B, C, H, W], got {tuple(logits.shape)}")
    batch, channels, height, width = logits.shape
    logits = logits.float()
    if channels == 1:
        if target.dim() == 3:
            target = target[:, None]
        if tuple(target.shape) != (batch, 1, height, width):
            raise ValueError(
                f"binary target must be [B, 1, H, W] or [B, H, W] = {(batch, height, width)}, got {tuple(target.shape)}"
            )
        per_pixel = F.binary_cross_entropy_with_logits(logits, target.float(), reduction="none")
    else:
        if tuple(target.shape) != (batch, height, width) or target.is_floating_point():
            raise ValueError(
                f"{channels}-class target must be integer class indices [B, H, W] = {(batch, height, width)}, "
                f"got {target.dtype} {tuple(target.shape)}"
            )
        per_pixel = F.cross_entropy(logits, target.long(), reduction="none")
    per_pixel = per_pixel.reshape(batch, height * width)
    num_pixels = height * width
    keep = max(1, int(num_pixels * top_fraction))
    if keep >= num_pixels:
        return per_pixel.mean()
    return per_pixel.topk(keep, dim=1, sorted=False).values.mean()
