"""JPEG decoding, crop and flip on the training device (``pretrain.decode_on_device``).

With it, a DataLoader worker only reads the two JPEGs of a pair from the packed shards and
draws the crop boxes and flips, with the same random draws as the CPU path (so the same
boxes and flips); the GPU decodes the whole batch at once (nvJPEG through
``torchvision.io.decode_jpeg``; TorchCodec is its successor) and cuts every crop in one
``roi_align`` call. Workers then do almost no pixel work.

What differs from the CPU path: ``roi_align`` resamples bilinearly, averaging
ceil(crop / output) samples per output pixel when it shrinks (an area filter), where the
CPU path uses PIL's antialiased bicubic. Same boxes, same flips; pixel values within a few
grey levels (``tests/test_fast_path.py`` states the tolerance). Off by default.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.ops import roi_align


@dataclass
class EncodedPairs:
    """What a worker returns for one video: the JPEGs of its pairs and their crop boxes and flips."""

    jpegs: list[torch.Tensor]  # 2k CPU uint8 1-D tensors: pair r's frames at 2r, 2r + 1
    crops: torch.Tensor  # [2k, 4] int64: top, left, height, width in the decoded frame
    flips: torch.Tensor  # [2k] bool


@dataclass
class EncodedPairBatch:
    """A collated batch of :class:`EncodedPairs`; the training step decodes it on its device."""

    jpegs: list[torch.Tensor]  # 2P tensors; stay on the CPU (decode_jpeg reads its input there)
    crops: torch.Tensor  # [2P, 4]
    flips: torch.Tensor  # [2P]

    def pin_memory(self) -> EncodedPairBatch:  # called by a DataLoader with pin_memory=True
        return self


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a JPEG from its header alone."""
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def collate_encoded(items: list[EncodedPairs]) -> EncodedPairBatch:
    """DataLoader ``collate_fn``: the items' frames in order, pairs of consecutive frames."""
    return EncodedPairBatch(
        jpegs=[jpeg for item in items for jpeg in item.jpegs],
        crops=torch.cat([item.crops for item in items]),
        flips=torch.cat([item.flips for item in items]),
    )


def decode_jpegs_on_device(jpegs: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """RGB uint8 frames [3, H, W] on ``device`` from CPU JPEG bytes, in one batched decode.

    On CUDA the caller's stream is synchronised first. torchvision's batched CUDA decode lets
    nvJPEG write its outputs without ordering them after the kernels already queued on the
    current stream, and the caching allocator may hand it a block those kernels still read (a
    tensor freed on that stream a moment ago): the model's gather/scatter kernels then read
    pixels and fail with device-side "index out of bounds" asserts. Upstream: pytorch/vision
    PR 9606 and meta-pytorch/torchcodec PR 1634. Costs one host wait per batch, which the next
    batch's workers hide.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()
    return decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=device)  # one batched call


def decode_pairs(batch: EncodedPairBatch, size: int, device: torch.device) -> torch.Tensor:
    """uint8 crops [P, 2, 3, size, size] on ``device``, ready for ``normalize_frames``."""
    frames = decode_jpegs_on_device(batch.jpegs, device)
    # One padded batch (frames of a batch differ in size), so every crop is cut in one kernel.
    padded = torch.nested.as_nested_tensor(frames, layout=torch.strided).to_padded_tensor(0).float()
    crops = batch.crops.to(device=device, dtype=torch.float32)
    top, left, height, width = crops.unbind(1)
    boxes = torch.stack(
        [torch.arange(len(crops), device=device, dtype=torch.float32), left, top, left + width, top + height], dim=1
    )
    # aligned=True: a box [left, left + width) covers exactly those pixel columns.
    out = roi_align(padded, boxes, output_size=size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    flips = batch.flips.to(device)[:, None, None, None]
    out = torch.where(flips, out.flip(-1), out)
    return out.round_().clamp_(0, 255).to(torch.uint8).unflatten(0, (-1, 2))
