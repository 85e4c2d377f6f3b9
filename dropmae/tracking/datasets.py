"""Readers for the single-object tracking benchmarks: GOT-10k, LaSOT, TrackingNet, TNL2K and COCO boxes.

Each reader turns one benchmark's on-disk layout into a list of :class:`TrackingSequence`
records. Readers only list frame files (opening 10k sequences' images would take minutes)
and read the small annotation text files; every structural problem raises
:class:`TrackingDataError` naming the file (and line) at fault.

Layouts (as the official downloads ship them):

- GOT-10k: ``root/<split>/list.txt`` names the sequence folders; each holds
  ``00000001.jpg...``, ``groundtruth.txt`` (``x,y,w,h`` per line; the test split has
  only the first line), ``absence.label`` and ``cover.label`` (one int per line; absent
  in the test split), ``cut_by_image.label`` and ``meta_info.ini`` (not read).
- LaSOT: ``root/<class>/<class>-<n>/`` or flat ``root/<class>-<n>/`` with
  ``img/00000001.jpg...``, ``groundtruth.txt``, ``full_occlusion.txt`` and
  ``out_of_view.txt`` (one line of comma-separated 0/1), ``nlp.txt``; the split comes
  from ``root/testing_set.txt``.
- TrackingNet: ``root/TRAIN_<i>/frames/<seq>/0.jpg...`` and ``root/TRAIN_<i>/anno/<seq>.txt``;
  chunk ``TEST`` has only the first box.
- TNL2K: ``root/<seq>/imgs/*.jpg|*.png``, ``groundtruth.txt``, ``language.txt``.
- COCO 2017: ``root/annotations/instances_<split>.json`` with images in ``root/<split>/``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dropmae.data.images import natural_sort_key, visible_file_names
from dropmae.data.name_list import read_name_list

BENCHMARKS = ("got10k", "lasot", "trackingnet", "tnl2k", "coco")

GOT10K_SPLITS = ("train", "val", "test")
LASOT_SPLITS = ("test", "train", "all")
TNL2K_SPLITS = ("test", "train")
COCO_MIN_BOX_SIZE = 1.0

# Comma with optional surrounding blanks, or a run of blanks (space, tab): the benchmarks
# differ, and some LaSOT/TNL2K files mix them within a file or a line. A doubled comma
# leaves an empty field, which is reported rather than merged away.
_FIELD_SEPARATOR = re.compile(r"\s*,\s*|\s+")
_TRACKINGNET_CHUNK = re.compile(r"TRAIN_\d+|TEST")


class TrackingDataError(ValueError):
    """A tracking benchmark's files are missing or malformed; the message names the file (and line)."""


@dataclass(frozen=True, eq=False)  # eq=False: field-wise == on arrays has no single truth value
class TrackingSequence:
    """One annotated sequence of a tracking benchmark (or one COCO object as a 1-frame sequence).

    ``boxes`` [N, 4] float64 holds ``(x, y, w, h)`` exactly as the annotation file writes
    them, one row per frame from the first; N == len(frames) where the benchmark annotates
    every frame, N == 1 for test splits that ship only the first box. Rows may be NaN where
    a file marks a frame as unannotated. ``visible`` [N] bool: the target is present in
    that frame. ``cover`` [N] int64 (GOT-10k's 0..8 visible-fraction levels) or None.
    """

    name: str
    dataset: str
    frames: tuple[Path, ...]
    boxes: np.ndarray
    visible: np.ndarray
    cover: np.ndarray | None = None
    language: str | None = None

    def __post_init__(self) -> None:
        if self.dataset not in BENCHMARKS:
            raise ValueError(f"sequence {self.name!r}: dataset {self.dataset!r} is not one of {BENCHMARKS}")
        if not isinstance(self.frames, tuple) or not self.frames:
            raise ValueError(f"sequence {self.name!r}: frames must be a non-empty tuple of paths")
        if self.boxes.dtype != np.float64 or self.boxes.ndim != 2 or self.boxes.shape[1] != 4:
            raise ValueError(
                f"sequence {self.name!r}: boxes must be float64 [N, 4], got {self.boxes.dtype} {self.boxes.shape}"
            )
        rows = len(self.boxes)
        if not 1 <= rows <= len(self.frames):
            raise ValueError(f"sequence {self.name!r}: {rows} box rows for {len(self.frames)} frames")
        if self.visible.dtype != np.bool_ or self.visible.shape != (rows,):
            raise ValueError(
                f"sequence {self.name!r}: visible must be bool [{rows}], got {self.visible.dtype} {self.visible.shape}"
            )
        if self.cover is not None and self.cover.shape != (rows,):
            raise ValueError(f"sequence {self.name!r}: cover must be [{rows}], got {self.cover.shape}")

    def __len__(self) -> int:
        """Number of frames (not of annotated rows)."""
        return len(self.frames)


# ---------------------------------------------------------------------------- text files


def _read_lines(path: Path) -> list[str]:
    """Lines of a UTF-8 text file (a BOM is dropped), trailing blank lines removed."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise TrackingDataError(f"{path}: file is missing") from None
    except IsADirectoryError:
        raise TrackingDataError(f"{path}: expected a file, found a folder") from None
    except UnicodeDecodeError as error:
        raise TrackingDataError(f"{path}: not UTF-8 text ({error})") from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def _split_fields(path: Path, lines: list[str]) -> list[list[str]]:
    """Fields of each line; a blank line before the last annotated one would shift frame indices."""
    rows = []
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped:
            raise TrackingDataError(f"{path}:{number}: empty line inside the annotation")
        rows.append(_FIELD_SEPARATOR.split(stripped))
    return rows


def read_box_file(path: str | os.PathLike) -> np.ndarray:
    """Boxes [N, 4] float64 from a text file of ``x,y,w,h`` lines (comma, tab or blank separated).

    "NaN" reads as NaN (an unannotated frame); infinities and non-numeric text are errors.
    np.loadtxt is not used: it takes one delimiter per file (the benchmarks mix them) and
    reports no line for a bad field, so lines are split here and numpy converts the lot at once.
    """
    path = Path(path)
    lines = _read_lines(path)
    rows = _split_fields(path, lines)
    for number, row in enumerate(rows, start=1):
        if len(row) != 4:
            raise TrackingDataError(
                f"{path}:{number}: expected 4 fields x,y,w,h, got {len(row)}: {lines[number - 1].strip()!r}"
            )
    try:
        boxes = np.array(rows, dtype=np.float64).reshape(-1, 4)
    except ValueError:
        # Slow path, only to name the first bad line.
        for number, row in enumerate(rows, start=1):
            try:
                np.array(row, dtype=np.float64)
            except ValueError:
                raise TrackingDataError(
                    f"{path}:{number}: non-numeric field in {lines[number - 1].strip()!r}"
                ) from None
        raise
    infinite_rows = np.flatnonzero(np.isinf(boxes).any(axis=1))
    if infinite_rows.size:
        number = int(infinite_rows[0]) + 1
        raise TrackingDataError(f"{path}:{number}: infinite value in {lines[number - 1].strip()!r}")
    return boxes


def read_label_file(path: str | os.PathLike, allowed_values: Iterable[int] | None = None) -> np.ndarray:
    """Integer labels [N] int64, one per frame, from one per line (GOT-10k ``*.label``) or
    comma-separated on one line (LaSOT ``full_occlusion.txt``); values outside ``allowed_values``
    are errors naming the line."""
    path = Path(path)
    lines = _read_lines(path)
    rows = _split_fields(path, lines)
    tokens = [token for row in rows for token in row]
    line_numbers = np.repeat(np.arange(1, len(rows) + 1), [len(row) for row in rows])
    try:
        labels = np.array(tokens, dtype=np.int64)
    except ValueError:
        for token, number in zip(tokens, line_numbers):
            try:
                int(token)
            except ValueError:
                raise TrackingDataError(f"{path}:{number}: not an integer label: {token!r}") from None
        raise
    if allowed_values is not None:
        allowed = np.array(sorted(allowed_values))
        bad = np.flatnonzero(~np.isin(labels, allowed))
        if bad.size:
            number = int(line_numbers[bad[0]])
            raise TrackingDataError(f"{path}:{number}: label {int(labels[bad[0]])} is not one of {allowed.tolist()}")
    return labels


def _read_language(path: Path) -> str | None:
    """The sentence describing the target, or None when the file is absent or blank."""
    if not path.is_file():
        return None
    return " ".join(line.strip() for line in _read_lines(path) if line.strip()) or None


# ---------------------------------------------------------------------------- frames


def list_frames(
    folder: str | os.PathLike, extensions: Sequence[str] = (".jpg",), first_number: int | None = None
) -> tuple[Path, ...]:
    """Image files of a frame folder in temporal (numeric-aware) order, without opening them.

    With ``first_number`` the stems must be the numbers first_number, first_number + 1, ...
    with no gap, because results files are indexed by frame: a missing file is an error
    naming the folder and the first missing file name.
    """
    folder = Path(folder)
    try:
        names = visible_file_names(folder, extensions)
    except FileNotFoundError:
        raise TrackingDataError(f"{folder}: frame folder is missing") from None
    except NotADirectoryError:
        raise TrackingDataError(f"{folder}: expected a frame folder, found a file") from None
    if not names:
        raise TrackingDataError(f"{folder}: no frames ({'|'.join('*' + e for e in extensions)}) in the frame folder")
    names.sort(key=natural_sort_key)
    if first_number is not None:
        _check_numbering(folder, names, first_number)
    return tuple(folder / name for name in names)


def _check_numbering(folder: Path, names: list[str], first_number: int) -> None:
    stems = [os.path.splitext(name)[0] for name in names]
    for name, stem in zip(names, stems):
        if not (stem.isascii() and stem.isdigit()):
            raise TrackingDataError(f"{folder}: frame {name!r} is not named by its frame number")
    numbers = np.array([int(stem) for stem in stems])
    expected = np.arange(first_number, first_number + len(numbers))
    mismatch = np.flatnonzero(numbers != expected)
    if not mismatch.size:
        return
    index = int(mismatch[0])
    if numbers[index] < expected[index]:  # sorted, so it repeats the previous number
        raise TrackingDataError(f"{folder}: frames {names[index - 1]!r} and {names[index]!r} have the same number")
    first_stem = stems[0]
    width = len(first_stem) if len(first_stem) > 1 and first_stem.startswith("0") else 0
    missing = f"{int(expected[index]):0{width}d}{os.path.splitext(names[index])[1]}"
    raise TrackingDataError(
        f"{folder}: frame {missing} is missing ({len(names)} frames, numbered {first_stem}..{stems[-1]})"
    )


# ---------------------------------------------------------------------------- shared checks


def _require_folder(folder: Path, what: str) -> Path:
    if not folder.is_dir():
        raise TrackingDataError(
            f"{folder}: {what} does not exist" if not folder.exists() else f"{folder}: {what} is not a folder"
        )
    return folder


def _check_rows(path: Path, rows: int, frames: tuple[Path, ...], every_frame: bool) -> None:
    """Annotation rows against frames: equal for fully annotated splits, 1..T for first-box test splits."""
    folder = frames[0].parent
    if every_frame and rows != len(frames):
        raise TrackingDataError(f"{path}: {rows} rows but {len(frames)} frames in {folder}")
    if not every_frame and not 1 <= rows <= len(frames):
        raise TrackingDataError(f"{path}: {rows} rows, expected 1 to {len(frames)} (the frames in {folder})")


def _read_frame_labels(path: Path, frames: tuple[Path, ...], allowed_values: Iterable[int]) -> np.ndarray:
    labels = read_label_file(path, allowed_values)
    if len(labels) != len(frames):
        raise TrackingDataError(f"{path}: {len(labels)} labels but {len(frames)} frames in {frames[0].parent}")
    return labels


def boxes_visible(boxes: np.ndarray) -> np.ndarray:
    """[N] bool: a box is a present target when all four values are finite and w > 0 and h > 0."""
    return np.isfinite(boxes).all(axis=1) & (boxes[:, 2] > 0) & (boxes[:, 3] > 0)


def _read_only(*arrays: np.ndarray | None) -> None:
    """Records are frozen; their arrays (owned by the reader) are made read-only to match."""
    for array in arrays:
        if array is not None:
            array.setflags(write=False)


# ---------------------------------------------------------------------------- benchmarks


def read_got10k(root: str | os.PathLike, split: str) -> list[TrackingSequence]:
    """GOT-10k ``train``, ``val`` or ``test``: the sequences named by ``root/<split>/list.txt``, in its order.

    train/val: every frame annotated, ``visible = absence.label == 0``, ``cover`` from
    cover.label. test: only the first box; visibility from the box; labels read if present.
    """
    if split not in GOT10K_SPLITS:
        raise ValueError(f"GOT-10k split {split!r} is not one of {GOT10K_SPLITS}")
    split_dir = _require_folder(_require_folder(Path(root), "GOT-10k root") / split, "GOT-10k split folder")
    list_file = split_dir / "list.txt"
    if not list_file.is_file():  # every GOT-10k split ships one; a folder listing would hide a partial download
        raise TrackingDataError(f"{list_file}: GOT-10k list file is missing (every split ships list.txt)")
    every_frame = split != "test"
    sequences = []
    for number, name in read_name_list(list_file, TrackingDataError):
        sequence_dir = split_dir / name
        if not sequence_dir.is_dir():
            raise TrackingDataError(f"{list_file}:{number}: sequence folder {sequence_dir} does not exist")
        frames = list_frames(sequence_dir, (".jpg",), first_number=1)
        annotation = sequence_dir / "groundtruth.txt"
        boxes = read_box_file(annotation)
        _check_rows(annotation, len(boxes), frames, every_frame)
        rows = len(boxes)
        absence_file, cover_file = sequence_dir / "absence.label", sequence_dir / "cover.label"
        if every_frame or absence_file.is_file():
            visible = _read_frame_labels(absence_file, frames, (0, 1))[:rows] == 0
        else:
            visible = boxes_visible(boxes)
        cover = _read_frame_labels(cover_file, frames, range(9))[:rows] if every_frame or cover_file.is_file() else None
        _read_only(boxes, visible, cover)
        sequences.append(TrackingSequence(name, "got10k", frames, boxes, visible, cover))
    return sequences


def _find_lasot_sequences(root: Path) -> dict[str, Path]:
    """Sequence folders by name, from ``root/<class>/<class>-<n>/`` and flat ``root/<class>-<n>/``."""

    def is_sequence(folder: Path) -> bool:
        return (folder / "img").is_dir() or (folder / "groundtruth.txt").is_file()

    def subfolders(folder: Path) -> list[Path]:
        return [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))]

    found: dict[str, Path] = {}
    for entry in subfolders(root):
        candidates = [entry] if is_sequence(entry) else [p for p in subfolders(entry) if is_sequence(p)]
        if not candidates:
            raise TrackingDataError(
                f"{entry}: neither a LaSOT sequence (img/, groundtruth.txt) nor a class folder of sequences"
            )
        for folder in candidates:
            if folder.name in found:
                raise TrackingDataError(f"{folder}: sequence {folder.name!r} also found at {found[folder.name]}")
            found[folder.name] = folder
    if not found:
        raise TrackingDataError(f"{root}: no LaSOT sequences found")
    return found


def read_lasot(root: str | os.PathLike, split: str = "test") -> list[TrackingSequence]:
    """LaSOT (or LaSOT-ext) sequences in natural name order.

    ``test``: the names in ``root/testing_set.txt``, or every sequence under root when that
    file is absent (the test-only download); ``train``: the sequences not listed there
    (the file is required); ``all``: every sequence. ``visible`` = not full_occlusion and
    not out_of_view; ``language`` from nlp.txt.
    """
    if split not in LASOT_SPLITS:
        raise ValueError(f"LaSOT split {split!r} is not one of {LASOT_SPLITS}")
    root = _require_folder(Path(root), "LaSOT root")
    found = _find_lasot_sequences(root)
    split_file = root / "testing_set.txt"
    if split == "all":
        names = list(found)
    elif split_file.is_file():
        test_names = []
        for number, name in read_name_list(split_file, TrackingDataError):
            if name not in found:
                raise TrackingDataError(f"{split_file}:{number}: sequence {name!r} not found under {root}")
            test_names.append(name)
        names = test_names if split == "test" else sorted(set(found) - set(test_names))
    elif split == "train":
        raise TrackingDataError(
            f"{split_file}: missing; it is needed to tell LaSOT's training sequences from its test sequences"
        )
    else:
        names = list(found)
    if not names:
        raise TrackingDataError(f"{root}: no LaSOT {split} sequences (every sequence is listed in {split_file.name})")
    sequences = []
    for name in sorted(names, key=natural_sort_key):
        sequence_dir = found[name]
        frames = list_frames(sequence_dir / "img", (".jpg",), first_number=1)
        annotation = sequence_dir / "groundtruth.txt"
        boxes = read_box_file(annotation)
        _check_rows(annotation, len(boxes), frames, every_frame=True)
        occluded = _read_frame_labels(sequence_dir / "full_occlusion.txt", frames, (0, 1))
        out_of_view = _read_frame_labels(sequence_dir / "out_of_view.txt", frames, (0, 1))
        visible = (occluded == 0) & (out_of_view == 0)
        _read_only(boxes, visible)
        language = _read_language(sequence_dir / "nlp.txt")
        sequences.append(TrackingSequence(name, "lasot", frames, boxes, visible, language=language))
    return sequences


def _trackingnet_chunk_name(chunk: int | str) -> str:
    name = f"TRAIN_{chunk}" if isinstance(chunk, int) else str(chunk)
    if not _TRACKINGNET_CHUNK.fullmatch(name):
        raise ValueError(f"TrackingNet chunk {chunk!r} is not an index, 'TRAIN_<i>' or 'TEST'")
    return name


def read_trackingnet(root: str | os.PathLike, chunks: Iterable[int | str]) -> list[TrackingSequence]:
    """TrackingNet sequences of the given chunks (``3`` or ``"TRAIN_3"``, ``"TEST"``), chunk by chunk,
    sequences in natural name order; frames ``0.jpg, 1.jpg, ...`` sorted numerically.

    TRAIN chunks annotate every frame; ``TEST`` only the first. ``visible`` from the boxes.
    """
    root = _require_folder(Path(root), "TrackingNet root")
    chunk_names = [_trackingnet_chunk_name(chunk) for chunk in chunks]
    if not chunk_names:
        raise ValueError("no TrackingNet chunks given")
    sequences = []
    for chunk in chunk_names:
        chunk_dir = _require_folder(root / chunk, "TrackingNet chunk folder")
        anno_dir = _require_folder(chunk_dir / "anno", "TrackingNet annotation folder")
        frames_dir = _require_folder(chunk_dir / "frames", "TrackingNet frames folder")
        annotations = sorted(anno_dir.glob("*.txt"), key=lambda path: natural_sort_key(path.name))
        if not annotations:
            raise TrackingDataError(f"{anno_dir}: no annotation files (<sequence>.txt)")
        for annotation in annotations:
            frames = list_frames(frames_dir / annotation.stem, (".jpg",), first_number=0)
            boxes = read_box_file(annotation)
            _check_rows(annotation, len(boxes), frames, every_frame=chunk != "TEST")
            visible = boxes_visible(boxes)
            _read_only(boxes, visible)
            sequences.append(TrackingSequence(annotation.stem, "trackingnet", frames, boxes, visible))
    return sequences


def read_tnl2k(root: str | os.PathLike) -> list[TrackingSequence]:
    """TNL2K sequences ``root/<seq>/`` in natural name order (TNL2K ships its train and test sets
    as separate trees of this layout: root picks the set).

    Frames ``imgs/*.jpg|*.png`` in numeric-aware order; names vary between sequences, so no
    numbering check, but every frame must have a box. ``language`` from language.txt.
    """
    root = _require_folder(Path(root), "TNL2K root")
    sequence_dirs = sorted(
        (p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))),
        key=lambda path: natural_sort_key(path.name),
    )
    if not sequence_dirs:
        raise TrackingDataError(f"{root}: no TNL2K sequence folders")
    sequences = []
    for sequence_dir in sequence_dirs:
        frames = list_frames(sequence_dir / "imgs", (".jpg", ".jpeg", ".png"))
        annotation = sequence_dir / "groundtruth.txt"
        boxes = read_box_file(annotation)
        _check_rows(annotation, len(boxes), frames, every_frame=True)
        visible = boxes_visible(boxes)
        _read_only(boxes, visible)
        language = _read_language(sequence_dir / "language.txt")
        sequences.append(TrackingSequence(sequence_dir.name, "tnl2k", frames, boxes, visible, language=language))
    return sequences


def _coco_column(records: list, key: str, where: str) -> list:
    """``[record[key] for record in records]``; a missing key names the first record without it."""
    try:
        return [record[key] for record in records]
    except (KeyError, TypeError):
        index = next(i for i, record in enumerate(records) if not isinstance(record, dict) or key not in record)
        raise TrackingDataError(f"{where}[{index}]: missing key {key!r}") from None


def read_coco_boxes(
    root: str | os.PathLike, split: str = "train2017", min_size: float = COCO_MIN_BOX_SIZE
) -> list[TrackingSequence]:
    """One 1-frame sequence per COCO object (OSTrack-style training draws template and search
    from the same image), in annotation-file order, named ``<image stem>_<annotation id>``.

    Crowd regions (iscrowd = 1) and boxes with w or h below ``min_size`` pixels are skipped.
    The whole file is one ``json`` read: pycocotools' index and mask API are not needed.
    train2017 gives about 830k records (several seconds); their boxes are views of one
    array and the records of one image share its frame tuple.
    """
    root = _require_folder(Path(root), "COCO root")
    annotation_file = root / "annotations" / f"instances_{split}.json"
    if not annotation_file.is_file():
        raise TrackingDataError(f"{annotation_file}: COCO annotation file is missing")
    image_dir = _require_folder(root / split, "COCO image folder")
    try:
        content = json.loads(annotation_file.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise TrackingDataError(f"{annotation_file}: not valid JSON ({error})") from None
    if not isinstance(content, dict) or not {"images", "annotations"} <= content.keys():
        raise TrackingDataError(f"{annotation_file}: expected a COCO object with 'images' and 'annotations'")
    images, annotations = content["images"], content["annotations"]
    images_where, annotations_where = f"{annotation_file}: images", f"{annotation_file}: annotations"
    file_names = dict(zip(_coco_column(images, "id", images_where), _coco_column(images, "file_name", images_where)))
    bboxes = _coco_column(annotations, "bbox", annotations_where)
    image_ids = _coco_column(annotations, "image_id", annotations_where)
    annotation_ids = _coco_column(annotations, "id", annotations_where)
    try:
        boxes = np.array(bboxes, dtype=np.float64).reshape(len(bboxes), 4)
    except (ValueError, TypeError):
        # Slow path, only to name the first bad annotation.
        for i, bbox in enumerate(bboxes):
            if not isinstance(bbox, list) or len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox):
                raise TrackingDataError(
                    f"{annotations_where}[{i}]: bbox must be 4 numbers [x, y, w, h], got {bbox!r}"
                ) from None
        raise
    crowd = np.array([bool(annotation.get("iscrowd", 0)) for annotation in annotations], dtype=bool)
    kept = np.flatnonzero(~crowd & (boxes[:, 2] >= min_size) & (boxes[:, 3] >= min_size))
    boxes = boxes[kept]
    visible = boxes_visible(boxes)
    _read_only(boxes, visible)

    with os.scandir(image_dir) as entries:  # one listing instead of one stat per image
        on_disk = {entry.name for entry in entries}
    # (frames, stem) per image: built once, shared by the image's objects.
    image_records: dict[object, tuple[tuple[Path, ...], str]] = {}
    sequences = []
    for row, index in enumerate(kept.tolist()):
        image_id = image_ids[index]
        record = image_records.get(image_id)
        if record is None:
            if image_id not in file_names:
                raise TrackingDataError(
                    f"{annotations_where}[{index}]: image_id {image_id!r} is not in the file's images"
                )
            file_name = file_names[image_id]
            if file_name not in on_disk and not (image_dir / file_name).is_file():
                raise TrackingDataError(f"{image_dir / file_name}: image of {annotations_where}[{index}] is missing")
            record = image_records[image_id] = (
                (image_dir / file_name,),
                os.path.splitext(os.path.basename(file_name))[0],
            )
        frames, stem = record
        name = f"{stem}_{annotation_ids[index]}"
        sequences.append(TrackingSequence(name, "coco", frames, boxes[row : row + 1], visible[row : row + 1]))
    return sequences


def read_benchmark(name: str, root: str | os.PathLike, split: str | None = None) -> list[TrackingSequence]:
    """Dispatch by benchmark name; ``split`` None picks each benchmark's evaluation split.

    got10k: train | val | test (None: val); lasot: test | train | all (None: test);
    trackingnet: train (every TRAIN_<i> chunk under root) | test | TRAIN_<i> (None: test);
    tnl2k: test | train, the set root points at (None: test); coco: train2017 | val2017 ...
    (None: train2017, COCO being a training source only).
    """
    root = Path(root)
    if name == "got10k":
        return read_got10k(root, split or "val")
    if name == "lasot":
        return read_lasot(root, split or "test")
    if name == "trackingnet":
        split = split or "test"
        if split == "train":
            _require_folder(root, "TrackingNet root")
            chunks = sorted((p.name for p in root.glob("TRAIN_*") if p.is_dir()), key=natural_sort_key)
            if not chunks:
                raise TrackingDataError(f"{root}: no TRAIN_<i> chunk folders")
            return read_trackingnet(root, chunks)
        return read_trackingnet(root, ["TEST" if split == "test" else split])
    if name == "tnl2k":
        if split not in (None, *TNL2K_SPLITS):
            raise ValueError(f"TNL2K split {split!r} is not one of {TNL2K_SPLITS}")
        return read_tnl2k(root)
    if name == "coco":
        return read_coco_boxes(root, split or "train2017")
    raise ValueError(f"unknown tracking benchmark {name!r}; expected one of {BENCHMARKS}")
