"""Template / search crops and the training pairs of the tracker (OSTrack's processing).

A crop is a square of side ceil(sqrt(w h) x factor) centred on a box, zero-padded where it
leaves the image and resized to the network's input size. Training jitters the search crop's
centre and scale so the target is not always in the middle; the template is cut around the
exact box. Every sample is a pure function of (seed, epoch, index), as in pretraining, so a
resumed fine-tuning sees the same pairs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from dropmae.data.images import imagenet_mean_std, read_rgb, to_normalized_tensor
from dropmae.data.sampler import EpochSeededDataset
from dropmae.tracking.datasets import TrackingSequence

# A drawn pair is redrawn (with the same item generator) when its crops are unusable; after
# this many tries the sequence is reported as the problem.
MAX_SAMPLE_TRIES = 100

_MEAN, _STD = imagenet_mean_std()


@dataclass(frozen=True)
class Crop:
    """A square region of an image resized to ``size`` x ``size``: image coords -> crop coords is
    ``(p - origin) * scale``."""

    image: np.ndarray  # uint8 [size, size, 3]
    origin: tuple[float, float]  # (x, y) of the crop's top-left corner in the image
    scale: float  # output pixels per image pixel (OSTrack's resize_factor)

    def box_to_crop(self, box_xywh: np.ndarray) -> np.ndarray:
        x, y, w, h = np.asarray(box_xywh, dtype=np.float64)
        return np.array([(x - self.origin[0]) * self.scale, (y - self.origin[1]) * self.scale, w * self.scale, h * self.scale])

    def box_to_image(self, box_xywh: np.ndarray) -> np.ndarray:
        x, y, w, h = np.asarray(box_xywh, dtype=np.float64)
        return np.array([x / self.scale + self.origin[0], y / self.scale + self.origin[1], w / self.scale, h / self.scale])


def crop_around(image: np.ndarray, box_xywh, factor: float, size: int) -> Crop:
    """The square crop of side ceil(sqrt(w h) factor) centred on ``box_xywh``, resized to ``size``.

    One cv2.warpAffine does OSTrack's crop, zero padding and resize in a single resampling; the
    half-pixel terms make it sample where cv2.resize of the padded crop would.
    """
    x, y, w, h = (float(v) for v in box_xywh)
    side = math.ceil(math.sqrt(max(w, 0.0) * max(h, 0.0)) * factor)
    if side < 1:
        raise ValueError(f"box {list(box_xywh)} is too small to crop around (side {side})")
    left = round(x + 0.5 * w - 0.5 * side)
    top = round(y + 0.5 * h - 0.5 * side)
    scale = size / side
    shift = 0.5 * scale - 0.5
    matrix = np.array([[scale, 0.0, -left * scale + shift], [0.0, scale, -top * scale + shift]])
    crop = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return Crop(crop, (float(left), float(top)), scale)


@dataclass(frozen=True)
class CropSettings:
    template_size: int
    search_size: int
    template_factor: float
    search_factor: float
    center_jitter: float
    scale_jitter: float
    max_frame_gap: int
    grayscale_probability: float
    brightness_jitter: float
    flip_probability: float
    hue_rotation_probability: float

    @classmethod
    def from_config(cls, tracking) -> "CropSettings":
        return cls(**{name: getattr(tracking, name) for name in cls.__dataclass_fields__})


# OpenCV's 8-bit HSV stores hue as degrees / 2: 180 steps around the circle.
HUE_STEPS = 180


def rotate_hues(images: list[np.ndarray], steps: int) -> list[np.ndarray]:
    """The RGB uint8 images with every pixel's hue turned by ``steps`` x 2 degrees (saturation and value kept),
    the same turn for all, so a template and its search crop still show the same object."""
    rotated = []
    for image in images:
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = (hsv[..., 0].astype(np.int16) + steps) % HUE_STEPS
        rotated.append(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB))
    return rotated


def jittered_box(box_xywh: np.ndarray, center_jitter: float, scale_jitter: float, rng: np.random.Generator) -> np.ndarray:
    """OSTrack's jitter: size x exp(N(0, scale_jitter)), centre moved by up to
    +-0.5 x center_jitter x sqrt(jittered area) in each axis."""
    x, y, w, h = box_xywh
    size = np.array([w, h]) * np.exp(rng.standard_normal(2) * scale_jitter)
    max_offset = math.sqrt(size[0] * size[1]) * center_jitter
    center = np.array([x + 0.5 * w, y + 0.5 * h]) + max_offset * (rng.random(2) - 0.5)
    return np.array([*(center - 0.5 * size), *size])


def sample_frame_pair(sequence: TrackingSequence, max_gap: int, rng: np.random.Generator) -> tuple[int, int] | None:
    """(template, search) frame indices with the target visible in both, search at most
    ``max_gap`` frames after the template (OSTrack's causal sampling); an image is paired with itself."""
    visible = np.flatnonzero(sequence.visible & _valid_boxes(sequence.boxes))
    if len(visible) == 0:
        return None
    if len(sequence.frames) == 1:
        return 0, 0
    template = int(rng.choice(visible))
    later = visible[(visible > template) & (visible <= template + max_gap)]
    if len(later) == 0:
        return None
    return template, int(rng.choice(later))


def _valid_boxes(boxes: np.ndarray) -> np.ndarray:
    return np.isfinite(boxes).all(axis=1) & (boxes[:, 2] > 0) & (boxes[:, 3] > 0)


class TrackingPairDataset(EpochSeededDataset):
    """``samples_per_epoch`` (template, search) pairs drawn from a weighted mixture of sequence sets.

    Item i of epoch e: set ~ weights, sequence ~ uniform, frames ~ :func:`sample_frame_pair`,
    crops with jitter and augmentation, all from a generator seeded by (seed, e, i).
    Returns ``{"template": [3, Hz, Wz], "search": [3, Hx, Wx], "search_box": [4]}`` with the
    search box as (cx, cy, w, h) normalised by the search size.
    """

    def __init__(self, sets: list[tuple[str, list[TrackingSequence], float]], samples_per_epoch: int,
                 settings: CropSettings, seed: int = 0) -> None:
        sets = [(name, [s for s in sequences if len(s.frames) > 0], weight) for name, sequences, weight in sets]
        empty = [name for name, sequences, _ in sets if not sequences]
        if empty:
            raise ValueError(f"training sets with no sequences: {empty}")
        self.set_names = [name for name, _, _ in sets]
        self.sequences = [sequences for _, sequences, _ in sets]
        weights = np.array([weight for _, _, weight in sets], dtype=np.float64)
        self.weights = weights / weights.sum()
        self.samples_per_epoch = samples_per_epoch
        self.settings = settings
        self.seed = seed
        self.epoch = 0
        self.rank = 0

    def __len__(self) -> int:
        return self.samples_per_epoch

    def describe(self) -> str:
        counts = ", ".join(f"{name}: {len(seqs)} sequences" for name, seqs in zip(self.set_names, self.sequences))
        return f"tracking sets ({counts}), {self.samples_per_epoch} pairs per epoch"

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        s = self.settings
        for _ in range(MAX_SAMPLE_TRIES):
            set_index = int(rng.choice(len(self.sequences), p=self.weights))
            sequences = self.sequences[set_index]
            sequence = sequences[int(rng.integers(len(sequences)))]
            frames = sample_frame_pair(sequence, s.max_frame_gap, rng)
            if frames is None:
                continue
            sample = self._crop_pair(sequence, *frames, rng)
            if sample is not None:
                return sample
        raise RuntimeError(f"item {index} of epoch {self.epoch}: no usable pair after {MAX_SAMPLE_TRIES} draws "
                           f"(last sequence {sequence.name} of {self.set_names[set_index]}); are its boxes valid?")

    def _crop_pair(self, sequence: TrackingSequence, template_index: int, search_index: int,
                   rng: np.random.Generator) -> dict[str, torch.Tensor] | None:
        s = self.settings
        template_image = read_rgb(sequence.frames[template_index])
        search_image = template_image if search_index == template_index else read_rgb(sequence.frames[search_index])
        template_box, search_box = sequence.boxes[template_index], sequence.boxes[search_index]
        search_center_box = jittered_box(search_box, s.center_jitter, s.scale_jitter, rng)
        if math.sqrt(search_center_box[2] * search_center_box[3]) * s.search_factor < 1:
            return None
        template_crop = crop_around(template_image, template_box, s.template_factor, s.template_size)
        search_crop = crop_around(search_image, search_center_box, s.search_factor, s.search_size)
        box = search_crop.box_to_crop(search_box) / s.search_size  # normalised xywh
        center = box[:2] + 0.5 * box[2:]
        if not ((0 <= center) & (center < 1)).all():  # jitter pushed the target's centre out of the crop
            return None

        images = [template_crop.image, search_crop.image]
        if rng.random() < s.grayscale_probability:  # joint, as OSTrack's ToGrayscale
            images = [np.repeat(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2) for image in images]
        if rng.random() < s.hue_rotation_probability:
            images = rotate_hues(images, int(rng.integers(1, HUE_STEPS)))
        tensors = []
        for image in images:
            tensor = to_normalized_tensor(image)
            brightness = rng.uniform(max(0.0, 1 - s.brightness_jitter), 1 + s.brightness_jitter)
            tensor = ((tensor * _STD + _MEAN) * brightness).clamp_(0, 1).sub_(_MEAN).div_(_STD)
            tensors.append(tensor)
        # OSTrack flips both crops jointly and then each crop again on its own, both with p = 0.5:
        # the net effect is an independent flip per crop, which is what is drawn here.
        template_flip, search_flip = rng.random(2) < s.flip_probability
        if template_flip:
            tensors[0] = tensors[0].flip(-1)
        if search_flip:
            tensors[1] = tensors[1].flip(-1)
            center[0] = 1.0 - center[0]
        target = np.array([center[0], center[1], box[2], box[3]], dtype=np.float32)
        return {"template": tensors[0], "search": tensors[1], "search_box": torch.from_numpy(target)}
