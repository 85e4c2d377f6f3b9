"""DropSeg: a one-stream ViT for semi-supervised video object segmentation, initialised from DropMAE.

The reference frame (with its object mask) and the query frame are patch-embedded by one shared
projection; the reference tokens also get a one-channel mask patch embedding (zero-initialised,
so a fresh model starts exactly as the pretrained encoder). Both frames share one learnable
position table (interpolated from the pretraining table, and on the fly for other frame sizes)
and take the pretraining frame embeddings (reference = the earlier frame, row 0; query = the
later frame, row 1). One joint ViT pass over [reference tokens, query tokens]; the query tokens,
as a map at 1/patch_size, go through a small upsampling decoder (to 1/4 of the image) that
predicts one-channel mask logits, resized bilinearly to the frame.

Several objects: one pass per object (batched over objects), then STCN's soft aggregation.

Encoder parameters carry the pretraining model's names (``patch_embed``, ``pos_embed``,
``blocks``, ``norm``, ``frame_embed``), so :func:`~dropmae.models.encoder.load_pretrained_encoder`
fills them; ``mask_embed`` and ``mask_decoder`` are fresh.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import build_sincos2d_pos_embed

from dropmae.engine.checkpoint import load_checkpoint
from dropmae.models.encoder import (
    LoadReport,
    encoder_blocks,
    encoder_spec,
    frame_embedding,
    from_pretraining_config,
    init_encoder_weights,
    layer_norm,
    load_pretrained_encoder,
    patch_embedding,
    resample_position_table,
)

__all__ = ["FRESH_PREFIXES", "DropSeg", "MaskDecoder", "dropseg_from_checkpoint", "soft_aggregate"]

# State-dict prefixes of the parts a pretraining checkpoint never has (trained at full lr).
FRESH_PREFIXES = ("mask_embed.", "mask_decoder.")

# STCN clamps probabilities to [1e-7, 1 - 1e-7] before taking their logits.
AGGREGATION_EPS = 1e-7

# The decoder ends at 1/4 of the frame, STCN's (and DropSeg's) output stride before the resize.
DECODER_STRIDE = 4


def soft_aggregate(object_probs: torch.Tensor) -> torch.Tensor:
    """Per-object foreground probabilities [K, ...] -> class probabilities [K + 1, ...] (0 = background).

    Soft aggregation (STM / STCN): background = prod_k (1 - p_k); every class probability is
    turned into its logit log(p / (1 - p)) (after clamping to [1e-7, 1 - 1e-7]) and a softmax
    over the K + 1 classes makes them sum to 1.
    """
    if object_probs.dim() < 1:
        raise ValueError("object_probs must be [K, ...], got a scalar")
    background = torch.prod(1 - object_probs, dim=0, keepdim=True)
    class_probs = torch.cat((background, object_probs), dim=0)
    # torch.logit clamps to [eps, 1 - eps] first, exactly STCN's clamp-then-log-odds.
    return torch.logit(class_probs, eps=AGGREGATION_EPS).softmax(dim=0)


class MaskDecoder(nn.Module):
    """Query-token map at 1/patch -> 1-channel mask logits at the frame size.

    ``num_upsamplings`` stages of (conv 3x3, GroupNorm, ReLU, 2x bilinear) bring the map to 1/4
    of the frame; a 3x3 conv predicts the logits, resized bilinearly to the frame. GroupNorm
    (not BatchNorm) keeps every object's mask independent of the others in its batch.
    """

    def __init__(self, in_channels: int, channels: int, num_upsamplings: int) -> None:
        super().__init__()
        if channels <= 0:
            raise ValueError(f"decoder_channels must be positive, got {channels}")
        layers: list[nn.Module] = []
        width = in_channels
        for _ in range(num_upsamplings):
            layers += [
                nn.Conv2d(width, channels, kernel_size=3, padding=1),
                nn.GroupNorm(math.gcd(32, channels), channels),
                nn.ReLU(inplace=True),
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            ]
            width = channels
        self.stages = nn.Sequential(*layers)
        self.predictor = nn.Conv2d(width, 1, kernel_size=3, padding=1)

    def forward(self, feature_map: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
        """feature_map [B, D, H/p, W/p] -> logits [B, 1, H, W] (``output_size`` = (H, W))."""
        logits = self.predictor(self.stages(feature_map))
        return F.interpolate(logits, size=output_size, mode="bilinear", align_corners=False)


class DropSeg(nn.Module):
    """Reference frame + mask and query frame through one joint ViT, then an upsampling mask decoder."""

    def __init__(
        self,
        encoder: str = "base",
        patch_size: int = 16,
        image_size: int = 384,
        decoder_channels: int = 256,
        drop_path_rate: float = 0.1,
        in_chans: int = 3,
        mlp_ratio: float = 4.0,
    ) -> None:
        """
        Args:
            encoder: ViT size, a key of ``dropmae.models.encoder.ENCODER_SPECS``.
            patch_size: patch (and feature stride) in pixels: 4 times a power of two (4, 8, 16, 32),
                so log2(patch_size / 4) 2x stages reach 1/4 of the frame.
            image_size: side of the square training crops; the learnable position table is for
                this grid. Other frame sizes (multiples of patch_size) interpolate it on the fly.
            decoder_channels: width of the upsampling stages.
            drop_path_rate: stochastic depth of the last block (linear from 0 over blocks).
        """
        super().__init__()
        spec = encoder_spec(encoder)
        ratio = patch_size // DECODER_STRIDE
        if patch_size < DECODER_STRIDE or patch_size % DECODER_STRIDE or ratio & (ratio - 1):
            raise ValueError(
                f"patch_size must be 4 times a power of two (4, 8, 16, 32, ...) so the decoder's 2x stages "
                f"reach 1/4 of the frame, got {patch_size}"
            )
        if image_size <= 0 or image_size % patch_size:
            raise ValueError(f"image_size = {image_size} must be a positive multiple of patch_size = {patch_size}")
        self.encoder = encoder
        self.embed_dim = spec.embed_dim
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.image_size = image_size
        self.grid = image_size // patch_size

        # One projection for both frames; its image size only matters for timm's own checks.
        self.patch_embed = patch_embedding(patch_size, in_chans, spec.embed_dim)
        self.mask_embed = patch_embedding(patch_size, 1, spec.embed_dim)
        # Learnable, shared by both frames; the sin-cos start only matters without pretraining.
        self.pos_embed = nn.Parameter(build_sincos2d_pos_embed([self.grid] * 2, spec.embed_dim)[None])
        self.frame_embed = frame_embedding(spec.embed_dim)
        self.blocks = encoder_blocks(spec, mlp_ratio, drop_path_rate=drop_path_rate)
        self.norm = layer_norm(spec.embed_dim)
        self.mask_decoder = MaskDecoder(spec.embed_dim, decoder_channels, int(math.log2(ratio)))
        # Position tables of other grids, kept while pos_embed is unchanged (see position_table).
        self._position_cache: dict[tuple, torch.Tensor] = {}
        self._position_cache_version = -1
        self._init_weights()

    def _init_weights(self) -> None:
        init_encoder_weights(self)
        # Zero mask embedding: a fresh model's reference tokens are the pretrained encoder's.
        nn.init.zeros_(self.mask_embed.proj.weight)
        nn.init.zeros_(self.mask_embed.proj.bias)

    # ------------------------------------------------------------------------- stages
    def position_table(self, rows: int, cols: int) -> torch.Tensor:
        """Position table [1, rows*cols, D] for a rows x cols token grid.

        The training grid uses ``pos_embed`` itself; other grids interpolate it bicubically.
        Without gradients (inference) the interpolated table is cached per grid until
        ``pos_embed`` changes (its in-place version counter moves on an optimiser step or a load).
        """
        if (rows, cols) == (self.grid, self.grid):
            return self.pos_embed
        if torch.is_grad_enabled() and self.pos_embed.requires_grad:
            return resample_position_table(self.pos_embed, rows, cols)  # keep the graph for training
        version = self.pos_embed._version
        if version != self._position_cache_version:
            self._position_cache.clear()
            self._position_cache_version = version
        key = (rows, cols, self.pos_embed.device, self.pos_embed.dtype)
        if key not in self._position_cache:
            self._position_cache[key] = resample_position_table(self.pos_embed.detach(), rows, cols)
        return self._position_cache[key]

    def embed(self, reference_rgb: torch.Tensor, reference_mask: torch.Tensor, query_rgb: torch.Tensor) -> torch.Tensor:
        """reference_rgb / query_rgb [B, C, H, W], reference_mask [B, 1, H, W] -> tokens [B, 2N, D]

        (reference tokens first, N = (H/p) * (W/p)).
        """
        self._check_inputs(reference_rgb, reference_mask, query_rgb)
        batch, _, height, width = reference_rgb.shape
        positions = self.position_table(height // self.patch_size, width // self.patch_size)
        # Both frames through the shared projection in one call.
        reference, query = self.patch_embed(torch.cat((reference_rgb, query_rgb))).split(batch)
        reference = reference + self.mask_embed(reference_mask.to(reference_rgb.dtype)) + positions + self.frame_embed[0]
        query = query + positions + self.frame_embed[1]
        return torch.cat((reference, query), dim=1)

    def forward_backbone(
        self, reference_rgb: torch.Tensor, reference_mask: torch.Tensor, query_rgb: torch.Tensor
    ) -> torch.Tensor:
        """Joint ViT pass -> normalised query tokens [B, N, D]."""
        x = self.embed(reference_rgb, reference_mask, query_rgb)
        for block in self.blocks:
            x = block(x)
        return self.norm(x[:, x.shape[1] // 2 :])

    def forward_decoder(self, query_tokens: torch.Tensor, frame_size: tuple[int, int]) -> torch.Tensor:
        """Query tokens [B, N, D] of a frame_size = (H, W) frame -> mask logits [B, 1, H, W]."""
        height, width = frame_size
        feature_map = query_tokens.transpose(1, 2).unflatten(2, (height // self.patch_size, width // self.patch_size))
        return self.mask_decoder(feature_map, (height, width))

    def forward(self, reference_rgb: torch.Tensor, reference_mask: torch.Tensor, query_rgb: torch.Tensor) -> torch.Tensor:
        """reference_rgb [B, 3, H, W], reference_mask [B, 1, H, W] (0 / 1 float), query_rgb [B, 3, H, W]

        -> query-frame mask logits [B, 1, H, W]. H and W: any multiples of patch_size.
        """
        query_tokens = self.forward_backbone(reference_rgb, reference_mask, query_rgb)
        return self.forward_decoder(query_tokens, tuple(query_rgb.shape[-2:]))

    @torch.no_grad()
    def segment(
        self,
        reference_rgb: torch.Tensor,
        reference_labels: torch.Tensor,
        object_ids: Sequence[int] | torch.Tensor,
        query_rgb: torch.Tensor,
    ) -> torch.Tensor:
        """Several objects at once: reference_rgb [3, H, W], reference_labels [H, W] (integer object
        ids, 0 = background), object_ids [K] (distinct, non-zero), query_rgb [3, H, W]

        -> class probabilities [K + 1, H, W] summing to 1 over classes; index 0 is the background,
        index k the object ``object_ids[k - 1]``. One network pass per object, batched over the
        objects, then :func:`soft_aggregate`. An id absent from the labels gets an empty mask.
        """
        if reference_labels.dim() != 2 or reference_labels.is_floating_point():
            raise ValueError(
                "reference_labels must be an integer [H, W] map, "
                f"got {reference_labels.dtype} {tuple(reference_labels.shape)}"
            )
        for name, image in (("reference_rgb", reference_rgb), ("query_rgb", query_rgb)):
            if image.dim() != 3:
                raise ValueError(f"{name} must be [C, H, W] for segment(), got {tuple(image.shape)}")
        if tuple(reference_labels.shape) != tuple(reference_rgb.shape[-2:]):
            raise ValueError(
                f"reference_labels {tuple(reference_labels.shape)} != reference_rgb size {tuple(reference_rgb.shape[-2:])}"
            )
        ids = torch.as_tensor(object_ids, device=reference_labels.device).flatten()
        count = ids.numel()
        if count == 0:  # nothing to segment: all background
            return reference_rgb.new_ones(1, *reference_labels.shape, dtype=torch.float32)
        if ids.is_floating_point() or (ids == 0).any() or ids.unique().numel() != count:
            raise ValueError(f"object_ids must be distinct non-zero integers, got {ids.tolist()}")
        masks = (reference_labels[None] == ids[:, None, None].to(reference_labels.dtype))[:, None]  # [K, 1, H, W]
        logits = self(
            reference_rgb.expand(count, -1, -1, -1), masks.to(reference_rgb.dtype), query_rgb.expand(count, -1, -1, -1)
        )
        return soft_aggregate(logits[:, 0].float().sigmoid())

    # ------------------------------------------------------------------------ helpers
    def _check_inputs(self, reference_rgb: torch.Tensor, reference_mask: torch.Tensor, query_rgb: torch.Tensor) -> None:
        if reference_rgb.dim() != 4 or reference_rgb.shape[1] != self.in_chans:
            raise ValueError(f"reference_rgb must be [B, {self.in_chans}, H, W], got {tuple(reference_rgb.shape)}")
        batch, _, height, width = reference_rgb.shape
        if height <= 0 or width <= 0 or height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"frame size {height}x{width} must be positive multiples of patch_size = {self.patch_size} (pad the frames)"
            )
        if tuple(query_rgb.shape) != tuple(reference_rgb.shape):
            raise ValueError(f"query_rgb {tuple(query_rgb.shape)} must match reference_rgb {tuple(reference_rgb.shape)}")
        if tuple(reference_mask.shape) != (batch, 1, height, width):
            raise ValueError(
                f"reference_mask must be [B, 1, H, W] = {(batch, 1, height, width)}, got {tuple(reference_mask.shape)}"
            )

    # What load_pretrained_encoder needs to know about a downstream model.
    def encoder_keys(self) -> list[str]:
        """State-dict keys that come from the pretraining encoder (all but mask_embed and the decoder)."""
        return [key for key in self.state_dict() if not key.startswith(FRESH_PREFIXES)]

    def fresh_keys(self) -> list[str]:
        """State-dict keys that are new in DropSeg (mask_embed, mask_decoder)."""
        return [key for key in self.state_dict() if key.startswith(FRESH_PREFIXES)]

    def position_grids(self) -> dict[str, int]:
        """Position tables filled from the pretraining ``pos_embed`` -> their square grid side."""
        return {"pos_embed": self.grid}

    def parameter_groups(self, backbone_lr_scale: float) -> list[dict[str, Any]]:
        """Optimiser groups [{"params", "lr_scale"}]: the fresh parts (mask_embed, decoder) at lr x 1,
        the pretrained encoder at lr x ``backbone_lr_scale`` (as the tracker's backbone).

        mask_embed counts as fresh: it starts at zero and would barely move at the backbone's lr.
        """
        named = [(name, p) for name, p in self.named_parameters() if p.requires_grad]
        fresh = [p for name, p in named if name.startswith(FRESH_PREFIXES)]
        backbone = [p for name, p in named if not name.startswith(FRESH_PREFIXES)]
        return [{"params": fresh, "lr_scale": 1.0}, {"params": backbone, "lr_scale": float(backbone_lr_scale)}]


# ----------------------------------------------------------------- loading a checkpoint
def dropseg_from_checkpoint(
    checkpoint: str | Path | Mapping[str, Any], image_size: int, **kwargs: Any
) -> tuple[DropSeg, LoadReport]:
    """Build a DropSeg matching a pretraining checkpoint (with its config) and load its encoder.

    Decoder keys are dropped, the position table is interpolated to the image_size grid, the
    encoder is copied; a missing or differently shaped encoder weight raises
    CheckpointMismatchError. mask_embed and mask_decoder stay fresh (``report.fresh``).
    """
    source = "the given state dict"
    if isinstance(checkpoint, (str, Path)):
        source, checkpoint = str(checkpoint), load_checkpoint(checkpoint)
    model = from_pretraining_config(DropSeg, checkpoint, image_size=image_size, **kwargs)
    return model, load_pretrained_encoder(model, checkpoint, source=source)
