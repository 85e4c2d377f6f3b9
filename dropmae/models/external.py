"""Pretrained encoders from outside the project: the authors' DropMAE / TwinMAE and MAE training
snapshots, timm ViT weights, and our own checkpoints, turned into our pretraining checkpoint format.

Formats (:data:`EXTERNAL_FORMATS`):

- ``dropmae``: our model.pth / checkpoint-*.pth ({"model": state dict, "config": {...}}).
- ``mae_snapshot``: what MAE-style training code saves, the authors' DropMAE releases included:
  {"model": state dict, "optimizer", "epoch", "scaler", "args": argparse.Namespace} (MAE's own
  released encoders are {"model": state dict} alone). The position table is [1, 1 + N, D] with a
  class-token slot; DropMAE adds one frame embedding per frame, ``temporal_pos_embed_x`` (the
  first frame of the pair in the authors' forward) and ``temporal_pos_embed_z`` (the second).
- ``timm``: a timm ViT state dict (``.pth`` / ``.bin`` / ``.safetensors``, or under "state_dict"
  as timm's train.py saves it): ``cls_token``, a learned [1, 1 + N, D] table, ``head`` and, for
  global-pool models, ``fc_norm``.

Every file is read with ``torch.load(weights_only=True)``; the only class admitted besides plain
data is ``argparse.Namespace`` (the authors' ``args``), through torch's safe-globals allowlist.

The result is a checkpoint dict our loaders take unchanged
(:func:`~dropmae.tracking.model.droptrack_from_checkpoint`,
:func:`~dropmae.segmentation.model.dropseg_from_checkpoint`,
:func:`~dropmae.segmentation.probe.frame_encoder_from_checkpoint`): encoder weights under
"model" with the position table at the checkpoint's own grid (the downstream models resample
it to their grids with timm's resampler) and {"model": {encoder, patch_size, img_size}} under
"config".
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from dropmae.models.encoder import DECODER_PREFIXES, CheckpointMismatchError
from dropmae.models.specs import ENCODER_SPECS, EXTERNAL_FORMATS

# Our encoder's state-dict keys besides the blocks (DropMAE.encoder_state_dict()).
ENCODER_TOP_KEYS = ("patch_embed.proj.weight", "patch_embed.proj.bias", "pos_embed", "frame_embed",
                    "norm.weight", "norm.bias")
BLOCK_KEYS = ("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
              "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
              "mlp.fc2.weight", "mlp.fc2.bias")
# The authors' frame embeddings -> our frame_embed row (x: the first frame of a pair, z: the second).
AUTHORS_FRAME_EMBEDDINGS = {"temporal_pos_embed_x": 0, "temporal_pos_embed_z": 1}
# Keys that are not the encoder's and are left out on purpose: classifier heads and the
# pretraining decoder (DropMAE's decoder frame embeddings start with "decoder_" too).
CLASSIFIER_PREFIXES = ("head.", "head_dist.", "fc_norm.")


class ExternalCheckpointError(CheckpointMismatchError):
    """An external checkpoint that cannot be read or mapped onto our encoder; the message names the file and key."""


@dataclass
class ExternalLoadReport:
    """What :func:`load_external_encoder` did with a file."""

    source: str
    format: str
    encoder: str = ""
    patch_size: int = 0
    img_size: int = 0
    conversions: list[str] = field(default_factory=list)  # every change made to a key or value, in words
    dropped: list[str] = field(default_factory=list)  # keys left out on purpose (decoder, class token, head)
    missing: list[str] = field(default_factory=list)  # encoder keys the file lacks (loading fails when any)
    unexpected: list[str] = field(default_factory=list)  # keys neither mapped nor dropped

    def summary(self) -> str:
        return (f"{self.source} ({self.format}): {self.encoder} encoder, patch {self.patch_size}, "
                f"{self.img_size} px; {len(self.dropped)} keys dropped; missing {self.missing or 'none'}; "
                f"unexpected {self.unexpected or 'none'}; " + "; ".join(self.conversions))

    def record(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------ reading
def read_checkpoint_file(path: str | Path) -> Any:
    """A checkpoint file's contents: safetensors, or torch.load with weights_only=True that admits
    argparse.Namespace (MAE-style snapshots pickle their command-line args) and nothing else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch names the refused class; say which file and why we refuse it
        raise ExternalCheckpointError(
            f"{path}: cannot be read as weights only ({type(error).__name__}: {str(error).splitlines()[0]}); "
            "only tensors, plain Python data and argparse.Namespace are accepted"
        ) from None


def detect_format(contents: Any, source: str = "the checkpoint") -> str:
    """Which of :data:`EXTERNAL_FORMATS` a loaded file is, from its keys."""
    if not isinstance(contents, Mapping):
        raise ExternalCheckpointError(f"{source}: expected a dict, got {type(contents).__name__}")
    model = contents.get("model")
    if isinstance(model, Mapping):
        config = contents.get("config")
        if isinstance(config, Mapping) and isinstance(config.get("model"), Mapping):
            return "dropmae"
        return "mae_snapshot"
    if isinstance(contents.get("state_dict"), Mapping):  # timm's train.py checkpoints
        return "timm"
    if contents and all(isinstance(value, torch.Tensor) for value in contents.values()):
        if "frame_embed" in contents:
            raise ExternalCheckpointError(f"{source}: a bare state dict of our encoder has no config; "
                                          "use the model.pth of the pretraining run")
        return "timm"
    raise ExternalCheckpointError(
        f"{source}: not a known checkpoint layout (top-level keys {sorted(map(str, contents))[:8]}); "
        f"expected one of {EXTERNAL_FORMATS}"
    )


# ------------------------------------------------------------------------------ mapping
def _encoder_name(embed_dim: int, depth: int, source: str) -> str:
    """Our encoder size with this width and depth (heads cannot be read from the weights: the size fixes them)."""
    for name, spec in ENCODER_SPECS.items():
        if (spec.embed_dim, spec.depth) == (embed_dim, depth):
            return name
    known = {name: (spec.embed_dim, spec.depth) for name, spec in ENCODER_SPECS.items()}
    raise ExternalCheckpointError(f"{source}: no encoder size has width {embed_dim} and depth {depth}; known {known}")


def _strip_prefix(state: dict[str, torch.Tensor], report: ExternalLoadReport) -> dict[str, torch.Tensor]:
    """DDP-wrapped models save every key under "module."."""
    if state and all(key.startswith("module.") for key in state):
        report.conversions.append("'module.' prefix removed from every key")
        return {key[len("module."):]: value for key, value in state.items()}
    return state


def _position_table_without_prefix(table: torch.Tensor, num_prefix: int, report: ExternalLoadReport) -> torch.Tensor:
    """[1, prefix + G*G, D] -> [1, G*G, D]: the class-token slot (when the model has one) is dropped."""
    if table.dim() != 3 or table.shape[0] != 1:
        raise ExternalCheckpointError(f"{report.source}: pos_embed {tuple(table.shape)} is not [1, L, D]")
    length = table.shape[1]
    is_square = math.isqrt(length) ** 2 == length
    if num_prefix == 0 and not is_square and math.isqrt(length - 1) ** 2 == length - 1:
        num_prefix = 1  # MAE keeps the class slot in its fixed table even where no cls_token is saved
    elif num_prefix and is_square and math.isqrt(length - num_prefix) ** 2 != length - num_prefix:
        num_prefix = 0  # timm's no_embed_class models: the class token has no position slot
    side = math.isqrt(length - num_prefix)
    if side * side != length - num_prefix:
        raise ExternalCheckpointError(f"{report.source}: pos_embed {tuple(table.shape)} with {num_prefix} prefix "
                                      "token(s) is not a square grid")
    if num_prefix:
        report.conversions.append(f"pos_embed: {num_prefix} class-token slot(s) dropped, [1, {length}, "
                                  f"{table.shape[2]}] -> [1, {side * side}, {table.shape[2]}] ({side}x{side} grid)")
    return table[:, num_prefix:].float()


def _map_external_state(state: Mapping[str, torch.Tensor], report: ExternalLoadReport) -> dict[str, torch.Tensor]:
    """An MAE-style or timm state dict -> our encoder's keys (see the module docstring)."""
    source = report.source
    state = _strip_prefix(dict(state), report)
    for key in ("patch_embed.proj.weight", "pos_embed"):
        if key not in state:
            raise ExternalCheckpointError(f"{source}: no {key!r}; not a ViT encoder checkpoint")
    num_prefix = int(state["cls_token"].shape[1]) if "cls_token" in state else 0
    num_prefix += int(state["reg_token"].shape[1]) if "reg_token" in state else 0
    mapped: dict[str, torch.Tensor] = {"pos_embed": _position_table_without_prefix(state["pos_embed"], num_prefix,
                                                                                 report)}
    embed_dim = state["patch_embed.proj.weight"].shape[0]
    frame_rows: dict[int, torch.Tensor] = {}
    for key, value in state.items():
        if key == "pos_embed":
            continue
        if key in ("cls_token", "reg_token") or key.startswith(DECODER_PREFIXES) or key.startswith(CLASSIFIER_PREFIXES):
            report.dropped.append(key)
        elif key in AUTHORS_FRAME_EMBEDDINGS:
            if value.numel() != embed_dim:
                raise ExternalCheckpointError(f"{source}: {key} has shape {tuple(value.shape)}, expected {embed_dim} values")
            frame_rows[AUTHORS_FRAME_EMBEDDINGS[key]] = value.reshape(embed_dim).float()
        elif key in ENCODER_TOP_KEYS or key.startswith("blocks."):
            mapped[key] = value
        else:
            report.unexpected.append(key)
    if frame_rows:
        absent = [name for name, row in AUTHORS_FRAME_EMBEDDINGS.items() if row not in frame_rows]
        if absent:
            raise ExternalCheckpointError(f"{source}: has one frame embedding but lacks {absent}")
        mapped["frame_embed"] = torch.stack([frame_rows[0], frame_rows[1]])
        report.conversions.append("frame_embed[0] <- temporal_pos_embed_x (first frame), "
                                  "frame_embed[1] <- temporal_pos_embed_z (second frame)")
    else:
        mapped["frame_embed"] = torch.zeros(2, embed_dim)
        report.conversions.append("no frame embeddings in the file: frame_embed set to zeros (both frames)")
    if "norm.weight" not in state and "fc_norm.weight" in state:
        # Global-pool timm models normalise after pooling only; that norm is the closest final norm.
        mapped["norm.weight"], mapped["norm.bias"] = state["fc_norm.weight"], state["fc_norm.bias"]
        report.dropped = [key for key in report.dropped if not key.startswith("fc_norm.")]
        report.conversions.append("norm <- fc_norm (the model normalises after pooling only)")
    return mapped


def _check_encoder_keys(mapped: Mapping[str, torch.Tensor], report: ExternalLoadReport) -> None:
    """Infer the encoder size from the weights, then require every key of it with its shape."""
    source = report.source
    weight = mapped["patch_embed.proj.weight"]
    if weight.dim() != 4 or weight.shape[1] != 3 or weight.shape[2] != weight.shape[3]:
        raise ExternalCheckpointError(f"{source}: patch_embed.proj.weight {tuple(weight.shape)} is not [D, 3, p, p]")
    embed_dim, patch_size = weight.shape[0], weight.shape[-1]
    block_ids = sorted({int(match.group(1)) for key in mapped if (match := re.match(r"blocks\.(\d+)\.", key))})
    depth = block_ids[-1] + 1 if block_ids else 0
    report.encoder = _encoder_name(embed_dim, depth, source)
    report.patch_size = int(patch_size)
    grid = math.isqrt(mapped["pos_embed"].shape[1])
    report.img_size = grid * report.patch_size
    mlp = 4 * embed_dim  # our blocks' mlp_ratio
    expected = {"patch_embed.proj.weight": (embed_dim, 3, patch_size, patch_size), "patch_embed.proj.bias": (embed_dim,),
                "pos_embed": (1, grid * grid, embed_dim), "frame_embed": (2, embed_dim),
                "norm.weight": (embed_dim,), "norm.bias": (embed_dim,)}
    block_shapes = {"norm1.weight": (embed_dim,), "norm1.bias": (embed_dim,), "attn.qkv.weight": (3 * embed_dim, embed_dim),
                    "attn.qkv.bias": (3 * embed_dim,), "attn.proj.weight": (embed_dim, embed_dim),
                    "attn.proj.bias": (embed_dim,), "norm2.weight": (embed_dim,), "norm2.bias": (embed_dim,),
                    "mlp.fc1.weight": (mlp, embed_dim), "mlp.fc1.bias": (mlp,), "mlp.fc2.weight": (embed_dim, mlp),
                    "mlp.fc2.bias": (embed_dim,)}
    for index in range(depth):
        expected.update({f"blocks.{index}.{name}": shape for name, shape in block_shapes.items()})
    report.missing = [key for key in expected if key not in mapped]
    extra_layers = [key for key in mapped if key not in expected]
    wrong_shapes = [f"{key} {tuple(mapped[key].shape)} (expected {shape})" for key, shape in expected.items()
                    if key in mapped and tuple(mapped[key].shape) != shape]
    if report.missing:
        raise ExternalCheckpointError(f"{source}: lacks encoder weights {report.missing[:10]}"
                                      + (f" and {len(report.missing) - 10} more" if len(report.missing) > 10 else ""))
    if wrong_shapes:
        raise ExternalCheckpointError(f"{source}: weights of the wrong shape for a {report.encoder} encoder: "
                                      + "; ".join(wrong_shapes[:10]))
    if extra_layers:  # e.g. layer scale or a qk norm: layers ours lacks, so its outputs would differ
        raise ExternalCheckpointError(f"{source}: encoder layers our ViT does not have: {extra_layers[:10]}")


def load_external_encoder(path: str | Path, format: str | None = None) -> tuple[dict[str, Any], ExternalLoadReport]:
    """Read ``path`` (format detected from its keys when ``format`` is None) and return a
    checkpoint dict in our format ({"model": encoder weights, "config": {"model": ...}}) with the report.

    Raises ExternalCheckpointError naming the file and key on a missing encoder weight, a wrong
    shape, an encoder layer our ViT lacks, or a layout that is none of :data:`EXTERNAL_FORMATS`.
    """
    source = str(path)
    contents = read_checkpoint_file(path)
    detected = detect_format(contents, source)
    format = format or detected
    if format not in EXTERNAL_FORMATS:
        raise ExternalCheckpointError(f"{source}: unknown format {format!r}; choose from {EXTERNAL_FORMATS}")
    if format != detected:
        raise ExternalCheckpointError(f"{source}: named format {format!r} but its keys are those of {detected!r}")
    report = ExternalLoadReport(source=source, format=format)
    if format == "dropmae":
        model_section = contents["config"]["model"]
        state = {k: v for k, v in contents["model"].items() if not k.startswith(DECODER_PREFIXES)}
        report.dropped = [k for k in contents["model"] if k.startswith(DECODER_PREFIXES)]
        _check_encoder_keys(state, report)
        if report.encoder != model_section.get("encoder") or report.patch_size != int(model_section.get("patch_size", 0)):
            raise ExternalCheckpointError(f"{source}: weights are a {report.encoder} / patch {report.patch_size} "
                                          f"encoder but config['model'] says {dict(model_section)}")
        return {"model": state, "config": contents["config"]}, report
    state = contents["model"] if format == "mae_snapshot" else contents.get("state_dict", contents)
    not_tensors = [key for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise ExternalCheckpointError(f"{source}: non-tensor entries in the state dict: {not_tensors[:5]}")
    mapped = _map_external_state(state, report)
    _check_encoder_keys(mapped, report)
    config = {"model": {"encoder": report.encoder, "patch_size": report.patch_size, "img_size": report.img_size}}
    return {"model": mapped, "config": config, "external": report.record()}, report
