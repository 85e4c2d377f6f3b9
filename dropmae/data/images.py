"""Frames and masks on disk, and the ImageNet normalisation every network input goes through.

Users: the tracker and its training pairs (frames, normalisation), the segmenter, its training
pairs and the probe (frames, normalisation, result masks), the segmentation benchmark readers
(file listing), viz and analysis (pictures of normalised frames), the demo benchmark (masks),
and the pretraining pairs (the ImageNet constants).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_DIGIT_RUNS = re.compile(r"(\d+)")


# ---------------------------------------------------------------------------- frames
def read_rgb(path: str | Path) -> np.ndarray:
    """uint8 [H, W, 3] RGB; a missing or unreadable frame is an error naming the file."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"{path}: frame is missing or not a readable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


@functools.lru_cache(maxsize=None)
def imagenet_mean_std(device: torch.device = torch.device("cpu")) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) float32 [3, 1, 1] on ``device``; shared, so never written in place."""
    return (torch.tensor(IMAGENET_MEAN, device=device).view(3, 1, 1),
            torch.tensor(IMAGENET_STD, device=device).view(3, 1, 1))


def to_normalized_tensor(image: np.ndarray, device: str | torch.device | None = None) -> torch.Tensor:
    """uint8 RGB [..., H, W, 3] -> float32 [..., 3, H, W], ImageNet-normalised, on ``device``
    (None: the CPU); the uint8 pixels move before the float work, so a GPU does it."""
    if image.dtype != np.uint8 or image.ndim < 3 or image.shape[-1] != 3:
        raise ValueError(f"expected uint8 RGB [..., H, W, 3], got {image.dtype} {image.shape}")
    tensor = torch.from_numpy(np.ascontiguousarray(image))
    if device is not None:
        tensor = tensor.to(device)
    mean, std = imagenet_mean_std(tensor.device)
    return (tensor.movedim(-1, -3).float().div_(255.0) - mean) / std


def normalized_to_image(normalized: torch.Tensor) -> torch.Tensor:
    """An ImageNet-normalised frame [3, H, W] -> RGB [H, W, 3] in [0, 1], for drawing."""
    mean, std = imagenet_mean_std(normalized.device)
    return (normalized * std + mean).clamp(0, 1).permute(1, 2, 0)


# ---------------------------------------------------------------------------- file names
def natural_sort_key(name: str) -> tuple:
    """Sort key comparing digit runs as numbers: ``2.jpg`` < ``10.jpg``, ``frame_9`` < ``frame_10``."""
    # re.split with a capture group alternates text, digits, text...: positions agree in type.
    parts = _DIGIT_RUNS.split(name)
    return tuple(int(part) if index % 2 else part for index, part in enumerate(parts)) + (name,)


def visible_file_names(folder: Path, suffixes: Sequence[str]) -> list[str]:
    """Names of the non-hidden files of ``folder`` ending in one of ``suffixes`` (any case), unsorted.

    One ``scandir`` pass: no per-file stat on most file systems. Raises FileNotFoundError or
    NotADirectoryError for a missing folder or a file.
    """
    with os.scandir(folder) as entries:
        return [
            entry.name
            for entry in entries
            if not entry.name.startswith(".")
            and os.path.splitext(entry.name)[1].lower() in suffixes
            and entry.is_file()
        ]


# ---------------------------------------------------------------------------- masks
@functools.lru_cache(maxsize=1)
def davis_palette() -> tuple[int, ...]:
    """The DAVIS / PASCAL VOC palette as a flat (r, g, b) * 256 tuple: 0 black, 1 dark red, 2 green...

    imgviz's label_colormap is that palette.
    """
    import imgviz  # imports matplotlib: only when a mask is written

    return tuple(imgviz.label_colormap().astype(np.uint8).ravel().tolist())


def write_label_mask(
    path: str | os.PathLike, labels: np.ndarray, palette: Sequence[int] | np.ndarray | None = None
) -> Path:
    """Write labels [H, W] (integers 0..255) as an 8-bit palette PNG; returns the path.

    ``palette``: flat (r, g, b, ...) or [N, 3] colours; None gives the DAVIS palette. The
    file is written next to its destination and renamed into place, so a reader never
    sees half a PNG. Parent folders are created. (The reader is
    :func:`dropmae.segmentation.datasets.read_label_mask`: it knows DAVIS's void and 0/255 masks.)
    """
    path = Path(path)
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype.kind not in "iub":
        raise ValueError(f"{path}: labels must be an integer array [H, W], got {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(f"{path}: labels must lie in 0..255, got {labels.min()}..{labels.max()}")
    flat_palette = list(davis_palette()) if palette is None else np.asarray(palette, dtype=np.uint8).ravel().tolist()
    image = Image.fromarray(labels.astype(np.uint8))  # mode "L"; putpalette makes it "P", indices unchanged
    image.putpalette(flat_palette)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        image.save(partial, format="PNG")
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path
