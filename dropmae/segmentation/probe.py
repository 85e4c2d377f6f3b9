"""The probe: score a frozen pretraining checkpoint on video object segmentation by label propagation.

The fine-tuning-free protocol of self-supervised video correspondence (CRW, Jabri et al.
2020; DINO's ``eval_video_segmentation.py``): encode every frame with the frozen encoder,
then, frame by frame, give each feature cell of the query frame a weighted vote of the soft
labels of its most similar cells in a memory (the first frame with its ground truth, plus
the last ``n_context`` predicted frames). The result is upsampled to the frame and its
argmax written as a DAVIS palette PNG, ready for the DAVIS J&F toolkit.

Defaults follow DINO's public script (facebookresearch/dino, eval_video_segmentation.py);
where CRW (ajabri/videowalk, code/test.py) differs, the setting is named and CRW's choice
is an option. See :class:`PropagationSettings`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from timm.layers import build_sincos2d_pos_embed

from dropmae.data.images import read_rgb, to_normalized_tensor, write_label_mask
from dropmae.engine.checkpoint import load_checkpoint
from dropmae.models.dropmae import DropMAE
from dropmae.progress import track
from dropmae.segmentation.datasets import SegmentationSequence

POSITION_MODES = ("rebuild", "interpolate")
# Affinity logits held at once in one propagation step (queries x memory cells); bounds memory
# for patch-8 DAVIS grids (6,360 cells x 8 frames) without a Python loop over pixels.
_LOGITS_PER_CHUNK = 1 << 24
# Upsampled soft-label values held at once when mapping the feature grid back to the frames.
_PIXELS_PER_CHUNK = 1 << 25


# --------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class PropagationSettings:
    """Hyper-parameters of the probe; defaults are DINO's (eval_video_segmentation.py).

    topk: memory cells voting for each query cell, chosen jointly over all memory frames.
        DINO ``--topk 5``; CRW's README runs 10.
    n_context: predicted frames kept in the memory besides the first frame.
        DINO ``--n_last_frames 7``; CRW ``--videoLen 20``.
    neighbourhood: radius in feature cells of the square window (|dy| <= r and |dx| <= r) a
        query cell may match in a memory frame; 0 = the whole frame. DINO
        ``--size_mask_neighborhood 12`` (square window); CRW ``--radius 12`` is a disc.
    temperature: softmax temperature on cosine similarities of the top-k cells. DINO has no
        flag for it: ``exp(similarity / 0.1)`` is hard-coded, then normalised over the top-k,
        which is this softmax at 0.1. (CRW's README uses 0.05.)
    frame_short_side: frames are resized so their short side has this many pixels before
        encoding (then each side to the nearest multiple of the patch); None keeps the frame
        size. DINO reads frames at short side 480, which is DAVIS 480p as is.
    neighbourhood_on_first_frame: whether the window also restricts matches in the first
        (ground-truth) frame. DINO: yes (its mask covers every memory frame); CRW: no (its
        radius mask skips the long-term memory).
    normalise_channels: rescale each label channel of an upsampled frame to [0, 1] (min-max)
        before the argmax, which lets a weakly propagated object win over the background
        where it peaks. DINO's ``norm_mask``: on; CRW ``--norm_mask``: off by default.
    """

    topk: int = 5
    n_context: int = 7
    neighbourhood: int = 12
    temperature: float = 0.1
    frame_short_side: int | None = 480
    neighbourhood_on_first_frame: bool = True
    normalise_channels: bool = True

    def __post_init__(self) -> None:
        def whole(name: str, minimum: int, allow_none: bool = False) -> None:
            value = getattr(self, name)
            if allow_none and value is None:
                return
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                kind = "None or an integer" if allow_none else "an integer"
                raise ValueError(f"PropagationSettings.{name} must be {kind} >= {minimum}, got {value!r}")

        whole("topk", 1)
        whole("n_context", 0)
        whole("neighbourhood", 0)
        whole("frame_short_side", 1, allow_none=True)
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) or not (
            math.isfinite(self.temperature) and self.temperature > 0
        ):
            raise ValueError(f"PropagationSettings.temperature must be a finite number > 0, got {self.temperature!r}")
        for name in ("neighbourhood_on_first_frame", "normalise_channels"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"PropagationSettings.{name} must be True or False, got {getattr(self, name)!r}")


# ---------------------------------------------------------------------- frame encoder
def encoder_input_size(height: int, width: int, patch_size: int, short_side: int | None = None) -> tuple[int, int]:
    """Size (H', W') a frame is resized to before encoding: optionally scaled to ``short_side``
    (aspect kept), then each side rounded to the nearest multiple of the patch (at least one)."""
    scale = 1.0 if short_side is None else short_side / min(height, width)
    return tuple(max(1, math.floor(side * scale / patch_size + 0.5)) * patch_size for side in (height, width))


class FrameEncoder(nn.Module):
    """The frozen pretraining encoder applied to single frames.

    Each frame is encoded as the *first* frame of a pair: patch embedding + the position table
    of its own grid + ``frame_embed[0]``, all blocks, final norm, no masking. Output cells are
    L2-normalised over the channels.

    positions: how the table is made for a grid other than the training one.
        "rebuild" (default): evaluate the same fixed sin-cos function (timm's
        build_sincos2d_pos_embed, the builder DropMAE uses) on the new grid. The table is a
        function of integer patch coordinates, so neighbouring patches keep exactly the offsets
        the encoder was trained on and the training table is the top-left block of the new one;
        interpolating would instead squeeze a 53-patch-wide frame (DAVIS at patch 16) into 14 steps.
        Requires the checkpoint's table to be that sin-cos table (checked).
        "interpolate": bicubic resize of the checkpoint's table to the (non-square) grid, as the
        tracker does for its crops; for a learned table.
    """

    def __init__(self, model: DropMAE, positions: str = "rebuild", batch_size: int = 16) -> None:
        super().__init__()
        if positions not in POSITION_MODES:
            raise ValueError(f"positions must be one of {POSITION_MODES}, got {positions!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.patch_embed = model.patch_embed
        # Frames of any size (multiples of the patch) go through the patch projection.
        self.patch_embed.strict_img_size = False
        self.blocks = model.blocks
        self.norm = model.norm
        self.register_buffer("first_frame_embed", model.frame_embed.detach()[0].clone())
        self.register_buffer("training_pos_embed", model.pos_embed.detach()[0].clone())  # [N, D]
        self.training_grid = tuple(model.grid_size)
        self.patch_size = model.patch_size
        self.embed_dim = self.first_frame_embed.shape[0]
        self.positions = positions
        self.batch_size = batch_size
        self._tables: dict[tuple[int, int], torch.Tensor] = {}
        if positions == "rebuild":
            expected = build_sincos2d_pos_embed(list(self.training_grid), self.embed_dim)
            if not torch.allclose(self.training_pos_embed.cpu().float(), expected, atol=1e-5):
                raise ValueError(
                    "the checkpoint's pos_embed is not DropMAE's fixed sin-cos table of the "
                    f"{self.training_grid} grid, so it cannot be rebuilt for other grids; use positions='interpolate'"
                )
        self.requires_grad_(False)
        self.eval()

    def _apply(self, fn, *args, **kwargs):
        self._tables.clear()  # cached tables would stay on the old device / dtype
        return super()._apply(fn, *args, **kwargs)

    def position_table(self, grid: tuple[int, int]) -> torch.Tensor:
        """Position table [gh * gw, D] of a (gh, gw) grid."""
        if grid not in self._tables:
            if grid == self.training_grid:
                table = self.training_pos_embed.float()
            elif self.positions == "rebuild":
                table = build_sincos2d_pos_embed(list(grid), self.embed_dim, device=self.training_pos_embed.device)
            else:
                height, width = self.training_grid
                square = self.training_pos_embed.float().T.reshape(1, self.embed_dim, height, width)
                table = F.interpolate(square, size=grid, mode="bicubic", align_corners=False)[0].flatten(1).T
            self._tables[grid] = table.contiguous()
        return self._tables[grid]

    @torch.inference_mode()
    def forward(self, frames: torch.Tensor, short_side: int | None = None) -> torch.Tensor:
        """frames [T, 3, H, W] (ImageNet-normalised) -> features [T, D, H'/p, W'/p], unit norm over D.

        (H', W') = :func:`encoder_input_size`; a frame of another size is resized bilinearly with
        antialiasing (the whole frame, no crop, so the grid still covers the frame).
        """
        if frames.dim() != 4 or frames.shape[1] != 3:
            raise ValueError(f"expected frames [T, 3, H, W], got {tuple(frames.shape)}")
        device = self.first_frame_embed.device
        size = encoder_input_size(*frames.shape[-2:], self.patch_size, short_side)
        grid = (size[0] // self.patch_size, size[1] // self.patch_size)
        additive = self.position_table(grid) + self.first_frame_embed  # [N, D]
        outputs = []
        for start in range(0, frames.shape[0], self.batch_size):  # batches bound memory; frames in one run together
            batch = frames[start : start + self.batch_size].to(device, torch.float32)
            if tuple(batch.shape[-2:]) != size:
                batch = F.interpolate(batch, size=size, mode="bilinear", align_corners=False, antialias=True)
            tokens = self.patch_embed(batch) + additive
            for block in self.blocks:
                tokens = block(tokens)
            tokens = F.normalize(self.norm(tokens), dim=-1)
            outputs.append(tokens.transpose(1, 2).unflatten(2, grid))
        return torch.cat(outputs)

    def encode_rgb(self, images: np.ndarray, short_side: int | None = None) -> torch.Tensor:
        """uint8 RGB frames [T, H, W, 3] -> features [T, D, h, w]; normalised one batch at a time
        so a long sequence is never held as float frames."""
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 RGB frames [T, H, W, 3], got {images.dtype} {images.shape}")
        device = self.first_frame_embed.device
        outputs = []
        for start in range(0, images.shape[0], self.batch_size):
            outputs.append(self(to_normalized_tensor(images[start : start + self.batch_size], device), short_side))
        return torch.cat(outputs)


def frame_encoder_from_checkpoint(
    path_or_dict: str | Path | Mapping[str, Any],
    device: str | torch.device = "cpu",
    positions: str = "rebuild",
    batch_size: int = 16,
) -> FrameEncoder:
    """A :class:`FrameEncoder` from a DropMAE / TwinMAE pretraining checkpoint.

    ``path_or_dict``: a checkpoint path or loaded dict with the weights under "model" and the
    run's config under "config" (its "model" section: encoder, patch_size, img_size). Decoder
    weights are ignored; a missing encoder weight is an error naming it.
    """
    source = str(path_or_dict) if isinstance(path_or_dict, (str, Path)) else "the checkpoint dict"
    state = load_checkpoint(path_or_dict) if isinstance(path_or_dict, (str, Path)) else path_or_dict
    if not isinstance(state, Mapping) or not isinstance(state.get("model"), Mapping):
        raise ValueError(f"{source}: expected a checkpoint with the weights under 'model'")
    section = state.get("config", {}).get("model") if isinstance(state.get("config"), Mapping) else None
    if not isinstance(section, Mapping):
        raise ValueError(f"{source}: no config['model'] section (encoder, patch_size, img_size) to build the encoder from")
    for key in ("encoder", "patch_size", "img_size"):
        if key not in section:
            raise ValueError(f"{source}: config['model'] has no {key!r}")
    # decoder_depth=0: the decoder is never run, so only its small input/output layers are built.
    model = DropMAE(
        img_size=int(section["img_size"]),
        patch_size=int(section["patch_size"]),
        encoder=section["encoder"],
        decoder_depth=0,
    )
    weights, expected = state["model"], model.encoder_state_dict()
    mismatched = [
        f"{key}: checkpoint {list(weights[key].shape)} vs {section['encoder']} encoder {list(value.shape)}"
        for key, value in expected.items()
        if key in weights and weights[key].shape != value.shape
    ]
    if mismatched:
        raise ValueError(f"{source}: does not fit config['model']: " + "; ".join(mismatched))
    missing = [key for key in expected if key not in weights]
    if missing:
        raise ValueError(f"{source}: lacks encoder weights {missing}")
    encoder_keys = list(expected)
    model.load_state_dict({key: weights[key] for key in encoder_keys}, strict=False)
    return FrameEncoder(model, positions=positions, batch_size=batch_size).to(device)


# ------------------------------------------------------------------------ propagation
def _window_mask(height: int, width: int, radius: int, device: torch.device) -> torch.Tensor:
    """[N, N] bool over a (height, width) grid: query cell i may match key cell j when both
    coordinates differ by at most ``radius`` (DINO's square window)."""
    rows, cols = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()
    return ((rows[:, None] - rows[None]).abs() <= radius) & ((cols[:, None] - cols[None]).abs() <= radius)


def _propagate_step(
    query: torch.Tensor,
    memory: torch.Tensor,
    memory_labels: torch.Tensor,
    allowed: torch.Tensor | None,
    settings: PropagationSettings,
) -> torch.Tensor:
    """One frame: query [D, N], memory [M, D, N], memory_labels [M, C, N], allowed [N, M, N] bool
    (or None) -> soft labels [C, N]."""
    num_memory, _, num_cells = memory.shape
    topk = min(settings.topk, num_memory * num_cells)
    keys = memory.permute(1, 0, 2).flatten(1)  # [D, M*N]
    key_labels = memory_labels.permute(0, 2, 1).flatten(0, 1)  # [M*N, C]
    chunk = max(1, _LOGITS_PER_CHUNK // (num_memory * num_cells))
    soft = []
    for start in range(0, num_cells, chunk):  # chunks of queries bound memory, they do not serialise pixels
        logits = (query[:, start : start + chunk].T @ keys) / settings.temperature  # [q, M*N]
        if allowed is not None:
            # The query's own position is always allowed, so no row is all -inf.
            logits = logits.masked_fill(~allowed[start : start + chunk].flatten(1), float("-inf"))
        top_logits, top_index = logits.topk(topk, dim=1)
        weights = top_logits.softmax(dim=1)  # [q, k]
        soft.append(torch.einsum("qk,qkc->qc", weights, key_labels[top_index]))
    return torch.cat(soft).T


def _hard_labels(soft: torch.Tensor, size: tuple[int, int], values: torch.Tensor, normalise: bool) -> torch.Tensor:
    """Soft labels [F, C, h, w] -> label values [F, H, W] uint8 (bilinear upsampling, argmax)."""
    frames_per_chunk = max(1, _PIXELS_PER_CHUNK // (soft.shape[1] * size[0] * size[1]))
    hard = []
    for start in range(0, soft.shape[0], frames_per_chunk):
        upsampled = F.interpolate(soft[start : start + frames_per_chunk], size=size, mode="bilinear", align_corners=False)
        if normalise:  # DINO's norm_mask: min-max per frame and channel, channels that are all zero left alone
            low = upsampled.amin(dim=(2, 3), keepdim=True)
            span = upsampled.amax(dim=(2, 3), keepdim=True) - low
            upsampled = torch.where(span > 0, (upsampled - low) / span.clamp_min(1e-12), upsampled)
        hard.append(values[upsampled.argmax(dim=1)].cpu())
    return torch.cat(hard)


@torch.inference_mode()
def propagate_labels(
    features: torch.Tensor, first_labels: torch.Tensor | np.ndarray, settings: PropagationSettings
) -> torch.Tensor:
    """Propagate the first frame's labels through a video.

    features: [T, D, h, w] per-frame features (normalised here over D: cosine affinity).
    first_labels: [H, W] integers, 0 = background, others object ids (< 256).
    Returns labels [T, H, W] uint8 on the CPU; frame 0 is ``first_labels``, later frames only
    carry values present in ``first_labels`` (and 0).
    """
    if features.dim() != 4 or features.shape[0] < 1:
        raise ValueError(f"features must be [T, D, h, w] with T >= 1, got {tuple(features.shape)}")
    first = torch.as_tensor(first_labels)
    if first.dim() != 2 or first.dtype.is_floating_point or first.dtype == torch.bool:
        raise ValueError(f"first_labels must be an integer [H, W] map, got {first.dtype} {tuple(first.shape)}")
    first = first.long()
    if first.numel() == 0 or first.min() < 0 or first.max() > 255:
        raise ValueError("first_labels must hold ids in 0..255 (written as uint8 palette indices)")
    device = features.device
    num_frames, _, height, width = features.shape
    frame_size = tuple(first.shape)

    # Channel c holds label values[c]; background (0) is always a channel.
    values = torch.unique(torch.cat((first.new_zeros(1), first.flatten())))
    channels = torch.searchsorted(values, first)
    one_hot = F.one_hot(channels, len(values)).permute(2, 0, 1).float()[None]  # [1, C, H, W]
    # DINO samples the first mask at the feature grid with nearest neighbour (PIL resize);
    # "nearest-exact" takes the pixel at each cell's centre like PIL does.
    first_soft = F.interpolate(one_hot, size=(height, width), mode="nearest-exact")[0].flatten(1).to(device)

    keys = F.normalize(features.flatten(2).float(), dim=1)  # [T, D, N]
    soft = torch.zeros(num_frames, len(values), height * width, device=device)
    soft[0] = first_soft
    window = _window_mask(height, width, settings.neighbourhood, device) if settings.neighbourhood > 0 else None
    for t in range(1, num_frames):  # each frame's memory holds the frames predicted just before it
        memory = torch.tensor([0, *range(max(1, t - settings.n_context), t)], device=device)
        allowed = None
        if window is not None:
            allowed = window[:, None, :].expand(-1, len(memory), -1)
            if not settings.neighbourhood_on_first_frame:
                allowed = allowed.clone()
                allowed[:, 0] = True
        soft[t] = _propagate_step(keys[t], keys[memory], soft[memory], allowed, settings)

    labels = torch.empty(num_frames, *frame_size, dtype=torch.uint8)
    labels[0] = first.to(torch.uint8)
    if num_frames > 1:
        grid_soft = soft[1:].unflatten(2, (height, width))
        labels[1:] = _hard_labels(grid_soft, frame_size, values.to(device, torch.uint8), settings.normalise_channels)
    return labels


# ------------------------------------------------------------------------------ probe
def run_probe(
    checkpoint: str | Path | Mapping[str, Any] | FrameEncoder,
    sequences: Iterable[SegmentationSequence],
    result_root: str | Path,
    settings: PropagationSettings = PropagationSettings(),
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Segment each sequence from its first-frame annotation; write DAVIS result PNGs.

    ``sequences``: benchmark sequences; only the annotation of frame 0 is used (the
    semi-supervised protocol), read as the benchmark's format says (DAVIS 2016: every object
    label is object 1), and labels outside ``object_ids`` (e.g. 255 = void) become background.
    Writes ``result_root/<name>/<frame stem>.png`` for every frame, frame 0 included. Returns
    {"sequences", "frames", "seconds", "frames_per_second"}; seconds count encoding and
    propagation (reading and writing images excluded).
    """
    encoder = checkpoint if isinstance(checkpoint, FrameEncoder) else frame_encoder_from_checkpoint(checkpoint, device)
    result_root = Path(result_root)
    compute_device = encoder.first_frame_embed.device
    total_frames, total_seconds, count = 0, 0.0, 0
    for sequence in track(sequences, desc="probe", unit="sequence"):
        if not sequence.frames or 0 not in sequence.annotations:
            raise ValueError(f"sequence {sequence.name!r}: needs frames and an annotation of frame 0")
        first_labels = sequence.read_annotation(0)
        first_labels = np.where(np.isin(first_labels, list(sequence.object_ids)), first_labels, 0).astype(np.uint8)
        _check_frame_sizes(sequence)
        images = np.stack([read_rgb(path) for path in sequence.frames])
        if images.shape[1:3] != first_labels.shape:
            raise ValueError(
                f"{sequence.annotations[0]}: annotation is {first_labels.shape[::-1]} (w, h) but the frames are "
                f"{images.shape[2:0:-1]}"
            )
        _synchronise(compute_device)
        started = time.perf_counter()
        features = encoder.encode_rgb(images, settings.frame_short_side)
        labels = propagate_labels(features, first_labels, settings)
        _synchronise(compute_device)
        total_seconds += time.perf_counter() - started
        total_frames += len(images)
        count += 1

        for index, frame_labels in enumerate(labels.numpy()):
            write_label_mask(result_root / sequence.name / sequence.mask_name(index), frame_labels)
    return {
        "sequences": count,
        "frames": total_frames,
        "seconds": total_seconds,
        "frames_per_second": total_frames / total_seconds if total_seconds > 0 else float("nan"),
    }


def _check_frame_sizes(sequence: Any) -> None:
    """Every frame must have the first frame's size (PIL reads only the headers)."""
    sizes = {}
    for path in sequence.frames:
        try:
            with Image.open(path) as image:
                sizes.setdefault(image.size, path)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: frame does not exist") from None
    if len(sizes) > 1:
        (first_size, first_path), (other_size, other_path) = list(sizes.items())[:2]
        raise ValueError(f"sequence {sequence.name!r}: {other_path} is {other_size} but {first_path} is {first_size} (w, h)")


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
