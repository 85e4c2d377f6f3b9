"""The ViT encoder that pretraining hands to the downstream tasks, built and loaded in one place.

Users: :class:`~dropmae.models.dropmae.DropMAE` (pretraining) builds its encoder here, and
:class:`~dropmae.tracking.model.DropTrack` and :class:`~dropmae.segmentation.model.DropSeg`
build theirs the same way and fill it from a pretraining checkpoint with
:func:`load_pretrained_encoder`. All three keep the encoder's parameters on the model itself,
under the pretraining names (``patch_embed``, ``frame_embed``, ``blocks``, ``norm`` and a
position table), so a checkpoint's keys copy across unchanged.

Everything here takes tensors and already-loaded dicts: reading checkpoint files is the
engine's job (:func:`dropmae.engine.checkpoint.load_checkpoint`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
import torch.nn as nn
from timm.layers import PatchEmbed, resample_abs_pos_embed
from timm.models.vision_transformer import Attention, Block

from dropmae.models.specs import ENCODER_SPECS, EncoderSpec

# Pretraining keys that belong to the decoder and are never loaded into a downstream model.
DECODER_PREFIXES = ("decoder_", "mask_token")


# ------------------------------------------------------------------------------ building
def encoder_spec(name: str) -> EncoderSpec:
    """The size of the encoder called ``name``; an unknown name is an error listing the known ones."""
    if name not in ENCODER_SPECS:
        raise ValueError(f"unknown encoder {name!r}; choose from {sorted(ENCODER_SPECS)}")
    return ENCODER_SPECS[name]


def layer_norm(dim: int, **factory_kwargs) -> nn.LayerNorm:
    """MAE's (and timm's ViT) layer norm: eps 1e-6."""
    return nn.LayerNorm(dim, eps=1e-6, **factory_kwargs)


def patch_embedding(patch_size: int, in_chans: int, embed_dim: int, img_size: int | None = None) -> PatchEmbed:
    """timm's patch projection; ``img_size`` None takes frames of any size (multiples of the patch)."""
    if img_size is None:
        return PatchEmbed(None, patch_size, in_chans, embed_dim, strict_img_size=False)
    return PatchEmbed(img_size, patch_size, in_chans, embed_dim)


def frame_embedding(embed_dim: int) -> nn.Parameter:
    """One learned embedding per frame of a pair [2, D] (row 0: the earlier frame), zero until initialised."""
    return nn.Parameter(torch.zeros(2, embed_dim))


def transformer_blocks(
    embed_dim: int,
    depth: int,
    num_heads: int,
    mlp_ratio: float = 4.0,
    *,
    drop_path_rate: float = 0.0,
    block_layer: type[Block] = Block,
    attn_layer: type[Attention] = Attention,
) -> nn.ModuleList:
    """``depth`` pre-norm ViT blocks (qkv bias, eps-1e-6 layer norms), stochastic depth rising
    linearly from 0 to ``drop_path_rate`` over the blocks.

    ``block_layer`` / ``attn_layer``: timm Block / Attention subclasses with the same state-dict
    keys (the tracker's candidate elimination, the decoder's ASAD).
    """
    drop_path = torch.linspace(0, drop_path_rate, depth).tolist()  # stochastic depth decay rule
    return nn.ModuleList(
        block_layer(
            embed_dim,
            num_heads,
            mlp_ratio,
            qkv_bias=True,
            drop_path=drop_path[i],
            norm_layer=layer_norm,
            attn_layer=attn_layer,
        )
        for i in range(depth)
    )


def encoder_blocks(spec: EncoderSpec, mlp_ratio: float = 4.0, **kwargs: Any) -> nn.ModuleList:
    """The encoder's blocks for ``spec`` (see :func:`transformer_blocks` for ``kwargs``)."""
    return transformer_blocks(spec.embed_dim, spec.depth, spec.num_heads, mlp_ratio, **kwargs)


def init_vit_weights(module: nn.Module) -> None:
    """MAE's initialisation of every linear layer (xavier uniform, zero bias) and layer norm (1, 0) below ``module``."""
    for child in module.modules():
        if isinstance(child, nn.Linear):
            nn.init.xavier_uniform_(child.weight)
            if child.bias is not None:
                nn.init.zeros_(child.bias)
        elif isinstance(child, nn.LayerNorm):
            nn.init.ones_(child.weight)
            nn.init.zeros_(child.bias)


def init_encoder_weights(model: nn.Module, *embeddings: nn.Parameter, layers: nn.Module | None = None) -> None:
    """MAE's encoder initialisation: the patch projection like a linear layer, ``frame_embed`` and
    the further ``embeddings`` normal(0.02), then :func:`init_vit_weights` over ``layers``
    (default ``model.blocks``). The order of the draws is part of what a seed reproduces.

    ``model`` has ``patch_embed``, ``frame_embed`` and ``blocks`` (DropMAE, DropTrack, DropSeg).
    """
    weight = model.patch_embed.proj.weight
    nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
    for parameter in (model.frame_embed, *embeddings):
        nn.init.normal_(parameter, std=0.02)
    init_vit_weights(model.blocks if layers is None else layers)


def resample_position_table(table: torch.Tensor, rows: int, cols: int | None = None) -> torch.Tensor:
    """Square position table [1, G*G, D] -> [1, rows*cols, D] (``cols`` None: square), bicubic
    with align_corners=False, computed in float32 and returned in the table's dtype.

    timm's resampler with antialias off: its default (antialias on) gives other numbers, and ours
    were computed without it. For float32 and bfloat16 tables it matches the plain
    ``F.interpolate`` formula bit for bit (tested); at the table's own grid it returns the table.
    """
    cols = rows if cols is None else cols
    length = table.shape[-2]
    side = math.isqrt(length)
    if table.dim() != 3 or table.shape[0] != 1 or side * side != length:
        raise CheckpointMismatchError(f"pos_embed {tuple(table.shape)} is not a square grid table [1, G*G, D]")
    return resample_abs_pos_embed(table, [rows, cols], [side, side], num_prefix_tokens=0, antialias=False)


# ------------------------------------------------------------------------------- loading
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


def _state_dict_of(checkpoint: Mapping[str, Any], source: str) -> dict[str, torch.Tensor]:
    """The weights of a training checkpoint (under "model") or a bare state dict."""
    if not isinstance(checkpoint, Mapping):
        raise CheckpointMismatchError(f"{source}: expected a dict, got {type(checkpoint).__name__}")
    state = checkpoint.get("model", checkpoint)
    if not isinstance(state, Mapping):
        raise CheckpointMismatchError(f"{source}: 'model' must be a state dict, got {type(state).__name__}")
    not_tensors = [key for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise CheckpointMismatchError(f"{source}: not a state dict (non-tensor entries {not_tensors[:5]})")
    return dict(state)


def load_pretrained_encoder(
    model: nn.Module,
    checkpoint: Mapping[str, Any],
    *,
    strict_encoder: bool = True,
    source: str = "the given state dict",
) -> LoadReport:
    """Initialise ``model``'s encoder from a DropMAE / TwinMAE pretraining checkpoint.

    ``model``: a downstream model (DropTrack, DropSeg) with ``encoder``, ``patch_size``,
    ``embed_dim`` and the methods ``encoder_keys()`` (keys that must come from the checkpoint),
    ``fresh_keys()`` (new keys, never loaded) and ``position_grids()`` ({table name: grid side}).
    ``checkpoint``: a loaded model.pth / checkpoint-last.pth dict (weights under "model") or a
    bare state dict; ``source`` names it in errors. Decoder keys are dropped; patch_embed /
    blocks / norm / frame_embed are copied; the pretraining ``pos_embed`` is resampled to every
    table of ``position_grids()`` (DropTrack: the template and search grids). Raises
    CheckpointMismatchError when shapes differ, and (strict_encoder) when an encoder weight is
    missing; otherwise missing keys keep their initial values and are listed in ``report.missing``.
    """
    state = _state_dict_of(checkpoint, source)
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
                new_values[name] = resample_position_table(value, grid)
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


def pretraining_model_section(config_or_checkpoint: Mapping[str, Any]) -> Mapping[str, Any]:
    """The "model" section (with "encoder" and "patch_size") of a pretraining run's config dict,
    or of a checkpoint dict holding that config under "config"."""
    source = "the given config"
    if not isinstance(config_or_checkpoint, Mapping):
        raise TypeError(f"{source}: expected a config or checkpoint dict, got {type(config_or_checkpoint).__name__}")
    config = config_or_checkpoint.get("config", config_or_checkpoint)
    section = config.get("model") if isinstance(config, Mapping) else None
    if not isinstance(section, Mapping) or "encoder" not in section:
        raise ValueError(
            f"{source}: no config['model'] with an 'encoder' (a checkpoint without a config cannot say its encoder; "
            "build the model with encoder=... and patch_size=... directly)"
        )
    if "patch_size" not in section:
        raise ValueError(f"{source}: config['model'] has no 'patch_size'")
    return section


DownstreamModel = TypeVar("DownstreamModel", bound=nn.Module)


def from_pretraining_config(
    model_class: type[DownstreamModel], config_or_checkpoint: Mapping[str, Any], **kwargs: Any
) -> DownstreamModel:
    """A ``model_class`` (DropTrack, DropSeg) whose encoder (size name and patch size) matches a pretraining run.

    ``config_or_checkpoint``: the run's config dict (with a "model" section) or a checkpoint dict
    holding it under "config". ``kwargs`` pass through to ``model_class``; an ``encoder`` or
    ``patch_size`` among them must agree with the run's.
    """
    section = pretraining_model_section(config_or_checkpoint)
    for key in ("encoder", "patch_size"):
        if key in kwargs and kwargs[key] != section[key]:
            raise ValueError(f"{key}={kwargs[key]!r} contradicts the pretraining config's model.{key}={section[key]!r}")
        kwargs.pop(key, None)
    return model_class(encoder=section["encoder"], patch_size=int(section["patch_size"]), **kwargs)
