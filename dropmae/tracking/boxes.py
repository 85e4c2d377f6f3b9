"""Axis-aligned box helpers on numpy arrays [..., 4] in continuous pixel coordinates.

xywh = (left, top, width, height), xyxy = (left, top, right, bottom), right = left + width.
All functions broadcast over leading dimensions. The benchmark metrics in
``dropmae.tracking.metrics`` keep their own IoU / centre formulas where an official toolkit
uses a different convention (pytracking's ``(w - 1) / 2`` centre, got10k's clipping).
"""

from __future__ import annotations

import numpy as np


def _as_boxes(boxes: np.ndarray, name: str = "boxes") -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.shape[-1:] != (4,):
        raise ValueError(f"{name} must have shape [..., 4], got {boxes.shape}")
    return boxes


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """[..., 4] (x, y, w, h) -> [..., 4] (x1, y1, x2, y2)."""
    boxes = _as_boxes(boxes)
    return np.concatenate((boxes[..., :2], boxes[..., :2] + boxes[..., 2:]), axis=-1)


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """[..., 4] (x1, y1, x2, y2) -> [..., 4] (x, y, w, h)."""
    boxes = _as_boxes(boxes)
    return np.concatenate((boxes[..., :2], boxes[..., 2:] - boxes[..., :2]), axis=-1)


def box_centers(boxes_xywh: np.ndarray) -> np.ndarray:
    """[..., 4] xywh -> [..., 2] centres (x + w / 2, y + h / 2)."""
    boxes = _as_boxes(boxes_xywh)
    return boxes[..., :2] + 0.5 * boxes[..., 2:]


def iou_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of xywh boxes a [..., 4] and b [..., 4] (broadcast) -> [...].

    Paired rows for a [N, 4], b [N, 4]; a [N, 1, 4] with b [1, M, 4] gives the [N, M] matrix.
    Boxes with w <= 0 or h <= 0 have area 0; an empty union gives IoU 0 (not NaN).
    """
    a_xyxy, b_xyxy = xywh_to_xyxy(_as_boxes(a, "a")), xywh_to_xyxy(_as_boxes(b, "b"))
    overlap = np.minimum(a_xyxy[..., 2:], b_xyxy[..., 2:]) - np.maximum(a_xyxy[..., :2], b_xyxy[..., :2])
    intersection = np.prod(np.clip(overlap, 0.0, None), axis=-1)
    area_a = np.prod(np.clip(a_xyxy[..., 2:] - a_xyxy[..., :2], 0.0, None), axis=-1)
    area_b = np.prod(np.clip(b_xyxy[..., 2:] - b_xyxy[..., :2], 0.0, None), axis=-1)
    union = area_a + area_b - intersection
    safe_union = np.where(union > 0, union, 1.0)
    return np.where(union > 0, intersection / safe_union, 0.0)


def clip_box_xywh(box: np.ndarray, width: float, height: float, margin: float = 0.0) -> np.ndarray:
    """Clip xywh boxes [..., 4] to the image [0, width] x [0, height].

    With margin > 0 each clipped box keeps at least ``margin`` pixels of width and height and at
    least ``margin`` pixels of overlap with the image, so a tracker that ran off the frame still
    has a box to crop around.
    """
    if margin < 0 or 2 * margin > min(width, height):
        raise ValueError(f"margin {margin} must lie in [0, min(width, height) / 2] for image {width}x{height}")
    x1y1x2y2 = xywh_to_xyxy(box)
    size = np.array([width, height], dtype=np.float64)
    top_left = np.clip(x1y1x2y2[..., :2], 0.0, size - margin)
    bottom_right = np.clip(x1y1x2y2[..., 2:], margin, size)
    # top_left <= size - margin, so a box grown to the margin still ends inside the image.
    extent = np.maximum(bottom_right - top_left, margin)
    return np.concatenate((top_left, extent), axis=-1)
