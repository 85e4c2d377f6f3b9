"""DropTrack's training losses (OSTrack's): focal loss on a Gaussian centre heatmap, GIoU and L1.

Boxes are normalised to [0, 1] of the search crop. The heatmap follows CenterNet as OSTrack
uses it: the target centre cell is round(c * feature_size) and the Gaussian's radius comes
from CenterNet's ``gaussian_radius`` of the box size in feature cells.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torchvision.ops import box_convert, box_iou, generalized_box_iou_loss


def gaussian_radius(box_size: torch.Tensor, min_overlap: float = 0.7) -> torch.Tensor:
    """CenterNet's radius [...] for box sizes [..., 2] (w, h) in feature cells.

    The smallest of the three cases of CornerNet's bound (a corner shifted by r keeps IoU >=
    min_overlap), with CenterNet's form of the roots, ``(b + sqrt(b^2 - 4ac)) / 2``: OSTrack
    uses this form, so the targets match the recipe's.
    """
    width, height = box_size.unbind(-1)
    b1 = height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + (b1**2 - 4 * c1).sqrt()) / 2
    b2 = 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + (b2**2 - 16 * c2).sqrt()) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + (b3**2 - 4 * a3 * c3).sqrt()) / 2
    return torch.minimum(r1, torch.minimum(r2, r3))


def gaussian_heatmap(boxes_cxcywh: torch.Tensor, feature_size: int, min_overlap: float = 0.7) -> torch.Tensor:
    """Target heatmaps [B, 1, H, W] (H = W = feature_size) for boxes [B, 4] (cx, cy, w, h) in [0, 1].

    Each map is 1 at the centre cell round(cx * W), round(cy * H) and falls off as a Gaussian of
    sigma (2r + 1) / 6 inside the (2r + 1)^2 square around it, r = int(gaussian_radius(w*W, h*H)).
    A centre on or past the map's edge is clamped onto it (OSTrack would draw no peak at all).
    """
    if boxes_cxcywh.dim() != 2 or boxes_cxcywh.shape[1] != 4:
        raise ValueError(f"boxes must be [B, 4] (cx, cy, w, h), got {tuple(boxes_cxcywh.shape)}")
    if feature_size <= 0:
        raise ValueError(f"feature_size must be positive, got {feature_size}")
    boxes = boxes_cxcywh.detach().float() * feature_size
    centre = boxes[:, :2].round().clamp(0, feature_size - 1)  # [B, 2] (x, y) cells
    radius = gaussian_radius(boxes[:, 2:].clamp_min(0), min_overlap).clamp_min(0).floor()  # [B]
    sigma = (2 * radius + 1) / 6
    cells = torch.arange(feature_size, device=boxes.device, dtype=boxes.dtype)
    dx = cells[None, :] - centre[:, 0:1]  # [B, W]
    dy = cells[None, :] - centre[:, 1:2]  # [B, H]
    inside = (dy.abs() <= radius[:, None])[:, :, None] & (dx.abs() <= radius[:, None])[:, None, :]
    squared = dy[:, :, None] ** 2 + dx[:, None, :] ** 2  # [B, H, W]
    heatmap = torch.exp(-squared / (2 * sigma[:, None, None] ** 2)) * inside
    return heatmap[:, None]


def focal_heatmap_loss(
    pred: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, beta: float = 4.0, eps: float = 1e-12
) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss; pred (probabilities) and target [B, 1, H, W].

    Cells where target == 1 are positives; the others are negatives down-weighted by
    (1 - target)^beta. The sum over the batch is divided by the number of positives (by 1
    when there are none, as OSTrack). Probabilities are clamped to [eps, 1 - eps] inside the logs.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")
    pred = pred.float()
    positive = target.eq(1).float()
    negative_weight = (1 - target).pow(beta) * (1 - positive)
    positive_loss = pred.clamp_min(eps).log() * (1 - pred).pow(alpha) * positive
    negative_loss = (1 - pred).clamp_min(eps).log() * pred.pow(alpha) * negative_weight
    return -(positive_loss.sum() + negative_loss.sum()) / positive.sum().clamp_min(1)


def tracking_loss(
    outputs: Mapping[str, Any],
    target_boxes_cxcywh: torch.Tensor,
    weights: Sequence[float] = (1.0, 2.0, 5.0),
) -> tuple[torch.Tensor, dict[str, float]]:
    """OSTrack's loss: focal (heatmap) * w0 + GIoU * w1 + L1 * w2.

    outputs: DropTrack's dict (score_map [B, 1, H, W], pred_boxes [B, 4] cxcywh normalised);
    target_boxes_cxcywh [B, 4] normalised. GIoU and L1 compare the boxes as normalised xyxy,
    the targets clipped to the crop. Returns (loss, {"loss", "focal", "giou", "l1", "iou"} floats).
    Raises ValueError on non-finite predicted boxes (OSTrack stops training there too).
    """
    focal_weight, giou_weight, l1_weight = weights
    score_map, pred_boxes = outputs["score_map"], outputs["pred_boxes"].float()
    if pred_boxes.shape != target_boxes_cxcywh.shape:
        raise ValueError(f"pred_boxes {tuple(pred_boxes.shape)} and targets {tuple(target_boxes_cxcywh.shape)} differ")
    if not torch.isfinite(pred_boxes).all():
        raise ValueError("the network predicted non-finite boxes; stopping")
    pred_xyxy = box_convert(pred_boxes, "cxcywh", "xyxy")
    target_xyxy = box_convert(target_boxes_cxcywh.float(), "cxcywh", "xyxy").clamp(0.0, 1.0)
    giou = generalized_box_iou_loss(pred_xyxy, target_xyxy, reduction="mean")
    l1 = F.l1_loss(pred_xyxy, target_xyxy)
    focal = focal_heatmap_loss(score_map, gaussian_heatmap(target_boxes_cxcywh, score_map.shape[-1]))
    loss = focal_weight * focal + giou_weight * giou + l1_weight * l1
    with torch.no_grad():
        # torchvision has only the pairwise IoU; its diagonal is the matched pairs' (B is small).
        iou = box_iou(pred_xyxy, target_xyxy).diagonal().mean()
    stats = {"loss": loss.item(), "focal": focal.item(), "giou": giou.item(), "l1": l1.item(), "iou": iou.item()}
    return loss, stats
