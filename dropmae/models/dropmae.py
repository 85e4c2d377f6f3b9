"""TwinMAE / DropMAE: a masked autoencoder over a pair of frames from one video.

Both frames share one fixed 2-D sin-cos position table; each frame adds its own learned
frame embedding (separate ones in the encoder and the decoder). Masking is MAE-style
random masking over the 2N concatenated tokens (jointly by default). The decoder sees
all 2N tokens and, for DropMAE, applies ASAD in every self-attention layer while
training. TwinMAE is the same model with ``asad_p = 0``.
"""

from __future__ import annotations

import importlib.util
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import build_sincos2d_pos_embed
from timm.models.vision_transformer import Attention

from dropmae.models.asad import asad_attention_bias, asad_drop_mask
from dropmae.models.encoder import (
    DECODER_PREFIXES,
    encoder_blocks,
    encoder_spec,
    frame_embedding,
    init_encoder_weights,
    layer_norm,
    patch_embedding,
    transformer_blocks,
)
from dropmae.models.specs import ASAD_KERNELS, MASKING_MODES

TRITON_AVAILABLE = importlib.util.find_spec("triton") is not None


def uses_triton_asad(kernel: str, device: torch.device) -> bool:
    """Whether ASAD runs the fused Triton kernels (dropmae.models.asad_triton) on ``device``.

    auto: on CUDA when Triton is installed (it ships with torch's Linux wheels); the torch path
    elsewhere. triton: on CUDA, or on the CPU under TRITON_INTERPRET=1 (tests); else an error.
    """
    if kernel == "torch":
        return False
    if kernel == "auto":
        return device.type == "cuda" and TRITON_AVAILABLE
    if kernel != "triton":
        raise ValueError(f"unknown ASAD kernel {kernel!r}; choose from {ASAD_KERNELS}")
    if not TRITON_AVAILABLE:
        raise RuntimeError("pretrain.asad_kernel is triton but Triton is not installed")
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(f"pretrain.asad_kernel is triton but the model runs on {device}: the Triton kernels "
                           "need a CUDA device (or TRITON_INTERPRET=1 on the CPU, for tests)")
    return True


class ASADAttention(Attention):
    """timm self-attention over a frame pair with Adaptive Spatial Attention Dropout.

    Same parameters (and state-dict keys) as timm's Attention. ASAD acts like dropout:
    only in training mode and only with p > 0; otherwise this *is* timm's (fused)
    attention, so a p = 0 decoder is numerically the TwinMAE decoder.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.tokens_per_frame = 0
        self.asad_p = 0.0
        self.asad_generator: torch.Generator | None = None
        self.asad_kernel = "auto"  # see uses_triton_asad
        # Set to a list to collect the attention probabilities (for analysis).
        self.attention_sink: list[torch.Tensor] | None = None

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        use_asad = self.training and self.asad_p > 0
        if not use_asad and self.attention_sink is None:
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        if attn_mask is not None or is_causal or self.gate is not None:
            raise NotImplementedError("ASADAttention supports plain self-attention only")
        batch, length, _ = x.shape
        qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.attention_sink is not None:  # analysis: explicit softmax so the probabilities can be kept
            logits = (q * self.scale) @ k.transpose(-2, -1)
            if use_asad:
                dropped = asad_drop_mask(logits, self.tokens_per_frame, self.asad_p, generator=self.asad_generator)
                logits = logits.masked_fill(dropped, float("-inf"))
            attention = logits.softmax(dim=-1)
            self.attention_sink.append(attention.detach())
            x = self.attn_drop(attention) @ v
        elif uses_triton_asad(self.asad_kernel, q.device):
            # The draw as a packed bitmask and attention that reads it: no [B, H, L, L] tensor.
            from dropmae.models.asad_triton import asad_drop_bitmask, bitmask_attention

            if self.training and self.attn_drop.p > 0:
                raise NotImplementedError("the Triton ASAD attention has no attention dropout; use asad_kernel torch")
            drop_bits = asad_drop_bitmask(q, k, self.tokens_per_frame, self.asad_p, scale=self.scale,
                                          generator=self.asad_generator)
            x = bitmask_attention(q, k, v, drop_bits, scale=self.scale)
        else:
            # The sampling needs the logits but no gradient through them; the attention itself
            # then runs fused, with dropped entries masked to -inf before its softmax.
            with torch.no_grad():
                logits = (q * self.scale) @ k.transpose(-2, -1)
                drop_bias = asad_attention_bias(logits, self.tokens_per_frame, self.asad_p, q.dtype,
                                                generator=self.asad_generator)
                del logits
            x = F.scaled_dot_product_attention(
                q, k, v, attn_mask=drop_bias, dropout_p=self.attn_drop.p if self.training else 0.0
            )
        x = x.transpose(1, 2).reshape(batch, length, self.attn_dim)
        x = self.norm(x)
        return self.proj_drop(self.proj(x))


class DropMAE(nn.Module):
    """Masked autoencoder over frame pairs; ``asad_p = 0`` gives TwinMAE."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        encoder: str = "base",
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        mask_ratio: float = 0.75,
        masking: str = "joint",
        norm_pix_loss: bool = True,
        asad_p: float = 0.0,
        asad_kernel: str = "auto",
    ) -> None:
        super().__init__()
        spec = encoder_spec(encoder)
        if masking not in MASKING_MODES:
            raise ValueError(f"unknown masking {masking!r}; choose from {MASKING_MODES}")
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.mask_ratio = mask_ratio
        self.masking = masking
        self.norm_pix_loss = norm_pix_loss

        # --- encoder
        self.patch_embed = patch_embedding(patch_size, in_chans, spec.embed_dim, img_size)
        self.grid_size = self.patch_embed.grid_size
        self.tokens_per_frame = self.patch_embed.num_patches
        # One fixed sin-cos table shared by both frames (timm's builder; any fixed 2-D
        # sin-cos layout is equivalent for a model trained with it).
        self.register_buffer("pos_embed", build_sincos2d_pos_embed(list(self.grid_size), spec.embed_dim)[None])
        self.frame_embed = frame_embedding(spec.embed_dim)
        self.blocks = encoder_blocks(spec, mlp_ratio)
        self.norm = layer_norm(spec.embed_dim)

        # --- decoder
        self.decoder_embed = nn.Linear(spec.embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.register_buffer(
            "decoder_pos_embed", build_sincos2d_pos_embed(list(self.grid_size), decoder_embed_dim)[None]
        )
        self.decoder_frame_embed = frame_embedding(decoder_embed_dim)
        self.decoder_blocks = transformer_blocks(
            decoder_embed_dim, decoder_depth, decoder_num_heads, mlp_ratio, attn_layer=ASADAttention
        )
        self.decoder_norm = layer_norm(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size**2 * in_chans)
        self.set_asad_p(asad_p)
        self.set_asad_kernel(asad_kernel)
        self._init_weights()

    # ------------------------------------------------------------------ setup
    def set_asad_p(self, p: float) -> None:
        """ASAD drop probability of every decoder layer (0 = TwinMAE)."""
        if not 0.0 <= p < 1.0:
            raise ValueError(f"asad_p must be in [0, 1), got {p}")
        self.asad_p = p
        for block in self.decoder_blocks:
            block.attn.tokens_per_frame = self.tokens_per_frame
            block.attn.asad_p = p

    def set_asad_kernel(self, kernel: str) -> None:
        """ASAD's implementation in every decoder layer: auto, torch or triton (same distribution)."""
        if kernel not in ASAD_KERNELS:
            raise ValueError(f"unknown ASAD kernel {kernel!r}; choose from {ASAD_KERNELS}")
        self.asad_kernel = kernel
        for block in self.decoder_blocks:
            block.attn.asad_kernel = kernel

    def _init_weights(self) -> None:
        # MAE's initialisation: patch projection like a linear layer, small embeddings, then
        # xavier linears and unit norms over the whole model, decoder included.
        init_encoder_weights(self, self.decoder_frame_embed, self.mask_token, layers=self)

    # ------------------------------------------------------------- patchify
    def patchify(self, frames: torch.Tensor) -> torch.Tensor:
        """[B, 2, C, H, W] -> [B, 2N, p*p*C] (row-major patches, frame 0 first)."""
        batch, num_frames, chans, height, width = frames.shape
        p = self.patch_size
        gh, gw = height // p, width // p
        x = frames.reshape(batch, num_frames, chans, gh, p, gw, p)
        x = torch.einsum("bfchpwq->bfhwpqc", x)
        return x.reshape(batch, num_frames * gh * gw, p * p * chans)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """[B, 2N, p*p*C] -> [B, 2, C, H, W]."""
        batch = patches.shape[0]
        p, chans = self.patch_size, self.in_chans
        gh, gw = self.grid_size
        x = patches.reshape(batch, 2, gh, gw, p, p, chans)
        x = torch.einsum("bfhwpqc->bfchpwq", x)
        return x.reshape(batch, 2, chans, gh * p, gw * p)

    # -------------------------------------------------------------- masking
    def random_masking(self, batch: int, mask_ratio: float, device: torch.device):
        """Choose visible tokens. Returns (ids_keep [B, K], mask [B, 2N] with 1 = masked, ids_restore [B, 2N])."""
        n = self.tokens_per_frame
        if self.masking == "joint":
            noise = torch.rand(batch, 2 * n, device=device)
            ids_shuffle = noise.argsort(dim=1)
            num_keep = int(2 * n * (1 - mask_ratio))
        else:  # per_frame: the same number of visible tokens in each frame
            noise = torch.rand(batch, 2, n, device=device)
            order = noise.argsort(dim=2) + torch.tensor([0, n], device=device)[None, :, None]
            keep_per_frame = int(n * (1 - mask_ratio))
            ids_shuffle = torch.cat((order[:, :, :keep_per_frame].flatten(1), order[:, :, keep_per_frame:].flatten(1)), 1)
            num_keep = 2 * keep_per_frame
        ids_restore = ids_shuffle.argsort(dim=1)
        mask = torch.ones(batch, 2 * n, device=device)
        mask[:, :num_keep] = 0
        mask = mask.gather(1, ids_restore)
        return ids_shuffle[:, :num_keep], mask, ids_restore

    # ----------------------------------------------------------------- model
    def embed_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """[B, 2, C, H, W] -> tokens [B, 2N, D] with position and frame embeddings."""
        batch = frames.shape[0]
        tokens = self.patch_embed(frames.flatten(0, 1)).unflatten(0, (batch, 2))  # [B, 2, N, D]
        tokens = tokens + self.pos_embed[:, None] + self.frame_embed[None, :, None]
        return tokens.flatten(1, 2)

    def forward_encoder(self, frames: torch.Tensor, mask_ratio: float):
        tokens = self.embed_frames(frames)
        ids_keep, mask, ids_restore = self.random_masking(tokens.shape[0], mask_ratio, tokens.device)
        x = tokens.gather(1, ids_keep[..., None].expand(-1, -1, tokens.shape[-1]))
        for block in self.blocks:
            x = block(x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(latent)
        batch, num_visible, dim = x.shape
        mask_tokens = self.mask_token.expand(batch, ids_restore.shape[1] - num_visible, dim)
        x = torch.cat((x, mask_tokens), dim=1)
        x = x.gather(1, ids_restore[..., None].expand(-1, -1, dim))  # back to frame order
        x = x.unflatten(1, (2, self.tokens_per_frame))
        x = (x + self.decoder_pos_embed[:, None] + self.decoder_frame_embed[None, :, None]).flatten(1, 2)
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))

    def forward_loss(self, frames: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """MSE on the masked patches of both frames (per-patch normalised targets by default)."""
        target = self.patchify(frames)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        per_patch = (pred.float() - target).pow(2).mean(dim=-1)
        return (per_patch * mask).sum() / mask.sum()

    def forward(self, frames: torch.Tensor, mask_ratio: float | None = None):
        """frames [B, 2, C, H, W] -> (loss, pred [B, 2N, p*p*C], mask [B, 2N])."""
        if frames.dim() != 5 or frames.shape[1] != 2:
            raise ValueError(f"expected frame pairs [B, 2, C, H, W], got {tuple(frames.shape)}")
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        latent, mask, ids_restore = self.forward_encoder(frames, ratio)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(frames, pred, mask), pred, mask

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """Encoder weights only (what downstream trackers and segmenters load)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(DECODER_PREFIXES)}
