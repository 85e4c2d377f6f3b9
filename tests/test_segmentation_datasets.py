"""Segmentation benchmark readers on tiny DAVIS 2017 / 2016 and YouTube-VOS folders (real JPEGs and PNGs)."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dropmae.data.images import davis_palette, write_label_mask
from dropmae.demo.benchmark import DemoBenchmarkSettings, build_demo_benchmark
from dropmae.segmentation.datasets import (
    SEGMENTATION_FORMATS,
    SegmentationDataError,
    read_davis,
    read_label_mask,
    read_segmentation_benchmark,
    read_youtube_vos,
)

PALETTE = list(davis_palette())


def moving_objects(frames: int, height: int, width: int, objects: int, seed: int) -> np.ndarray:
    """Labels [T, H, W] uint8: ``objects`` rectangles drifting across the frame, later ids on top.

    Object k starts inside the k-th vertical band, so every object shows in the first frame.
    """
    rng = np.random.default_rng(seed)
    labels = np.zeros((frames, height, width), dtype=np.uint8)
    band = width // objects
    for object_id in range(1, objects + 1):
        h, w = rng.integers(height // 4, height // 2), rng.integers(max(band // 2, 1), band + 1)
        y, x = rng.integers(0, height - h), (object_id - 1) * band + rng.integers(0, band - w + 1)
        dy, dx = rng.integers(-2, 3, size=2)
        for t in range(frames):
            top, left = np.clip([y + dy * t, x + dx * t], 0, [height - h, width - w])
            labels[t, top : top + h, left : left + w] = object_id
    return labels


def write_jpeg(path: Path, height: int, width: int, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=90)


def write_palette_png(path: Path, labels: np.ndarray) -> None:
    """Written with PIL directly, independently of the module's writer."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(labels.astype(np.uint8))
    image.putpalette(PALETTE)
    image.save(path)


def write_davis_sequence(root: Path, name: str, labels: np.ndarray, annotated=None, grey: bool = False) -> None:
    """JPEGImages/480p/<name>/00000.jpg... and Annotations/480p/<name>/00000.png... (``annotated`` frames only)."""
    for t, frame_labels in enumerate(labels):
        write_jpeg(root / "JPEGImages" / "480p" / name / f"{t:05d}.jpg", *frame_labels.shape, seed=t)
        if annotated is None or t in annotated:
            mask_path = root / "Annotations" / "480p" / name / f"{t:05d}.png"
            if grey:  # DAVIS 2016's 0/255 greyscale masks
                mask_path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(((frame_labels > 0) * 255).astype(np.uint8), mode="L").save(mask_path)
            else:
                write_palette_png(mask_path, frame_labels)


def write_list(path: Path, names: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{name}\n" for name in names))
    return path


@pytest.fixture
def davis2017(tmp_path) -> tuple[Path, dict[str, np.ndarray]]:
    """val: 'dogs' (2 objects, 24x32, 6 frames), 'car' (1 object, 30x40, 5 frames); train: 'cows'."""
    root = tmp_path / "DAVIS"
    labels = {
        "dogs": moving_objects(6, 24, 32, 2, seed=1),
        "car": moving_objects(5, 30, 40, 1, seed=2),
        "cows": moving_objects(4, 24, 32, 3, seed=3),
    }
    for name, stack in labels.items():
        write_davis_sequence(root, name, stack)
    write_list(root / "ImageSets" / "2017" / "val.txt", ["dogs", "car"])
    write_list(root / "ImageSets" / "2017" / "train.txt", ["cows"])
    return root, labels


# ---------------------------------------------------------------------------- reading


def test_davis2017_sequences_frames_masks_and_objects(davis2017):
    root, labels = davis2017
    sequences = read_davis(root, "2017", "val")
    assert [s.name for s in sequences] == ["dogs", "car"]  # list-file order
    dogs, car = sequences
    assert dogs.dataset == "davis2017" and len(dogs) == 6
    assert [f.name for f in dogs.frames] == [f"{t:05d}.jpg" for t in range(6)]
    assert list(dogs.annotations) == list(range(6))
    assert dogs.annotations[3] == root / "Annotations" / "480p" / "dogs" / "00003.png"
    assert dogs.object_ids == (1, 2) and dogs.object_first_frame == {1: 0, 2: 0}
    assert car.object_ids == (1,)
    assert dogs.size == (24, 32) and car.size == (30, 40)
    for t in range(6):
        np.testing.assert_array_equal(dogs.read_annotation(t), labels["dogs"][t])
    assert dogs.mask_name(4) == "00004.png"
    assert [s.name for s in read_davis(root, "2017", "train")] == ["cows"]
    assert read_davis(root, "2017", "train")[0].object_ids == (1, 2, 3)


def test_davis_test_split_has_only_the_first_mask(tmp_path):
    root = tmp_path / "DAVIS"
    write_davis_sequence(root, "kite", moving_objects(5, 20, 28, 2, seed=4), annotated={0})
    write_list(root / "ImageSets" / "2017" / "test-dev.txt", ["kite"])
    (kite,) = read_davis(root, "2017", "test-dev")
    assert len(kite) == 5 and list(kite.annotations) == [0] and kite.object_ids == (1, 2)


def test_davis2016_from_the_2017_download_merges_every_object_into_one(davis2017):
    root, labels = davis2017
    write_list(root / "ImageSets" / "2016" / "val.txt", ["dogs"])
    (dogs,) = read_davis(root, "2016", "val")
    assert dogs.dataset == "davis2016" and dogs.object_ids == (1,) and dogs.object_first_frame == {1: 0}
    for t in range(6):
        np.testing.assert_array_equal(dogs.read_annotation(t), (labels["dogs"][t] > 0).astype(np.uint8))


def test_davis2016_original_download_with_pair_list_and_greyscale_masks(tmp_path):
    root = tmp_path / "DAVIS-2016"
    stacks = {"bear": moving_objects(4, 20, 24, 1, seed=5), "blackswan": moving_objects(3, 16, 20, 2, seed=6)}
    lines = []
    for name, stack in stacks.items():
        write_davis_sequence(root, name, stack, grey=True)
        lines += [
            f"/JPEGImages/480p/{name}/{t:05d}.jpg /Annotations/480p/{name}/{t:05d}.png" for t in range(len(stack))
        ]
    write_list(root / "ImageSets" / "480p" / "val.txt", lines)
    sequences = read_segmentation_benchmark("davis2016", root, "val")
    assert [s.name for s in sequences] == ["bear", "blackswan"]
    assert all(s.object_ids == (1,) for s in sequences)
    with Image.open(sequences[1].annotations[2]) as image:
        assert image.mode == "L"
    np.testing.assert_array_equal(sequences[1].read_annotation(2), (stacks["blackswan"][2] > 0).astype(np.uint8))


@pytest.fixture
def youtube(tmp_path) -> Path:
    """train/: 'vid_a' annotated on every JPEG with object 2 appearing at 00010; 'vid_b' with unannotated frames."""
    root = tmp_path / "youtube_vos"
    split = root / "train"
    a = moving_objects(4, 18, 32, 2, seed=7)
    a[:2][a[:2] == 2] = 0  # object 2 first shows in the third annotated frame
    a_names = ["00000", "00005", "00010", "00015"]
    for name, frame_labels in zip(a_names, a):
        write_jpeg(split / "JPEGImages" / "vid_a" / f"{name}.jpg", 18, 32)
        write_palette_png(split / "Annotations" / "vid_a" / f"{name}.png", frame_labels)
    b = moving_objects(5, 20, 20, 1, seed=8)
    for t in range(5):
        write_jpeg(split / "JPEGImages" / "vid_b" / f"{t:05d}.jpg", 20, 20)
    for t in (0, 2):
        write_palette_png(split / "Annotations" / "vid_b" / f"{t:05d}.png", b[t])
    meta = {
        "videos": {
            "vid_b": {"objects": {"1": {"category": "cat", "frames": ["00000", "00002"]}}},
            "vid_a": {
                "objects": {
                    "1": {"category": "dog", "frames": a_names},
                    "2": {"category": "person", "frames": a_names[2:]},
                }
            },
        }
    }
    (split / "meta.json").write_text(json.dumps(meta))
    return root


def test_youtube_vos_objects_start_late_and_frames_may_be_unannotated(youtube):
    sequences = read_youtube_vos(youtube, "train")
    assert [s.name for s in sequences] == ["vid_a", "vid_b"]
    vid_a, vid_b = sequences
    assert vid_a.dataset == "youtube_vos" and vid_a.size == (18, 32)
    assert [f.stem for f in vid_a.frames] == ["00000", "00005", "00010", "00015"]
    assert vid_a.object_ids == (1, 2) and vid_a.object_first_frame == {1: 0, 2: 2}
    assert list(vid_b.annotations) == [0, 2] and len(vid_b) == 5
    assert read_segmentation_benchmark("youtube_vos", youtube)[1].annotations == vid_b.annotations


def test_formats_and_dispatch(davis2017):
    assert SEGMENTATION_FORMATS == ("davis2017", "davis2016", "youtube_vos")
    assert [s.name for s in read_segmentation_benchmark("davis2017", davis2017[0])] == ["dogs", "car"]
    with pytest.raises(ValueError, match="unknown segmentation format 'davis2018'"):
        read_segmentation_benchmark("davis2018", davis2017[0])


def test_written_masks_are_davis_palette_pngs_and_round_trip(tmp_path):
    labels = moving_objects(1, 12, 16, 3, seed=9)[0]
    path = write_label_mask(tmp_path / "out" / "seq" / "00000.png", labels)
    with Image.open(path) as image:
        assert image.mode == "P" and image.format == "PNG"
        assert image.getpalette()[: len(PALETTE)] == PALETTE
    np.testing.assert_array_equal(read_label_mask(path), labels)
    assert sorted(p.name for p in path.parent.iterdir()) == ["00000.png"]  # no partial file left
    custom = write_label_mask(tmp_path / "custom.png", labels, palette=[[0, 0, 0], [255, 255, 255]])
    with Image.open(custom) as image:
        assert image.getpalette()[:6] == [0, 0, 0, 255, 255, 255]
    with pytest.raises(ValueError, match="0..255"):
        write_label_mask(tmp_path / "bad.png", labels.astype(np.int32) + 300)


def test_greyscale_mask_other_than_0_255_is_refused(tmp_path):
    path = tmp_path / "grey.png"
    Image.fromarray(np.array([[0, 1], [2, 255]], dtype=np.uint8), mode="L").save(path)
    with pytest.raises(SegmentationDataError, match=rf"{re.escape(str(path))}: greyscale mask with values \[1, 2\]"):
        read_label_mask(path)


def test_demo_benchmark_reads_as_davis2017(tmp_path, demo_tree):
    settings = DemoBenchmarkSettings(
        train_photo_sequences=0,
        train_sequences=1, val_sequences=2, frames_per_sequence=6, frame_size=(48, 40), objects_per_sequence=2
    )
    build_demo_benchmark(demo_tree, tmp_path / "bench", settings)
    davis = tmp_path / "bench" / "davis"
    sequences = read_davis(davis, "2017", "val")
    assert [s.name for s in sequences] == ["Demo_Val_000001", "Demo_Val_000002"]
    for sequence in sequences:
        assert len(sequence) == 6 and list(sequence.annotations) == list(range(6))
        assert sequence.object_ids == (1, 2) and sequence.size == (40, 48)
    assert [s.name for s in read_davis(davis, "2017", "train")] == ["Demo_Train_000001"]


# ---------------------------------------------------------------------------- bad input


def test_missing_first_frame_annotation_is_named(davis2017):
    root, _ = davis2017
    missing = root / "Annotations" / "480p" / "car" / "00000.png"
    missing.unlink()
    with pytest.raises(SegmentationDataError, match=rf"{re.escape(str(missing))}: first-frame annotation is missing"):
        read_davis(root, "2017", "val")


def test_mask_of_another_size_than_its_frame_is_named(davis2017):
    root, labels = davis2017
    bad = root / "Annotations" / "480p" / "dogs" / "00003.png"
    write_palette_png(bad, labels["dogs"][3][:, :30])
    with pytest.raises(
        SegmentationDataError, match=rf"{re.escape(str(bad))}: mask is 30x24 \(WxH\) but its frame .*00003.jpg is 32x24"
    ):
        read_davis(root, "2017", "val")


def test_first_mask_of_another_size_is_named_even_without_mask_checks(davis2017):
    root, labels = davis2017
    bad = root / "Annotations" / "480p" / "car" / "00000.png"
    write_palette_png(bad, labels["car"][0][:20])
    with pytest.raises(SegmentationDataError, match=rf"{re.escape(str(bad))}: mask is 40x20"):
        read_davis(root, "2017", "val", check_masks=False)


def test_label_that_is_no_object_of_the_first_frame_is_named(davis2017):
    root, labels = davis2017
    bad = root / "Annotations" / "480p" / "dogs" / "00004.png"
    stray = labels["dogs"][4].copy()
    stray[:3, :3] = 5
    write_palette_png(bad, stray)
    with pytest.raises(
        SegmentationDataError, match=rf"{re.escape(str(bad))}: labels \[5\] are not objects of the first frame"
    ):
        read_davis(root, "2017", "val")
    # Later masks are only decoded on request: the cheap reading passes.
    assert len(read_davis(root, "2017", "val", check_masks=False)) == 2


def test_void_label_in_a_later_mask_is_allowed(davis2017):
    root, labels = davis2017
    void = labels["dogs"][2].copy()
    void[0, :] = 255
    write_palette_png(root / "Annotations" / "480p" / "dogs" / "00002.png", void)
    assert read_davis(root, "2017", "val")[0].object_ids == (1, 2)


def test_listed_sequence_without_frames_is_named_with_its_line(davis2017):
    root, _ = davis2017
    list_file = write_list(root / "ImageSets" / "2017" / "val.txt", ["dogs", "car", "ghost"])
    with pytest.raises(SegmentationDataError, match=rf"{re.escape(str(list_file))}:3: 'ghost': sequence has no frames"):
        read_davis(root, "2017", "val")
    (root / "JPEGImages" / "480p" / "ghost").mkdir()
    with pytest.raises(SegmentationDataError, match=r"ghost holds no .jpg frames"):
        read_davis(root, "2017", "val")


def test_missing_imagesets_file_is_named(davis2017):
    root, _ = davis2017
    with pytest.raises(
        SegmentationDataError, match=rf"{re.escape(str(root / 'ImageSets' / '2017' / 'test-dev.txt'))}: .*missing"
    ):
        read_davis(root, "2017", "test-dev")
    with pytest.raises(
        SegmentationDataError, match=rf"{re.escape(str(root / 'ImageSets' / '2016' / 'val.txt'))}: .*missing"
    ):
        read_davis(root, "2016", "val")


def test_non_palette_mask_is_named(davis2017):
    root, labels = davis2017
    bad = root / "Annotations" / "480p" / "car" / "00002.png"
    Image.fromarray(labels["car"][2], mode="L").save(bad)  # indices without a palette
    with pytest.raises(SegmentationDataError, match=rf"{re.escape(str(bad))}: L mask; expected a palette \(P\) PNG"):
        read_davis(root, "2017", "val")
    rgb = root / "Annotations" / "480p" / "car" / "00000.png"
    Image.fromarray(np.zeros((30, 40, 3), dtype=np.uint8)).save(rgb)
    with pytest.raises(SegmentationDataError, match=rf"{re.escape(str(rgb))}: RGB mask; expected a palette \(P\) PNG"):
        read_davis(root, "2017", "val", check_masks=False)
    with pytest.raises(SegmentationDataError, match=rf"{re.escape(str(rgb))}: RGB mask; expected a palette"):
        read_label_mask(rgb)


def test_empty_first_mask_and_orphan_annotation_are_named(davis2017):
    root, labels = davis2017
    orphan = root / "Annotations" / "480p" / "car" / "00009.png"
    write_palette_png(orphan, labels["car"][0])
    with pytest.raises(SegmentationDataError, match=rf"{re.escape(str(orphan))}: annotation names no frame"):
        read_davis(root, "2017", "val")
    orphan.unlink()
    empty = root / "Annotations" / "480p" / "car" / "00000.png"
    write_palette_png(empty, np.zeros_like(labels["car"][0]))
    with pytest.raises(
        SegmentationDataError, match=rf"{re.escape(str(empty))}: first-frame annotation shows no object"
    ):
        read_davis(root, "2017", "val")


def test_youtube_vos_bad_meta_and_missing_object_masks_are_named(youtube):
    split = youtube / "train"
    meta_file = split / "meta.json"
    meta = json.loads(meta_file.read_text())

    first_mask_of_object_2 = split / "Annotations" / "vid_a" / "00010.png"
    saved = first_mask_of_object_2.read_bytes()
    first_mask_of_object_2.unlink()
    with pytest.raises(
        SegmentationDataError,
        match=rf"{re.escape(str(first_mask_of_object_2))}: missing; it is the first-frame annotation of object 2",
    ):
        read_youtube_vos(youtube, "train")
    first_mask_of_object_2.write_bytes(saved)

    broken = json.loads(json.dumps(meta))
    broken["videos"]["vid_b"]["objects"]["1"]["frames"].append("00042")
    meta_file.write_text(json.dumps(broken))
    with pytest.raises(
        SegmentationDataError, match=rf"{re.escape(str(meta_file))}: videos/vid_b/objects/1/frames: frame '00042'"
    ):
        read_youtube_vos(youtube, "train")

    broken = json.loads(json.dumps(meta))
    broken["videos"]["vid_b"]["objects"]["x"] = broken["videos"]["vid_b"]["objects"].pop("1")
    meta_file.write_text(json.dumps(broken))
    with pytest.raises(SegmentationDataError, match=rf"{re.escape(str(meta_file))}: videos/vid_b/objects/x: object id"):
        read_youtube_vos(youtube, "train")

    meta_file.unlink()
    with pytest.raises(SegmentationDataError, match=rf"{re.escape(str(meta_file))}: YouTube-VOS meta.json is missing"):
        read_youtube_vos(youtube, "train")


def test_youtube_vos_first_mask_without_its_object_is_named(youtube):
    split = youtube / "train"
    mask = split / "Annotations" / "vid_b" / "00000.png"
    write_palette_png(mask, np.where(read_label_mask(mask) > 0, 3, 0))  # object 3 is not in meta.json
    with pytest.raises(
        SegmentationDataError, match=rf"{re.escape(str(mask))}: labels \[3\] are not objects of videos/vid_b"
    ):
        read_youtube_vos(youtube, "train")


def test_sequence_record_rejects_inconsistent_fields(davis2017):
    (dogs, _) = read_davis(davis2017[0], "2017", "val")
    with pytest.raises(ValueError, match="object_first_frame keys"):
        replace(dogs, object_first_frame={1: 0})
    with pytest.raises(ValueError, match="annotation frame index 9"):
        replace(dogs, annotations={0: dogs.annotations[0], 9: dogs.annotations[1]})
