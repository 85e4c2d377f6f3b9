"""DropTrack: an OSTrack-style one-stream ViT tracker whose encoder is a DropMAE encoder.

Template and search crops are patch-embedded by one shared projection, given their own
learnable position tables (interpolated from the pretraining table) and the pretraining
frame embeddings (template = the earlier frame, row 0; search = the later frame, row 1),
concatenated and run jointly through the ViT blocks. Candidate elimination (OSTrack, ECCV
2022) drops search tokens the template's centre pays little attention to; the surviving
tokens are put back on the search grid (eliminated cells are zero) and a CenterNet-style
head predicts a score map, sub-cell offsets and box sizes.

Encoder parameters carry the pretraining model's names (``patch_embed``, ``blocks``,
``norm``, ``frame_embed``), so :func:`load_pretrained_encoder` copies them directly.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import PatchEmbed, build_sincos2d_pos_embed
from timm.models.vision_transformer import Attention, Block

from dropmae.engine.checkpoint import load_checkpoint
from dropmae.models.dropmae import ENCODER_SPECS

# Which template tokens' attention ranks the search tokens (OSTrack's CE_TEMPLATE_RANGE).
# "ctr_point": the one token at grid cell ((G-1)//2, (G-1)//2), as OSTrack/DropTrack's
#   CTR_POINT (8x8 -> (3, 3), 12x12 -> (5, 5)); their recipes use it.
# "ctr_rec": the centre 2x2 tokens of an even grid (1 token for an odd one), OSTrack's CTR_REC.
# "all": every template token.
CE_TEMPLATE_RANGES = ("ctr_point", "ctr_rec", "all")

# Pretraining keys that belong to the decoder and are never loaded into a tracker.
DECODER_PREFIXES = ("decoder_", "mask_token")
ENCODER_PREFIXES = ("patch_embed.", "blocks.", "norm.")
HEAD_PREFIX = "box_head."


def _layer_norm(dim: int, **factory_kwargs) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=1e-6, **factory_kwargs)


def init_encoder_weights(model: nn.Module) -> None:
    """The pretraining model's encoder initialisation, for a downstream model trained from scratch.

    ``model`` has ``patch_embed``, ``frame_embed`` and ``blocks`` (DropTrack, DropSeg).
    """
    weight = model.patch_embed.proj.weight
    nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
    nn.init.normal_(model.frame_embed, std=0.02)
    for module in model.blocks.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


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
            encoder: ViT size, a key of ``dropmae.models.dropmae.ENCODER_SPECS``.
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
        if encoder not in ENCODER_SPECS:
            raise ValueError(f"unknown encoder {encoder!r}; choose from {sorted(ENCODER_SPECS)}")
        if patch_size <= 0:
            raise ValueError(f"patch_size must be positive, got {patch_size}")
        for name, size in (("template_size", template_size), ("search_size", search_size)):
            if size <= 0 or size % patch_size:
                raise ValueError(f"{name} = {size} must be a positive multiple of patch_size = {patch_size}")
        spec = ENCODER_SPECS[encoder]
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
        self.patch_embed = PatchEmbed(None, patch_size, in_chans, spec.embed_dim, strict_img_size=False)
        # Learnable per-crop position tables (OSTrack's pos_embed_z / pos_embed_x); the sin-cos
        # start is only for trackers trained without pretraining: loading overwrites them.
        self.pos_embed_template = nn.Parameter(build_sincos2d_pos_embed([self.template_grid] * 2, spec.embed_dim)[None])
        self.pos_embed_search = nn.Parameter(build_sincos2d_pos_embed([self.search_grid] * 2, spec.embed_dim)[None])
        self.frame_embed = nn.Parameter(torch.zeros(2, spec.embed_dim))
        drop_path = torch.linspace(0, drop_path_rate, spec.depth).tolist()  # stochastic depth decay rule
        self.blocks = nn.ModuleList(
            CandidateEliminationBlock(
                spec.embed_dim,
                spec.num_heads,
                mlp_ratio,
                qkv_bias=True,
                drop_path=drop_path[i],
                norm_layer=_layer_norm,
                attn_layer=CandidateEliminationAttention,
            )
            for i in range(spec.depth)
        )
        self.norm = _layer_norm(spec.embed_dim)
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
class CheckpointMismatchError(ValueError):
    """A pretraining checkpoint lacks encoder weights a downstream model needs or has other shapes."""


@dataclass
class LoadReport:
    """What :func:`load_pretrained_encoder` did with each key."""

    loaded: list[str] = field(default_factory=list)  # model keys set from the checkpoint
    dropped: list[str] = field(default_factory=list)  # checkpoint decoder keys, ignored on purpose
    missing: list[str] = field(default_factory=list)  # model encoder keys the checkpoint lacked (non-strict only)
    unexpected: list[str] = field(default_factory=list)  # checkpoint keys neither used nor dropped
    fresh: list[str] = field(default_factory=list)  # new parts (a head): never in a pretraining checkpoint
    pretrain_grid: int = 0  # side of the pretraining position grid
    interpolated_to: dict[str, int] = field(default_factory=dict)  # position table -> its grid side

    def summary(self) -> str:
        return (
            f"loaded {len(self.loaded)} tensors, dropped {len(self.dropped)} decoder tensors, "
            f"{len(self.fresh)} fresh tensors, missing {self.missing or 'none'}, "
            f"unexpected {self.unexpected or 'none'}; position grid {self.pretrain_grid} -> {self.interpolated_to}"
        )


def _resolve_state_dict(checkpoint: str | Path | Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict, a name for error messages) from a path, a training checkpoint or a state dict."""
    source = "the given state dict"
    if isinstance(checkpoint, (str, Path)):
        source = str(checkpoint)
        checkpoint = load_checkpoint(checkpoint)
    if not isinstance(checkpoint, Mapping):
        raise CheckpointMismatchError(f"{source}: expected a dict, got {type(checkpoint).__name__}")
    state = checkpoint.get("model", checkpoint)
    if not isinstance(state, Mapping):
        raise CheckpointMismatchError(f"{source}: 'model' must be a state dict, got {type(state).__name__}")
    not_tensors = [key for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise CheckpointMismatchError(f"{source}: not a state dict (non-tensor entries {not_tensors[:5]})")
    return dict(state), source


def interpolate_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """Square position table [1, G*G, D] -> [1, grid*grid, D], bicubic (align_corners=False).

    At grid == G this is the identity.
    """
    length, dim = pos_embed.shape[-2:]
    side = math.isqrt(length)
    if pos_embed.dim() != 3 or pos_embed.shape[0] != 1 or side * side != length:
        raise CheckpointMismatchError(f"pos_embed {tuple(pos_embed.shape)} is not a square grid table [1, G*G, D]")
    table = pos_embed.float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
    table = F.interpolate(table, size=(grid, grid), mode="bicubic", align_corners=False)
    return table.permute(0, 2, 3, 1).reshape(1, grid * grid, dim).to(pos_embed.dtype)


def load_pretrained_encoder(
    model: nn.Module, checkpoint: str | Path | Mapping[str, Any], *, strict_encoder: bool = True
) -> LoadReport:
    """Initialise ``model``'s encoder from a DropMAE / TwinMAE pretraining checkpoint.

    ``model``: a downstream model (DropTrack, DropSeg) with ``encoder``, ``patch_size``,
    ``embed_dim`` and the methods ``encoder_keys()`` (keys that must come from the checkpoint),
    ``fresh_keys()`` (new keys, never loaded) and ``position_grids()`` ({table name: grid side}).
    ``checkpoint``: a model.pth / checkpoint-last.pth path, such a loaded dict (weights under
    "model") or a bare state dict. Decoder keys are dropped; patch_embed / blocks / norm /
    frame_embed are copied; the pretraining ``pos_embed`` is interpolated to every table of
    ``position_grids()`` (DropTrack: the template and search grids). Raises
    CheckpointMismatchError when shapes differ, and (strict_encoder) when an encoder weight is
    missing; otherwise missing keys keep their initial values and are listed in ``report.missing``.
    """
    state, source = _resolve_state_dict(checkpoint)
    model_state = model.state_dict()
    fresh = set(model.fresh_keys())
    report = LoadReport(fresh=[key for key in model_state if key in fresh])
    new_values: dict[str, torch.Tensor] = {}
    mismatched: list[str] = []

    for key, value in state.items():
        if key.startswith(DECODER_PREFIXES):
            report.dropped.append(key)
        elif key == "pos_embed":
            report.pretrain_grid = math.isqrt(value.shape[-2])
            if value.shape[-1] != model.embed_dim:
                mismatched.append(f"pos_embed: checkpoint {list(value.shape)} vs model width {model.embed_dim}")
                continue
            for name, grid in model.position_grids().items():
                new_values[name] = interpolate_pos_embed(value, grid)
                report.interpolated_to[name] = grid
        elif key in model_state and key not in fresh:
            if value.shape != model_state[key].shape:
                mismatched.append(f"{key}: checkpoint {list(value.shape)} vs model {list(model_state[key].shape)}")
            else:
                new_values[key] = value
        else:
            report.unexpected.append(key)

    if mismatched:
        raise CheckpointMismatchError(
            f"{source} does not fit this {model.encoder} / patch {model.patch_size} {type(model).__name__}: "
            + "; ".join(mismatched)
        )
    missing = [key for key in model.encoder_keys() if key not in new_values]
    if missing and strict_encoder:
        raise CheckpointMismatchError(f"{source} lacks encoder weights the {type(model).__name__} needs: {missing}")
    report.missing = missing
    result = model.load_state_dict(new_values, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys  # every key was checked against model_state
    report.loaded = list(new_values)
    return report


def _model_section(cfg_dict_or_state: str | Path | Mapping[str, Any]) -> Mapping[str, Any]:
    source = "the given config"
    if isinstance(cfg_dict_or_state, (str, Path)):
        source = str(cfg_dict_or_state)
        cfg_dict_or_state = load_checkpoint(cfg_dict_or_state)
    if not isinstance(cfg_dict_or_state, Mapping):
        raise TypeError(f"{source}: expected a config or checkpoint dict, got {type(cfg_dict_or_state).__name__}")
    config = cfg_dict_or_state.get("config", cfg_dict_or_state)
    section = config.get("model") if isinstance(config, Mapping) else None
    if not isinstance(section, Mapping) or "encoder" not in section:
        raise ValueError(
            f"{source}: no config['model'] with an 'encoder' (a checkpoint without a config cannot say its encoder; "
            "build the model with encoder=... and patch_size=... directly)"
        )
    if "patch_size" not in section:
        raise ValueError(f"{source}: config['model'] has no 'patch_size'")
    return section


def from_pretraining_config(
    cfg_dict_or_state: str | Path | Mapping[str, Any], template_size: int, search_size: int, **kwargs: Any
) -> DropTrack:
    """A DropTrack whose encoder (size name and patch size) matches a pretraining run.

    ``cfg_dict_or_state``: the run's config dict (with a "model" section), a checkpoint dict
    holding it under "config", or a checkpoint path. Other DropTrack arguments pass through.
    """
    section = _model_section(cfg_dict_or_state)
    for key in ("encoder", "patch_size"):
        if key in kwargs and kwargs[key] != section[key]:
            raise ValueError(f"{key}={kwargs[key]!r} contradicts the pretraining config's model.{key}={section[key]!r}")
        kwargs.pop(key, None)
    return DropTrack(
        encoder=section["encoder"],
        patch_size=int(section["patch_size"]),
        template_size=template_size,
        search_size=search_size,
        **kwargs,
    )


def droptrack_from_checkpoint(
    checkpoint: str | Path | Mapping[str, Any], template_size: int, search_size: int, **kwargs: Any
) -> tuple[DropTrack, LoadReport]:
    """Build a tracker matching a pretraining checkpoint (with its config) and load its encoder."""
    if isinstance(checkpoint, (str, Path)):
        checkpoint = load_checkpoint(checkpoint)
    model = from_pretraining_config(checkpoint, template_size, search_size, **kwargs)
    return model, load_pretrained_encoder(model, checkpoint)
