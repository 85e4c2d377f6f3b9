"""Adaptive Spatial Attention Dropout (ASAD), the core of DropMAE.

For every (sample, head) of a decoder self-attention over two frames of N tokens each
(L = 2N), ASAD draws ``N_d = int(p * (N - 1)) * L`` within-frame entries of the
attention matrix *jointly* and *without replacement* from one multinomial whose
weights are

    W[i, j] = f_tem(i) * Ã[i, j] / sum_{j' in frame(i), j' != i} Ã[i, j']

with A = softmax(S) over all L keys, f_tem(i) = max_{j in other frame} A[i, j] + 1e-6,
Ã = A + 1e-6 on the within-frame block and 0 on the diagonal. Dropped entries are set
to -inf in the logits before the real softmax; the diagonal and cross-frame entries
are never dropped.

Sampling k items without replacement with weights w is the "exponential race": draw
E_m ~ Exp(1) independently and keep the k largest w_m / E_m. That turns the
sequential multinomial of the reference into one elementwise pass plus a k-th value
threshold per (sample, head) — no Python loop, no host synchronisation.
"""

from __future__ import annotations

import torch

# The probability floors of the published recipe.
ATTENTION_FLOOR = 1e-6
TEMPORAL_MATCH_FLOOR = 1e-6


def num_dropped_entries(tokens_per_frame: int, p: float) -> int:
    """N_d: entries dropped per (sample, head), int(p * (N - 1)) per query row on average."""
    return int(p * (tokens_per_frame - 1)) * 2 * tokens_per_frame


def _check_inputs(logits: torch.Tensor, tokens_per_frame: int, p: float) -> None:
    if logits.dim() != 4 or logits.shape[-1] != logits.shape[-2]:
        raise ValueError(f"ASAD expects logits [B, H, L, L], got shape {tuple(logits.shape)}")
    if logits.shape[-1] != 2 * tokens_per_frame:
        raise ValueError(
            f"ASAD expects L = 2 * tokens_per_frame = {2 * tokens_per_frame}, got L = {logits.shape[-1]}"
        )
    if not 0.0 <= p < 1.0:
        raise ValueError(f"ASAD drop probability p must be in [0, 1), got {p}")


def asad_weights(logits: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
    """Dropout weights W of the within-frame blocks: [B, H, 2, N, N] (frame, query, key).

    Block ``[:, :, f]`` holds the queries of frame f against the keys of frame f.
    Each row is the floored, diagonal-free, normalised attention scaled by f_tem.
    """
    n = tokens_per_frame
    batch, heads = logits.shape[:2]
    # fp32 probabilities from bf16 logits in one kernel: `.float()` first would write and read
    # an extra fp32 [B, H, L, L] copy (about 0.6 GB per decoder layer at B=64).
    attention = logits.detach().softmax(dim=-1, dtype=torch.float32)  # [B, H, L, L]
    grid = attention.view(batch, heads, 2, n, 2, n)  # (query frame, query, key frame, key)
    # f_tem(i): best match of query i among the keys of the other frame.
    temporal_match = torch.stack(
        (grid[:, :, 0, :, 1].amax(dim=-1), grid[:, :, 1, :, 0].amax(dim=-1)), dim=2
    ).add_(TEMPORAL_MATCH_FLOOR)  # [B, H, 2, N]
    # One copy of the two within-frame blocks, then updated in place. No out= into a strided
    # view: torch.compile cannot trace that and would split the decoder into many graphs.
    weights = torch.stack((grid[:, :, 0, :, 0], grid[:, :, 1, :, 1]), dim=2)  # [B, H, 2, N, N]
    diagonal = weights.diagonal(dim1=-2, dim2=-1)
    # Row sums of the floored block without its diagonal, read straight from the softmax.
    row_sums = weights.sum(dim=-1) - diagonal + (n - 1) * ATTENTION_FLOOR
    weights.add_(ATTENTION_FLOOR).mul_((temporal_match / row_sums).unsqueeze(-1))
    diagonal.zero_()
    return weights


def _within_frame_to_full_index(flat_index: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
    """Map an index into the [2, N, N] within-frame blocks to one into the [L, L] matrix."""
    n = tokens_per_frame
    frame = torch.div(flat_index, n * n, rounding_mode="floor")
    rest = flat_index - frame * (n * n)
    query = torch.div(rest, n, rounding_mode="floor")
    key = rest - query * n
    offset = frame * n
    return (offset + query) * (2 * n) + offset + key


def asad_dropped_indices(
    logits: torch.Tensor,
    tokens_per_frame: int,
    p: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Flat indices into each [L, L] attention matrix of the entries ASAD drops: [B, H, N_d].

    Args as :func:`asad_drop_mask`. The indices of one (sample, head) are distinct.
    """
    _check_inputs(logits, tokens_per_frame, p)
    batch, heads = logits.shape[:2]
    num_drop = num_dropped_entries(tokens_per_frame, p)
    if num_drop == 0:
        return torch.empty(batch, heads, 0, dtype=torch.long, device=logits.device)
    with torch.no_grad():
        weights = asad_weights(logits, tokens_per_frame)
        # Exponential race: the k largest W / E, E = -log U ~ Exp(1), are a draw of k items
        # without replacement. Uniform noise and one log are cheaper than exponential_() on
        # the CPU; dividing by log U (< 0) gives -W / E, so we take the k smallest.
        noise = torch.rand(weights.shape, generator=generator, device=weights.device, dtype=weights.dtype)
        race = weights.div_(noise.log_()).view(batch, heads, -1)
        del noise
        # topk returns exactly k indices, so float ties cannot change the count.
        picked = race.topk(num_drop, dim=-1, largest=False, sorted=False).indices
        return _within_frame_to_full_index(picked, tokens_per_frame)


def asad_drop_mask(
    logits: torch.Tensor,
    tokens_per_frame: int,
    p: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Boolean mask [B, H, L, L] of the attention entries ASAD drops (True = dropped).

    Args:
        logits: decoder attention logits S = q k^T / sqrt(d), [B, H, L, L], L = 2 * N.
            Only read, never differentiated.
        tokens_per_frame: N, tokens of each frame; frame 0 is tokens [0, N).
        p: drop probability P of the recipe (0.1), in [0, 1).
        generator: optional torch.Generator on the logits' device.
    """
    dropped = asad_dropped_indices(logits, tokens_per_frame, p, generator)
    drop_mask = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
    drop_mask.view(*logits.shape[:2], -1).scatter_(-1, dropped, True)
    return drop_mask


def asad_attention_bias(
    logits: torch.Tensor,
    tokens_per_frame: int,
    p: float,
    dtype: torch.dtype,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """ASAD as an additive attention bias [B, H, L, L] of ``dtype``: -inf where dropped, 0 elsewhere.

    The same draw as :func:`asad_drop_mask` with the same generator state. Fused attention
    takes a bias of the query's dtype as it is, while a boolean mask is first turned into one
    (on the CPU that conversion cost as much as the masked attention itself).
    """
    dropped = asad_dropped_indices(logits, tokens_per_frame, p, generator)
    bias = torch.zeros(logits.shape, dtype=dtype, device=logits.device)
    bias.view(*logits.shape[:2], -1).scatter_(-1, dropped, float("-inf"))
    return bias


def reference_asad_drop_mask(
    logits: torch.Tensor,
    tokens_per_frame: int,
    p: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Straightforward ASAD: one torch.multinomial per (sample, head), written for clarity.

    The yardstick for tests (same distribution) and benchmarks (speed); not used in training.
    """
    _check_inputs(logits, tokens_per_frame, p)
    n = tokens_per_frame
    batch, heads, length, _ = logits.shape
    drop_mask = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
    num_drop = num_dropped_entries(n, p)
    if num_drop == 0:
        return drop_mask
    same_frame = torch.zeros(length, length, dtype=torch.bool, device=logits.device)
    same_frame[:n, :n] = True
    same_frame[n:, n:] = True
    diagonal = torch.eye(length, dtype=torch.bool, device=logits.device)
    for b in range(batch):
        for h in range(heads):
            attention = logits[b, h].detach().float().softmax(dim=-1)
            other_frame = ~same_frame
            temporal_match = attention.masked_fill(~other_frame, 0).amax(dim=-1) + TEMPORAL_MATCH_FLOOR
            spatial = (attention + ATTENTION_FLOOR).masked_fill(~same_frame | diagonal, 0)
            weights = spatial / spatial.sum(dim=-1, keepdim=True) * temporal_match[:, None]
            picked = torch.multinomial(weights.flatten(), num_drop, replacement=False, generator=generator)
            drop_mask[b, h].view(-1)[picked] = True
    return drop_mask
