"""Our encoder as a timm ViT: a state dict that ``timm.create_model`` loads as pretrained weights.

The exported model is timm's ``VisionTransformer`` with ``class_token=False, global_pool="avg",
num_classes=0``: no class token, so the patch tokens attend exactly as in our encoder; the fixed
position table with frame 0's embedding folded in (a single image is the first frame of a pair,
as the probe and the tracker's template see it); our final norm becomes timm's ``fc_norm``
(a global-pool timm ViT normalises after pooling, so ``forward_features`` gives our tokens before
the final norm, and the model's output is our norm applied to the mean token).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from dropmae.models.external import load_external_encoder
from dropmae.models.specs import ENCODER_SPECS

# Our encoder sizes by the timm ViT of the same width, depth and heads.
TIMM_SIZE_NAMES = {"tiny": "tiny", "small": "small", "base": "base", "large": "large"}
TIMM_CREATE_KWARGS = {"class_token": False, "global_pool": "avg", "num_classes": 0}


def timm_model_arguments(encoder: str, patch_size: int, img_size: int) -> tuple[str, dict[str, Any]]:
    """The timm model name and the keyword arguments that give our encoder's architecture.

    A size timm registers (tiny/small/base/large at the patch and image size) needs no size
    arguments; otherwise the nearest registered ViT is named and the differing sizes are passed.
    """
    import timm

    spec = ENCODER_SPECS[encoder]
    kwargs: dict[str, Any] = dict(TIMM_CREATE_KWARGS)
    size = TIMM_SIZE_NAMES.get(encoder)
    name = f"vit_{size}_patch{patch_size}_{img_size}" if size else ""
    if not size or not timm.is_model(name):
        name = f"vit_{size or 'tiny'}_patch16_224"
        kwargs.update(patch_size=patch_size, img_size=img_size)
        if not size:
            kwargs.update(embed_dim=spec.embed_dim, depth=spec.depth, num_heads=spec.num_heads)
    return name, kwargs


def timm_encoder_state(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A checkpoint in our format (:func:`~dropmae.models.external.load_external_encoder`) -> the
    state dict of a class-token-free, global-pool timm ViT."""
    weights = checkpoint["model"]
    state = {key: value.float().contiguous() for key, value in weights.items()
             if key.startswith(("patch_embed.", "blocks."))}
    state["pos_embed"] = (weights["pos_embed"].float() + weights["frame_embed"][0].float()).contiguous()
    state["fc_norm.weight"] = weights["norm.weight"].float().contiguous()
    state["fc_norm.bias"] = weights["norm.bias"].float().contiguous()
    return state


def export_timm_encoder(checkpoint_path: str | Path, output: str | Path, format: str | None = None) -> dict[str, Any]:
    """Write our encoder of ``checkpoint_path`` (any format of :mod:`dropmae.models.external`) as a
    timm safetensors file; returns the timm name, keyword arguments and the load report. The
    name and arguments are stored in the file's metadata as well."""
    from safetensors.torch import save_file

    checkpoint, report = load_external_encoder(checkpoint_path, format)
    section = checkpoint["config"]["model"]
    encoder, patch_size = section["encoder"], int(section["patch_size"])
    img_size = report.img_size  # the position table's own grid
    name, kwargs = timm_model_arguments(encoder, patch_size, img_size)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"timm_model": name, "timm_kwargs": json.dumps(kwargs), "source": str(checkpoint_path),
                "source_format": report.format, "frame_embedding": "frame 0 folded into pos_embed"}
    save_file(timm_encoder_state(checkpoint), str(output), metadata=metadata)
    return {"timm_model": name, "timm_kwargs": kwargs, "report": report}
