"""Tracking benchmark metrics computed as the official toolkits compute them.

GOT-10k (``evaluate_got10k``): the got10k toolkit (PyPI ``got10k`` 0.1.3,
``ExperimentGOT10k.report`` on the val split).

- IoU per frame with both boxes first clipped to the image (x, y to [0, W] x [0, H], then
  w to [0, W - x], h to [0, H - y]) and ``inter / (union + eps)``, eps = float64 machine eps,
  clipped to [0, 1]. A box with w <= 0 (prediction or ground truth) scores IoU 0.
- Frame 0 is excluded; of the rest only frames with ``cover > 0`` are scored (cover.label;
  absent targets have cover 0). Without cover labels we score the frames with ``visible``.
- Pooling is over frames: every scored frame of every sequence (and of every repetition file
  ``<seq>_<digits>.txt``) goes into one array. AO = its mean; SR_t = fraction with IoU > t
  (strict); success curve = fraction with IoU > t for t in linspace(0, 1, 101). The toolkit
  reports only SR0.5 (``sr``); our SR0.75 equals its ``succ_curve[75]``.
- FPS = mean of 1 / t over all frame times t > 0 of all ``<seq>_time.txt`` files (NaN
  dropped), pooled over frames; None when no time file exists (the toolkit says -1).
- Bad input: a prediction file whose length differs from the sequence is an error (the toolkit
  fails an assert without a message); a missing result file is an error naming the file and
  sequence (the toolkit names the sequence). A NaN box is an error naming the file and row: the
  toolkit scores it as a failure in SR and the curve but returns AO = NaN.

LaSOT / TNL2K / TrackingNet (``evaluate_ope``): pytracking's ``analysis/extract_results.py``
(``calc_seq_err_robust`` and ``extract_results`` with plot_bin_gap 0.05,
exclude_invalid_frames False) and ``plot_results.py`` (``get_auc_curve``, ``get_prec_curve``).

- NaN in a prediction or a negative width/height is an error ('Invalid results' there);
  a prediction with zero width or height at frame i >= 1 is replaced by the (already
  replaced) prediction of frame i - 1. NaN in the ground truth is an error.
- Length: a longer prediction file is truncated; a shorter one is an error for LaSOT and is
  padded with zero boxes (failures) for the other benchmarks.
- Frame 0's prediction is replaced by the ground truth.
- A frame is valid when all four ground-truth values are > 0 (x and y too: a box touching the
  left or top border at 0 is invalid there) and, for LaSOT only, the target is visible
  (not full_occlusion and not out_of_view). pytracking's TNL2K / TrackingNet sequences carry
  no visibility, so ``visible`` is ignored for them.
- Invalid frames: IoU = -1 and centre error = inf (failures at every threshold), normalised
  centre error = -1, which *passes* every threshold; for LaSOT the invisible frames instead
  get normalised centre error = inf. Every frame stays in the denominator.
- IoU in pytracking's pixel convention (corners x + w - 1, sizes + 1; the continuous IoU up to
  rounding), no eps, no clipping to [0, 1]: with fractional boxes the ground truth pasted into
  frame 0 can score 1 + 4e-16 and pass the threshold 1.0 (integer boxes, as LaSOT's, score 1).
  Centres at x + (w - 1) / 2; the normalised error divides both centres by the ground-truth
  (w, h) before the distance.
- Per sequence: success curve over thresholds i * 0.05, i = 0..20 (strictly greater);
  precision curve over centre errors 0..50 px and normalised precision over 0..0.5 (less or
  equal). Curves are averaged
  over sequences; AUC = mean of the averaged success curve x 100, P = precision curve at
  20 px x 100, P_norm = normalised curve at 0.2 x 100. pytracking keeps per-sequence curves
  in float32; we keep float64 (differences around 1e-7 relative). pytracking's thresholds come
  from torch.arange(0, 1.05, 0.05), whose vectorised CPU kernel adds lane * step to a base, so
  some values sit one ulp off i * 0.05 depending on the CPU's vector width (on a 4-lane
  build 0.6500000000000001 and 0.7500000000000001); that matters only for an IoU within one ulp of
  those thresholds. We use i * 0.05, which equals np.linspace(0, 1, 21).
- ``avg_overlap`` per sequence = mean IoU over valid frames (pytracking's avg_overlap_all).
- FPS as for GOT-10k (pytracking reports none); time files ``<seq>_time.txt``.

Where got10k's OTB-style experiments (ExperimentOTB / DTB70 / ...) differ from pytracking
(both: frame 0 replaced by the ground truth, strict IoU > t, centre error <= t, 21 / 51
thresholds, curves averaged over sequences): every ground truth box is valid (x = 0 or zero
size counts; no visibility); NaN predictions count as failures instead of raising; zero-size
predictions score IoU 0 instead of repeating the previous box; IoU clipped to <= 1 (frame 0
never passes 1.0); no normalised precision; any length mismatch fails an assert.
When none of these cases occurs, its success score x 100 and precision score x 100 equal
our AUC and P.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from dropmae.tracking.results import (
    ResultFileError,
    box_result_path,
    box_time_path,
    got10k_repetition_paths,
    got10k_result_path,
    got10k_time_path,
    read_box_result,
    read_times,
)

GOT10K_IOU_THRESHOLDS = np.linspace(0.0, 1.0, 101)
# i * 0.05: pytracking's torch.arange(0, 1.05, 0.05) up to one ulp (see the module docstring).
OPE_OVERLAP_THRESHOLDS = np.arange(21) * 0.05
OPE_CENTER_THRESHOLDS = np.arange(51, dtype=np.float64)
OPE_NORM_CENTER_THRESHOLDS = np.arange(51, dtype=np.float64) / 100.0
PRECISION_INDEX = 20  # 20 px, and 0.2 for the normalised curve
OPE_BENCHMARKS = ("lasot", "tnl2k", "trackingnet")


class MetricsError(ValueError):
    """Ground truth or sequence metadata that the protocol cannot score; the message names the sequence."""


# ------------------------------------------------------------------------------ shared helpers
def _ground_truth(seq: Any) -> np.ndarray:
    boxes = np.asarray(seq.boxes, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or len(boxes) < 2:
        raise MetricsError(f"sequence {seq.name}: ground truth must be [T, 4] with T >= 2, got {boxes.shape}")
    if np.isnan(boxes).any():
        frame = int(np.flatnonzero(np.isnan(boxes).any(axis=1))[0])
        raise MetricsError(f"sequence {seq.name}: ground truth of frame {frame} is NaN")
    return boxes


def _frame_mask(values: Any, num_frames: int, seq_name: str, what: str) -> np.ndarray:
    mask = np.asarray(values)
    if mask.shape != (num_frames,):
        raise MetricsError(f"sequence {seq_name}: {what} must have shape [{num_frames}], got {mask.shape}")
    return mask


def _reject_nan_rows(boxes: np.ndarray, path: Path) -> None:
    bad = np.flatnonzero(np.isnan(boxes).any(axis=1))
    if len(bad):
        raise ResultFileError(f"{path}: row {bad[0] + 1} (frame {bad[0]}) is NaN; {len(bad)} NaN rows in all")


def _mean_fps(frame_times: Iterable[np.ndarray]) -> float | None:
    """mean(1 / t) over all frame times t > 0 (NaN dropped), pooled; None without any time."""
    times = np.concatenate([np.asarray(t, dtype=np.float64).ravel() for t in frame_times] or [np.zeros(0)])
    times = times[~np.isnan(times)]
    times = times[times > 0]
    return float(np.mean(1.0 / times)) if len(times) else None


def _optional_times(path: Path) -> np.ndarray:
    return read_times(path) if path.is_file() else np.zeros(0)


# ------------------------------------------------------------------------------------ GOT-10k
def got10k_frame_ious(pred_xywh: np.ndarray, gt_xywh: np.ndarray, image_size: tuple[float, float]) -> np.ndarray:
    """IoU [T] of boxes [T, 4] as got10k's rect_iou(bound=(W, H)): both clipped to the image, eps in the union.

    Not ``boxes.iou_xywh``: the clipping and the eps change values at the last bits and would
    flip ``IoU > t`` decisions against the toolkit's.
    """
    width, height = image_size

    def clip_to_image(boxes: np.ndarray) -> np.ndarray:
        x = np.clip(boxes[:, 0], 0, width)
        y = np.clip(boxes[:, 1], 0, height)
        w = np.clip(boxes[:, 2], 0, width - x)
        h = np.clip(boxes[:, 3], 0, height - y)
        return np.stack((x, y, w, h), axis=1)

    pred, gt = clip_to_image(np.asarray(pred_xywh, np.float64)), clip_to_image(np.asarray(gt_xywh, np.float64))
    overlap = np.minimum(pred[:, :2] + pred[:, 2:], gt[:, :2] + gt[:, 2:]) - np.maximum(pred[:, :2], gt[:, :2])
    intersection = np.prod(np.maximum(overlap, 0.0), axis=1)
    union = np.prod(pred[:, 2:], axis=1) + np.prod(gt[:, 2:], axis=1) - intersection
    return np.clip(intersection / (union + np.finfo(float).eps), 0.0, 1.0)


def _image_size(seq: Any) -> tuple[float, float]:
    """(width, height) from ``seq.image_size`` or the first of ``seq.frames`` (header read only)."""
    size = getattr(seq, "image_size", None)
    if size is not None:
        return float(size[0]), float(size[1])
    frames = getattr(seq, "frames", None)
    if frames:
        with Image.open(frames[0]) as image:
            return float(image.width), float(image.height)
    raise MetricsError(
        f"sequence {seq.name}: needs image_size (width, height) or frames; "
        "the got10k toolkit clips boxes to the image (meta_info.ini resolution) before the IoU"
    )


def _got10k_summary(ious: np.ndarray) -> dict[str, float]:
    if len(ious) == 0:
        return {"ao": float("nan"), "sr50": float("nan"), "sr75": float("nan")}
    return {"ao": float(np.mean(ious)), "sr50": float(np.mean(ious > 0.5)), "sr75": float(np.mean(ious > 0.75))}


def evaluate_got10k(sequences: Iterable[Any], result_dir: str | os.PathLike) -> dict[str, Any]:
    """Score ``<result_dir>/<seq>/<seq>_NNN.txt`` against ground truth with the got10k toolkit's protocol.

    sequences: ``datasets.TrackingSequence`` or any object with ``.name``, ``.boxes`` [T, 4]
    xywh, ``.cover`` [T] or None, ``.visible`` [T] bool, and ``.frames`` (frame paths, the
    first one's size is the image size) or ``.image_size`` (W, H).
    Returns JSON-ready values: ao, sr50, sr75 (fractions), success_curve [101] over
    ``thresholds``, precision_curve [51] over ``precision_thresholds`` (centre error 0..50 px, as
    OTB / LaSOT; the toolkit has none), fps (or None), num_frames (scored frames pooled) and per_sequence
    {name: {ao, sr50, sr75, num_frames, fps}}.
    """
    pooled_ious, pooled_errors, pooled_times, per_sequence = [], [], [], {}
    for seq in sequences:
        gt = _ground_truth(seq)
        num_frames = len(gt)
        if seq.cover is not None:
            scored = _frame_mask(seq.cover, num_frames, seq.name, "cover")[1:] > 0
        else:
            scored = _frame_mask(seq.visible, num_frames, seq.name, "visible")[1:].astype(bool)
        image_size = _image_size(seq)

        paths = got10k_repetition_paths(result_dir, seq.name)
        if not paths:
            missing = got10k_result_path(result_dir, seq.name)
            raise ResultFileError(f"{missing}: result file of sequence {seq.name} not found")
        seq_ious, seq_errors = [], []
        for path in paths:
            pred = read_box_result(path, comma_only=True)
            if len(pred) != num_frames:
                raise ResultFileError(
                    f"{path}: {len(pred)} boxes for the {num_frames} frames of sequence {seq.name} "
                    "(the got10k toolkit requires one box per frame)"
                )
            _reject_nan_rows(pred, path)
            seq_ious.append(got10k_frame_ious(pred[1:], gt[1:], image_size)[scored])
            seq_errors.append(np.linalg.norm(_pixel_centers(pred[1:]) - _pixel_centers(gt[1:]), axis=1)[scored])
        seq_ious = np.concatenate(seq_ious)
        pooled_errors.append(np.concatenate(seq_errors))
        seq_times = _optional_times(got10k_time_path(result_dir, seq.name))
        pooled_ious.append(seq_ious)
        pooled_times.append(seq_times)
        per_sequence[seq.name] = {
            **_got10k_summary(seq_ious),
            "num_frames": len(seq_ious),
            "fps": _mean_fps([seq_times]),
        }

    if not per_sequence:
        raise MetricsError("evaluate_got10k: no sequences given")
    ious = np.concatenate(pooled_ious)
    if len(ious) == 0:
        raise MetricsError("evaluate_got10k: no frame with cover > 0 after frame 0 in any sequence")
    success_curve = np.mean(ious[:, None] > GOT10K_IOU_THRESHOLDS[None, :], axis=0)
    # The got10k toolkit reports no precision; this is the OTB / LaSOT one (centre error <= t px,
    # pixel centres as pytracking's), pooled over the scored frames as AO is.
    errors = np.concatenate(pooled_errors)
    precision_curve = np.mean(errors[:, None] <= OPE_CENTER_THRESHOLDS[None, :], axis=0)
    return {
        **_got10k_summary(ious),
        "success_curve": success_curve.tolist(),
        "thresholds": GOT10K_IOU_THRESHOLDS.tolist(),
        "precision_curve": precision_curve.tolist(),
        "precision_thresholds": OPE_CENTER_THRESHOLDS.tolist(),
        "fps": _mean_fps(pooled_times),
        "num_frames": len(ious),
        "per_sequence": per_sequence,
    }


# ------------------------------------------------------------------ LaSOT / TNL2K / TrackingNet
def _pixel_centers(boxes: np.ndarray) -> np.ndarray:
    # pytracking (and OTB) put the centre of a box of w pixels starting at pixel x at x + (w - 1) / 2.
    return boxes[:, :2] + 0.5 * (boxes[:, 2:] - 1.0)


def _pixel_iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    # pytracking's inclusive-pixel corners: last pixel x + w - 1, so a side is (right - left + 1).
    top_left = np.maximum(pred[:, :2], gt[:, :2])
    bottom_right = np.minimum(pred[:, :2] + pred[:, 2:] - 1.0, gt[:, :2] + gt[:, 2:] - 1.0)
    intersection = np.prod(np.clip(bottom_right - top_left + 1.0, 0.0, None), axis=1)
    union = np.prod(pred[:, 2:], axis=1) + np.prod(gt[:, 2:], axis=1) - intersection
    return intersection / union


def ope_frame_errors(
    pred_xywh: np.ndarray,
    gt_xywh: np.ndarray,
    benchmark: str,
    visible: np.ndarray | None = None,
    source: str = "predictions",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """pytracking's per-frame errors: (iou [T], centre error [T] px, normalised centre error [T], valid [T]).

    pred_xywh [T', 4] as read from the result file (any length T'), gt_xywh [T, 4];
    ``visible`` [T] is used for LaSOT only. ``source`` names the file in error messages.
    """
    if benchmark not in OPE_BENCHMARKS:
        raise ValueError(f"benchmark {benchmark!r} is not one of {OPE_BENCHMARKS}")
    pred = np.array(pred_xywh, dtype=np.float64)
    gt = np.asarray(gt_xywh, dtype=np.float64)
    num_frames = len(gt)
    bad = np.flatnonzero(np.isnan(pred).any(axis=1) | (pred[:, 2:] < 0).any(axis=1))
    if len(bad):
        raise ResultFileError(
            f"{source}: row {bad[0] + 1} (frame {bad[0]}) is NaN or has a negative size: {pred[bad[0]].tolist()} "
            "(pytracking rejects such results)"
        )
    # A zero-size prediction repeats the last non-zero-size one (frame 0 is always a source).
    keeps_own = (pred[:, 2:] != 0).all(axis=1)
    keeps_own[0] = True
    pred = pred[np.maximum.accumulate(np.where(keeps_own, np.arange(len(pred)), 0))]
    if len(pred) > num_frames:
        pred = pred[:num_frames]
    elif len(pred) < num_frames:
        if benchmark == "lasot":
            raise ResultFileError(f"{source}: {len(pred)} boxes for {num_frames} frames (LaSOT needs one per frame)")
        pred = np.concatenate((pred, np.zeros((num_frames - len(pred), 4))))
    pred[0] = gt[0]

    valid = (gt > 0).all(axis=1)
    if benchmark == "lasot":
        if visible is None:
            raise MetricsError(f"{source}: LaSOT needs the target visibility (full_occlusion, out_of_view)")
        visible = np.asarray(visible, dtype=bool)
        if visible.shape != (num_frames,):
            raise MetricsError(f"{source}: visible must have shape [{num_frames}], got {visible.shape}")
        valid &= visible

    with np.errstate(divide="ignore", invalid="ignore"):  # invalid frames are overwritten below
        pred_centers, gt_centers = _pixel_centers(pred), _pixel_centers(gt)
        center_error = np.linalg.norm(pred_centers - gt_centers, axis=1)
        norm_center_error = np.linalg.norm(pred_centers / gt[:, 2:] - gt_centers / gt[:, 2:], axis=1)
        iou = _pixel_iou(pred, gt)
    center_error[~valid] = np.inf
    norm_center_error[~valid] = -1.0
    iou[~valid] = -1.0
    if benchmark == "lasot":
        center_error[~visible] = np.inf
        norm_center_error[~visible] = np.inf
    if np.isnan(iou).any():
        raise MetricsError(f"{source}: NaN IoU at frame {int(np.flatnonzero(np.isnan(iou))[0])}")
    return iou, center_error, norm_center_error, valid


def ope_sequence_curves(
    iou: np.ndarray, center_error: np.ndarray, norm_center_error: np.ndarray
) -> dict[str, np.ndarray]:
    """Per-sequence success [21], precision [51], normalised precision [51] curves (fractions over all frames)."""
    num_frames = len(iou)
    return {
        "success": np.count_nonzero(iou[:, None] > OPE_OVERLAP_THRESHOLDS[None], axis=0) / num_frames,
        "precision": np.count_nonzero(center_error[:, None] <= OPE_CENTER_THRESHOLDS[None], axis=0) / num_frames,
        "norm_precision": np.count_nonzero(norm_center_error[:, None] <= OPE_NORM_CENTER_THRESHOLDS[None], axis=0)
        / num_frames,
    }


def evaluate_ope(sequences: Iterable[Any], result_dir: str | os.PathLike, benchmark: str) -> dict[str, Any]:
    """Score ``<result_dir>/<seq>.txt`` files with pytracking's protocol for ``benchmark`` (lasot, tnl2k, trackingnet).

    sequences: ``datasets.TrackingSequence`` or any object with ``.name``, ``.boxes`` [T, 4] xywh
    and ``.visible`` [T] bool (read for LaSOT only).
    Returns JSON-ready values: auc, precision, norm_precision (percent, as pytracking prints
    them), success_curve [21], precision_curve [51], norm_precision_curve [51] (fractions,
    averaged over sequences) with their thresholds, fps (or None) and per_sequence
    {name: {auc, precision, norm_precision, avg_overlap, num_frames, num_valid_frames, fps}}.
    """
    if benchmark not in OPE_BENCHMARKS:
        raise ValueError(f"benchmark {benchmark!r} is not one of {OPE_BENCHMARKS}")
    curves: dict[str, list[np.ndarray]] = {"success": [], "precision": [], "norm_precision": []}
    all_times, per_sequence = [], {}
    for seq in sequences:
        gt = _ground_truth(seq)
        path = box_result_path(result_dir, seq.name)
        if not path.is_file():
            raise ResultFileError(f"{path}: result file of sequence {seq.name} not found")
        pred = read_box_result(path)
        visible = getattr(seq, "visible", None) if benchmark == "lasot" else None
        iou, center_error, norm_center_error, valid = ope_frame_errors(pred, gt, benchmark, visible, str(path))
        seq_curves = ope_sequence_curves(iou, center_error, norm_center_error)
        for key, curve in seq_curves.items():
            curves[key].append(curve)
        seq_times = _optional_times(box_time_path(result_dir, seq.name))
        all_times.append(seq_times)
        per_sequence[seq.name] = {
            "auc": float(np.mean(seq_curves["success"]) * 100),
            "precision": float(seq_curves["precision"][PRECISION_INDEX] * 100),
            "norm_precision": float(seq_curves["norm_precision"][PRECISION_INDEX] * 100),
            "avg_overlap": float(np.mean(iou[valid])) if valid.any() else float("nan"),
            "num_frames": len(gt),
            "num_valid_frames": int(valid.sum()),
            "fps": _mean_fps([seq_times]),
        }
    if not per_sequence:
        raise MetricsError("evaluate_ope: no sequences given")
    mean_curves = {key: np.mean(np.stack(values), axis=0) for key, values in curves.items()}
    return {
        "benchmark": benchmark,
        "auc": float(np.mean(mean_curves["success"]) * 100),
        "precision": float(mean_curves["precision"][PRECISION_INDEX] * 100),
        "norm_precision": float(mean_curves["norm_precision"][PRECISION_INDEX] * 100),
        "success_curve": mean_curves["success"].tolist(),
        "precision_curve": mean_curves["precision"].tolist(),
        "norm_precision_curve": mean_curves["norm_precision"].tolist(),
        "overlap_thresholds": OPE_OVERLAP_THRESHOLDS.tolist(),
        "center_thresholds": OPE_CENTER_THRESHOLDS.tolist(),
        "norm_center_thresholds": OPE_NORM_CENTER_THRESHOLDS.tolist(),
        "fps": _mean_fps(all_times),
        "per_sequence": per_sequence,
    }


# ------------------------------------------------------------------------------------ plots
Curve = tuple[Sequence[float], Sequence[float]]


def _save_curve_plot(
    curves: Mapping[str, Curve],
    scores: Mapping[str, float],
    path: str | os.PathLike,
    title: str,
    xlabel: str,
    ylabel: str,
) -> Path:
    if not curves:
        raise ValueError(f"{path}: no curves to plot")
    # A bare Figure draws with the Agg canvas and leaves pyplot's global state alone.
    figure = Figure(figsize=(6.0, 4.5))
    axes = figure.add_subplot()
    line_styles = ("-", "--", "-.", ":")
    for rank, name in enumerate(sorted(curves, key=lambda n: -scores[n])):  # best first, as the toolkits order
        thresholds, values = curves[name]
        axes.plot(thresholds, values, line_styles[rank // 10 % 4], label=f"{name} [{scores[name]:.3f}]")
    axes.set(title=title, xlabel=xlabel, ylabel=ylabel, ylim=(0.0, 1.0))
    axes.set_xlim(min(np.min(c[0]) for c in curves.values()), max(np.max(c[0]) for c in curves.values()))
    axes.grid(True)
    axes.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7.5)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=150, bbox_inches="tight")
    return path


def save_success_plot(
    curves: Mapping[str, Curve],
    path: str | os.PathLike,
    title: str,
    scores: Mapping[str, float] | None = None,
) -> Path:
    """Success plot of {tracker: (IoU thresholds, success rates in [0, 1])}; legend ``name [score]``.

    The score defaults to the area under the curve (mean of the curve, the OPE AUC as a
    fraction); pass GOT-10k's AO in ``scores`` to label as the got10k toolkit does.
    """
    scores = dict(scores) if scores is not None else {n: float(np.mean(v)) for n, (_, v) in curves.items()}
    return _save_curve_plot(curves, scores, path, title, "Overlap threshold", "Success rate")


def save_precision_plot(
    curves: Mapping[str, Curve],
    path: str | os.PathLike,
    title: str,
    at_threshold: float = 20.0,
    xlabel: str = "Location error threshold [pixels]",
) -> Path:
    """Precision plot of {tracker: (centre-error thresholds, precision in [0, 1])}; legend ``name [precision]``.

    The legend score is the curve at ``at_threshold`` (20 px; use 0.2 and another xlabel for
    the normalised precision).
    """
    scores = {}
    for name, (thresholds, values) in curves.items():
        index = int(np.argmin(np.abs(np.asarray(thresholds, dtype=np.float64) - at_threshold)))
        scores[name] = float(np.asarray(values)[index])
    return _save_curve_plot(curves, scores, path, title, xlabel, "Precision")
