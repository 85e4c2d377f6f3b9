"""Result files and benchmark metrics, cross-checked against the official got10k toolkit on the same files.

Each test writes a tiny benchmark in its real on-disk layout (GOT-10k val split; the DTB70 layout
that got10k's OTB-protocol experiment reads) with real JPEG frames, writes tracker results with
our writers, and runs both the toolkit's ``report`` and our evaluators on those files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from got10k.experiments import ExperimentDTB70, ExperimentGOT10k
from got10k.utils.metrics import rect_iou
from PIL import Image

from dropmae.tracking.boxes import (
    box_centers,
    clip_box_xywh,
    iou_xywh,
    xywh_to_xyxy,
    xyxy_to_xywh,
)
from dropmae.tracking.datasets import read_got10k
from dropmae.tracking.metrics import (
    GOT10K_IOU_THRESHOLDS,
    OPE_OVERLAP_THRESHOLDS,
    MetricsError,
    evaluate_got10k,
    evaluate_ope,
    got10k_frame_ious,
    ope_frame_errors,
    save_precision_plot,
    save_success_plot,
)
from dropmae.tracking.results import (
    ResultFileError,
    box_time_path,
    got10k_result_path,
    got10k_time_path,
    read_box_result,
    read_got10k_result,
    read_times,
    write_box_result,
    write_got10k_result,
)

IMAGE_WIDTH, IMAGE_HEIGHT = 64, 48


@dataclass
class Sequence:
    """The fields of dropmae.tracking.datasets.TrackingSequence that the metrics read."""

    name: str
    boxes: np.ndarray
    cover: np.ndarray | None
    visible: np.ndarray
    frames: list[Path]  # TrackingSequence.frames (a tuple there)


def write_frames(frame_dir: Path, num_frames: int, rng: np.random.Generator, name_format: str) -> list[Path]:
    frame_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(num_frames):
        pixels = rng.integers(0, 256, size=(IMAGE_HEIGHT, IMAGE_WIDTH, 3), dtype=np.uint8)
        path = frame_dir / (name_format % (index + 1))
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def random_boxes(rng: np.random.Generator, num_frames: int, decimals: int = 2) -> np.ndarray:
    """Boxes [T, 4] inside the image with x, y >= 1 (valid for pytracking as well)."""
    w = rng.uniform(6, 30, num_frames)
    h = rng.uniform(6, 22, num_frames)
    x = rng.uniform(1, IMAGE_WIDTH - w)
    y = rng.uniform(1, IMAGE_HEIGHT - h)
    return np.round(np.stack((x, y, w, h), axis=1), decimals)


def jitter(boxes: np.ndarray, rng: np.random.Generator, scale: float) -> np.ndarray:
    moved = boxes.copy()
    moved[:, :2] += rng.normal(0, scale, (len(boxes), 2))
    moved[:, 2:] *= np.exp(rng.normal(0, scale / 20, (len(boxes), 2)))
    return moved


# ------------------------------------------------------------------------------ GOT-10k layout
def build_got10k_val(root: Path, rng: np.random.Generator) -> list[Sequence]:
    """root/val/{list.txt, <seq>/{*.jpg, groundtruth.txt, absence.label, cover.label, cut_by_image.label,
    meta_info.ini}} as the GOT-10k val split ships, with some covers 0 and boxes cut by the image."""
    names, lengths = ["GOT-10k_Val_000001", "GOT-10k_Val_000002", "GOT-10k_Val_000003"], [9, 12, 7]
    split_dir = root / "val"
    split_dir.mkdir(parents=True)
    (split_dir / "list.txt").write_text("\n".join(names) + "\n")
    sequences = []
    for seq_index, (name, num_frames) in enumerate(zip(names, lengths, strict=True)):
        seq_dir = split_dir / name
        frames = write_frames(seq_dir, num_frames, rng, "%08d.jpg")
        boxes = random_boxes(rng, num_frames)
        cover = rng.integers(1, 9, num_frames)
        cover[[2, 5] if seq_index == 0 else [num_frames - 1]] = 0  # absent target: cover 0
        if seq_index == 0:
            boxes[3] = [50.0, 30.0, 25.0, 30.0]  # runs off the right and bottom: clipped by the toolkit
        if seq_index == 1:
            boxes[4, 2] = 0.0  # zero-width ground truth with cover > 0: the toolkit scores IoU 0
        np.savetxt(seq_dir / "groundtruth.txt", boxes, fmt="%.4f", delimiter=",")
        np.savetxt(seq_dir / "cover.label", cover, fmt="%d")
        np.savetxt(seq_dir / "absence.label", (cover == 0).astype(int), fmt="%d")
        np.savetxt(seq_dir / "cut_by_image.label", np.zeros(num_frames, int), fmt="%d")
        (seq_dir / "meta_info.ini").write_text(
            f"[METAINFO]\nurl: https://example.invalid/video\nbegin frame: 1\nend frame: {num_frames}\n"
            "object_class: toy\nmotion_class: walking\nmajor_class: object\nroot_class: object\n"
            f"motion_adverb: slowly\nresolution: ({IMAGE_WIDTH}, {IMAGE_HEIGHT})\n"
        )
        sequences.append(
            Sequence(
                name=name,
                boxes=np.loadtxt(seq_dir / "groundtruth.txt", delimiter=","),
                cover=np.loadtxt(seq_dir / "cover.label").astype(int),
                visible=np.loadtxt(seq_dir / "absence.label") == 0,
                frames=frames,
            )
        )
    return sequences


def toolkit_got10k_report(tmp_path: Path, tracker_names: list[str]) -> dict:
    experiment = ExperimentGOT10k(
        str(tmp_path / "got10k"),
        subset="val",
        result_dir=str(tmp_path / "results"),
        report_dir=str(tmp_path / "reports"),
    )
    return experiment.report(tracker_names)


def got10k_tracker_dir(tmp_path: Path, tracker: str) -> Path:
    return tmp_path / "results" / "GOT-10k" / tracker


@pytest.fixture
def got10k_val(tmp_path) -> list[Sequence]:
    return build_got10k_val(tmp_path / "got10k", np.random.default_rng(0))


def test_got10k_metrics_match_official_toolkit(tmp_path, got10k_val):
    rng = np.random.default_rng(1)
    for seq in got10k_val:
        num_frames = len(seq.boxes)
        # "small": three repetitions, as the toolkit runs non-deterministic trackers; it pools them all.
        small_dir = got10k_tracker_dir(tmp_path, "small")
        write_got10k_result(small_dir, seq.name, jitter(seq.boxes, rng, 1.5), rng.uniform(0.01, 0.05, num_frames))
        times = np.loadtxt(got10k_time_path(small_dir, seq.name))[:, None]
        for repetition in (2, 3):  # repetitions 2 and 3 in the toolkit's own _record format
            np.savetxt(
                got10k_result_path(small_dir, seq.name, repetition),
                jitter(seq.boxes, rng, 1.5),
                fmt="%.3f",
                delimiter=",",
            )
            times = np.concatenate((times, rng.uniform(0.01, 0.05, (num_frames, 1))), axis=1)
        np.savetxt(got10k_time_path(small_dir, seq.name), times, fmt="%.8f", delimiter=",")

        large = jitter(seq.boxes, rng, 6.0)
        large[2] = [-40.0, 5.0, 20.0, 10.0]  # entirely left of the image
        large[1, 2] = -3.0  # negative width: clipped to 0 by the toolkit
        write_got10k_result(got10k_tracker_dir(tmp_path, "large"), seq.name, large, rng.uniform(0.01, 0.05, num_frames))

    report = toolkit_got10k_report(tmp_path, ["small", "large"])
    scored_frames = sum(int((seq.cover[1:] > 0).sum()) for seq in got10k_val)
    ours = {name: evaluate_got10k(got10k_val, got10k_tracker_dir(tmp_path, name)) for name in ("small", "large")}
    for name, result in ours.items():
        official = report[name]["overall"]
        assert result["ao"] == pytest.approx(official["ao"], abs=1e-6)
        assert result["sr50"] == pytest.approx(official["sr"], abs=1e-6)
        np.testing.assert_allclose(result["success_curve"], official["succ_curve"], atol=1e-6)
        assert result["sr75"] == pytest.approx(official["succ_curve"][75], abs=1e-6)  # threshold 75 is exactly 0.75
        assert result["fps"] == pytest.approx(official["speed_fps"], rel=1e-6)
        for seq_name, seq_result in result["per_sequence"].items():
            assert seq_result["ao"] == pytest.approx(report[name]["seq_wise"][seq_name]["ao"], abs=1e-6)
    assert ours["small"]["num_frames"] == 3 * scored_frames  # three repetitions pooled, cover-0 frames out
    assert ours["large"]["num_frames"] == scored_frames
    assert ours["small"]["ao"] > ours["large"]["ao"] + 0.1


def test_got10k_metrics_on_sequences_from_the_dataset_reader(tmp_path, got10k_val):
    """evaluate_got10k takes read_got10k's TrackingSequence records (image size from their frames)."""
    rng = np.random.default_rng(10)
    for seq in got10k_val:
        boxes = jitter(seq.boxes, rng, 3.0)
        write_got10k_result(got10k_tracker_dir(tmp_path, "reader"), seq.name, boxes, np.full(len(boxes), 0.02))
    official = toolkit_got10k_report(tmp_path, ["reader"])["reader"]["overall"]
    ours = evaluate_got10k(read_got10k(tmp_path / "got10k", "val"), got10k_tracker_dir(tmp_path, "reader"))
    assert ours["ao"] == pytest.approx(official["ao"], abs=1e-6)
    np.testing.assert_allclose(ours["success_curve"], official["succ_curve"], atol=1e-6)
    assert ours["fps"] == pytest.approx(50.0)


def test_got10k_frame_ious_clip_to_image_like_rect_iou():
    rng = np.random.default_rng(2)
    gt = np.concatenate((random_boxes(rng, 50), [[50.0, 30.0, 30.0, 40.0], [10.0, 10.0, 0.0, 8.0]]))
    pred = np.concatenate((jitter(gt[:50], rng, 8.0), [[55.0, 20.0, 20.0, 40.0], [10.0, 10.0, 5.0, 8.0]]))
    bound = (IMAGE_WIDTH, IMAGE_HEIGHT)
    np.testing.assert_allclose(
        got10k_frame_ious(pred, gt, bound), rect_iou(pred.copy(), gt.copy(), bound=bound), rtol=0, atol=1e-12
    )
    assert got10k_frame_ious(pred, gt, bound)[-1] == 0.0  # zero-width ground truth scores 0


def test_got10k_bad_result_files(tmp_path, got10k_val):
    rng = np.random.default_rng(3)
    first, others = got10k_val[0], got10k_val[1:]
    tracker_dir = got10k_tracker_dir(tmp_path, "bad")
    for seq in others:
        write_got10k_result(tracker_dir, seq.name, jitter(seq.boxes, rng, 1.0), np.full(len(seq.boxes), 0.02))

    # One box short: ours names the file, the toolkit fails an assert without a message.
    short = jitter(first.boxes, rng, 1.0)[:-1]
    short_path = write_got10k_result(tracker_dir, first.name, short, np.full(len(short), 0.02))
    with pytest.raises(ResultFileError, match=rf"{short_path}: {len(short)} boxes for the {len(first.boxes)} frames"):
        evaluate_got10k(got10k_val, tracker_dir)
    with pytest.raises(AssertionError):
        toolkit_got10k_report(tmp_path, ["bad"])

    # One box too many: also an error for both (no silent truncation in the toolkit).
    longer = np.concatenate((first.boxes, first.boxes[-1:]))
    write_got10k_result(tracker_dir, first.name, longer, np.full(len(longer), 0.02))
    with pytest.raises(ResultFileError, match="boxes for the"):
        evaluate_got10k(got10k_val, tracker_dir)
    with pytest.raises(AssertionError):
        toolkit_got10k_report(tmp_path, ["bad"])

    # A NaN row: ours stops naming file and row; the toolkit returns AO = NaN but scores the frame as a
    # failure in SR and the curve, i.e. as a box with IoU 0 would be.
    boxes = jitter(first.boxes, rng, 1.0)
    nan_path = got10k_result_path(tracker_dir, first.name)
    with_nan = boxes.copy()
    with_nan[4] = np.nan
    np.savetxt(nan_path, with_nan, fmt="%.4f", delimiter=",")
    with pytest.raises(ResultFileError, match=rf"{nan_path}: row 5 \(frame 4\) is NaN"):
        evaluate_got10k(got10k_val, tracker_dir)
    official = toolkit_got10k_report(tmp_path, ["bad"])["bad"]["overall"]
    assert np.isnan(official["ao"])
    failed = boxes.copy()
    failed[4] = [-100.0, -100.0, 10.0, 10.0]  # outside the image: IoU 0
    write_got10k_result(tracker_dir, first.name, failed, np.full(len(failed), 0.02))
    ours = evaluate_got10k(got10k_val, tracker_dir)
    assert ours["sr50"] == pytest.approx(official["sr"], abs=1e-12)
    np.testing.assert_allclose(ours["success_curve"], official["succ_curve"], atol=1e-12)

    # A missing result file: the error names the expected file and the sequence.
    got10k_result_path(tracker_dir, first.name).unlink()
    with pytest.raises(ResultFileError, match=rf"{first.name}_001.txt: result file of sequence {first.name} not found"):
        evaluate_got10k(got10k_val, tracker_dir)
    with pytest.raises(Exception, match=f"Results for sequence {first.name} not found"):
        toolkit_got10k_report(tmp_path, ["bad"])


def test_got10k_needs_image_size_and_scored_frames(tmp_path, got10k_val):
    seq = got10k_val[0]
    write_got10k_result(tmp_path / "r", seq.name, seq.boxes, np.full(len(seq.boxes), 0.02))
    no_size = Sequence(seq.name, seq.boxes, seq.cover, seq.visible, frames=[])
    with pytest.raises(MetricsError, match=f"sequence {seq.name}: needs image_size"):
        evaluate_got10k([no_size], tmp_path / "r")
    all_absent = Sequence(seq.name, seq.boxes, np.zeros_like(seq.cover), seq.visible, seq.frames)
    with pytest.raises(MetricsError, match="no frame with cover > 0"):
        evaluate_got10k([all_absent], tmp_path / "r")
    # Without cover labels the visible frames are scored; the perfect tracker has AO 1.
    no_cover = Sequence(seq.name, seq.boxes, None, seq.visible, seq.frames)
    result = evaluate_got10k([no_cover], tmp_path / "r")
    assert result["ao"] == pytest.approx(1.0, abs=1e-3)  # 1e-3: the 4-decimal rounding of the boxes
    assert result["num_frames"] == int(seq.visible[1:].sum())


def test_got10k_precision_curve_counts_centre_errors_up_to_each_pixel_threshold(tmp_path, got10k_val):
    """Every box shifted 6 px right and 8 px down: centre error 10 px on every scored frame (not
    frame 0, which the protocol skips), so precision is 0 below 10 px and 1 from 10 px on."""
    seq = got10k_val[0]
    shifted = seq.boxes + np.array([6.0, 8.0, 0.0, 0.0])
    write_got10k_result(tmp_path / "r", seq.name, shifted, np.full(len(seq.boxes), 0.02))
    result = evaluate_got10k([seq], tmp_path / "r")
    assert result["precision_thresholds"] == list(range(51))
    curve = np.asarray(result["precision_curve"])
    assert (curve[:10] == 0).all() and (curve[10:] == 1).all()


# -------------------------------------------------------------------- OTB-style (DTB70) layout
def write_dtb70_sequence(root: Path, name: str, boxes: np.ndarray, rng: np.random.Generator) -> Sequence:
    """root/<seq>/{img/*.jpg, groundtruth_rect.txt}: the layout got10k's DTB70 experiment reads."""
    frames = write_frames(root / name / "img", len(boxes), rng, "%05d.jpg")
    np.savetxt(root / name / "groundtruth_rect.txt", boxes, fmt="%.4f", delimiter=",")
    gt = np.loadtxt(root / name / "groundtruth_rect.txt", delimiter=",")
    return Sequence(name, gt, None, np.ones(len(gt), bool), frames)


def toolkit_dtb70_report(tmp_path: Path, tracker_names: list[str]) -> dict:
    experiment = ExperimentDTB70(
        str(tmp_path / "dtb70"), result_dir=str(tmp_path / "results"), report_dir=str(tmp_path / "reports")
    )
    return experiment.report(tracker_names)


def dtb70_tracker_dir(tmp_path: Path, tracker: str) -> Path:
    return tmp_path / "results" / "DTB70" / tracker


def test_ope_auc_and_precision_match_toolkit_where_definitions_agree(tmp_path):
    """All ground truth valid and visible, no zero-size or NaN boxes: got10k's OTB protocol and pytracking's agree.

    Integer ground truth as LaSOT's: see test_ope_perfect_first_frame_can_score_above_one for fractional boxes.
    """
    rng = np.random.default_rng(4)
    sequences = [
        write_dtb70_sequence(tmp_path / "dtb70", f"seq{i}", random_boxes(rng, n, decimals=0), rng)
        for i, n in enumerate([8, 11, 6])
    ]
    for name, scale in (("near", 1.5), ("far", 7.0)):
        for seq in sequences:
            boxes = jitter(seq.boxes, rng, scale)
            boxes[:, 2:] = np.maximum(boxes[:, 2:], 1.0)
            write_box_result(dtb70_tracker_dir(tmp_path, name), seq.name, boxes, rng.uniform(0.01, 0.05, len(boxes)))
    report = toolkit_dtb70_report(tmp_path, ["near", "far"])
    for name in ("near", "far"):
        official = report[name]["overall"]
        for benchmark in ("lasot", "tnl2k", "trackingnet"):
            ours = evaluate_ope(sequences, dtb70_tracker_dir(tmp_path, name), benchmark)
            assert ours["auc"] == pytest.approx(official["success_score"] * 100, abs=1e-6)
            assert ours["precision"] == pytest.approx(official["precision_score"] * 100, abs=1e-6)
            np.testing.assert_allclose(ours["success_curve"], official["success_curve"], atol=1e-12)
            np.testing.assert_allclose(ours["precision_curve"], official["precision_curve"], atol=1e-12)
            for seq_name, seq_result in ours["per_sequence"].items():
                assert seq_result["auc"] == pytest.approx(
                    report[name]["seq_wise"][seq_name]["success_score"] * 100, abs=1e-6
                )
        assert 0 < ours["norm_precision"] <= 100
        assert ours["fps"] is not None and 20 < ours["fps"] < 100
    assert (
        evaluate_ope(sequences, dtb70_tracker_dir(tmp_path, "near"), "lasot")["auc"]
        > evaluate_ope(sequences, dtb70_tracker_dir(tmp_path, "far"), "lasot")["auc"] + 5
    )


# One hand-computed sequence pins every place where pytracking and got10k's OTB protocol differ.
QUIRK_GT = np.array(
    [
        [10, 10, 20, 20],
        [12, 10, 20, 20],
        [0, 10, 20, 20],  # x = 0: valid for got10k, invalid for pytracking (it needs all four values > 0)
        [14, 10, 20, 20],
        [16, 10, 20, 20],
    ],
    dtype=np.float64,
)
QUIRK_PRED = np.array(
    [
        [30, 30, 5, 5],  # frame 0: both replace it by the ground truth
        [12, 10, 20, 20],  # IoU 1
        [0, 10, 20, 20],  # IoU 1 for got10k; pytracking: invalid frame, IoU -1
        [14, 10, 20, 10],  # IoU exactly 0.5: fails "> 0.5" in both
        [16, 10, 0, 20],  # zero width: got10k IoU 0; pytracking repeats frame 3's box: IoU 180 / 420
    ],
    dtype=np.float64,
)


def test_ope_differences_from_got10k_otb_protocol_are_pinned(tmp_path):
    rng = np.random.default_rng(5)
    seq = write_dtb70_sequence(tmp_path / "dtb70", "quirks", QUIRK_GT, rng)
    tracker_dir = dtb70_tracker_dir(tmp_path, "quirky")
    write_box_result(tracker_dir, seq.name, QUIRK_PRED)

    iou, center_error, norm_center_error, valid = ope_frame_errors(QUIRK_PRED, QUIRK_GT, "tnl2k")
    np.testing.assert_allclose(iou, [1, 1, -1, 0.5, 180 / 420], atol=1e-12)
    np.testing.assert_allclose(center_error, [0, 0, np.inf, 5, np.sqrt(29)], atol=1e-12)
    # The invalid frame gets normalised error -1, which passes every normalised threshold.
    np.testing.assert_allclose(norm_center_error, [0, 0, -1, 0.25, np.sqrt(29) / 20], atol=1e-12)
    assert valid.tolist() == [True, True, False, True, True]

    ours = evaluate_ope([seq], tracker_dir, "tnl2k")
    official = toolkit_dtb70_report(tmp_path, ["quirky"])["quirky"]["overall"]
    # Success (21 thresholds): ours 0.8 up to t=0.4, 0.6 at 0.45, 0.4 from 0.5 to 0.95, 0 at 1.
    assert ours["auc"] == pytest.approx((9 * 0.8 + 0.6 + 10 * 0.4) / 21 * 100, abs=1e-9)
    assert official["success_score"] * 100 == pytest.approx((10 * 0.8 + 10 * 0.6) / 21 * 100, abs=1e-9)
    assert ours["precision"] == pytest.approx(80.0) and official["precision_score"] * 100 == pytest.approx(100.0)
    assert ours["norm_precision"] == pytest.approx(60.0)  # frames 0, 1 and the invalid frame 2

    # LaSOT uses the visibility: an invisible frame fails precision and normalised precision too;
    # the other benchmarks ignore it as pytracking's TNL2K / TrackingNet sequences carry none.
    seq.visible = np.array([True, False, True, True, True])
    lasot = evaluate_ope([seq], tracker_dir, "lasot")
    assert lasot["precision"] == pytest.approx(60.0) and lasot["norm_precision"] == pytest.approx(40.0)
    assert lasot["per_sequence"]["quirks"]["num_valid_frames"] == 3
    assert evaluate_ope([seq], tracker_dir, "tnl2k")["norm_precision"] == pytest.approx(60.0)


def test_ope_perfect_first_frame_can_score_above_one(tmp_path):
    """pytracking's pixel IoU ((x + w - 1) - x + 1) is not exact for fractional boxes: the ground truth pasted
    into frame 0 can score 1 + 4e-16 and then passes the threshold 1.0, which got10k's IoU (<= 1) never does."""
    gt = np.array([[1.1, 1.1, 2.2, 3.3], [5.0, 5.0, 10.0, 10.0]])
    pred = np.array([[0.0, 0.0, 1.0, 1.0], [5.0, 5.0, 10.0, 10.0]])
    iou = ope_frame_errors(pred, gt, "tnl2k")[0]
    assert iou[0] > 1.0 and iou[1] == 1.0
    seq = write_dtb70_sequence(tmp_path / "dtb70", "fractional", gt, np.random.default_rng(9))
    write_box_result(dtb70_tracker_dir(tmp_path, "perfect"), seq.name, pred)
    ours = evaluate_ope([seq], dtb70_tracker_dir(tmp_path, "perfect"), "tnl2k")
    official = toolkit_dtb70_report(tmp_path, ["perfect"])["perfect"]["overall"]
    assert ours["success_curve"][-1] == 0.5 and official["success_curve"][-1] == 0.0
    assert ours["auc"] - official["success_score"] * 100 == pytest.approx(0.5 / 21 * 100)


def test_threshold_grids():
    # pytracking's grid: torch's vectorised arange puts some values one ulp off i * 0.05, which ones
    # depending on the CPU's vector width; ours is i * 0.05 = got10k's linspace(0, 1, 21).
    pytracking_grid = torch.arange(0.0, 1.0 + 0.05, 0.05, dtype=torch.float64).numpy()
    assert len(pytracking_grid) == 21
    assert np.all(np.abs(OPE_OVERLAP_THRESHOLDS - pytracking_grid) <= np.spacing(pytracking_grid))
    assert np.array_equal(OPE_OVERLAP_THRESHOLDS, np.linspace(0, 1, 21))
    assert np.array_equal(GOT10K_IOU_THRESHOLDS, np.linspace(0, 1, 101)) and GOT10K_IOU_THRESHOLDS[75] == 0.75


def test_ope_bad_result_files(tmp_path):
    rng = np.random.default_rng(6)
    seq = write_dtb70_sequence(tmp_path / "dtb70", "quirks", QUIRK_GT, rng)
    seq.visible = np.ones(len(QUIRK_GT), bool)
    tracker_dir = dtb70_tracker_dir(tmp_path, "bad")
    path = write_box_result(tracker_dir, seq.name, QUIRK_PRED[:3])

    # Short: an error naming the file for LaSOT, zero boxes (failures) for the others; got10k asserts.
    with pytest.raises(ResultFileError, match=rf"{path}: 3 boxes for 5 frames"):
        evaluate_ope([seq], tracker_dir, "lasot")
    padded = evaluate_ope([seq], tracker_dir, "tnl2k")["per_sequence"]["quirks"]
    assert padded["avg_overlap"] == pytest.approx(np.mean([1.0, 1.0, 0.0, 0.0]))  # frames 0, 1, 3, 4 are valid
    with pytest.raises(AssertionError):
        toolkit_dtb70_report(tmp_path, ["bad"])

    # Long: truncated by pytracking (all benchmarks); got10k asserts.
    write_box_result(tracker_dir, seq.name, np.concatenate((QUIRK_PRED, QUIRK_PRED[:2])))
    exact_dir = dtb70_tracker_dir(tmp_path, "exact")
    write_box_result(exact_dir, seq.name, QUIRK_PRED)
    for benchmark in ("lasot", "tnl2k"):
        assert evaluate_ope([seq], tracker_dir, benchmark) == evaluate_ope([seq], exact_dir, benchmark)
    with pytest.raises(AssertionError):
        toolkit_dtb70_report(tmp_path, ["bad"])

    # NaN and negative sizes: rejected, naming file and row (got10k scores a NaN frame as a failure).
    with_nan = QUIRK_PRED.copy()
    with_nan[3] = np.nan
    np.savetxt(path, with_nan, fmt="%.4f", delimiter="\t")  # pytracking's own writer uses tabs
    with pytest.raises(ResultFileError, match=rf"{path}: row 4 \(frame 3\) is NaN"):
        evaluate_ope([seq], tracker_dir, "trackingnet")
    negative = QUIRK_PRED.copy()
    negative[2, 3] = -1.0
    np.savetxt(path, negative, fmt="%.4f", delimiter=",")
    with pytest.raises(ResultFileError, match=rf"{path}: row 3 \(frame 2\) is NaN or has a negative size"):
        evaluate_ope([seq], tracker_dir, "lasot")

    # Zero-size and NaN ground truth.
    zero_gt = QUIRK_GT.copy()
    zero_gt[3, 3] = 0.0
    iou, center_error, norm_center_error, valid = ope_frame_errors(QUIRK_PRED, zero_gt, "trackingnet")
    assert (iou[3], center_error[3], norm_center_error[3], valid[3]) == (-1.0, np.inf, -1.0, False)
    nan_gt = Sequence("nan_gt", np.where(np.arange(5)[:, None] == 2, np.nan, QUIRK_GT), None, seq.visible, [])
    with pytest.raises(MetricsError, match="sequence nan_gt: ground truth of frame 2 is NaN"):
        evaluate_ope([nan_gt], tracker_dir, "tnl2k")

    # Missing file, unknown benchmark, LaSOT without visibility.
    with pytest.raises(ResultFileError, match=r"missing.txt: result file of sequence missing not found"):
        evaluate_ope([Sequence("missing", QUIRK_GT, None, seq.visible, [])], tracker_dir, "tnl2k")
    with pytest.raises(ValueError, match="benchmark 'otb'"):
        evaluate_ope([seq], tracker_dir, "otb")
    write_box_result(tracker_dir, seq.name, QUIRK_PRED)
    with pytest.raises(MetricsError, match="LaSOT needs the target visibility"):
        evaluate_ope([Sequence("quirks", QUIRK_GT, None, None, [])], tracker_dir, "lasot")


# ------------------------------------------------------------------------------ files and boxes
def test_result_writers_and_readers_round_trip(tmp_path):
    rng = np.random.default_rng(7)
    boxes, times = random_boxes(rng, 6) + rng.uniform(0, 1e-3, (6, 4)), rng.uniform(0.001, 0.1, 6)
    got_path = write_got10k_result(tmp_path / "got", "GOT-10k_Test_000001", boxes, times)
    assert got_path == tmp_path / "got" / "GOT-10k_Test_000001" / "GOT-10k_Test_000001_001.txt"
    assert got_path.read_text().splitlines()[0].count(",") == 3
    np.testing.assert_allclose(read_got10k_result(tmp_path / "got", "GOT-10k_Test_000001"), boxes, atol=5e-5)
    np.testing.assert_allclose(read_times(got10k_time_path(tmp_path / "got", "GOT-10k_Test_000001")), times, atol=5e-9)

    ope_path = write_box_result(tmp_path / "ope", "airplane-1", boxes, times)
    assert ope_path == tmp_path / "ope" / "airplane-1.txt"
    np.testing.assert_allclose(read_box_result(ope_path), boxes, atol=5e-5)
    np.testing.assert_allclose(read_times(box_time_path(tmp_path / "ope", "airplane-1")), times, atol=5e-9)
    write_box_result(tmp_path / "ope", "airplane-1", boxes[:2])  # overwrite in place
    assert read_box_result(ope_path).shape == (2, 4)
    assert sorted(p.name for p in (tmp_path / "ope").iterdir()) == ["airplane-1.txt", "airplane-1_time.txt"]

    with pytest.raises(ValueError, match="box of frame 1 is not finite"):
        write_box_result(tmp_path / "ope", "bad", np.array([[1, 2, 3, 4], [np.nan, 2, 3, 4]]))
    with pytest.raises(ValueError, match=r"times must have shape \[6\]"):
        write_got10k_result(tmp_path / "got", "bad", boxes, times[:5])
    assert not (tmp_path / "got" / "bad").exists()


def test_readers_name_file_and_line_of_malformed_input(tmp_path):
    tabbed = tmp_path / "tabbed.txt"
    tabbed.write_text("10\t20\t30\t40\n11\t21\t31\t41\n")  # pytracking writes tabs
    assert read_box_result(tabbed).tolist() == [[10, 20, 30, 40], [11, 21, 31, 41]]
    with pytest.raises(ResultFileError, match=rf"{tabbed}:1: the got10k toolkit reads comma-separated"):
        read_box_result(tabbed, comma_only=True)

    short_line = tmp_path / "short_line.txt"
    short_line.write_text("1,2,3,4\n1,2,3,4\n1,2,3\n")
    with pytest.raises(ResultFileError, match=rf"{short_line}:3: expected 4 fields"):
        read_box_result(short_line)
    garbage = tmp_path / "garbage.txt"
    garbage.write_text("1,2,3,4\n1,2,x,4\n")
    with pytest.raises(ResultFileError, match=rf"{garbage}:2: non-numeric field"):
        read_box_result(garbage)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(ResultFileError, match=rf"{empty}: file holds no boxes"):
        read_box_result(empty)
    with pytest.raises(ResultFileError, match="nothere.txt: file is missing"):
        read_box_result(tmp_path / "nothere.txt")

    times = tmp_path / "times.txt"
    times.write_text("0.01,0.02\n0.03,0.04\n")  # the toolkit's layout: one column per repetition
    assert read_times(times).tolist() == [0.01, 0.02, 0.03, 0.04]
    times.write_text("0.01\nfast\n")
    with pytest.raises(ResultFileError, match=rf"{times}:2: not a time in seconds"):
        read_times(times)


def test_box_helpers():
    a = np.array([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 10.0, 10.0], [0.0, 0.0, 0.0, 5.0]])
    b = np.array([[5.0, 5.0, 10.0, 10.0], [5.0, 5.0, 10.0, 10.0], [0.0, 0.0, 0.0, 5.0]])
    np.testing.assert_allclose(iou_xywh(a, b), [25 / 175, 1.0, 0.0])
    assert iou_xywh(a[:, None], b[None]).shape == (3, 3)
    rng = np.random.default_rng(8)
    p, q = random_boxes(rng, 100), jitter(random_boxes(rng, 100), rng, 3.0)
    np.testing.assert_allclose(iou_xywh(p, q), rect_iou(p.copy(), q.copy()), atol=1e-12)  # the toolkit's IoU
    np.testing.assert_allclose(xyxy_to_xywh(xywh_to_xyxy(p)), p, atol=1e-12)
    np.testing.assert_allclose(box_centers(a[:2]), [[5, 5], [10, 10]])
    clipped = clip_box_xywh(
        np.array([[-50.0, -5.0, 20.0, 20.0], [100.0, 10.0, 30.0, 5.0], [10.0, 10.0, 5.0, 5.0]]), 64, 48, 2
    )
    np.testing.assert_allclose(clipped, [[0, 0, 2, 15], [62, 10, 2, 5], [10, 10, 5, 5]])
    with pytest.raises(ValueError, match=r"shape \[\.\.\., 4\]"):
        iou_xywh(np.zeros((3, 3)), np.zeros((3, 3)))


def test_plots_are_written_as_png(tmp_path):
    success = {
        "DropTrack": (GOT10K_IOU_THRESHOLDS, np.clip(1.2 - GOT10K_IOU_THRESHOLDS, 0, 1)),
        "TwinMAE": (GOT10K_IOU_THRESHOLDS, 1 - GOT10K_IOU_THRESHOLDS),
    }
    precision = {"DropTrack": (np.arange(51.0), np.linspace(0, 1, 51) ** 0.5)}
    paths = [
        save_success_plot(
            success,
            tmp_path / "plots" / "success.png",
            "Success plots on GOT-10k",
            scores={"DropTrack": 0.7, "TwinMAE": 0.5},
        ),
        save_success_plot(success, tmp_path / "auc.png", "Success plots of OPE"),
        save_precision_plot(precision, tmp_path / "precision.png", "Precision plots of OPE"),
    ]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as image:
            assert image.width > 200 and image.height > 200
    with pytest.raises(ValueError, match="no curves"):
        save_success_plot({}, tmp_path / "none.png", "empty")
