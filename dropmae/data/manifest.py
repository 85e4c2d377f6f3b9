"""The frame manifest of an extraction folder: its name and columns, where frames lie, the split.

Written by :mod:`dropmae.data.extract`; read by the pair datasets and the packer
(:mod:`dropmae.data.pairs`, :mod:`dropmae.data.packed`). Layout of an extraction folder::

    manifest.csv                      one row per video of the source list (MANIFEST_COLUMNS)
    frames/<video_id>/000000.jpg ...  the kept frames, numbered consecutively
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = [
    "video_id", "source_path", "label", "split", "frame_count", "width", "height", "status", "reason",
]
FRAMES_DIR = "frames"


def frame_path(frames_root: str | Path, video_id: str, frame_index: int) -> Path:
    """Path of kept frame ``frame_index`` of ``video_id`` under an extraction output folder."""
    return Path(frames_root) / FRAMES_DIR / video_id / f"{frame_index:06d}.jpg"


def split_for(video_id: str, val_fraction: float) -> str:
    """"val" for a stable, hash-chosen share ``val_fraction`` of video ids, else "train"."""
    digest = hashlib.sha256(video_id.encode()).digest()
    return "val" if int.from_bytes(digest[:8], "big") / 2**64 < val_fraction else "train"


def read_manifest(frames_root: str | Path) -> pd.DataFrame:
    """The manifest written by ``extract_frames`` into ``frames_root``."""
    path = Path(frames_root) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no frame manifest; run `dropmae extract-frames` first")
    return pd.read_csv(
        path,
        dtype={"video_id": str, "source_path": str, "label": str, "split": str, "status": str, "reason": str,
               "frame_count": "Int64", "width": "Int64", "height": "Int64"},
        keep_default_na=False,
        na_values={"label": [""], "width": [""], "height": [""], "frame_count": [""]},
    )
