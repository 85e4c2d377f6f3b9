"""DAVIS semi-supervised evaluation: region similarity J, boundary F-measure F, and their means.

Conventions are those of the official davis2017-evaluation code (vos-benchmark repeats its
per-frame J and F), read from its source:

- J is the IoU of the object's predicted and ground-truth masks, 1 when both are empty.
- F compares one-pixel boundary maps: a pixel is a boundary pixel when it differs from its
  east, south or south-east neighbour (the last row compares east only, the last column
  south only, the bottom-right pixel never counts), so the image border is no boundary.
  A boundary pixel is matched when the other map has a boundary pixel within a disk of
  radius ceil(bound_th * image diagonal) (bound_th < 1) or bound_th pixels (bound_th >= 1).
  P = matched predicted / predicted boundary pixels, R = matched true / true boundary
  pixels, F = 2PR / (P + R), 0 when P + R = 0. No predicted boundary: P = 1, R = 0
  (F = 0) if the truth has one; no true boundary: P = 0, R = 1 (F = 0) if the prediction
  has one; neither: F = 1.
- Scored frames: the annotated frames without the first and the last. Ground-truth void
  (255) counts as background, as in davis2017-evaluation's semi-supervised mode.
- Per object: mean J and mean F over its scored frames, recall = share of scored frames with
  a value > 0.5; the benchmark's J, F and recalls are means over all objects of all
  sequences, and J&F = (J + F) / 2. Values are fractions in [0, 1] (papers print x100).

Where the two official codes differ, we follow davis2017-evaluation:

- Objects are those of the first frame, scored on every scored frame. vos-benchmark scores
  an object only from the first scored frame where it shows (in truth or prediction), and
  drops an object that never shows in the scored frames; the two agree whenever every
  object shows in the second annotated frame. tests/test_segmentation_metrics.py pins the
  difference.
- Result labels that are no object of the sequence are ignored (they change no object's
  score); davis2017-evaluation stops on a label above the first frame's largest.
- DAVIS 2016 (single object): any non-zero result label is the object, so 0/1 and 0/255
  result PNGs both work (hkchengrex's davis2016-evaluation binarises results with > 128).
- YouTube-VOS objects that start after the first frame are scored on the scored frames
  after their first annotation (their reference mask is given, not predicted).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from skimage.morphology import disk

from dropmae.data.images import write_label_mask
from dropmae.segmentation.datasets import VOID_LABEL, SegmentationDataError, SegmentationSequence, _open_image

DEFAULT_BOUND_TH = 0.008
RECALL_THRESHOLD = 0.5
# cv2.dilate takes at most 128 channels here (OpenCV's 512-channel limit over its 4-byte
# working type), so frame stacks are dilated in chunks of this many frames.
_DILATE_CHANNELS = 128


def _mask_stacks(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.dtype != np.bool_ or gt.dtype != np.bool_:
        raise ValueError(f"masks must be boolean (one object each), got {pred.dtype} and {gt.dtype}")
    if pred.ndim != 3 or pred.shape != gt.shape:
        raise ValueError(f"masks must be two [T, H, W] stacks of one shape, got {pred.shape} and {gt.shape}")
    return pred, gt


def region_similarity(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """J [T] float64: IoU of each frame's predicted and true mask (bool [T, H, W]); 1 when both are empty."""
    pred, gt = _mask_stacks(pred, gt)
    intersection = np.count_nonzero(pred & gt, axis=(1, 2))
    union = np.count_nonzero(pred | gt, axis=(1, 2))
    return np.where(union == 0, 1.0, intersection / np.maximum(union, 1))


def boundary_map(masks: np.ndarray) -> np.ndarray:
    """One-pixel boundaries bool [T, H, W] of masks bool [T, H, W], DAVIS's convention (module docstring).

    Written out here rather than taken from skimage.segmentation.find_boundaries, whose
    modes mark other pixels (both sides, or the image border) and would change F.
    """
    east = masks[:, :, :-1] ^ masks[:, :, 1:]  # [T, H, W-1]: pixel differs from its east neighbour
    south = masks[:, :-1, :] ^ masks[:, 1:, :]  # [T, H-1, W]
    south_east = masks[:, :-1, :-1] ^ masks[:, 1:, 1:]  # [T, H-1, W-1]
    boundary = np.zeros_like(masks)
    boundary[:, :-1, :-1] = east[:, :-1] | south[:, :, :-1] | south_east
    boundary[:, -1, :-1] = east[:, -1]
    boundary[:, :-1, -1] = south[:, :, -1]
    return boundary


def boundary_radius(height: int, width: int, bound_th: float = DEFAULT_BOUND_TH) -> int:
    """Match tolerance in pixels: ceil(bound_th * image diagonal) for bound_th < 1, else bound_th."""
    return int(bound_th) if bound_th >= 1 else math.ceil(bound_th * math.hypot(height, width))


def _dilate(maps: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Dilate each map of bool [T, H, W] by ``kernel``; one cv2 call per chunk of frames (as channels)."""
    channels_last = np.ascontiguousarray(maps.transpose(1, 2, 0)).view(np.uint8)  # [H, W, T]
    chunks = [
        cv2.dilate(channels_last[:, :, start : start + _DILATE_CHANNELS], kernel).reshape(*maps.shape[1:], -1)
        for start in range(0, maps.shape[0], _DILATE_CHANNELS)
    ]
    return np.concatenate(chunks, axis=2).transpose(2, 0, 1).view(np.bool_)


def boundary_f_measure(pred: np.ndarray, gt: np.ndarray, bound_th: float = DEFAULT_BOUND_TH) -> np.ndarray:
    """F [T] float64: boundary F-measure of each frame's predicted and true mask (bool [T, H, W])."""
    pred, gt = _mask_stacks(pred, gt)
    if bound_th <= 0:
        raise ValueError(f"bound_th must be > 0, got {bound_th}")
    if pred.shape[0] == 0:
        return np.zeros(0)
    pred_boundary, gt_boundary = boundary_map(pred), boundary_map(gt)
    # skimage's disk is the structuring element the official code uses.
    kernel = disk(boundary_radius(*pred.shape[1:], bound_th)).astype(np.uint8)
    pred_near = _dilate(pred_boundary, kernel)
    gt_near = _dilate(gt_boundary, kernel)
    pred_count = np.count_nonzero(pred_boundary, axis=(1, 2))
    gt_count = np.count_nonzero(gt_boundary, axis=(1, 2))
    pred_matched = np.count_nonzero(pred_boundary & gt_near, axis=(1, 2))
    gt_matched = np.count_nonzero(gt_boundary & pred_near, axis=(1, 2))
    # An empty side scores 1 there; the matched count of the other side is then 0 (nothing to
    # match against), which reproduces the official (P, R) = (1, 0), (0, 1) and (1, 1) cases.
    precision = np.where(pred_count == 0, 1.0, pred_matched / np.maximum(pred_count, 1))
    recall = np.where(gt_count == 0, 1.0, gt_matched / np.maximum(gt_count, 1))
    total = precision + recall
    return np.where(total == 0, 0.0, 2 * precision * recall / np.where(total == 0, 1.0, total))


# ---------------------------------------------------------------------------- benchmark


def read_result_mask(path: str | os.PathLike, size: tuple[int, int], binary: bool = False) -> np.ndarray:
    """A segmenter's labels [H, W] uint8 from an index PNG (palette or greyscale indices).

    ``size`` (height, width) must match; ``binary``: any non-zero label is object 1.
    """
    path = Path(path)
    with _open_image(path, "result mask") as image:
        if image.mode not in ("P", "L", "1"):
            raise SegmentationDataError(f"{path}: {image.mode} result mask; expected a palette or greyscale index PNG")
        if (image.height, image.width) != tuple(size):
            raise SegmentationDataError(
                f"{path}: result mask is {image.width}x{image.height} (WxH) but the annotation is {size[1]}x{size[0]}"
            )
        labels = np.array(image).astype(np.uint8, copy=False)
    return (labels != 0).astype(np.uint8) if binary else labels


def _scored_frames(sequence: SegmentationSequence) -> tuple[int, ...]:
    annotated = sequence.annotated_indices
    if len(annotated) < 3:
        raise SegmentationDataError(
            f"{sequence.annotations[annotated[0]].parent}: sequence {sequence.name!r} has {len(annotated)} annotated "
            "frame(s); DAVIS scores those between the first and the last, so at least 3 are needed "
            "(test splits are scored by their benchmark's server)"
        )
    return annotated[1:-1]


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def evaluate_davis(
    sequences: Sequence[SegmentationSequence], result_root: str | os.PathLike, bound_th: float = DEFAULT_BOUND_TH
) -> dict:
    """Score result PNGs ``result_root/<seq>/<frame stem>.png`` against the sequences' annotations.

    Returns ``{"jf", "j", "f", "j_recall", "f_recall", "objects",
    "per_sequence": {seq: {"objects": [ids], "j": [per object], "f": [per object]}}}``, every
    score a fraction in [0, 1] (module docstring for the protocol). A missing, unreadable
    or wrongly sized result PNG raises SegmentationDataError naming it.
    """
    if not sequences:
        raise ValueError("no sequences to evaluate")
    result_root = Path(result_root)
    j_means, f_means, j_recalls, f_recalls = [], [], [], []
    per_sequence = {}
    for sequence in sequences:
        scored = _scored_frames(sequence)
        truth = np.stack([sequence.read_annotation(index) for index in scored])  # [T, H, W] uint8
        truth[truth == VOID_LABEL] = 0
        predicted = np.stack(
            [
                read_result_mask(
                    result_root / sequence.name / sequence.mask_name(index), truth.shape[1:], sequence.binary
                )
                for index in scored
            ]
        )
        scored_array = np.asarray(scored)
        record = {"objects": [], "j": [], "f": []}
        for object_id in sequence.object_ids:
            frames = scored_array > sequence.object_first_frame[object_id]
            if not frames.any():  # a YouTube-VOS object whose reference mask is the last scored frame or later
                continue
            pred_masks, true_masks = predicted[frames] == object_id, truth[frames] == object_id
            j = region_similarity(pred_masks, true_masks)
            f = boundary_f_measure(pred_masks, true_masks, bound_th)
            record["objects"].append(object_id)
            record["j"].append(float(j.mean()))
            record["f"].append(float(f.mean()))
            j_recalls.append(float(np.mean(j > RECALL_THRESHOLD)))
            f_recalls.append(float(np.mean(f > RECALL_THRESHOLD)))
        j_means += record["j"]
        f_means += record["f"]
        per_sequence[sequence.name] = record
    j, f = _mean(j_means), _mean(f_means)
    return {
        "jf": (j + f) / 2,
        "j": j,
        "f": f,
        "j_recall": _mean(j_recalls),
        "f_recall": _mean(f_recalls),
        "objects": len(j_means),
        "per_sequence": per_sequence,
    }


def copy_first_mask_baseline(sequences: Sequence[SegmentationSequence], result_root: str | os.PathLike) -> Path:
    """Write the trivial segmenter's results under ``result_root``: every frame gets the first mask.

    ``result_root/<seq>/<frame stem>.png`` for every frame, as DAVIS palette PNGs. Objects
    that start later (YouTube-VOS) are pasted from their first annotation on, as a
    segmenter receives them. Void is written as background. This is the floor a segmenter
    must beat. Returns ``result_root``.
    """
    result_root = Path(result_root)
    for sequence in sequences:
        starts: dict[int, list[int]] = {}
        for object_id, index in sequence.object_first_frame.items():
            starts.setdefault(index, []).append(object_id)
        canvas = np.zeros(sequence.read_annotation(sequence.annotated_indices[0]).shape, dtype=np.uint8)
        for index in range(len(sequence)):
            if index in starts:
                labels = sequence.read_annotation(index)
                for object_id in starts[index]:
                    canvas[labels == object_id] = object_id
            write_label_mask(result_root / sequence.name / sequence.mask_name(index), canvas)
    return result_root
