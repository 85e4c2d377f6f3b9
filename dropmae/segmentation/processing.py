"""DropSeg training pairs: (reference frame + object mask, query frame + object mask) crops.

The recipe is STCN's (hkchengrex/STCN, dataset/vos_dataset.py) as DropSeg forks it
(jimmy-dq/DropSeg): two annotated frames of one video at most ``max_frame_skip`` frames apart,
taken in reverse time order half of the time; one object of the reference frame is the
target. Both frames get the same random resized crop (area (0.36, 1) of the frame, aspect
(3/4, 4/3), bicubic for the image, nearest for the mask) and the same horizontal flip, then a
colour jitter (brightness 0.1, contrast 0.03, saturation 0.03, STCN's values).

Where we differ from the public code, on purpose:

- STCN draws the (0.1, 0.03, 0.03) jitter once per sample (it reseeds before every frame) and
  adds a 0.01 jitter, a random affine (15 deg, shear 10) and 5% greyscale per frame; we draw
  the jitter per frame and leave out the affine and greyscale.
- STCN picks the object among those left in the cropped reference mask; we pick it in the
  full reference mask, then redraw the crop (a few times, then the full frame) until it keeps
  ``min_object_pixels`` of the object.
- YouTube-VOS train annotates every 5th video frame, so STCN runs it at ``max_skip // 5``;
  ``max_frame_skip`` is counted in video frames here too and divided the same way.

Every sample is a pure function of (seed, epoch, rank, index), as in pretraining and the
tracker, so a resumed run draws the same pairs.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

from dropmae.data.images import read_rgb, to_normalized_tensor
from dropmae.data.sampler import EpochSeededDataset
from dropmae.segmentation.datasets import (
    VOID_LABEL,
    SegmentationDataError,
    SegmentationSequence,
    read_label_mask,
)

# A drawn pair is redrawn (same item generator) when it is unusable (no object in the reference
# frame, the object lost in the crop); after this many draws the item is an error.
MAX_SAMPLE_TRIES = 100
# Crops drawn before falling back to the full frame when the object keeps too few pixels.
CROP_TRIES = 5
# torchvision's RandomResizedCrop tries this many (area, aspect) draws before its central crop.
_BOX_TRIES = 10
# YouTube-VOS train holds every 5th frame of the video (STCN divides its max skip by 5 there).
FRAME_STEP = {"youtube_vos": 5}
# The whole frame as a relative (left, top, right, bottom) box.
FULL_FRAME = np.array([0.0, 0.0, 1.0, 1.0])


@dataclass(frozen=True)
class SegmentationCropSettings:
    """How a training pair is drawn and cropped (defaults: STCN / DropSeg).

    image_size: side of the square crops. max_frame_skip: largest |query - reference| in video
    frames. reverse_probability: chance the pair is taken backwards in time. crop_scale /
    crop_ratio: area fraction and aspect (w / h) ranges of the random resized crop.
    flip_probability: horizontal flip of both frames. *_jitter: colour jitter strengths, drawn
    per frame (factor uniform in [1 - x, 1 + x]). min_object_pixels: the crop is redrawn while
    the target keeps fewer pixels than this in the reference crop (100 = 10x10, the size STCN
    requires of a BL30K object).
    """

    image_size: int
    max_frame_skip: int
    reverse_probability: float = 0.5
    crop_scale: tuple[float, float] = (0.36, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_probability: float = 0.5
    brightness_jitter: float = 0.1
    contrast_jitter: float = 0.03
    saturation_jitter: float = 0.03
    min_object_pixels: int = 100

    def __post_init__(self) -> None:
        for name in ("crop_scale", "crop_ratio"):  # config lists become tuples
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        if self.image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {self.image_size}")
        if self.max_frame_skip < 1:
            raise ValueError(f"max_frame_skip must be >= 1, got {self.max_frame_skip}")
        for name in ("reverse_probability", "flip_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        low, high = self.crop_scale
        if len(self.crop_scale) != 2 or not 0.0 < low <= high <= 1.0:
            raise ValueError(f"crop_scale must be (low, high) with 0 < low <= high <= 1, got {self.crop_scale}")
        if len(self.crop_ratio) != 2 or not 0.0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"crop_ratio must be (low, high) with 0 < low <= high, got {self.crop_ratio}")
        for name in ("brightness_jitter", "contrast_jitter", "saturation_jitter"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.min_object_pixels < 1:  # the reference mask must show the object
            raise ValueError(f"min_object_pixels must be >= 1, got {self.min_object_pixels}")

    @classmethod
    def from_config(cls, segmentation) -> SegmentationCropSettings:
        """Fields taken by name from the config's segmentation section."""
        missing = [f.name for f in fields(cls) if not hasattr(segmentation, f.name)]
        if missing:
            raise ValueError(f"segmentation config lacks {missing} (needed for the training crops)")
        return cls(**{f.name: getattr(segmentation, f.name) for f in fields(cls)})


# ------------------------------------------------------------------------------- pairs
@functools.lru_cache(maxsize=1 << 16)  # a few bytes per mask; spares re-decoding on redraws
def _objects_in_mask(path: Path, binary: bool) -> tuple[int, ...]:
    labels = read_label_mask(path, binary=binary)
    present = np.flatnonzero(np.bincount(labels.ravel(), minlength=256))
    return tuple(int(label) for label in present if label not in (0, VOID_LABEL))


def objects_in_annotation(sequence: SegmentationSequence, frame_index: int) -> tuple[int, ...]:
    """Objects of ``sequence`` present in the annotation of ``frame_index``, ascending (cached per mask)."""
    present = _objects_in_mask(sequence.annotations[frame_index], sequence.binary)
    return tuple(k for k in present if k in sequence.object_ids)


def _partners(annotated: np.ndarray, max_skip: int) -> np.ndarray:
    """For each annotated index (ascending), how many later annotated indices lie within ``max_skip``."""
    return np.searchsorted(annotated, annotated + max_skip, side="right") - np.arange(1, len(annotated) + 1)


def has_usable_pair(sequence: SegmentationSequence, max_skip: int) -> bool:
    """Whether two annotated frames lie at most ``max_skip`` frames apart (no mask decoded)."""
    annotated = np.asarray(sequence.annotated_indices)
    return bool((_partners(annotated, max_skip) > 0).any())


def sample_segmentation_pair(
    sequence: SegmentationSequence, max_skip: int, reverse_probability: float, rng: np.random.Generator
) -> tuple[int, int, int] | None:
    """(reference frame, query frame, object id), or None when the draw is unusable.

    DropSeg's draw, over annotated frames: the earlier frame uniform among those with a later
    annotated frame at most ``max_skip`` frames on, the later one uniform among those; then the
    order is reversed with ``reverse_probability``. The object is uniform among the objects
    present in the reference frame's mask; None if it shows none (or no pair exists).
    """
    if max_skip < 1:
        raise ValueError(f"max_skip must be >= 1, got {max_skip}")
    annotated = np.asarray(sequence.annotated_indices)
    partners = _partners(annotated, max_skip)
    starts = np.flatnonzero(partners > 0)
    if len(starts) == 0:
        return None
    first = int(rng.choice(starts))
    second = first + 1 + int(rng.integers(partners[first]))
    reference, query = int(annotated[first]), int(annotated[second])
    if rng.random() < reverse_probability:
        reference, query = query, reference
    present = objects_in_annotation(sequence, reference)
    if not present:
        return None
    return reference, query, int(rng.choice(present))


# ------------------------------------------------------------------------------- crops
def random_resized_box(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], rng: np.random.Generator
) -> np.ndarray:
    """torchvision RandomResizedCrop's box as relative (left, top, right, bottom) in [0, 1].

    Up to 10 draws of area ~ U(scale) x frame area and aspect w / h ~ log-uniform(ratio); the
    first that fits the frame is placed uniformly. Otherwise the largest central box whose
    aspect is clamped into ``ratio``. Continuous (not whole pixels), so one relative box cuts
    the same region from frames and masks of any size.
    """
    area = height * width
    log_ratio = np.log(ratio)
    for _ in range(_BOX_TRIES):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        box_width, box_height = math.sqrt(target * aspect), math.sqrt(target / aspect)
        if box_width <= width and box_height <= height:
            left, top = rng.uniform(0, width - box_width), rng.uniform(0, height - box_height)
            return np.array([left / width, top / height, (left + box_width) / width, (top + box_height) / height])
    aspect = width / height
    if aspect < ratio[0]:
        box_width, box_height = width, width / ratio[0]
    elif aspect > ratio[1]:
        box_width, box_height = height * ratio[1], height
    else:
        return FULL_FRAME.copy()
    left, top = (width - box_width) / 2, (height - box_height) / 2
    return np.array([left / width, top / height, (left + box_width) / width, (top + box_height) / height])


def resized_crop(image: np.ndarray, box: np.ndarray, size: int, resample: Image.Resampling) -> np.ndarray:
    """The relative ``box`` of ``image`` ([H, W] or [H, W, C] uint8) resized to ``size`` x ``size``.

    PIL's resize with a (sub-pixel) source box crops and resamples in one antialiased pass,
    which is what RandomResizedCrop does on PIL images.
    """
    height, width = image.shape[:2]
    pixels = (box[0] * width, box[1] * height, box[2] * width, box[3] * height)
    return np.array(Image.fromarray(image).resize((size, size), resample, box=pixels))


def color_jitter(
    image: np.ndarray, brightness: float, contrast: float, saturation: float, rng: np.random.Generator
) -> np.ndarray:
    """torchvision ColorJitter (hue 0) on uint8 [H, W, 3]: factors ~ U[max(0, 1 - x), 1 + x],
    applied in a random order, from ``rng``."""
    strengths = (brightness, contrast, saturation)
    if not any(strengths):
        return image
    adjusters = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)
    factors = [rng.uniform(max(0.0, 1 - x), 1 + x) for x in strengths]
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    for which in rng.permutation(3):
        if strengths[which]:
            tensor = adjusters[which](tensor, factors[which])
    return tensor.permute(1, 2, 0).numpy()


class SegmentationPairDataset(EpochSeededDataset):
    """``samples_per_epoch`` DropSeg training pairs from a weighted mixture of segmentation sets.

    ``sets``: (name, sequences, weight). Item i of epoch e on rank r: set ~ weights, sequence
    uniform among those with a usable pair, frames and object ~ :func:`sample_segmentation_pair`,
    one crop box and flip for both frames, colour jitter per frame; all from a generator seeded
    by (seed, e, r, i). Returns ``{"reference_rgb": [3, S, S], "reference_mask": [1, S, S],
    "query_rgb": [3, S, S], "query_mask": [1, S, S]}``: images ImageNet-normalised, masks float
    {0, 1} of the chosen object (S = ``settings.image_size``).
    """

    def __init__(
        self,
        sets: list[tuple[str, list[SegmentationSequence], float]],
        samples_per_epoch: int,
        settings: SegmentationCropSettings,
        seed: int = 0,
    ) -> None:
        if not sets:
            raise ValueError("no segmentation training sets given")
        if samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch must be >= 1, got {samples_per_epoch}")
        self.settings = settings
        self.set_names, self.sequences, weights = [], [], []
        for name, sequences, weight in sets:
            if not weight > 0:
                raise ValueError(f"segmentation set {name!r}: weight must be positive, got {weight}")
            usable = [s for s in sequences if has_usable_pair(s, self.max_skip(s))]
            if not usable:
                skips = sorted({self.max_skip(s) for s in sequences}) or [settings.max_frame_skip]
                raise ValueError(
                    f"segmentation set {name!r}: none of its {len(sequences)} sequences has two annotated frames "
                    f"at most {skips[0] if len(skips) == 1 else skips} frame indices apart "
                    f"(max_frame_skip = {settings.max_frame_skip}); is it a split with only first-frame masks?"
                )
            self.set_names.append(name)
            self.sequences.append(usable)
            weights.append(float(weight))
        self.weights = np.array(weights) / sum(weights)
        self.samples_per_epoch = samples_per_epoch
        self.seed = seed
        self.epoch = 0
        self.rank = 0

    def max_skip(self, sequence: SegmentationSequence) -> int:
        """``max_frame_skip`` in frame indices of ``sequence`` (YouTube-VOS: video frames // 5, at least 1)."""
        return max(1, self.settings.max_frame_skip // FRAME_STEP.get(sequence.dataset, 1))

    def __len__(self) -> int:
        return self.samples_per_epoch

    def describe(self) -> str:
        counts = ", ".join(f"{name}: {len(seqs)} sequences" for name, seqs in zip(self.set_names, self.sequences))
        return f"segmentation sets ({counts}), {self.samples_per_epoch} pairs per epoch"

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, index])
        for _ in range(MAX_SAMPLE_TRIES):
            set_index = int(rng.choice(len(self.sequences), p=self.weights))
            sequences = self.sequences[set_index]
            sequence = sequences[int(rng.integers(len(sequences)))]
            drawn = sample_segmentation_pair(sequence, self.max_skip(sequence), self.settings.reverse_probability, rng)
            if drawn is None:
                continue
            sample = self._crop_pair(sequence, *drawn, rng)
            if sample is not None:
                return sample
        raise RuntimeError(
            f"item {index} of epoch {self.epoch}: no usable pair after {MAX_SAMPLE_TRIES} draws (last sequence "
            f"{sequence.name!r} of set {self.set_names[set_index]!r}); do its masks show objects?"
        )

    def _read_frame(self, sequence: SegmentationSequence, frame_index: int) -> tuple[np.ndarray, np.ndarray]:
        rgb = read_rgb(sequence.frames[frame_index])
        labels = sequence.read_annotation(frame_index)
        if labels.shape != rgb.shape[:2]:
            raise SegmentationDataError(
                f"{sequence.annotations[frame_index]}: mask is {labels.shape[1]}x{labels.shape[0]} (WxH) but its "
                f"frame {sequence.frames[frame_index]} is {rgb.shape[1]}x{rgb.shape[0]}"
            )
        return rgb, labels

    def _crop_pair(
        self, sequence: SegmentationSequence, reference: int, query: int, object_id: int, rng: np.random.Generator
    ) -> dict[str, torch.Tensor] | None:
        s = self.settings
        reference_rgb, reference_labels = self._read_frame(sequence, reference)
        query_rgb, query_labels = self._read_frame(sequence, query)
        reference_object = (reference_labels == object_id).astype(np.uint8)
        height, width = reference_object.shape
        for _ in range(CROP_TRIES):
            box = random_resized_box(height, width, s.crop_scale, s.crop_ratio, rng)
            reference_mask = resized_crop(reference_object, box, s.image_size, Image.Resampling.NEAREST)
            if reference_mask.sum() >= s.min_object_pixels:
                break
        else:
            box = FULL_FRAME
            reference_mask = resized_crop(reference_object, box, s.image_size, Image.Resampling.NEAREST)
            if not reference_mask.any():  # too small to survive even the whole-frame resize: draw again
                return None
        query_object = (query_labels == object_id).astype(np.uint8)
        query_mask = resized_crop(query_object, box, s.image_size, Image.Resampling.NEAREST)
        images = [resized_crop(rgb, box, s.image_size, Image.Resampling.BICUBIC) for rgb in (reference_rgb, query_rgb)]
        masks = [reference_mask, query_mask]
        if rng.random() < s.flip_probability:  # one flip for both frames
            images = [image[:, ::-1] for image in images]
            masks = [mask[:, ::-1] for mask in masks]
        images = [color_jitter(image, s.brightness_jitter, s.contrast_jitter, s.saturation_jitter, rng) for image in images]
        reference_tensor, query_tensor = (to_normalized_tensor(image) for image in images)
        reference_mask, query_mask = (torch.from_numpy(np.ascontiguousarray(mask)).float()[None] for mask in masks)
        return {
            "reference_rgb": reference_tensor,
            "reference_mask": reference_mask,
            "query_rgb": query_tensor,
            "query_mask": query_mask,
        }
