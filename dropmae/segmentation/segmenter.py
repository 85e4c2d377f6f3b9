"""Inference: DropSeg as a semi-supervised video object segmenter, and runs over benchmark splits.

The paper's protocol: every frame is segmented from the first frame and its mask alone. A
frame is resized (bilinear, antialiased) to the model's input size (the frame size, or its
short side scaled to ``frame_short_side``, each side rounded to a multiple of the patch), the
reference mask with nearest neighbour; the class probabilities (soft aggregation over the
objects) are resized back to the frame before the argmax. DropSeg's public code pads frames
to a multiple of 16 instead of resizing; resizing lets a smaller ``frame_short_side`` trade
accuracy for speed with the same code.

Objects are those of the first frame's annotation; YouTube-VOS objects that first appear in a
later frame are not segmented (their frames would need the annotation handed over mid-video).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dropmae.data.images import read_rgb, to_normalized_tensor, write_label_mask
from dropmae.progress import track
from dropmae.segmentation.datasets import VOID_LABEL, SegmentationSequence
from dropmae.segmentation.model import DropSeg, soft_aggregate
from dropmae.segmentation.probe import encoder_input_size


@dataclass(frozen=True)
class SegmenterSettings:
    """frame_short_side: frames are scaled so their short side has this many pixels (None: kept).
    use_previous_frame: also segment from the previous frame's prediction and average (our option)."""

    frame_short_side: int | None
    use_previous_frame: bool = False

    def __post_init__(self) -> None:
        if self.frame_short_side is not None and self.frame_short_side < 1:
            raise ValueError(f"frame_short_side must be None or >= 1, got {self.frame_short_side}")

    @classmethod
    def from_config(cls, segmentation) -> SegmenterSettings:
        """Fields taken by name from the config's segmentation section (use_previous_frame optional)."""
        values = {f.name: getattr(segmentation, f.name) for f in fields(cls) if hasattr(segmentation, f.name)}
        if "frame_short_side" not in values:
            raise ValueError("segmentation config lacks 'frame_short_side' (the inference frame size)")
        return cls(**values)


class DropSegmenter:
    """``initialize(rgb, labels, object_ids)`` on the first frame, then ``segment(rgb) -> labels``
    for every later frame (rgb uint8 [H, W, 3], labels uint8 [H, W] of object ids)."""

    def __init__(self, model: DropSeg, settings: SegmenterSettings, device: str | torch.device = "cpu") -> None:
        self.model = model.eval().to(device)
        self.settings = settings
        self.device = torch.device(device)
        self.frame_size: tuple[int, int] | None = None  # (H, W) of the video's frames
        self.input_size: tuple[int, int] | None = None  # (H', W') the model sees
        self._ids: torch.Tensor | None = None  # [K] object ids
        self._class_values: torch.Tensor | None = None  # [K + 1] label of each class, 0 first
        self._first: tuple[torch.Tensor, torch.Tensor] | None = None  # (rgb [3, H', W'], labels [H', W'])
        self._previous: tuple[torch.Tensor, torch.Tensor] | None = None

    def _frame_tensor(self, rgb: np.ndarray) -> torch.Tensor:
        """uint8 [H, W, 3] -> normalised float [3, H', W'] on the device."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected a uint8 RGB frame [H, W, 3], got {rgb.dtype} {rgb.shape}")
        if self.frame_size is not None and rgb.shape[:2] != self.frame_size:
            raise ValueError(f"frame is {rgb.shape[1]}x{rgb.shape[0]} (WxH) but the first frame was "
                             f"{self.frame_size[1]}x{self.frame_size[0]}")
        tensor = to_normalized_tensor(rgb, self.device)
        if tuple(tensor.shape[-2:]) != self.input_size:
            tensor = F.interpolate(tensor[None], size=self.input_size, mode="bilinear", align_corners=False,
                                   antialias=True)[0]
        return tensor

    def initialize(self, rgb: np.ndarray, labels: np.ndarray, object_ids: Sequence[int]) -> None:
        """First frame and its mask; ``object_ids`` (distinct, 1..254) are the objects to segment,
        other labels of ``labels`` (void 255 included) count as background."""
        labels = np.asarray(labels)
        if labels.ndim != 2 or labels.dtype.kind not in "iu":
            raise ValueError(f"labels must be an integer [H, W] map, got {labels.dtype} {labels.shape}")
        if rgb.shape[:2] != labels.shape:
            raise ValueError(f"labels are {labels.shape[1]}x{labels.shape[0]} (WxH) but the frame is "
                             f"{rgb.shape[1]}x{rgb.shape[0]}")
        ids = [int(k) for k in object_ids]
        if not ids or len(set(ids)) != len(ids) or not all(1 <= k <= 254 for k in ids):
            raise ValueError(f"object_ids must be distinct ids in 1..{VOID_LABEL - 1}, got {list(object_ids)}")
        self.frame_size = labels.shape
        self.input_size = encoder_input_size(*labels.shape, self.model.patch_size, self.settings.frame_short_side)
        self._ids = torch.tensor(ids, device=self.device)
        self._class_values = torch.tensor([0, *ids], dtype=torch.uint8, device=self.device)
        label_map = torch.from_numpy(labels.astype(np.int64)).to(self.device)
        # "nearest-exact" samples each output pixel's centre (PIL's nearest), not its corner.
        label_map = F.interpolate(label_map[None, None].float(), size=self.input_size, mode="nearest-exact")[0, 0].long()
        self._first = (self._frame_tensor(rgb), label_map)
        self._previous = None

    @torch.inference_mode()
    def class_probabilities(self, query: torch.Tensor) -> torch.Tensor:
        """Query frame [3, H', W'] -> class probabilities [K + 1, H', W'] (0 = background).

        One batched pass over (reference, object) pairs: the first frame, and with
        ``use_previous_frame`` the previous prediction too; each reference's objects are soft
        aggregated, then the references' probability maps are averaged. ``model.segment`` does
        the same for one reference.
        """
        references = [self._first]
        if self.settings.use_previous_frame and self._previous is not None:
            references.append(self._previous)
        count, num_objects = len(references), len(self._ids)
        reference_rgb = torch.stack([rgb for rgb, _ in references])  # [R, 3, H', W']
        reference_labels = torch.stack([labels for _, labels in references])  # [R, H', W']
        masks = reference_labels[:, None] == self._ids[None, :, None, None]  # [R, K, H', W']
        logits = self.model(
            reference_rgb[:, None].expand(-1, num_objects, -1, -1, -1).flatten(0, 1),
            masks.flatten(0, 1)[:, None].to(reference_rgb.dtype),
            query[None].expand(count * num_objects, -1, -1, -1),
        )  # [R * K, 1, H', W']
        object_probs = logits[:, 0].float().sigmoid().unflatten(0, (count, num_objects)).transpose(0, 1)
        return soft_aggregate(object_probs).mean(dim=1)  # [K + 1, R, H', W'] -> [K + 1, H', W']

    @torch.inference_mode()
    def segment(self, rgb: np.ndarray) -> np.ndarray:
        """Labels [H, W] uint8 of a later frame: the first frame's object ids and 0."""
        if self._first is None:
            raise RuntimeError("call initialize(rgb, labels, object_ids) before segment(rgb)")
        query = self._frame_tensor(rgb)
        probabilities = self.class_probabilities(query)
        if self.settings.use_previous_frame:
            # Our option, not the paper's (which segments every frame from the first one only):
            # the prediction at the model's size becomes the second reference of the next frame.
            self._previous = (query, self._class_values.long()[probabilities.argmax(dim=0)])
        full = F.interpolate(probabilities[None], size=self.frame_size, mode="bilinear", align_corners=False)[0]
        return self._class_values[full.argmax(dim=0)].cpu().numpy()


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_segmentation_sequence(
    segmenter: DropSegmenter, sequence: SegmentationSequence, result_dir: str | Path
) -> tuple[int, float]:
    """Segment every frame of ``sequence``; write ``result_dir/<seq>/<frame stem>.png`` palette PNGs.

    Frame 0 is its annotation restricted to the segmented objects (void -> 0). The objects are
    those whose first frame is frame 0; later-starting objects (YouTube-VOS) are left out.
    Returns (frames, seconds); seconds count the segmenter only (no reading or writing).
    """
    objects = tuple(k for k in sequence.object_ids if sequence.object_first_frame[k] == 0)
    if not objects:
        raise ValueError(
            f"sequence {sequence.name!r}: no object starts in frame 0 (objects first seen later are not segmented)"
        )
    first_labels = sequence.read_annotation(0)
    first_labels = np.where(np.isin(first_labels, objects), first_labels, 0).astype(np.uint8)
    folder = Path(result_dir) / sequence.name
    seconds = 0.0
    for index, frame in enumerate(sequence.frames):
        rgb = read_rgb(frame)
        if rgb.shape[:2] != first_labels.shape:
            raise ValueError(f"{frame}: frame is {rgb.shape[1]}x{rgb.shape[0]} (WxH) but the first-frame "
                             f"annotation {sequence.annotations[0]} is {first_labels.shape[1]}x{first_labels.shape[0]}")
        _synchronise(segmenter.device)
        start = time.perf_counter()
        if index == 0:
            segmenter.initialize(rgb, first_labels, objects)
            labels = first_labels
        else:
            labels = segmenter.segment(rgb)
        _synchronise(segmenter.device)
        seconds += time.perf_counter() - start
        write_label_mask(folder / sequence.mask_name(index), labels)
    return len(sequence.frames), seconds


def run_segmentation_benchmark(
    segmenter: DropSegmenter, sequences: Iterable[SegmentationSequence], result_root: str | Path
) -> dict[str, float]:
    """Run every sequence into ``result_root/<seq>/``; {"frames", "seconds", "frames_per_second"}."""
    total_frames, total_seconds = 0, 0.0
    for sequence in track(sequences, desc="segment", unit="sequence"):
        frames, seconds = run_segmentation_sequence(segmenter, sequence, result_root)
        total_frames += frames
        total_seconds += seconds
    return {
        "frames": total_frames,
        "seconds": total_seconds,
        "frames_per_second": total_frames / total_seconds if total_seconds > 0 else float("nan"),
    }
