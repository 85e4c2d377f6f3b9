"""Tracking result files in the layouts the official toolkits and evaluation servers read.

GOT-10k (got10k toolkit and server), one folder per sequence::

    <result_dir>/<seq>/<seq>_001.txt   x,y,w,h per frame, comma-separated (repetition 1)
    <result_dir>/<seq>/<seq>_time.txt  seconds per frame, one per line

The toolkit's ``report`` pools every ``<seq>_<digits>.txt`` repetition it finds.

LaSOT / TNL2K / TrackingNet (pytracking layout, one flat folder per tracker run)::

    <result_dir>/<seq>.txt       x,y,w,h per frame
    <result_dir>/<seq>_time.txt  seconds per frame, one per line

pytracking itself writes tabs, but its reader tries tab then comma, LaSOT's MATLAB toolkit
(dlmread) detects either, and the TrackingNet server wants commas: we write commas everywhere.
Files are written to a hidden temporary file and moved into place with ``os.replace``, the box
file last, so a killed run leaves either a whole result or none (the toolkits skip or redo a
sequence by whether its box file exists).
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from pathlib import Path

import numpy as np

from dropmae.files import apply_umask
from dropmae.tracking.datasets import TrackingDataError, read_box_file

BOX_FORMAT = "%.4f"  # 1e-4 px: far below any IoU / centre-error resolution the metrics use
TIME_FORMAT = "%.8f"


class ResultFileError(TrackingDataError):
    """A result file that is missing, malformed or inconsistent; the message names the file (and line)."""


# ------------------------------------------------------------------------------------ paths
def got10k_result_path(result_dir: str | os.PathLike, seq_name: str, repetition: int = 1) -> Path:
    return Path(result_dir) / seq_name / f"{seq_name}_{repetition:03d}.txt"


def got10k_time_path(result_dir: str | os.PathLike, seq_name: str) -> Path:
    return Path(result_dir) / seq_name / f"{seq_name}_time.txt"


def got10k_repetition_paths(result_dir: str | os.PathLike, seq_name: str) -> list[Path]:
    """All repetition files ``<seq>_<digits>.txt`` of a sequence, sorted (what the toolkit pools)."""
    seq_dir = Path(result_dir) / seq_name
    pattern = re.compile(rf"{re.escape(seq_name)}_\d+\.txt")
    if not seq_dir.is_dir():
        return []
    return sorted(p for p in seq_dir.iterdir() if pattern.fullmatch(p.name))


def box_result_path(result_dir: str | os.PathLike, seq_name: str) -> Path:
    return Path(result_dir) / f"{seq_name}.txt"


def box_time_path(result_dir: str | os.PathLike, seq_name: str) -> Path:
    return Path(result_dir) / f"{seq_name}_time.txt"


# ------------------------------------------------------------------------------------ writing
def _checked_boxes(boxes_xywh: np.ndarray, seq_name: str) -> np.ndarray:
    boxes = np.asarray(boxes_xywh, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or len(boxes) == 0:
        raise ValueError(f"{seq_name}: boxes must have shape [T, 4] with T >= 1, got {boxes.shape}")
    bad_rows = np.flatnonzero(~np.isfinite(boxes).all(axis=1))
    if len(bad_rows):
        # The toolkits turn a NaN row into a NaN AO (got10k) or an 'Invalid results' error (pytracking).
        raise ValueError(f"{seq_name}: box of frame {bad_rows[0]} is not finite: {boxes[bad_rows[0]].tolist()}")
    return boxes


def _checked_times(times_s: np.ndarray, num_frames: int, seq_name: str) -> np.ndarray:
    times = np.asarray(times_s, dtype=np.float64)
    if times.shape != (num_frames,):
        raise ValueError(f"{seq_name}: times must have shape [{num_frames}] (one per frame), got {times.shape}")
    if not np.isfinite(times).all() or (times < 0).any():
        raise ValueError(f"{seq_name}: times must be finite and >= 0 seconds")
    return times


def _atomic_savetxt(path: Path, values: np.ndarray, fmt: str, delimiter: str = ",") -> None:
    """np.savetxt into a hidden temporary file beside ``path``, then os.replace it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # The leading dot keeps a leftover temporary file out of the toolkit's '<seq>_[0-9]*.txt' glob.
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        apply_umask(tmp_name)  # mkstemp makes it 0600
        with os.fdopen(handle, "w") as f:
            np.savetxt(f, values, fmt=fmt, delimiter=delimiter)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def write_got10k_result(
    result_dir: str | os.PathLike, seq_name: str, boxes_xywh: np.ndarray, times_s: np.ndarray
) -> Path:
    """Write boxes [T, 4] xywh and per-frame times [T] (seconds) as repetition 001; returns the box file."""
    boxes = _checked_boxes(boxes_xywh, seq_name)
    times = _checked_times(times_s, len(boxes), seq_name)
    _atomic_savetxt(got10k_time_path(result_dir, seq_name), times[:, None], TIME_FORMAT)
    box_path = got10k_result_path(result_dir, seq_name)
    _atomic_savetxt(box_path, boxes, BOX_FORMAT)
    return box_path


def write_box_result(
    result_dir: str | os.PathLike, seq_name: str, boxes: np.ndarray, times_s: np.ndarray | None = None
) -> Path:
    """Write boxes [T, 4] xywh as ``<seq>.txt`` (and ``<seq>_time.txt`` when times [T] are given)."""
    boxes = _checked_boxes(boxes, seq_name)
    if times_s is not None:
        times = _checked_times(times_s, len(boxes), seq_name)
        _atomic_savetxt(box_time_path(result_dir, seq_name), times[:, None], TIME_FORMAT)
    box_path = box_result_path(result_dir, seq_name)
    _atomic_savetxt(box_path, boxes, BOX_FORMAT)
    return box_path


# ------------------------------------------------------------------------------------ reading
def read_box_result(path: str | os.PathLike, comma_only: bool = False) -> np.ndarray:
    """Boxes [T, 4] xywh of a result file, parsed by ``datasets.read_box_file`` (comma, tab or blanks).

    ``comma_only``: also require exactly three commas per line, as got10k's toolkit
    (np.loadtxt(delimiter=',')) and the GOT-10k server read. Errors name the file and line.
    """
    path = Path(path)
    try:
        boxes = read_box_file(path)
    except TrackingDataError as error:
        raise ResultFileError(str(error)) from None
    if comma_only:
        for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
            if line.strip() and line.count(",") != 3:
                raise ResultFileError(f"{path}:{number}: the got10k toolkit reads comma-separated x,y,w,h: {line!r}")
    if len(boxes) == 0:
        raise ResultFileError(f"{path}: file holds no boxes")
    return boxes


def read_got10k_result(result_dir: str | os.PathLike, seq_name: str, repetition: int = 1) -> np.ndarray:
    """Boxes [T, 4] xywh of ``<seq>/<seq>_<repetition:03d>.txt`` (comma separated, as the toolkit reads)."""
    return read_box_result(got10k_result_path(result_dir, seq_name, repetition), comma_only=True)


def read_times(path: str | os.PathLike) -> np.ndarray:
    """Per-frame times (seconds) of a time file, flattened [T * repetitions].

    got10k's toolkit stores one comma-separated column per repetition; pytracking one per line
    (tab-separated when it has several).
    """
    path = Path(path)
    if not path.is_file():
        raise ResultFileError(f"{path}: time file not found")
    for delimiter in (",", "\t"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # loadtxt warns on an empty file; we raise instead
                times = np.loadtxt(path, delimiter=delimiter, ndmin=2, dtype=np.float64)
        except ValueError:
            continue
        if times.size == 0:
            raise ResultFileError(f"{path}: time file holds no times")
        return times.ravel()
    for number, line in enumerate(path.read_text().splitlines(), start=1):  # only to name the bad line
        try:
            [float(field) for field in re.split(r"[,\t]", line.strip()) if line.strip()]
        except ValueError:
            raise ResultFileError(f"{path}:{number}: not a time in seconds: {line!r}") from None
    raise ResultFileError(f"{path}: rows of unequal length or mixed delimiters")
