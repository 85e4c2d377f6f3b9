"""DropSeg training pairs and inference on a tiny DAVIS-layout benchmark (real JPEGs and palette PNGs, CPU)."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from dropmae.data.images import to_normalized_tensor, write_label_mask
from dropmae.demo.benchmark import DemoBenchmarkSettings, build_demo_benchmark
from dropmae.segmentation.datasets import read_davis, read_label_mask
from dropmae.segmentation.model import DropSeg
from dropmae.segmentation.processing import (
    SegmentationCropSettings,
    SegmentationPairDataset,
    sample_segmentation_pair,
)
from dropmae.segmentation.segmenter import (
    DropSegmenter,
    SegmenterSettings,
    run_segmentation_benchmark,
    run_segmentation_sequence,
)

NO_JITTER = {"brightness_jitter": 0.0, "contrast_jitter": 0.0, "saturation_jitter": 0.0}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Two shared cores: tiny matmuls on two contended threads run ~100x slower than on one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def demo_davis(tmp_path_factory, demo_tree):
    """DAVIS-2017 train split of the demo benchmark: 3 sequences, 12 frames of 48x40, objects 1 and 2."""
    root = tmp_path_factory.mktemp("seg_processing") / "bench"
    settings = DemoBenchmarkSettings(
        train_photo_sequences=0,
        train_sequences=3, val_sequences=1, frames_per_sequence=12, frame_size=(48, 40), objects_per_sequence=2
    )
    build_demo_benchmark(demo_tree, root, settings)
    return read_davis(root / "davis", split="train")


def write_davis(root: Path, name: str, frames: list[np.ndarray], labels: dict[int, np.ndarray]) -> Path:
    """JPEGImages/480p/<name>/00000.jpg... and Annotations/480p/<name>/<t>.png for the frames in ``labels``;
    identical frames are written as one JPEG copied, so their pixels are equal."""
    image_dir, mask_dir = root / "JPEGImages" / "480p" / name, root / "Annotations" / "480p" / name
    image_dir.mkdir(parents=True)
    for t, frame in enumerate(frames):
        if t and np.array_equal(frame, frames[0]):
            shutil.copy(image_dir / "00000.jpg", image_dir / f"{t:05d}.jpg")
        else:
            Image.fromarray(frame).save(image_dir / f"{t:05d}.jpg", quality=95)
    for t, frame_labels in labels.items():
        write_label_mask(mask_dir / f"{t:05d}.png", frame_labels)
    list_file = root / "ImageSets" / "2017" / "train.txt"
    list_file.parent.mkdir(parents=True, exist_ok=True)
    with list_file.open("a") as handle:
        handle.write(f"{name}\n")
    return root


def texture(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth random RGB image (JPEG keeps it close)."""
    coarse = np.random.default_rng(seed).integers(0, 256, (height // 4 + 1, width // 4 + 1, 3), dtype=np.uint8)
    return np.array(Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR))


def box_labels(height: int, width: int, boxes: dict[int, tuple[int, int, int, int]]) -> np.ndarray:
    labels = np.zeros((height, width), dtype=np.uint8)
    for object_id, (top, left, bottom, right) in boxes.items():
        labels[top:bottom, left:right] = object_id
    return labels


def crop_settings(**overrides) -> SegmentationCropSettings:
    return SegmentationCropSettings(**{"image_size": 32, "max_frame_skip": 3, "min_object_pixels": 16, **overrides})


# ------------------------------------------------------------------------------ pair sampling


def test_pairs_respect_max_skip_annotation_and_object_presence(demo_davis):
    rng = np.random.default_rng(0)
    gaps = set()
    for sequence in demo_davis:
        for _ in range(100):
            reference, query, object_id = sample_segmentation_pair(sequence, 3, 0.5, rng)
            assert 1 <= abs(query - reference) <= 3
            assert reference in sequence.annotations and query in sequence.annotations
            assert object_id in read_label_mask(sequence.annotations[reference])
            gaps.add(abs(query - reference))
    assert gaps == {1, 2, 3}


def test_pairs_only_use_annotated_frames_and_objects_of_the_reference(tmp_path):
    """Frames 0, 1 and 5 annotated; object 1 is missing from frame 1's mask."""
    size = (24, 24)
    both = box_labels(*size, {1: (2, 2, 10, 10), 2: (12, 12, 20, 20)})
    only_2 = box_labels(*size, {2: (12, 12, 20, 20)})
    frames = [texture(*size, seed=t) for t in range(6)]
    write_davis(tmp_path, "sparse", frames, {0: both, 1: only_2, 5: both})
    (sequence,) = read_davis(tmp_path, split="train")
    rng = np.random.default_rng(1)
    drawn = [sample_segmentation_pair(sequence, 3, 0.5, rng) for _ in range(200)]
    assert {(r, q) for r, q, _ in drawn} == {(0, 1), (1, 0)}  # frame 5 is 4 away from 1
    assert {k for r, _, k in drawn if r == 1} == {2} and {k for r, _, k in drawn if r == 0} == {1, 2}
    assert sample_segmentation_pair(sequence, 4, 0.5, rng) is not None
    pairs = {sample_segmentation_pair(sequence, 4, 0.5, rng)[:2] for _ in range(200)}
    assert pairs == {(0, 1), (1, 0), (1, 5), (5, 1)}


def test_reversal_happens_at_the_given_rate(demo_davis):
    sequence = demo_davis[0]
    for probability in (0.0, 0.3, 1.0):
        rng = np.random.default_rng(2)
        pairs = [sample_segmentation_pair(sequence, 5, probability, rng) for _ in range(1000)]
        reversed_share = np.mean([reference > query for reference, query, _ in pairs])
        assert abs(reversed_share - probability) < 0.05, (probability, reversed_share)


def test_items_are_a_function_of_seed_epoch_rank_and_index(demo_davis):
    first = SegmentationPairDataset([("demo", demo_davis, 1.0)], 8, crop_settings(), seed=3)
    again = SegmentationPairDataset([("demo", demo_davis, 1.0)], 8, crop_settings(), seed=3)
    assert len(first) == 8 and "demo: 3 sequences" in first.describe()
    for index in range(4):
        a, b = first[index], again[index]
        assert all(torch.equal(a[key], b[key]) for key in a)

    def differs(dataset_a, dataset_b) -> bool:
        return any(not torch.equal(dataset_a[i]["query_rgb"], dataset_b[i]["query_rgb"]) for i in range(4))

    assert differs(first, first) is False
    again.set_epoch(1)
    assert differs(first, again)
    again.set_epoch(0)
    again.set_rank(1)
    assert differs(first, again)
    assert differs(first, SegmentationPairDataset([("demo", demo_davis, 1.0)], 8, crop_settings(), seed=4))


# ------------------------------------------------------------------------------ crops


def test_items_have_the_right_shapes_and_binary_masks_showing_the_object(demo_davis):
    dataset = SegmentationPairDataset([("demo", demo_davis, 1.0)], 40, crop_settings(min_object_pixels=16))
    object_pixels = []
    for index in range(len(dataset)):
        item = dataset[index]
        assert item["reference_rgb"].shape == item["query_rgb"].shape == (3, 32, 32)
        assert item["reference_mask"].shape == item["query_mask"].shape == (1, 32, 32)
        for key in ("reference_mask", "query_mask"):
            assert item[key].dtype == torch.float32 and set(item[key].unique().tolist()) <= {0.0, 1.0}
        object_pixels.append(item["reference_mask"].sum().item())
    # Always present; below 16 pixels only when even the whole frame shows less (an occluded object).
    assert min(object_pixels) > 0 and np.mean(np.array(object_pixels) >= 16) > 0.8


@pytest.fixture
def still_video(tmp_path):
    """Two identical 40x40 frames with identical masks: object 3 a 12x12 square, object 5 a 2x2 speck."""
    frame = texture(40, 40, seed=7)
    labels = box_labels(40, 40, {3: (4, 20, 16, 32), 5: (30, 6, 32, 8)})
    write_davis(tmp_path, "still", [frame, frame.copy()], {0: labels, 1: labels})
    (sequence,) = read_davis(tmp_path, split="train")
    return sequence


def test_reference_and_query_share_the_crop_and_flip(still_video):
    dataset = SegmentationPairDataset([("still", [still_video], 1.0)], 24, crop_settings(**NO_JITTER, min_object_pixels=1))
    crops = set()
    for index in range(len(dataset)):
        item = dataset[index]
        assert torch.equal(item["reference_rgb"], item["query_rgb"])
        assert torch.equal(item["reference_mask"], item["query_mask"])
        crops.add(item["reference_rgb"].numpy().tobytes())
    assert len(crops) > 20  # the crop is random, only shared
    jittered = SegmentationPairDataset([("still", [still_video], 1.0)], 8, crop_settings(min_object_pixels=1))
    for index in range(len(jittered)):
        item = jittered[index]
        assert not torch.equal(item["reference_rgb"], item["query_rgb"])  # colour jitter drawn per frame
        assert torch.equal(item["reference_mask"], item["query_mask"])


def test_full_frame_crop_is_the_resized_frame_or_its_mirror(still_video):
    frame = np.array(Image.open(still_video.frames[0]).convert("RGB"))
    resized = to_normalized_tensor(np.array(Image.fromarray(frame).resize((32, 32), Image.Resampling.BICUBIC)))
    settings = crop_settings(**NO_JITTER, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), min_object_pixels=1)
    dataset = SegmentationPairDataset([("still", [still_video], 1.0)], 40, settings)
    flips = []
    for index in range(len(dataset)):
        item = dataset[index]
        flipped = torch.equal(item["reference_rgb"], resized.flip(-1))
        assert flipped or torch.allclose(item["reference_rgb"], resized)
        flips.append(flipped)
    assert 0.25 < np.mean(flips) < 0.75


def test_crops_too_small_for_the_object_fall_back_to_the_full_frame(still_video):
    """min_object_pixels above any crop of the 2x2 speck: the whole frame is taken."""
    frame = np.array(Image.open(still_video.frames[0]).convert("RGB"))
    resized = to_normalized_tensor(np.array(Image.fromarray(frame).resize((32, 32), Image.Resampling.BICUBIC)))
    dataset = SegmentationPairDataset([("still", [still_video], 1.0)], 30, crop_settings(**NO_JITTER, min_object_pixels=200))
    seen_speck = False
    for index in range(len(dataset)):
        item = dataset[index]
        assert item["reference_mask"].sum() > 0
        if item["reference_mask"].sum() < 16:  # the speck (object 5) is the target
            seen_speck = True
            assert torch.allclose(item["reference_rgb"], resized) or torch.equal(item["reference_rgb"], resized.flip(-1))
    assert seen_speck


def test_sets_without_a_usable_pair_are_named(tmp_path, demo_davis):
    labels = box_labels(24, 24, {1: (2, 2, 10, 10)})
    write_davis(tmp_path, "first_only", [texture(24, 24, seed=t) for t in range(4)], {0: labels})
    sequences = read_davis(tmp_path, split="train")
    with pytest.raises(ValueError, match="segmentation set 'first_masks': none of its 1 sequences has two annotated"):
        SegmentationPairDataset([("demo", demo_davis, 1.0), ("first_masks", sequences, 1.0)], 4, crop_settings())
    with pytest.raises(ValueError, match="segmentation set 'demo': weight must be positive"):
        SegmentationPairDataset([("demo", demo_davis, 0.0)], 4, crop_settings())


def test_settings_from_config_and_validation():
    section = SimpleNamespace(
        image_size=64, max_frame_skip=10, reverse_probability=0.5, crop_scale=[0.5, 1.0], crop_ratio=[0.75, 1.333],
        flip_probability=0.5, brightness_jitter=0.1, contrast_jitter=0.03, saturation_jitter=0.03,
        min_object_pixels=16, frame_short_side=None,
    )
    settings = SegmentationCropSettings.from_config(section)
    assert settings.crop_scale == (0.5, 1.0) and settings.image_size == 64
    assert SegmenterSettings.from_config(section) == SegmenterSettings(None, False)
    del section.min_object_pixels
    with pytest.raises(ValueError, match=r"segmentation config lacks \['min_object_pixels'\]"):
        SegmentationCropSettings.from_config(section)
    with pytest.raises(ValueError, match="crop_scale must be"):
        crop_settings(crop_scale=(0.5, 1.5))


# ------------------------------------------------------------------------------ inference


def untrained_dropseg() -> DropSeg:
    torch.manual_seed(0)
    return DropSeg(encoder="micro", patch_size=8, image_size=32, decoder_channels=16, drop_path_rate=0.0)


def test_sequence_run_writes_one_png_per_frame_with_the_annotation_first(tmp_path, demo_davis):
    segmenter = DropSegmenter(untrained_dropseg(), SegmenterSettings(frame_short_side=None))
    sequence = demo_davis[0]
    frames, seconds = run_segmentation_sequence(segmenter, sequence, tmp_path / "results")
    assert frames == len(sequence) == 12 and seconds > 0
    written = sorted((tmp_path / "results" / sequence.name).iterdir())
    assert [path.name for path in written] == [sequence.mask_name(t) for t in range(12)]
    np.testing.assert_array_equal(read_label_mask(written[0]), sequence.read_annotation(0))
    for path in written[1:]:
        labels = read_label_mask(path)
        assert labels.shape == sequence.size and set(np.unique(labels)) <= {0, 1, 2}


def test_output_carries_only_first_frame_ids_at_any_frame_size(tmp_path):
    """37x45 frames (no multiple of the patch) with objects 3 and 7; object 9 only in a later mask."""
    size = (37, 45)
    first = box_labels(*size, {3: (2, 2, 20, 20), 7: (18, 24, 35, 43)})
    later = box_labels(*size, {3: (3, 3, 21, 21), 7: (18, 24, 35, 43), 9: (0, 30, 6, 44)})
    write_davis(tmp_path / "davis", "odd", [texture(*size, seed=t) for t in range(4)], {0: first, 2: later})
    (sequence,) = read_davis(tmp_path / "davis", split="train", check_masks=False)
    for short_side in (None, 20):
        segmenter = DropSegmenter(untrained_dropseg(), SegmenterSettings(frame_short_side=short_side))
        summary = run_segmentation_benchmark(segmenter, [sequence], tmp_path / f"results_{short_side}")
        assert summary["frames"] == 4 and summary["frames_per_second"] > 0
        assert segmenter.input_size == ((40, 48) if short_side is None else (24, 24))
        for t in range(1, 4):
            labels = read_label_mask(tmp_path / f"results_{short_side}" / "odd" / f"{t:05d}.png")
            assert labels.shape == size and set(np.unique(labels)) <= {0, 3, 7}


def test_probabilities_are_the_models_and_the_previous_frame_is_averaged_in(demo_davis):
    sequence = demo_davis[1]
    model = untrained_dropseg()
    frames = [np.array(Image.open(path).convert("RGB")) for path in sequence.frames[:3]]
    first_labels = sequence.read_annotation(0)

    plain = DropSegmenter(model, SegmenterSettings(frame_short_side=None))
    plain.initialize(frames[0], first_labels, (1, 2))
    reference_rgb, reference_labels = plain._first
    query = plain._frame_tensor(frames[1])
    expected = model.segment(reference_rgb, reference_labels, [1, 2], query)
    torch.testing.assert_close(plain.class_probabilities(query), expected)

    with_previous = DropSegmenter(model, SegmenterSettings(frame_short_side=None, use_previous_frame=True))
    with_previous.initialize(frames[0], first_labels, (1, 2))
    predicted = with_previous.segment(frames[1])
    assert predicted.shape == first_labels.shape
    previous_rgb, previous_labels = with_previous._previous
    assert set(previous_labels.unique().tolist()) <= {0, 1, 2}
    query = with_previous._frame_tensor(frames[2])
    averaged = (model.segment(reference_rgb, reference_labels, [1, 2], query)
                + model.segment(previous_rgb, previous_labels, [1, 2], query)) / 2
    torch.testing.assert_close(with_previous.class_probabilities(query), averaged)
    assert set(np.unique(with_previous.segment(frames[2]))) <= {0, 1, 2}


def test_segmenter_misuse_is_explained(demo_davis):
    segmenter = DropSegmenter(untrained_dropseg(), SegmenterSettings(frame_short_side=None))
    frame = np.zeros((40, 48, 3), dtype=np.uint8)
    with pytest.raises(RuntimeError, match="call initialize"):
        segmenter.segment(frame)
    segmenter.initialize(frame, np.zeros((40, 48), dtype=np.uint8), (1,))
    with pytest.raises(ValueError, match="frame is 50x40 .* first frame was 48x40"):
        segmenter.segment(np.zeros((40, 50, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="object_ids must be distinct"):
        segmenter.initialize(frame, np.zeros((40, 48), dtype=np.uint8), (1, 1))
