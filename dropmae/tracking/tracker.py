"""Inference: DropTrack as a tracker (OSTrack's test protocol) and runs over benchmark splits.

The template is cut once, around the first-frame box, and kept for the whole sequence. Each
frame's search region is cut around the previous box (search_factor times its side), the
score map is multiplied by a Hann window (a prior for small motion), and the box decoded at
its peak is mapped back to the image and clipped to it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dropmae.data.images import read_rgb, to_normalized_tensor
from dropmae.tracking.boxes import clip_box_xywh
from dropmae.tracking.datasets import TrackingSequence
from dropmae.tracking.model import DropTrack
from dropmae.tracking.processing import crop_around
from dropmae.tracking.results import write_box_result, write_got10k_result


def hann_window_2d(size: int) -> torch.Tensor:
    """[1, 1, size, size] outer product of OSTrack's centred Hann window 0.5 (1 - cos(2 pi k / (size + 1))),
    k = 1..size: torch's symmetric window of length size + 2 without its two zero ends."""
    window = torch.hann_window(size + 2, periodic=False, dtype=torch.float64)[1:-1]
    return torch.outer(window, window).float()[None, None]


@dataclass(frozen=True)
class TrackerSettings:
    template_factor: float
    search_factor: float
    clip_margin: float

    @classmethod
    def from_config(cls, tracking) -> "TrackerSettings":
        return cls(tracking.template_factor, tracking.search_factor, tracking.clip_margin)


class DropTracker:
    """``initialize(image, box)`` then ``track(image) -> box`` for every later frame (boxes are x, y, w, h)."""

    def __init__(self, model: DropTrack, settings: TrackerSettings, device: str | torch.device = "cpu") -> None:
        self.model = model.eval().to(device)
        self.settings = settings
        self.device = torch.device(device)
        self.window = hann_window_2d(model.search_grid).to(self.device)
        self.template: torch.Tensor | None = None
        self.state: np.ndarray | None = None

    def initialize(self, image: np.ndarray, box_xywh) -> None:
        box = np.asarray(box_xywh, dtype=np.float64)
        if box.shape != (4,) or not np.isfinite(box).all() or box[2] <= 0 or box[3] <= 0:
            raise ValueError(f"the initial box must be a finite (x, y, w, h) with w, h > 0, got {box.tolist()}")
        crop = crop_around(image, box, self.settings.template_factor, self.model.template_size)
        self.template = to_normalized_tensor(crop.image)[None].to(self.device)
        self.state = box

    @torch.inference_mode()
    def track(self, image: np.ndarray) -> np.ndarray:
        if self.template is None:
            raise RuntimeError("call initialize(image, box) before track(image)")
        size = self.model.search_size
        crop = crop_around(image, self.state, self.settings.search_factor, size)
        search = to_normalized_tensor(crop.image)[None].to(self.device)
        outputs = self.model(self.template, search)
        cx, cy, w, h = self.model.decode_boxes(
            outputs["score_map"], outputs["size_map"], outputs["offset_map"], window=self.window
        )[0].double().cpu().numpy() * size
        box = crop.box_to_image(np.array([cx - 0.5 * w, cy - 0.5 * h, w, h]))
        height, width = image.shape[:2]
        self.state = clip_box_xywh(box, width, height, margin=self.settings.clip_margin)
        return self.state


def run_sequence(tracker: DropTracker, sequence: TrackingSequence) -> tuple[np.ndarray, np.ndarray]:
    """(boxes [T, 4], seconds per frame [T]); frame 0 reports the initial box, as the toolkits expect."""
    boxes = np.zeros((len(sequence.frames), 4))
    times = np.zeros(len(sequence.frames))
    for index, frame in enumerate(sequence.frames):
        image = read_rgb(frame)
        start = time.perf_counter()
        if index == 0:
            tracker.initialize(image, sequence.boxes[0])
            boxes[0] = sequence.boxes[0]
        else:
            boxes[index] = tracker.track(image)
        times[index] = time.perf_counter() - start
    return boxes, times


def run_first_box_baseline(sequence: TrackingSequence) -> tuple[np.ndarray, np.ndarray]:
    """The trivial tracker: the first-frame box repeated on every frame (the floor a tracker must beat)."""
    boxes = np.repeat(np.asarray(sequence.boxes[:1], dtype=np.float64), len(sequence.frames), axis=0)
    return boxes, np.zeros(len(sequence.frames))


def write_result(result_format: str, result_dir: str | Path, name: str, boxes: np.ndarray, times: np.ndarray) -> None:
    """GOT-10k: <seq>/<seq>_001.txt and <seq>_time.txt; LaSOT / TNL2K / TrackingNet: <seq>.txt."""
    if result_format == "got10k":
        write_got10k_result(result_dir, name, boxes, times)
    else:
        write_box_result(result_dir, name, boxes, times)
