"""Readers for the video object segmentation benchmarks: DAVIS 2017, DAVIS 2016 and YouTube-VOS 2019.

Each reader turns one benchmark's on-disk layout into a list of :class:`SegmentationSequence`
records. Readers list frame and mask files, read image headers (PIL reads the size and mode
without decoding the pixels) and decode only the masks they must; every structural problem
raises :class:`SegmentationDataError` naming the file (and line or key) at fault.

Layouts (as the official downloads ship them):

- DAVIS 2017: ``root/ImageSets/2017/<split>.txt`` names the sequences;
  ``root/JPEGImages/<resolution>/<seq>/00000.jpg...`` and 8-bit palette PNGs
  ``root/Annotations/<resolution>/<seq>/00000.png...`` (index 0 background, k = object k,
  255 void). train/val annotate every frame, test-dev/test-challenge only the first.
- DAVIS 2016, either download:
  the DAVIS-2017 folder (``ImageSets/2016/<split>.txt``, the 2017 multi-object palette
  masks) or the original DAVIS-2016 folder (``ImageSets/<resolution>/<split>.txt`` whose
  lines are ``/JPEGImages/480p/<seq>/00000.jpg /Annotations/480p/<seq>/00000.png``, and
  greyscale 0/255 masks). DAVIS 2016 is single-object: every non-zero label is object 1.
  What the official code does: davis2017-evaluation has no 2016 mode (it always reads
  ImageSets/2017, and it turns 255 into void, so a 0/255 DAVIS-2016 mask would read as
  empty). Its 2016 fork (hkchengrex/davis2016-evaluation, now deprecated for vos-benchmark)
  reads ImageSets/2016 from the DAVIS-2017 folder, zeroes void 255 and merges all non-zero
  labels of the 2017 masks into one object, as we do; it binarises results with ``> 128``
  (expecting 0/255 result PNGs), where we take any non-zero result label (see metrics.py).
- YouTube-VOS 2019: ``root/<split>/JPEGImages/<vid>/<frame>.jpg``, palette PNGs
  ``root/<split>/Annotations/<vid>/<frame>.png`` and ``root/<split>/meta.json`` =
  ``{"videos": {vid: {"objects": {"<id>": {"category": str, "frames": [frame names]}}}}}``
  where ``frames`` lists the frames an object is annotated in (train) or must be
  segmented in (valid/test; there only the PNG of each object's first frame ships).
  Objects may first appear after the first frame. train annotates every 5th frame of the
  original video, which is every JPEG of ``train/`` (``train_all_frames/`` has all frames,
  the others unannotated).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from dropmae.data.images import natural_sort_key, visible_file_names
from dropmae.data.name_list import read_name_list

SEGMENTATION_FORMATS = ("davis2017", "davis2016", "youtube_vos")

DAVIS_YEARS = ("2017", "2016")
DAVIS_SPLITS = ("train", "val", "test-dev", "test-challenge")
DAVIS_RESOLUTIONS = ("480p", "Full-Resolution")
# DAVIS marks pixels it does not score with 255 (davis2017-evaluation's VOID_LABEL).
VOID_LABEL = 255

_FRAME_SUFFIXES = (".jpg", ".jpeg")
_MASK_SUFFIXES = (".png",)


class SegmentationDataError(ValueError):
    """A segmentation benchmark's files are missing or malformed; the message names the file (line, key)."""


@dataclass(frozen=True, eq=False)  # eq=False: dict fields, and two readings of one folder need not be "equal"
class SegmentationSequence:
    """One video of a segmentation benchmark.

    ``frames``: every frame image, in temporal order. ``annotations``: frame index -> mask PNG
    (palette index image), in frame order; DAVIS train/val annotate every frame, YouTube-VOS
    train every JPEG of train/ (every 5th video frame), test splits only the first frame.
    ``object_ids``: every object of the sequence, ascending (for DAVIS exactly the objects
    of the first frame; DAVIS 2016 has the one object 1). ``object_first_frame``: object
    id -> index of the frame whose annotation gives its reference mask (0 for DAVIS;
    YouTube-VOS objects may start later). ``size``: (height, width) of the first frame.
    """

    name: str
    dataset: str
    frames: tuple[Path, ...]
    annotations: dict[int, Path]
    object_ids: tuple[int, ...]
    object_first_frame: dict[int, int]
    size: tuple[int, int]

    def __post_init__(self) -> None:
        where = f"sequence {self.name!r}"
        if self.dataset not in SEGMENTATION_FORMATS:
            raise ValueError(f"{where}: dataset {self.dataset!r} is not one of {SEGMENTATION_FORMATS}")
        if not isinstance(self.frames, tuple) or not self.frames:
            raise ValueError(f"{where}: frames must be a non-empty tuple of paths")
        if not self.annotations:
            raise ValueError(f"{where}: no annotated frame")
        bad = [index for index in self.annotations if not 0 <= index < len(self.frames)]
        if bad:
            raise ValueError(f"{where}: annotation frame index {bad[0]} outside 0..{len(self.frames) - 1}")
        if not self.object_ids or list(self.object_ids) != sorted(set(self.object_ids)):
            raise ValueError(f"{where}: object_ids must be distinct, ascending and non-empty, got {self.object_ids}")
        if not all(1 <= object_id <= 255 and object_id != VOID_LABEL for object_id in self.object_ids):
            raise ValueError(f"{where}: object ids must be palette indices 1..254, got {self.object_ids}")
        if set(self.object_first_frame) != set(self.object_ids):
            raise ValueError(
                f"{where}: object_first_frame keys {sorted(self.object_first_frame)} differ from object_ids"
            )
        unannotated = {k: i for k, i in self.object_first_frame.items() if i not in self.annotations}
        if unannotated:
            raise ValueError(f"{where}: object first frames {unannotated} have no annotation")
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"{where}: size must be (height, width) >= 1, got {self.size}")

    def __len__(self) -> int:
        """Number of frames (annotated or not)."""
        return len(self.frames)

    @property
    def annotated_indices(self) -> tuple[int, ...]:
        """Indices of the annotated frames, ascending."""
        return tuple(sorted(self.annotations))

    @property
    def binary(self) -> bool:
        """DAVIS 2016 is single-object: every non-zero (non-void) label reads as object 1."""
        return self.dataset == "davis2016"

    def read_annotation(self, frame_index: int) -> np.ndarray:
        """Labels [H, W] uint8 of an annotated frame (DAVIS 2016: {0, 1}); void 255 is kept."""
        return read_label_mask(self.annotations[frame_index], binary=self.binary)

    def mask_name(self, frame_index: int) -> str:
        """File name of the frame's mask, ``<frame stem>.png``: annotations and results use it."""
        return self.frames[frame_index].stem + ".png"


# ---------------------------------------------------------------------------- mask files


def _open_image(path: Path, what: str) -> Image.Image:
    try:
        return Image.open(path)
    except FileNotFoundError:
        raise SegmentationDataError(f"{path}: {what} is missing") from None
    except IsADirectoryError:
        raise SegmentationDataError(f"{path}: expected a {what}, found a folder") from None
    except UnidentifiedImageError:
        raise SegmentationDataError(f"{path}: {what} is not an image PIL can read") from None


def image_header(path: str | os.PathLike, what: str = "image") -> tuple[str, tuple[int, int]]:
    """(PIL mode, (height, width)) of an image file, read from its header without decoding the pixels."""
    path = Path(path)
    with _open_image(path, what) as image:
        return image.mode, (image.height, image.width)


def read_label_mask(path: str | os.PathLike, *, binary: bool = False) -> np.ndarray:
    """Object labels [H, W] uint8 of a mask PNG.

    A palette ("P") PNG gives its palette indices (0 background, k object k, 255 void).
    A greyscale ("L" or "1") mask is a DAVIS-2016 0/255 mask and reads as {0, 1}; other
    grey values are an error (they would be indices written without a palette, or an
    anti-aliased mask). ``binary``: every non-zero non-void label becomes 1. (The writer is
    :func:`dropmae.data.images.write_label_mask`.)
    """
    path = Path(path)
    with _open_image(path, "mask") as image:
        mode = image.mode
        if mode not in ("P", "L", "1"):
            raise SegmentationDataError(
                f"{path}: {mode} mask; expected a palette (P) PNG of object indices or a 0/255 greyscale mask"
            )
        values = np.array(image)
    if mode == "P":
        labels = values.astype(np.uint8, copy=False)
        return ((labels != 0) & (labels != VOID_LABEL)).astype(np.uint8) if binary else labels
    if mode == "L":
        stray = (values != 0) & (values != 255)
        if stray.any():
            found = np.unique(values[stray])[:5].tolist()
            raise SegmentationDataError(
                f"{path}: greyscale mask with values {found} besides 0/255; expected a palette (P) PNG of "
                "object indices or a DAVIS 2016 0/255 mask"
            )
    return (values != 0).astype(np.uint8)


# ---------------------------------------------------------------------------- listing


def _require_folder(folder: Path, what: str) -> Path:
    if not folder.is_dir():
        raise SegmentationDataError(
            f"{folder}: {what} does not exist" if not folder.exists() else f"{folder}: {what} is not a folder"
        )
    return folder


def _list_files(folder: Path, suffixes: Sequence[str]) -> list[Path]:
    """Files of ``folder`` with one of ``suffixes`` (any case), in numeric-aware name order; [] if no folder."""
    try:
        names = visible_file_names(folder, suffixes)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [folder / name for name in sorted(names, key=natural_sort_key)]


def _read_davis2016_pair_list(path: Path) -> list[tuple[int, str]]:
    """Sequence names, in first-seen order, of the original DAVIS-2016 list of
    ``/JPEGImages/480p/<seq>/<frame>.jpg /Annotations/480p/<seq>/<frame>.png`` lines."""
    entries, seen = [], set()
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        parts = [part for part in fields[0].split("/") if part]
        if len(parts) < 4 or parts[0] != "JPEGImages":
            raise SegmentationDataError(
                f"{path}:{number}: expected '/JPEGImages/<resolution>/<sequence>/<frame>.jpg ...', got {line.strip()!r}"
            )
        if parts[-2] not in seen:
            seen.add(parts[-2])
            entries.append((number, parts[-2]))
    if not entries:
        raise SegmentationDataError(f"{path}: lists no sequences")
    return entries


def _frames_and_annotations(
    frame_dir: Path, mask_dir: Path, listed_at: str
) -> tuple[tuple[Path, ...], dict[int, Path]]:
    """Frames of a sequence and its mask PNGs by frame index; a PNG naming no frame is an error."""
    frames = tuple(_list_files(frame_dir, _FRAME_SUFFIXES))
    if not frames:
        state = "is missing" if not frame_dir.exists() else "holds no .jpg frames"
        raise SegmentationDataError(f"{listed_at}: sequence has no frames: {frame_dir} {state}")
    index_of = {frame.stem: index for index, frame in enumerate(frames)}
    annotations = {}
    for mask in _list_files(mask_dir, _MASK_SUFFIXES):
        if mask.stem not in index_of:
            raise SegmentationDataError(f"{mask}: annotation names no frame of {frame_dir} (no {mask.stem}.jpg)")
        annotations[index_of[mask.stem]] = mask
    if 0 not in annotations:
        raise SegmentationDataError(
            f"{mask_dir / (frames[0].stem + '.png')}: first-frame annotation is missing (the reference mask)"
        )
    return frames, dict(sorted(annotations.items()))


def _check_header(mask: Path, frame: Path, modes: Sequence[str], frame_size: tuple[int, int] | None = None) -> None:
    """The mask's mode is one of ``modes`` and its size is its frame's (headers only)."""
    mode, size = image_header(mask, "mask")
    if mode not in modes:
        expected = "a palette (P) PNG" if tuple(modes) == ("P",) else f"one of the modes {list(modes)}"
        raise SegmentationDataError(f"{mask}: {mode} mask; expected {expected}")
    frame_size = frame_size or image_header(frame, "frame")[1]
    if size != frame_size:
        raise SegmentationDataError(
            f"{mask}: mask is {size[1]}x{size[0]} (WxH) but its frame {frame} is {frame_size[1]}x{frame_size[0]}"
        )


def _object_labels(labels: np.ndarray) -> list[int]:
    """Object labels present in a label map: non-zero and not void, ascending."""
    present = np.flatnonzero(np.bincount(labels.ravel(), minlength=256))
    return [int(label) for label in present if label not in (0, VOID_LABEL)]


# ---------------------------------------------------------------------------- DAVIS


def read_davis(
    root: str | os.PathLike,
    year: str = "2017",
    split: str = "val",
    resolution: str = "480p",
    *,
    check_masks: bool = True,
) -> list[SegmentationSequence]:
    """DAVIS 2017 or 2016 sequences of ``split``, in list-file order.

    Always: every listed sequence has frames and a first-frame mask; the first mask is
    decoded for the objects (2017: its labels; 2016: object 1) and checked against the
    first frame's size. ``check_masks`` (a few seconds for DAVIS-2017 val's ~2k masks):
    every mask's header (mode, size against its own frame) is read and every mask is
    decoded; a 2017 label that is not an object of the first frame (void 255 allowed) is
    an error. 2017 masks must be palette PNGs; 2016 masks may be palette or 0/255 greyscale.
    """
    if year not in DAVIS_YEARS:
        raise ValueError(f"DAVIS year {year!r} is not one of {DAVIS_YEARS}")
    if split not in DAVIS_SPLITS:
        raise ValueError(f"DAVIS split {split!r} is not one of {DAVIS_SPLITS}")
    if resolution not in DAVIS_RESOLUTIONS:
        raise ValueError(f"DAVIS resolution {resolution!r} is not one of {DAVIS_RESOLUTIONS}")
    root = _require_folder(Path(root), "DAVIS root")
    list_file = root / "ImageSets" / year / f"{split}.txt"
    if year == "2017" or list_file.is_file():
        entries = read_name_list(list_file, SegmentationDataError)
    else:
        pair_list = root / "ImageSets" / resolution / f"{split}.txt"  # the original DAVIS-2016 download
        if not pair_list.is_file():
            raise SegmentationDataError(
                f"{list_file}: sequence list file is missing (nor is there the DAVIS-2016 download's {pair_list})"
            )
        list_file, entries = pair_list, _read_davis2016_pair_list(pair_list)
    dataset = f"davis{year}"
    mask_modes = ("P",) if year == "2017" else ("P", "L", "1")
    sequences = []
    for number, name in entries:
        frames, annotations = _frames_and_annotations(
            root / "JPEGImages" / resolution / name,
            root / "Annotations" / resolution / name,
            f"{list_file}:{number}: {name!r}",
        )
        size = image_header(frames[0], "frame")[1]
        first_mask = annotations[0]
        _check_header(first_mask, frames[0], mask_modes, size)
        first_labels = read_label_mask(first_mask, binary=year == "2016")
        object_ids = tuple(_object_labels(first_labels))
        if not object_ids:
            raise SegmentationDataError(f"{first_mask}: first-frame annotation shows no object")
        if check_masks:
            allowed = set(object_ids) | {0, VOID_LABEL}
            for index, mask in annotations.items():
                if index == 0:
                    continue
                _check_header(mask, frames[index], mask_modes)
                labels = read_label_mask(mask, binary=year == "2016")  # 2016: also checks greyscale is 0/255
                strangers = sorted(set(_object_labels(labels)) - allowed)
                if strangers:
                    raise SegmentationDataError(
                        f"{mask}: labels {strangers} are not objects of the first frame "
                        f"{first_mask.name} (objects {list(object_ids)})"
                    )
        sequences.append(
            SegmentationSequence(name, dataset, frames, annotations, object_ids, {k: 0 for k in object_ids}, size)
        )
    return sequences


# ---------------------------------------------------------------------------- YouTube-VOS


def _read_youtube_meta(meta_file: Path) -> dict[str, dict[int, list[str]]]:
    """video -> object id -> frame names, from a YouTube-VOS meta.json; bad structure names the key."""
    if not meta_file.is_file():
        raise SegmentationDataError(f"{meta_file}: YouTube-VOS meta.json is missing (every split ships one)")
    try:
        content = json.loads(meta_file.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SegmentationDataError(f"{meta_file}: not valid JSON ({error})") from None
    videos = content.get("videos") if isinstance(content, dict) else None
    if not isinstance(videos, dict) or not videos:
        raise SegmentationDataError(f"{meta_file}: expected {{'videos': {{<video>: {{'objects': ...}}}}}}")
    meta: dict[str, dict[int, list[str]]] = {}
    for video, record in videos.items():
        objects = record.get("objects") if isinstance(record, dict) else None
        if not isinstance(objects, dict) or not objects:
            raise SegmentationDataError(f"{meta_file}: videos/{video}/objects: missing or empty")
        meta[video] = {}
        for key, entry in objects.items():
            where = f"{meta_file}: videos/{video}/objects/{key}"
            if not (isinstance(key, str) and key.isdigit() and 1 <= int(key) <= 254):
                raise SegmentationDataError(f"{where}: object id must be an integer 1..254")
            frames = entry.get("frames") if isinstance(entry, dict) else None
            if not isinstance(frames, list) or not frames or not all(isinstance(f, str) for f in frames):
                raise SegmentationDataError(f"{where}/frames: expected a non-empty list of frame names")
            meta[video][int(key)] = frames
    return meta


def read_youtube_vos(
    root: str | os.PathLike, split: str = "train", *, check_masks: bool = True
) -> list[SegmentationSequence]:
    """YouTube-VOS 2019 videos of ``root/<split>`` named in its meta.json, in natural name order.

    Objects and their first frames come from meta.json (the earliest frame an object is
    listed in); the first frame and every object's first frame must have a mask PNG.
    Frames without a mask are allowed. ``check_masks``: every mask's header (palette mode,
    size against its own frame) is read, and each object's first-frame mask is decoded to
    check the object is there and every label is an object of meta.json.
    """
    split_dir = _require_folder(_require_folder(Path(root), "YouTube-VOS root") / split, "YouTube-VOS split folder")
    meta_file = split_dir / "meta.json"
    meta = _read_youtube_meta(meta_file)
    sequences = []
    for video in sorted(meta, key=natural_sort_key):
        objects = meta[video]
        frames, annotations = _frames_and_annotations(
            split_dir / "JPEGImages" / video, split_dir / "Annotations" / video, f"{meta_file}: videos/{video}"
        )
        index_of = {frame.stem: index for index, frame in enumerate(frames)}
        first_frame = {}
        for object_id, names in objects.items():
            missing = [name for name in names if name not in index_of]
            if missing:
                raise SegmentationDataError(
                    f"{meta_file}: videos/{video}/objects/{object_id}/frames: frame {missing[0]!r} "
                    f"has no {missing[0]}.jpg in {frames[0].parent}"
                )
            first = min(index_of[name] for name in names)
            if first not in annotations:
                raise SegmentationDataError(
                    f"{split_dir / 'Annotations' / video / (frames[first].stem + '.png')}: missing; it is the "
                    f"first-frame annotation of object {object_id} (meta.json)"
                )
            first_frame[object_id] = first
        object_ids = tuple(sorted(objects))
        size = image_header(frames[0], "frame")[1]
        _check_header(annotations[0], frames[0], ("P",), size)
        if check_masks:
            for index, mask in annotations.items():
                if index:
                    _check_header(mask, frames[index], ("P",))
            for index in sorted(set(first_frame.values())):
                mask = annotations[index]
                present = set(_object_labels(read_label_mask(mask)))
                strangers = sorted(present - set(object_ids))
                if strangers:
                    raise SegmentationDataError(
                        f"{mask}: labels {strangers} are not objects of videos/{video} in {meta_file}"
                    )
                absent = [k for k, i in first_frame.items() if i == index and k not in present]
                if absent:
                    raise SegmentationDataError(
                        f"{mask}: object {absent[0]} is not in its first-frame annotation (meta.json lists it here)"
                    )
        sequences.append(
            SegmentationSequence(
                video, "youtube_vos", frames, annotations, object_ids, dict(sorted(first_frame.items())), size
            )
        )
    return sequences


def read_segmentation_benchmark(
    format: str, root: str | os.PathLike, split: str | None = None, *, check_masks: bool = True
) -> list[SegmentationSequence]:
    """Dispatch on ``format`` (one of SEGMENTATION_FORMATS); ``split`` None gives DAVIS ``val``
    and YouTube-VOS ``train`` (the only YouTube-VOS split whose every 5th frame has a mask)."""
    if format == "davis2017":
        return read_davis(root, "2017", split or "val", check_masks=check_masks)
    if format == "davis2016":
        return read_davis(root, "2016", split or "val", check_masks=check_masks)
    if format == "youtube_vos":
        return read_youtube_vos(root, split or "train", check_masks=check_masks)
    raise ValueError(f"unknown segmentation format {format!r}; expected one of {SEGMENTATION_FORMATS}")
