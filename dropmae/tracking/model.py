"""DropTrack: an OSTrack-style one-stream ViT tracker whose encoder is a DropMAE encoder.

Template and search crops are patch-embedded by one shared projection, given their own
learnable position tables (interpolated from the pretraining table) and the pretraining
frame embeddings (template = the earlier frame, row 0; search = the later frame, row 1),
concatenated and run jointly through the ViT blocks. Candidate elimination (OSTrack, ECCV
2022) drops search tokens the template's centre pays little attention to; the surviving
tokens are put back on the search grid (eliminated cells are zero) and a CenterNet-style
head predicts a score map, sub-cell offsets and box sizes.

Encoder parameters carry the pretraining model's names (``patch_embed``, ``blocks``,
``norm``, ``frame_embed``), so :func:`~dropmae.models.encoder.load_pretrained_encoder` copies
them directly.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import build_sincos2d_pos_embed
from timm.models.vision_transformer import Attention, Block

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
)

# Which template tokens' attention ranks the search tokens (OSTrack's CE_TEMPLATE_RANGE).
# "ctr_point": the one token at grid cell ((G-1)//2, (G-1)//2), as OSTrack/DropTrack's
#   CTR_POINT (8x8 -> (3, 3), 12x12 -> (5, 5)); their recipes use it.
# "ctr_rec": the centre 2x2 tokens of an even grid (1 token for an odd one), OSTrack's CTR_REC.
# "all": every template token.
CE_TEMPLATE_RANGES = ("ctr_point", "ctr_rec", "all")

HEAD_PREFIX = "box_head."


# ------------------------------------------------------------------------ backbone layers

class CandidateEliminationAttention(Attention):
    """timm self-attention that can also report how much chosen queries attend to every key.

    Same parameters and state-dict keys as timm's Attention; its plain ``forward`` is timm's.
    """

    def forward_with_probe(self, x: torch.Tensor, probe_queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, L, D], probe_queries [Q] (token positions) -> (output [B, L, D], probe [B, heads, Q, L]).

        ``probe`` holds the softmax attention probabilities (over all L keys, before attention
        dropout) of the probed queries. Only those Q rows are materialised; the full attention
        still runs fused.
        """
        if self.gate is not None:
            raise NotImplementedError("CandidateEliminationAttention does not support gated attention")
        batch, length, _ = x.shape
        qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        probe_logits = (q[:, :, probe_queries] * self.scale) @ k.transpose(-2, -1)
        probe = probe_logits.float().softmax(dim=-1)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        x = x.transpose(1, 2).reshape(batch, length, self.attn_dim)
        x = self.norm(x)
        return self.proj_drop(self.proj(x)), probe


class CandidateEliminationBlock(Block):
    """timm pre-norm Block (same keys) that can drop search tokens between attention and MLP."""

    def forward_eliminating(
        self, x: torch.Tensor, num_template: int, probe_queries: torch.Tensor, num_keep: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One block with candidate elimination after its attention (OSTrack's CEBlock).

        x [B, Nz + n, D] (template tokens first) -> (x [B, Nz + num_keep, D], kept [B, num_keep]):
        ``kept`` are positions within the n incoming search tokens, most attended first. Search
        tokens are ranked by the attention the template's probe queries pay them, averaged over
        heads and those queries.
        """
        attended, probe = self.attn.forward_with_probe(self.norm1(x), probe_queries)
        x = x + self.drop_path1(self.ls1(attended))
        search_relevance = probe[..., num_template:].mean(dim=(1, 2))  # [B, n]
        kept = search_relevance.topk(num_keep, dim=1, sorted=True).indices
        search = x[:, num_template:].gather(1, kept[..., None].expand(-1, -1, x.shape[-1]))
        x = torch.cat((x[:, :num_template], search), dim=1)
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x, kept


# ----------------------------------------------------------------------------- the head
def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _tower(in_channels: int, channels: int, out_channels: int) -> nn.Sequential:
    widths = [in_channels, channels, channels // 2, channels // 4, channels // 8]
    layers = [_conv_bn_relu(a, b) for a, b in itertools.pairwise(widths)]
    return nn.Sequential(*layers, nn.Conv2d(widths[-1], out_channels, kernel_size=1))


class CenterHead(nn.Module):
    """OSTrack's CenterPredictor: score, offset and size towers over the search feature map."""

    # OSTrack clamps the sigmoid outputs so the focal loss's logs stay finite.
    PROBABILITY_EPS = 1e-4

    def __init__(self, in_channels: int, channels: int = 256) -> None:
        super().__init__()
        if channels < 8 or channels % 8:
            raise ValueError(f"head_channels must be a positive multiple of 8, got {channels}")
        self.score_tower = _tower(in_channels, channels, 1)
        self.offset_tower = _tower(in_channels, channels, 2)
        self.size_tower = _tower(in_channels, channels, 2)
        for parameter in self.parameters():
            if parameter.dim() > 1:  # conv weights, as OSTrack
                nn.init.xavier_uniform_(parameter)

    def forward(self, feature_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """feature_map [B, D, H, W] -> float32 (score [B, 1, H, W] in (0, 1), size [B, 2, H, W] (w, h)
        in (0, 1) of the crop, offset [B, 2, H, W] (x, y) in cells)."""
        eps = self.PROBABILITY_EPS
        # float32 outputs: under bf16 autocast 1 - 1e-4 rounds to 1 and box coordinates to ~3 digits.
        score = self.score_tower(feature_map).float().sigmoid().clamp(eps, 1 - eps)
        size = self.size_tower(feature_map).float().sigmoid().clamp(eps, 1 - eps)
        return score, size, self.offset_tower(feature_map).float()


def decode_boxes(
    score_map: torch.Tensor,
    size_map: torch.Tensor,
    offset_map: torch.Tensor,
    window: torch.Tensor | None = None,
) -> torch.Tensor:
    """Boxes [B, 4] (cx, cy, w, h), normalised to [0, 1] of the search crop, from the head's maps.

    score_map [B, 1, H, W], size_map / offset_map [B, 2, H, W]; window (optional, e.g. the
    tracker's Hann window) [H, W] or anything broadcastable to score_map, multiplies the
    score before the argmax. At the best cell (ix, iy): cx = (ix + offset_x) / W,
    cy = (iy + offset_y) / H, (w, h) = size there (OSTrack's cal_bbox).
    """
    if score_map.dim() != 4 or score_map.shape[1] != 1:
        raise ValueError(f"score_map must be [B, 1, H, W], got {tuple(score_map.shape)}")
    batch, _, height, width = score_map.shape
    for name, tensor in (("size_map", size_map), ("offset_map", offset_map)):
        if tuple(tensor.shape) != (batch, 2, height, width):
            raise ValueError(f"{name} must be [B, 2, H, W] = {(batch, 2, height, width)}, got {tuple(tensor.shape)}")
    response = score_map if window is None else score_map * window
    if response.shape != score_map.shape:
        raise ValueError(f"window {tuple(window.shape)} does not broadcast to score_map {tuple(score_map.shape)}")
    best = response.flatten(1).argmax(dim=1)  # [B]
    cell = best[:, None, None].expand(batch, 2, 1)
    size = size_map.flatten(2).gather(2, cell).squeeze(2)  # [B, 2]
    offset = offset_map.flatten(2).gather(2, cell).squeeze(2)
    cells_xy = torch.stack((best % width, best // width), dim=1).to(offset.dtype)
    centre = (cells_xy + offset) / torch.tensor([width, height], dtype=offset.dtype, device=offset.device)
    return torch.cat((centre, size), dim=1)


# ----------------------------------------------------------------------------- the model
@dataclass
class BackboneOutput:
    """What the ViT leaves after its last block and norm."""

    search_tokens: torch.Tensor  # [B, n, D] surviving search tokens (normalised)
    search_index: torch.Tensor  # [B, n] their positions on the full search grid (row-major)
    kept_per_ce_block: list[int]  # search tokens left after each CE location, in block order


class DropTrack(nn.Module):
    """One-stream ViT tracker (OSTrack) with candidate elimination and a center head."""

    def __init__(
        self,
        encoder: str = "base",
        patch_size: int = 16,
        template_size: int = 128,
        search_size: int = 256,
        ce_locations: Sequence[int] = (3, 6, 9),
        ce_keep_ratio: float = 0.7,
        head_channels: int = 256,
        drop_path_rate: float = 0.1,
        ce_template_range: str = "ctr_point",
        in_chans: int = 3,
        mlp_ratio: float = 4.0,
    ) -> None:
        """
        Args:
            encoder: ViT size, a key of ``dropmae.models.encoder.ENCODER_SPECS``.
            patch_size: patch (and feature stride) in pixels; both crop sizes must be multiples.
            template_size / search_size: square crop sides in pixels.
            ce_locations: 0-based indices of the blocks that eliminate candidates.
            ce_keep_ratio: share of the remaining search tokens each CE block keeps (default
                of ``forward``; training overrides it with a schedule).
            head_channels: width C of the center head towers (C, C/2, C/4, C/8).
            drop_path_rate: stochastic depth of the last block (linear from 0 over blocks).
            ce_template_range: template queries that rank search tokens, see CE_TEMPLATE_RANGES.
        """
        super().__init__()
        spec = encoder_spec(encoder)
        if patch_size <= 0:
            raise ValueError(f"patch_size must be positive, got {patch_size}")
        for name, size in (("template_size", template_size), ("search_size", search_size)):
            if size <= 0 or size % patch_size:
                raise ValueError(f"{name} = {size} must be a positive multiple of patch_size = {patch_size}")
        ce_locations = tuple(int(i) for i in ce_locations)
        if len(set(ce_locations)) != len(ce_locations) or any(not 0 <= i < spec.depth for i in ce_locations):
            raise ValueError(
                f"ce_locations {ce_locations} must be distinct block indices in [0, {spec.depth}) of the {encoder} encoder"
            )
        _check_keep_ratio(ce_keep_ratio)
        if ce_template_range not in CE_TEMPLATE_RANGES:
            raise ValueError(f"unknown ce_template_range {ce_template_range!r}; choose from {CE_TEMPLATE_RANGES}")

        self.encoder = encoder
        self.embed_dim = spec.embed_dim
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.template_size = template_size
        self.search_size = search_size
        self.template_grid = template_size // patch_size
        self.search_grid = search_size // patch_size
        self.num_template = self.template_grid**2
        self.num_search = self.search_grid**2
        self.ce_locations = ce_locations
        self.ce_keep_ratio = float(ce_keep_ratio)
        self.ce_template_range = ce_template_range

        # One projection for both crops; its image size only matters for timm's own checks.
        self.patch_embed = patch_embedding(patch_size, in_chans, spec.embed_dim)
        # Learnable per-crop position tables (OSTrack's pos_embed_z / pos_embed_x); the sin-cos
        # start is only for trackers trained without pretraining: loading overwrites them.
        self.pos_embed_template = nn.Parameter(build_sincos2d_pos_embed([self.template_grid] * 2, spec.embed_dim)[None])
        self.pos_embed_search = nn.Parameter(build_sincos2d_pos_embed([self.search_grid] * 2, spec.embed_dim)[None])
        self.frame_embed = frame_embedding(spec.embed_dim)
        self.blocks = encoder_blocks(
            spec,
            mlp_ratio,
            drop_path_rate=drop_path_rate,
            block_layer=CandidateEliminationBlock,
            attn_layer=CandidateEliminationAttention,
        )
        self.norm = layer_norm(spec.embed_dim)
        self.box_head = CenterHead(spec.embed_dim, head_channels)
        probe_index = _template_probe_index(self.template_grid, ce_template_range)
        self.register_buffer("template_probe_index", probe_index, persistent=False)
        self._init_encoder_weights()

    def _init_encoder_weights(self) -> None:
        init_encoder_weights(self)

    # ------------------------------------------------------------------------- stages
    def embed(self, template: torch.Tensor, search: torch.Tensor) -> torch.Tensor:
        """template [B, C, T, T], search [B, C, S, S] -> tokens [B, Nz + Nx, D] (template first)."""
        self._check_inputs(template, search)
        template_tokens = self.patch_embed(template) + self.pos_embed_template + self.frame_embed[0]
        search_tokens = self.patch_embed(search) + self.pos_embed_search + self.frame_embed[1]
        return torch.cat((template_tokens, search_tokens), dim=1)

    def forward_backbone(
        self, template: torch.Tensor, search: torch.Tensor, ce_keep_ratio: float | None = None
    ) -> BackboneOutput:
        """Joint ViT over both crops with candidate elimination at ``ce_locations``."""
        keep_ratio = self.ce_keep_ratio if ce_keep_ratio is None else float(ce_keep_ratio)
        _check_keep_ratio(keep_ratio)
        x = self.embed(template, search)
        batch = x.shape[0]
        search_index = torch.arange(self.num_search, device=x.device).expand(batch, -1)
        kept_per_ce_block: list[int] = []
        for i, block in enumerate(self.blocks):
            num_remaining = x.shape[1] - self.num_template
            # OSTrack's count: ceil of the ratio times the tokens still there.
            num_keep = math.ceil(keep_ratio * num_remaining)
            if i in self.ce_locations and num_keep < num_remaining:
                x, kept = block.forward_eliminating(x, self.num_template, self.template_probe_index, num_keep)
                search_index = search_index.gather(1, kept)
            else:
                x = block(x)
            if i in self.ce_locations:
                kept_per_ce_block.append(x.shape[1] - self.num_template)
        x = self.norm(x)
        return BackboneOutput(x[:, self.num_template :], search_index, kept_per_ce_block)

    def restore_search_tokens(self, search_tokens: torch.Tensor, search_index: torch.Tensor) -> torch.Tensor:
        """Kept tokens [B, n, D] at grid positions [B, n] -> full grid [B, Nx, D], eliminated cells zero."""
        batch, count, dim = search_tokens.shape
        if tuple(search_index.shape) != (batch, count):
            raise ValueError(f"search_index {tuple(search_index.shape)} must be [B, n] = {(batch, count)}")
        if count == self.num_search:  # nothing was eliminated, so the order is still the grid's
            return search_tokens
        full = search_tokens.new_zeros(batch, self.num_search, dim)
        return full.scatter(1, search_index[..., None].expand(-1, -1, dim), search_tokens)

    def forward_head(self, search_tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Full-grid search tokens [B, Nx, D] -> score/size/offset maps and decoded boxes."""
        batch = search_tokens.shape[0]
        feature_map = search_tokens.transpose(1, 2).reshape(batch, self.embed_dim, self.search_grid, self.search_grid)
        score_map, size_map, offset_map = self.box_head(feature_map)
        return {
            "score_map": score_map,
            "size_map": size_map,
            "offset_map": offset_map,
            "pred_boxes": decode_boxes(score_map, size_map, offset_map),
        }

    decode_boxes = staticmethod(decode_boxes)

    def forward(self, template: torch.Tensor, search: torch.Tensor, ce_keep_ratio: float | None = None) -> dict[str, Any]:
        """template [B, 3, T, T], search [B, 3, S, S] -> dict with

        score_map [B, 1, Hf, Wf] (probabilities), size_map [B, 2, Hf, Wf], offset_map [B, 2, Hf, Wf],
        pred_boxes [B, 4] (cx, cy, w, h) normalised to the search crop, kept_search_tokens (int,
        search tokens left after the last CE block), kept_per_ce_block (list of ints) and
        search_index [B, n] (grid positions of the kept tokens).
        ``ce_keep_ratio``: None = the constructor's value; 1.0 = no elimination.
        """
        backbone = self.forward_backbone(template, search, ce_keep_ratio)
        outputs: dict[str, Any] = self.forward_head(self.restore_search_tokens(backbone.search_tokens, backbone.search_index))
        outputs["kept_search_tokens"] = backbone.search_tokens.shape[1]
        outputs["kept_per_ce_block"] = backbone.kept_per_ce_block
        outputs["search_index"] = backbone.search_index
        return outputs

    # ------------------------------------------------------------------------ helpers
    def _check_inputs(self, template: torch.Tensor, search: torch.Tensor) -> None:
        expected = {"template": self.template_size, "search": self.search_size}
        for name, images in (("template", template), ("search", search)):
            side = expected[name]
            if images.dim() != 4 or tuple(images.shape[1:]) != (self.in_chans, side, side):
                raise ValueError(f"{name} must be [B, {self.in_chans}, {side}, {side}], got {tuple(images.shape)}")
        if template.shape[0] != search.shape[0]:
            raise ValueError(f"template batch {template.shape[0]} != search batch {search.shape[0]}")

    # What load_pretrained_encoder needs to know about a downstream model.
    def encoder_keys(self) -> list[str]:
        """State-dict keys that come from the pretraining encoder (everything but the head)."""
        return [key for key in self.state_dict() if not key.startswith(HEAD_PREFIX)]

    def fresh_keys(self) -> list[str]:
        """State-dict keys that are new in the tracker (the head), never in a pretraining checkpoint."""
        return [key for key in self.state_dict() if key.startswith(HEAD_PREFIX)]

    def position_grids(self) -> dict[str, int]:
        """Position tables filled from the pretraining ``pos_embed`` -> their square grid side."""
        return {"pos_embed_template": self.template_grid, "pos_embed_search": self.search_grid}


def _check_keep_ratio(ratio: float) -> None:
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"ce_keep_ratio must be in (0, 1], got {ratio}")


def _template_probe_index(grid: int, template_range: str) -> torch.Tensor:
    """Row-major positions [Q] of the template tokens whose attention ranks the search tokens."""
    if template_range == "all":
        return torch.arange(grid * grid)
    # OSTrack's CTR_POINT cell is (G-1)//2 (3 of 8, 5 of 12, 3 of 7, 6 of 14); CTR_REC spans
    # (G-1)//2 .. G//2, the centre 2x2 of an even grid.
    first = (grid - 1) // 2
    last = first if template_range == "ctr_point" else grid // 2
    rows = torch.arange(first, last + 1)
    return (rows[:, None] * grid + rows[None, :]).flatten()


# ----------------------------------------------------------------- loading a checkpoint
def droptrack_from_checkpoint(
    checkpoint: str | Path | Mapping[str, Any], template_size: int, search_size: int, **kwargs: Any
) -> tuple[DropTrack, LoadReport]:
    """Build a tracker matching a pretraining checkpoint (a path or its loaded dict, with its
    config) and load its encoder; ``kwargs`` pass through to DropTrack."""
    source = "the given state dict"
    if isinstance(checkpoint, (str, Path)):
        source, checkpoint = str(checkpoint), load_checkpoint(checkpoint)
    model = from_pretraining_config(DropTrack, checkpoint, template_size=template_size, search_size=search_size, **kwargs)
    return model, load_pretrained_encoder(model, checkpoint, source=source)
