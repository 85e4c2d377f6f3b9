"""Video data: indexing, frame extraction and frame-pair datasets."""

from __future__ import annotations

import importlib
from typing import Any

from dropmae.data.extract import ExtractionError, ExtractionSettings, extract_frames
from dropmae.data.manifest import MANIFEST_NAME, frame_path, read_manifest
from dropmae.data.video_index import VIDEO_EXTENSIONS, VideoEntry, VideoSourceError, index_videos

# The pair datasets import torch (seconds); extraction worker processes import this
# package and never need them, so they load on first access.
_LAZY_NAMES = {
    name: "dropmae.data.pairs"
    for name in ("FramePairDataset", "PairAugmentation", "VideoFramePairDataset", "sample_frame_pair", "seed_worker")
}

__all__ = [
    "MANIFEST_NAME",
    "VIDEO_EXTENSIONS",
    "ExtractionError",
    "ExtractionSettings",
    "VideoEntry",
    "VideoSourceError",
    "extract_frames",
    "frame_path",
    "index_videos",
    "read_manifest",
    *_LAZY_NAMES,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY_NAMES:
        return getattr(importlib.import_module(_LAZY_NAMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
