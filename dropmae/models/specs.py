"""Model sizes and modes by name, as plain data (no torch): config validates its keys against
these without importing a model. Users: :mod:`dropmae.models.encoder` (the sizes it builds),
:mod:`dropmae.models.dropmae` (the masking modes) and :mod:`dropmae.config`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EncoderSpec:
    embed_dim: int
    depth: int
    num_heads: int


# ViT encoder sizes by name; "micro" is a laptop-sized model for the demo and the tests.
ENCODER_SPECS: dict[str, EncoderSpec] = {
    "micro": EncoderSpec(embed_dim=96, depth=4, num_heads=3),
    "tiny": EncoderSpec(embed_dim=192, depth=12, num_heads=3),
    "small": EncoderSpec(embed_dim=384, depth=12, num_heads=6),
    "base": EncoderSpec(embed_dim=768, depth=12, num_heads=12),
    "large": EncoderSpec(embed_dim=1024, depth=24, num_heads=16),
}

# Layouts of pretrained encoder checkpoints from outside the DAG (dropmae.models.external).
EXTERNAL_FORMATS = ("dropmae", "mae_snapshot", "timm")

# How DropMAE masks the 2N tokens of a pair: over both frames together, or per frame.
MASKING_MODES = ("joint", "per_frame")

# ASAD's implementation: the Triton kernels on CUDA when Triton imports (auto), the torch path
# (the CPU path and the reference), or Triton always. Same distribution of the draw.
ASAD_KERNELS = ("auto", "torch", "triton")
