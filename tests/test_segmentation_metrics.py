"""DAVIS J/F metrics: hand-computed edge cases, and agreement with vos-benchmark on folders written here."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from vos_benchmark.benchmark import benchmark as vos_benchmark
from vos_benchmark.evaluator import Evaluator

from dropmae.data.images import davis_palette
from dropmae.demo.benchmark import DemoBenchmarkSettings, build_demo_benchmark
from dropmae.segmentation.datasets import SegmentationDataError, read_davis, read_label_mask, read_youtube_vos
from dropmae.segmentation.metrics import (
    boundary_f_measure,
    boundary_map,
    boundary_radius,
    copy_first_mask_baseline,
    evaluate_davis,
    region_similarity,
)

PALETTE = list(davis_palette())


def write_png(path: Path, labels: np.ndarray, mode: str = "P") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(labels.astype(np.uint8), mode="L")
    if mode == "P":
        image.putpalette(PALETTE)
    image.save(path)


def write_davis(root: Path, truth: dict[str, np.ndarray], split: str = "val") -> Path:
    """A DAVIS 2017 folder of ``truth`` (name -> labels [T, H, W]) with real JPEG frames."""
    for name, labels in truth.items():
        for t, frame_labels in enumerate(labels):
            frame = root / "JPEGImages" / "480p" / name / f"{t:05d}.jpg"
            frame.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.stack([frame_labels * 40] * 3, axis=-1).astype(np.uint8)).save(frame)
            write_png(root / "Annotations" / "480p" / name / f"{t:05d}.png", frame_labels)
    (root / "ImageSets" / "2017").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "2017" / f"{split}.txt").write_text("".join(f"{name}\n" for name in truth))
    return root


def write_results(root: Path, results: dict[str, np.ndarray]) -> Path:
    for name, labels in results.items():
        for t, frame_labels in enumerate(labels):
            write_png(root / name / f"{t:05d}.png", frame_labels)
    return root


def ellipses(rng: np.random.Generator, frames: int, height: int, width: int, objects: int) -> np.ndarray:
    """Labels [T, H, W]: ellipses moving with constant velocity, later ids drawn on top; object k starts
    in the k-th vertical band so every object shows in the first two frames."""
    yy, xx = np.mgrid[:height, :width]
    labels = np.zeros((frames, height, width), dtype=np.uint8)
    band = width / objects
    for object_id in range(1, objects + 1):
        ry, rx = rng.uniform(0.15, 0.3) * height, rng.uniform(0.25, 0.45) * band
        cy, cx = rng.uniform(ry, height - ry), (object_id - 0.5) * band
        vy, vx = rng.uniform(-1.5, 1.5, size=2)
        for t in range(frames):
            inside = ((yy - cy - vy * t) / ry) ** 2 + ((xx - cx - vx * t) / rx) ** 2 <= 1
            labels[t][inside] = object_id
    return labels


def perturb(rng: np.random.Generator, truth: np.ndarray, objects: int) -> np.ndarray:
    """A plausible segmenter's output: shifted masks, lost objects, spurious blobs, a stray label."""
    predicted = np.zeros_like(truth)
    frames, height, width = truth.shape
    for t in range(frames):
        dy, dx = rng.integers(-3, 4, size=2)
        predicted[t] = np.roll(truth[t], (dy, dx), axis=(0, 1))
        if rng.random() < 0.3:  # the segmenter loses one object in this frame
            predicted[t][predicted[t] == rng.integers(1, objects + 1)] = 0
        if rng.random() < 0.4:  # a spurious blob of some object, or of a label that is no object
            y, x = rng.integers(0, height - 6), rng.integers(0, width - 6)
            predicted[t, y : y + rng.integers(2, 6), x : x + rng.integers(2, 6)] = rng.choice([1, 2, objects + 4])
    return predicted


def vos_scores(gt_root: Path, result_root: Path) -> tuple[float, float, float, dict]:
    """vos-benchmark's global J&F, J, F and per-object (J, F), as fractions."""
    jf, j, f, per_object = vos_benchmark([str(gt_root)], [str(result_root)], num_processes=1, verbose=False)
    objects = {
        (name, object_id): (iou[object_id] / 100, boundary[object_id] / 100)
        for name, (iou, boundary) in per_object[0].items()
        for object_id in iou
    }
    return jf[0] / 100, j[0] / 100, f[0] / 100, objects


def vos_recalls(gt_root: Path, result_root: Path, names: list[str]) -> tuple[float, float]:
    """J and F recall (share of scored frames > 0.5, mean over objects) from vos-benchmark's per-frame values."""
    j_recalls, f_recalls = [], []
    for name in names:
        evaluator = Evaluator(name=name)
        for png in sorted((gt_root / name).iterdir())[1:-1]:
            evaluator.feed_frame(np.array(Image.open(result_root / name / png.name)), np.array(Image.open(png)))
        for object_id in sorted(evaluator.objects_in_gt):
            j_recalls.append(np.mean(np.array(evaluator.object_iou[object_id]) > 0.5))
            f_recalls.append(np.mean(np.array(evaluator.boundary_f[object_id]) > 0.5))
    return float(np.mean(j_recalls)), float(np.mean(f_recalls))


# ---------------------------------------------------------------------------- per-frame J and F


def square(height: int, width: int, top: int, left: int, side: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


def test_region_similarity_by_hand():
    empty = np.zeros((6, 8), dtype=bool)
    a = square(6, 8, 1, 1, 3)  # 9 pixels
    b = square(6, 8, 2, 2, 3)  # 9 pixels, 4 shared
    pred = np.stack([empty, a, empty, a, a])
    gt = np.stack([empty, empty, a, a, b])
    np.testing.assert_allclose(region_similarity(pred, gt), [1.0, 0.0, 0.0, 1.0, 4 / 14])


def test_boundary_map_follows_the_davis_half_pixel_convention():
    mask = square(4, 4, 1, 1, 2)[None]
    expected = np.array([[1, 1, 1, 0], [1, 0, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0]], dtype=bool)
    np.testing.assert_array_equal(boundary_map(mask)[0], expected)
    # The image border is no boundary: a mask filling the frame has none.
    assert not boundary_map(np.ones((1, 5, 7), dtype=bool)).any()


def test_boundary_f_edge_cases_by_hand():
    empty = np.zeros((60, 80), dtype=bool)
    a = square(60, 80, 10, 10, 20)
    full = np.ones((60, 80), dtype=bool)
    pred = np.stack([empty, a, empty, a, full])
    gt = np.stack([empty, empty, a, a, empty])
    np.testing.assert_allclose(boundary_f_measure(pred, gt), [1.0, 0.0, 0.0, 1.0, 1.0])
    # Official quirk, pinned: a mask filling the frame has no boundary, so against an empty mask
    # F = 1 (both sides boundary-free) while J = 0.
    assert region_similarity(full[None], empty[None])[0] == 0.0


def test_boundary_tolerance_is_ceil_of_bound_th_times_the_diagonal():
    assert boundary_radius(480, 854) == 8  # DAVIS 480p: ceil(0.008 * 979.6)
    assert boundary_radius(60, 80) == 1  # ceil(0.008 * 100)
    assert boundary_radius(60, 80, bound_th=3) == 3  # >= 1: pixels
    gt = square(60, 80, 20, 20, 20)[None]
    one_off, two_off = square(60, 80, 20, 21, 20)[None], square(60, 80, 20, 22, 20)[None]
    assert boundary_f_measure(one_off, gt)[0] == 1.0 and region_similarity(one_off, gt)[0] < 1.0
    # Two columns off, radius 1: of each 80-pixel boundary ring, the top and bottom rows match but
    # for one end pixel each (2 x 20) and the side columns only next to those rows (2): P = R = 42/80.
    np.testing.assert_allclose(boundary_f_measure(two_off, gt), [42 / 80])
    assert boundary_f_measure(two_off, gt, bound_th=2)[0] == 1.0


def test_stacks_match_frame_by_frame_and_vos_benchmark_beyond_the_channel_chunk():
    rng = np.random.default_rng(0)
    frames = 130  # more than one cv2.dilate chunk of 128 frames
    truth = ellipses(rng, frames, 24, 30, 1) == 1
    pred = perturb(rng, truth.astype(np.uint8), 1) == 1
    pred[::17] = False  # some empty predictions
    j, f = region_similarity(pred, truth), boundary_f_measure(pred, truth)
    for t in range(0, frames, 7):
        evaluator = Evaluator()
        evaluator.feed_frame(pred[t].astype(np.uint8), truth[t].astype(np.uint8))
        # vos-benchmark records nothing for an object absent from both masks; DAVIS's value there is 1.
        expected = (evaluator.object_iou[1][0], evaluator.boundary_f[1][0]) if 1 in evaluator.object_iou else (1, 1)
        assert (j[t], f[t]) == pytest.approx(expected, abs=1e-12)
        assert f[t] == boundary_f_measure(pred[t : t + 1], truth[t : t + 1])[0]


def test_non_boolean_or_mismatched_stacks_are_refused():
    with pytest.raises(ValueError, match="boolean"):
        region_similarity(np.zeros((1, 3, 3), np.uint8), np.zeros((1, 3, 3), bool))
    with pytest.raises(ValueError, match=r"\(2, 3, 3\) and \(1, 3, 3\)"):
        boundary_f_measure(np.zeros((2, 3, 3), bool), np.zeros((1, 3, 3), bool))


# ---------------------------------------------------------------------------- whole benchmark


@pytest.fixture
def benchmark_folders(tmp_path) -> tuple[Path, Path, dict, dict]:
    """3 sequences of several sizes and 2-3 objects, with vanishing objects, an empty frame and perturbed results."""
    rng = np.random.default_rng(1)
    truth = {
        "alpha": ellipses(rng, 10, 36, 52, 3),
        "beta": ellipses(rng, 9, 50, 40, 2),
        "gamma": ellipses(rng, 8, 45, 45, 3),
    }
    truth["alpha"][4:6][truth["alpha"][4:6] == 2] = 0  # object 2 vanishes for two frames
    truth["beta"][6] = 0  # nothing annotated in this frame
    truth["gamma"][3:][truth["gamma"][3:] == 3] = 0  # object 3 leaves for good
    results = {name: perturb(rng, labels, labels.max()) for name, labels in truth.items()}
    results["beta"][6] = 0  # ...and the segmenter agrees in one of them
    root = write_davis(tmp_path / "DAVIS", truth)
    result_root = write_results(tmp_path / "results", results)
    return root, result_root, truth, results


def test_evaluate_davis_agrees_with_vos_benchmark(benchmark_folders):
    root, result_root, truth, _ = benchmark_folders
    sequences = read_davis(root, "2017", "val")
    scores = evaluate_davis(sequences, result_root)
    gt_root = root / "Annotations" / "480p"
    jf, j, f, per_object = vos_scores(gt_root, result_root)
    assert scores["objects"] == len(per_object) == 8
    assert scores["jf"] == pytest.approx(jf, abs=1e-4)
    assert scores["j"] == pytest.approx(j, abs=1e-4)
    assert scores["f"] == pytest.approx(f, abs=1e-4)
    assert 0.2 < scores["j"] < 0.95 and 0.2 < scores["f"] < 0.95  # the perturbation is neither trivial nor total
    for name, record in scores["per_sequence"].items():
        assert record["objects"] == list(range(1, truth[name].max() + 1))
        for object_id, object_j, object_f in zip(record["objects"], record["j"], record["f"]):
            assert (object_j, object_f) == pytest.approx(per_object[name, object_id], abs=1e-4)
    j_recall, f_recall = vos_recalls(gt_root, result_root, list(truth))
    assert scores["j_recall"] == pytest.approx(j_recall, abs=1e-12)
    assert scores["f_recall"] == pytest.approx(f_recall, abs=1e-12)


def test_objects_absent_after_the_first_frame_differ_from_vos_benchmark_as_documented(tmp_path):
    """davis2017-evaluation scores every first-frame object on every scored frame; vos-benchmark starts an
    object at the first scored frame where it shows and drops one that never shows there. We follow the former."""
    rng = np.random.default_rng(2)
    truth = ellipses(rng, 6, 40, 60, 3)
    truth[1:3][truth[1:3] == 2] = 0  # object 2: gone in scored frames 1-2, back in 3-4
    truth[1:][truth[1:] == 3] = 0  # object 3: only in the first frame
    predicted = np.roll(truth, 2, axis=2)  # objects 2 and 3 absent exactly where the truth has them absent
    root = write_davis(tmp_path / "DAVIS", {"seq": truth})
    result_root = write_results(tmp_path / "results", {"seq": predicted})
    scores = evaluate_davis(read_davis(root, "2017", "val"), result_root)
    _, _, _, per_object = vos_scores(root / "Annotations" / "480p", result_root)

    scored = slice(1, 5)
    j2 = region_similarity(predicted[scored] == 2, truth[scored] == 2)
    f2 = boundary_f_measure(predicted[scored] == 2, truth[scored] == 2)
    np.testing.assert_array_equal(j2[:2], [1.0, 1.0])  # both empty: a perfect frame for DAVIS
    record = scores["per_sequence"]["seq"]
    assert record["objects"] == [1, 2, 3]
    assert record["j"][1] == pytest.approx(j2.mean()) and record["f"][1] == pytest.approx(f2.mean())
    assert per_object["seq", 2][0] == pytest.approx(j2[2:].mean(), abs=1e-4)  # vos-benchmark: frames 3-4 only
    assert (record["j"][2], record["f"][2]) == (1.0, 1.0)  # object 3: empty and predicted empty throughout
    assert ("seq", 3) not in per_object  # vos-benchmark drops it
    assert per_object["seq", 1] == pytest.approx((record["j"][0], record["f"][0]), abs=1e-4)


def test_recall_and_means_by_hand(tmp_path):
    truth = np.zeros((5, 20, 20), dtype=np.uint8)
    truth[:, 5:15, 5:15] = 1
    predicted = truth.copy()
    predicted[2] = 0  # scored frames 1, 2, 3: J = 1, 0, 1
    root = write_davis(tmp_path / "DAVIS", {"box": truth})
    scores = evaluate_davis(read_davis(root, "2017", "val"), write_results(tmp_path / "res", {"box": predicted}))
    assert scores["j"] == pytest.approx(2 / 3) and scores["f"] == pytest.approx(2 / 3)
    assert scores["j_recall"] == pytest.approx(2 / 3) and scores["f_recall"] == pytest.approx(2 / 3)
    assert scores["jf"] == pytest.approx(2 / 3) and scores["objects"] == 1


def test_davis2016_accepts_0_1_and_0_255_results(tmp_path):
    rng = np.random.default_rng(3)
    truth = ellipses(rng, 6, 30, 40, 2)  # two objects in the 2017 masks: one object for 2016
    root = write_davis(tmp_path / "DAVIS", {"seq": truth})
    (root / "ImageSets" / "2016").mkdir()
    (root / "ImageSets" / "2016" / "val.txt").write_text("seq\n")
    sequences = read_davis(root, "2016", "val")
    predicted = np.roll(truth > 0, 1, axis=1)
    for t, frame in enumerate(predicted):
        write_png(tmp_path / "ones" / "seq" / f"{t:05d}.png", frame.astype(np.uint8))
        write_png(tmp_path / "grey" / "seq" / f"{t:05d}.png", frame.astype(np.uint8) * 255, mode="L")
    ones, grey = evaluate_davis(sequences, tmp_path / "ones"), evaluate_davis(sequences, tmp_path / "grey")
    expected_j = region_similarity(predicted[1:5], truth[1:5] > 0).mean()
    assert ones["j"] == grey["j"] == pytest.approx(expected_j) and ones["f"] == grey["f"] and ones["objects"] == 1


def test_youtube_vos_objects_are_scored_after_their_first_annotation(tmp_path):
    split = tmp_path / "yt" / "train"
    truth = np.zeros((5, 20, 30), dtype=np.uint8)
    truth[:, 2:8, 2:8] = 1
    truth[2:, 10:18, 15:25] = 2  # object 2 starts at the third annotated frame
    names = [f"{5 * t:05d}" for t in range(5)]
    for name, labels in zip(names, truth):
        frame = split / "JPEGImages" / "v" / f"{name}.jpg"
        frame.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8)).save(frame)
        write_png(split / "Annotations" / "v" / f"{name}.png", labels)
    meta = {"videos": {"v": {"objects": {"1": {"frames": names}, "2": {"frames": names[2:]}}}}}
    (split / "meta.json").write_text(json.dumps(meta))
    (sequence,) = read_youtube_vos(tmp_path / "yt", "train")
    results = tmp_path / "res"
    copy_first_mask_baseline([sequence], results)
    # The baseline pastes object 2 from its first annotation on: perfect on this static video.
    assert sorted(p.name for p in (results / "v").iterdir()) == [f"{name}.png" for name in names]
    np.testing.assert_array_equal(read_label_mask(results / "v" / "00010.png"), truth[2])
    scores = evaluate_davis([sequence], results)
    # Object 2 is scored on frame 3 only (scored frames are 1..3; its reference mask is frame 2).
    assert scores["per_sequence"]["v"] == {"objects": [1, 2], "j": [1.0, 1.0], "f": [1.0, 1.0]}
    write_png(results / "v" / "00010.png", truth[1])  # object 2 missing in its own reference frame: not scored
    assert evaluate_davis([sequence], results)["per_sequence"]["v"]["j"] == [1.0, 1.0]
    write_png(results / "v" / "00015.png", truth[1])  # ...but missing afterwards is
    assert evaluate_davis([sequence], results)["per_sequence"]["v"]["j"] == [1.0, 0.0]


def test_copy_first_mask_baseline_on_the_demo_benchmark_matches_vos_benchmark(tmp_path, demo_tree):
    settings = DemoBenchmarkSettings(
        train_photo_sequences=0,
        train_sequences=1, val_sequences=3, frames_per_sequence=8, frame_size=(64, 48), objects_per_sequence=2
    )
    build_demo_benchmark(demo_tree, tmp_path / "bench", settings)
    davis = tmp_path / "bench" / "davis"
    sequences = read_davis(davis, "2017", "val")
    results = copy_first_mask_baseline(sequences, tmp_path / "baseline")
    for sequence in sequences:
        first = sequence.read_annotation(0)
        for t in range(len(sequence)):
            with Image.open(results / sequence.name / f"{t:05d}.png") as image:
                assert image.mode == "P"
            np.testing.assert_array_equal(read_label_mask(results / sequence.name / f"{t:05d}.png"), first)
    scores = evaluate_davis(sequences, results)
    # vos-benchmark's gt root must hold exactly the evaluated sequences: copy the val masks over.
    gt_root = tmp_path / "val_masks"
    for sequence in sequences:
        for mask in sequence.annotations.values():
            (gt_root / sequence.name).mkdir(parents=True, exist_ok=True)
            (gt_root / sequence.name / mask.name).write_bytes(mask.read_bytes())
    jf, j, f, _ = vos_scores(gt_root, results)
    assert scores["objects"] == 6
    assert (scores["jf"], scores["j"], scores["f"]) == pytest.approx((jf, j, f), abs=1e-4)
    assert 0.0 < scores["jf"] < 0.9  # the objects move: copying the first mask is a floor, not a score


# ---------------------------------------------------------------------------- bad results


def test_missing_wrongly_sized_or_rgb_results_are_named(benchmark_folders):
    root, result_root, _, results = benchmark_folders
    sequences = read_davis(root, "2017", "val")
    missing = result_root / "beta" / "00004.png"
    missing.unlink()
    with pytest.raises(SegmentationDataError, match=rf"{re.escape(str(missing))}: result mask is missing"):
        evaluate_davis(sequences, result_root)
    write_png(missing, results["beta"][4][:, :30])
    with pytest.raises(SegmentationDataError, match=rf"{re.escape(str(missing))}: result mask is 30x50 \(WxH\)"):
        evaluate_davis(sequences, result_root)
    Image.fromarray(np.zeros((50, 40, 3), dtype=np.uint8)).save(missing)
    with pytest.raises(SegmentationDataError, match=rf"{re.escape(str(missing))}: RGB result mask"):
        evaluate_davis(sequences, result_root)


def test_first_frame_only_sequences_cannot_be_scored_locally(tmp_path):
    truth = ellipses(np.random.default_rng(4), 4, 20, 20, 1)
    root = write_davis(tmp_path / "DAVIS", {"seq": truth}, split="test-dev")
    for t in (1, 2, 3):
        (root / "Annotations" / "480p" / "seq" / f"{t:05d}.png").unlink()
    sequences = read_davis(root, "2017", "test-dev")
    with pytest.raises(SegmentationDataError, match="'seq' has 1 annotated frame"):
        evaluate_davis(sequences, tmp_path / "res")
