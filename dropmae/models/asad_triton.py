"""Fused, exact ASAD for CUDA in Triton: the draw as a packed bitmask, and attention that reads it.

The torch path (:mod:`dropmae.models.asad`) writes the logits, the softmax, the weights, the
race keys and a -inf bias, each a [B, H, L, L] tensor (about 300 MB per decoder layer at batch
64), and that traffic, not arithmetic, is what ASAD costs on a GPU. Here none of them is
written: every pass recomputes S = q k^T * scale tile by tile from q and k (d = 32 at the
recipe's decoder), which is cheaper than reading S back.

The draw, per (sample, head), is the same exponential race as the torch path:

1. row statistics (one program per block of queries, two sweeps over the keys): row max m,
   partition sum l, the best other-frame logit, the diagonal and the within-frame sum, which
   give every weight in closed form, W[i, j] = c_i * (exp(S[i, j] - m_i) / l_i + 1e-6) with
   c_i = f_tem(i) / (within-frame row sum without the diagonal + (N - 1) * 1e-6);
2. race keys log W[i, j] - log E[i, j], E = -log U, U from counter-based Philox (10 rounds)
   keyed by the seed, with counter (query * L + key, sample * H + head): every pass recomputes
   the same key. One Philox call serves four keys (its four outputs: columns j, j + 16,
   j + 32, j + 48 of a 64-key tile), and the race passes sweep only the key tiles of the
   queries' own frame (cross-frame entries are never candidates), so a pass costs about an
   eighth of L x L Philox calls;
3. an exact selection of the N_d largest keys by radix select over the keys' monotone 32-bit
   encoding: four passes of 8 bits, each a 256-bin histogram of the entries that agree with
   the bits chosen so far (written per program, summed with 256 atomics). Every program
   re-derives the chosen bins from the histograms, so no host round trip is needed;
4. a last pass writes the dropped entries as bits: every key above the threshold, plus the
   first entries equal to it in a fixed order (program, key tile, row, key) until exactly
   N_d are set. Equal 32-bit keys practically never occur; the count is exact regardless.

The bitmask is [B, H, L, ceil(L / 32)] int32 (bit j % 32 of word j // 32 of row i set =
entry (i, j) dropped): about 20 MB per layer at batch 64 instead of a 300 MB bias. A flash
attention forward and backward in Triton reads it (dropped = -inf before the softmax). Both
the draw and the attention are torch.library custom ops, so torch.compile keeps them whole.

Runs on CUDA, and on the CPU under ``TRITON_INTERPRET=1`` (set before triton is imported),
which is how the tests check it without a GPU.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from triton.language.random import philox, uint_to_uniform_float

from dropmae.models.asad import ATTENTION_FLOOR, TEMPORAL_MATCH_FLOOR, num_dropped_entries

WORD_BITS = 32
BLOCK_QUERIES = 64  # query rows per program
BLOCK_KEYS = WORD_BITS  # keys per tile: one bitmask word per row
STATS_PER_ROW = 4  # row max, 1 / partition sum, log c_i, unused (aligned rows)
# Globals a Triton kernel reads must be constexpr.
RADIX_BITS = tl.constexpr(8)
RADIX_BINS = 1 << RADIX_BITS.value
RADIX_PASSES = tl.constexpr(32 // RADIX_BITS.value)
# The kernels write the recipe's floors as literals (1e-6); they must be the torch path's.
assert ATTENTION_FLOOR == TEMPORAL_MATCH_FLOOR == 1e-6


# --------------------------------------------------------------------------- shared tile helpers
@triton.jit
def _load_rows(base, rows, offs_d, L, D, stride_l, stride_d):
    return tl.load(base + rows[:, None] * stride_l + offs_d[None, :] * stride_d,
                   mask=(rows[:, None] < L) & (offs_d[None, :] < D), other=0.0)


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    # fp32 inputs: full fp32 products (no TF32), so fp32 runs match torch's fp32 matmul.
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def _race_key_encoding(s, rows, cols, L, N, row_max, inv_partition, log_coef, random_bits, KEY_BITS: tl.constexpr):
    """Monotone uint32 encoding of the race key log W - log E of each entry; 0 off the candidates."""
    candidate = ((rows[:, None] < L) & (cols[None, :] < L) & (rows[:, None] // N == cols[None, :] // N)
                 & (rows[:, None] != cols[None, :]))
    uniform = uint_to_uniform_float(random_bits)
    attention = tl.exp(s - row_max[:, None]) * inv_partition[:, None]
    key = log_coef[:, None] + tl.log(attention + 1e-6) - tl.log(-tl.log(uniform))
    bits = key.to(tl.uint32, bitcast=True)
    # Flip all bits of negatives and the sign bit of positives: unsigned order = float order.
    encoded = tl.where((bits >> 31) == 1, bits ^ 0xFFFFFFFF, bits | 0x80000000)
    if KEY_BITS < 32:  # tests only: coarse keys, so that the tie-breaking path runs
        encoded = encoded & (0xFFFFFFFF ^ ((1 << (32 - KEY_BITS)) - 1))
    return tl.where(candidate, encoded, 0), candidate


@triton.jit
def _race_tile(q, k_base, rows, start, offs_d, L, N, D, sk_l, sk_d, scale, row_max, inv_partition, log_coef,
               bits_lo, bits_hi, HALF: tl.constexpr, IEEE: tl.constexpr, KEY_BITS: tl.constexpr):
    """Encoded race keys (and candidacy) of key columns [start, start + HALF) and
    [start + HALF, start + 2 HALF), given their random bits."""
    cols_lo = start + tl.arange(0, HALF)
    cols_hi = cols_lo + HALF
    s_lo = _dot(q, tl.trans(_load_rows(k_base, cols_lo, offs_d, L, D, sk_l, sk_d)), IEEE) * scale
    s_hi = _dot(q, tl.trans(_load_rows(k_base, cols_hi, offs_d, L, D, sk_l, sk_d)), IEEE) * scale
    encoded_lo, candidate_lo = _race_key_encoding(s_lo, rows, cols_lo, L, N, row_max, inv_partition, log_coef,
                                                  bits_lo, KEY_BITS)
    encoded_hi, candidate_hi = _race_key_encoding(s_hi, rows, cols_hi, L, N, row_max, inv_partition, log_coef,
                                                  bits_hi, KEY_BITS)
    return encoded_lo, candidate_lo, encoded_hi, candidate_hi


@triton.jit
def _digit_histogram(encoded, candidate, prefix, PASS: tl.constexpr, BINS: tl.constexpr, SIZE: tl.constexpr):
    """Histogram [2 BINS] of digit PASS of the keys whose higher digits are the prefix."""
    shift: tl.constexpr = 32 - RADIX_BITS * (PASS + 1)
    if PASS == 0:
        agrees = candidate
    else:
        agrees = candidate & ((encoded >> (shift + RADIX_BITS)) == prefix)
    # Entries that do not take part go to the upper half of the bins, which is ignored
    # (a histogram without a mask argument, for older Triton).
    digit = ((encoded >> shift) & (BINS - 1)).to(tl.int32) + tl.where(agrees, 0, BINS)
    return tl.histogram(tl.reshape(digit, (SIZE,)), 2 * BINS)


@triton.jit
def _store_keys(out_ptr, bh, rows, cols, L, encoded, candidate):
    sign_flipped = tl.where((encoded >> 31) == 1, encoded & 0x7FFFFFFF, encoded ^ 0xFFFFFFFF)
    key = tl.where(candidate, sign_flipped.to(tl.float32, bitcast=True), float("-inf"))
    tl.store(out_ptr + (bh * L + rows[:, None]) * L + cols[None, :], key, mask=(rows[:, None] < L) & (cols[None, :] < L))


@triton.jit
def _chosen_prefix(hist_ptr, bh, num_drop, PASSES_DONE: tl.constexpr, BINS: tl.constexpr):
    """Bits of the threshold fixed by the first PASSES_DONE histograms, and how many entries
    still to take among those that share them."""
    bins = tl.arange(0, BINS)
    prefix = tl.full([], 0, tl.uint32)
    need = tl.full([], 0, tl.int32) + num_drop
    for done in tl.static_range(PASSES_DONE):
        counts = tl.load(hist_ptr + (bh * RADIX_PASSES + done) * (2 * BINS) + bins)
        from_top = tl.sum(counts, 0) - tl.cumsum(counts, 0) + counts  # entries in this bin or above
        chosen = tl.max(tl.where(from_top >= need, bins, -1), 0)
        above = tl.sum(tl.where(bins > chosen, counts, 0), 0)
        need = need - above
        prefix = (prefix << RADIX_BITS) | chosen.to(tl.uint32)
    return prefix, need


# --------------------------------------------------------------------------- the draw
@triton.jit
def _row_stats_kernel(q_ptr, k_ptr, stats_ptr, L, N, D, H, scale,
                      sq_b, sq_h, sq_l, sq_d, sk_b, sk_h, sk_l, sk_d,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, IEEE: tl.constexpr):
    block, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_rows(q_ptr + b * sq_b + h * sq_h, rows, offs_d, L, D, sq_l, sq_d)
    k_base = k_ptr + b * sk_b + h * sk_h
    frame = rows // N
    row_max = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    other_max = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    for start in range(0, L, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        s = _dot(q, tl.trans(_load_rows(k_base, cols, offs_d, L, D, sk_l, sk_d)), IEEE) * scale
        valid = cols[None, :] < L
        row_max = tl.maximum(row_max, tl.max(tl.where(valid, s, float("-inf")), 1))
        other = valid & (cols[None, :] // N != frame[:, None])
        other_max = tl.maximum(other_max, tl.max(tl.where(other, s, float("-inf")), 1))
    partition = tl.zeros((BLOCK_M,), tl.float32)
    within = tl.zeros((BLOCK_M,), tl.float32)
    for start in range(0, L, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        s = _dot(q, tl.trans(_load_rows(k_base, cols, offs_d, L, D, sk_l, sk_d)), IEEE) * scale
        valid = cols[None, :] < L
        e = tl.where(valid, tl.exp(s - row_max[:, None]), 0.0)
        partition += tl.sum(e, 1)
        same = (cols[None, :] // N == frame[:, None]) & (cols[None, :] != rows[:, None])
        within += tl.sum(tl.where(same, e, 0.0), 1)
    inv_partition = 1.0 / partition
    temporal_match = tl.exp(other_max - row_max) * inv_partition + 1e-6
    row_sum = within * inv_partition + (N - 1) * 1e-6
    log_coef = tl.log(temporal_match / row_sum)
    out = stats_ptr + (bh * L + rows) * 4
    in_range = rows < L
    tl.store(out, row_max, mask=in_range)
    tl.store(out + 1, inv_partition, mask=in_range)
    tl.store(out + 2, log_coef, mask=in_range)


@triton.jit
def _race_pass_kernel(q_ptr, k_ptr, stats_ptr, seed_ptr, hist_ptr, block_hist_ptr, out_ptr,
                      L, N, D, H, scale, num_drop, num_row_blocks,
                      sq_b, sq_h, sq_l, sq_d, sk_b, sk_h, sk_l, sk_d,
                      PASS: tl.constexpr, MODE: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, IEEE: tl.constexpr,
                      BINS: tl.constexpr, ROW_BLOCKS: tl.constexpr, KEY_BITS: tl.constexpr):
    """MODE 0: histogram of digit PASS of the keys sharing the chosen prefix. MODE 1: the bitmask.
    MODE 2: the race keys as floats (tests only)."""
    block, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_rows(q_ptr + b * sq_b + h * sq_h, rows, offs_d, L, D, sq_l, sq_d)
    k_base = k_ptr + b * sk_b + h * sk_h
    stats = stats_ptr + (bh * L + rows) * 4
    in_range = rows < L
    row_max = tl.load(stats, mask=in_range, other=0.0)
    inv_partition = tl.load(stats + 1, mask=in_range, other=1.0)
    log_coef = tl.load(stats + 2, mask=in_range, other=0.0)
    seed = tl.load(seed_ptr)
    words = tl.cdiv(L, BLOCK_N)
    if MODE == 0:
        prefix, need = _chosen_prefix(hist_ptr, bh, num_drop, PASS, BINS)
        local = tl.zeros((2 * BINS,), tl.int32)
    if MODE == 1:
        threshold, ties_wanted = _chosen_prefix(hist_ptr, bh, num_drop, RADIX_PASSES, BINS)
        # Ties taken by the programs of earlier query blocks of this (sample, head).
        earlier = tl.arange(0, ROW_BLOCKS)
        ties_earlier = tl.load(block_hist_ptr + (bh * num_row_blocks + earlier) * (2 * BINS)
                               + (threshold & (BINS - 1)).to(tl.int32),
                               mask=earlier < block, other=0)
        ties_taken = tl.sum(ties_earlier, 0)
        bit_of_key = tl.arange(0, BLOCK_N // 2)
    # Only the key tiles of the frames these queries belong to hold candidates: cross-frame
    # blocks (half the matrix) are skipped; their words stay 0 (the bitmask starts zeroed).
    HALF: tl.constexpr = BLOCK_N // 2
    first_word_key = (block * BLOCK_M // N) * N // BLOCK_N * BLOCK_N
    first_key = first_word_key // (2 * BLOCK_N) * (2 * BLOCK_N)
    last_key = tl.minimum(L, ((tl.minimum(block * BLOCK_M + BLOCK_M, L) - 1) // N + 1) * N)
    for pair_start in range(first_key, last_key, 2 * BLOCK_N):
        # One Philox call (counter: query * L + key, sample * H + head) gives all four of its
        # outputs, for keys j, j + 16, j + 32 and j + 48 of a 64-key tile: a quarter of the calls.
        counter = (rows[:, None] * L + pair_start + tl.arange(0, HALF)[None, :]).to(tl.uint32)
        zero = counter * 0
        random_0, random_1, random_2, random_3 = philox(seed, counter, zero + bh.to(tl.uint32), zero, zero)
        for word_in_pair in tl.static_range(2):
            start = pair_start + word_in_pair * BLOCK_N
            # A word wholly outside the queries' frames holds no candidate (and stays 0).
            if (start + BLOCK_N > first_word_key) & (start < last_key):
                if word_in_pair == 0:
                    bits_lo = random_0
                    bits_hi = random_1
                else:
                    bits_lo = random_2
                    bits_hi = random_3
                encoded_lo, candidate_lo, encoded_hi, candidate_hi = _race_tile(
                    q, k_base, rows, start, offs_d, L, N, D, sk_l, sk_d, scale, row_max, inv_partition, log_coef,
                    bits_lo, bits_hi, HALF, IEEE, KEY_BITS)
                if MODE == 0:
                    local += _digit_histogram(encoded_lo, candidate_lo, prefix, PASS, BINS, BLOCK_M * HALF)
                    local += _digit_histogram(encoded_hi, candidate_hi, prefix, PASS, BINS, BLOCK_M * HALF)
                if MODE == 1:
                    # Ties are taken in a fixed order: program, key tile, row, key.
                    tie_lo = ((encoded_lo == threshold) & candidate_lo).to(tl.int32)
                    tie_hi = ((encoded_hi == threshold) & candidate_hi).to(tl.int32)
                    row_ties_lo = tl.sum(tie_lo, 1)
                    row_ties = row_ties_lo + tl.sum(tie_hi, 1)
                    before_row = ties_taken + tl.cumsum(row_ties, 0) - row_ties
                    rank_lo = before_row[:, None] + tl.cumsum(tie_lo, 1) - tie_lo
                    rank_hi = (before_row + row_ties_lo)[:, None] + tl.cumsum(tie_hi, 1) - tie_hi
                    dropped_lo = candidate_lo & ((encoded_lo > threshold) | ((tie_lo == 1) & (rank_lo < ties_wanted)))
                    dropped_hi = candidate_hi & ((encoded_hi > threshold) | ((tie_hi == 1) & (rank_hi < ties_wanted)))
                    ties_taken += tl.sum(row_ties, 0)
                    word = (tl.sum(dropped_lo.to(tl.int32) << bit_of_key[None, :], 1)
                            + tl.sum(dropped_hi.to(tl.int32) << (bit_of_key[None, :] + HALF), 1))
                    tl.store(out_ptr + (bh * L + rows) * words + start // BLOCK_N, word, mask=in_range & (start < L))
                if MODE == 2:
                    _store_keys(out_ptr, bh, rows, start + tl.arange(0, HALF), L, encoded_lo, candidate_lo)
                    _store_keys(out_ptr, bh, rows, start + HALF + tl.arange(0, HALF), L, encoded_hi, candidate_hi)
    if MODE == 0:
        bins = tl.arange(0, 2 * BINS)
        tl.atomic_add(hist_ptr + (bh * RADIX_PASSES + PASS) * (2 * BINS) + bins, local, mask=bins < BINS)
        if PASS == RADIX_PASSES - 1:  # per-block counts of the last digit: the tie order across blocks
            tl.store(block_hist_ptr + (bh * num_row_blocks + block) * (2 * BINS) + bins, local)


def _check_qk(q: torch.Tensor, k: torch.Tensor, tokens_per_frame: int, p: float) -> None:
    if q.dim() != 4 or q.shape != k.shape:
        raise ValueError(f"ASAD expects q and k [B, H, L, d] of one shape, got {tuple(q.shape)} and {tuple(k.shape)}")
    if q.shape[2] != 2 * tokens_per_frame:
        raise ValueError(f"ASAD expects L = 2 * tokens_per_frame = {2 * tokens_per_frame}, got L = {q.shape[2]}")
    if not 0.0 <= p < 1.0:
        raise ValueError(f"ASAD drop probability p must be in [0, 1), got {p}")


def _launch_shapes(q: torch.Tensor) -> dict:
    return dict(BLOCK_M=BLOCK_QUERIES, BLOCK_N=BLOCK_KEYS, BLOCK_D=max(16, triton.next_power_of_2(q.shape[3])),
                IEEE=q.dtype == torch.float32)


def _race_buffers(q, k, seed, tokens_per_frame, scale):
    batch, heads, length, dim = q.shape
    stats = torch.empty(batch * heads, length, STATS_PER_ROW, device=q.device, dtype=torch.float32)
    row_blocks = triton.cdiv(length, BLOCK_QUERIES)
    grid = (row_blocks, batch * heads)
    common = (length, tokens_per_frame, dim, heads, scale, *q.stride(), *k.stride())
    _row_stats_kernel[grid](q, k, stats, *common, **_launch_shapes(q))
    return stats, grid, common


def _race_pass(q, k, stats, seed, hist, block_hist, out, grid, common, num_drop, mode, pass_index=0, key_bits=32):
    length, tokens_per_frame, dim, heads, scale = common[:5]
    _race_pass_kernel[grid](q, k, stats, seed, hist, block_hist, out, length, tokens_per_frame, dim, heads, scale,
                            num_drop, grid[0], *common[5:], PASS=pass_index, MODE=mode, BINS=RADIX_BINS,
                            ROW_BLOCKS=triton.next_power_of_2(grid[0]), KEY_BITS=key_bits, **_launch_shapes(q))


@torch.library.custom_op("dropmae::asad_drop_bitmask", mutates_args=())
def _asad_drop_bitmask_op(q: torch.Tensor, k: torch.Tensor, seed: torch.Tensor, tokens_per_frame: int,
                          num_drop: int, scale: float) -> torch.Tensor:
    return _draw_bitmask(q, k, seed, tokens_per_frame, num_drop, scale)


def _draw_bitmask(q, k, seed, tokens_per_frame, num_drop, scale, key_bits=32):
    """The draw's kernels (key_bits < 32 truncates the keys: tests of the tie-breaking only)."""
    batch, heads, length, _ = q.shape
    words = triton.cdiv(length, WORD_BITS)
    bits = torch.zeros(batch, heads, length, words, device=q.device, dtype=torch.int32)
    if num_drop == 0:
        return bits
    stats, grid, common = _race_buffers(q, k, seed, tokens_per_frame, scale)
    hist = torch.zeros(batch * heads, RADIX_PASSES.value, 2 * RADIX_BINS, device=q.device, dtype=torch.int32)
    block_hist = torch.empty(batch * heads, grid[0], 2 * RADIX_BINS, device=q.device, dtype=torch.int32)
    for pass_index in range(RADIX_PASSES.value):
        _race_pass(q, k, stats, seed, hist, block_hist, bits, grid, common, num_drop, 0, pass_index, key_bits)
    _race_pass(q, k, stats, seed, hist, block_hist, bits, grid, common, num_drop, 1, key_bits=key_bits)
    return bits


@_asad_drop_bitmask_op.register_fake
def _(q, k, seed, tokens_per_frame, num_drop, scale):
    batch, heads, length, _ = q.shape
    return q.new_empty(batch, heads, length, triton.cdiv(length, WORD_BITS), dtype=torch.int32)


def _draw_seed(device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    """A Philox seed drawn on the device from torch's generator: no host synchronisation, a new
    draw on every call, reproducible with a seeded generator."""
    return torch.randint(0, 2**62, (1,), device=device, dtype=torch.int64, generator=generator)


def asad_drop_bitmask(q: torch.Tensor, k: torch.Tensor, tokens_per_frame: int, p: float,
                      scale: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """The ASAD draw as a packed bitmask [B, H, L, ceil(L / 32)] int32 (bit set = entry dropped).

    Args:
        q, k: the decoder's queries and keys [B, H, L, d], L = 2 * tokens_per_frame; only read.
        tokens_per_frame: N; frame 0 is tokens [0, N).
        p: drop probability P of the recipe, in [0, 1): N_d = int(p * (N - 1)) * L entries per
            (sample, head) are dropped, exactly.
        scale: logit scale, 1 / sqrt(d) by default.
        generator: a torch.Generator on q's device; without one, torch's default generator.
    """
    _check_qk(q, k, tokens_per_frame, p)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    seed = _draw_seed(q.device, generator)
    return _asad_drop_bitmask_op(q.detach(), k.detach(), seed, tokens_per_frame,
                                 num_dropped_entries(tokens_per_frame, p), scale)


def asad_race_keys(q: torch.Tensor, k: torch.Tensor, tokens_per_frame: int, seed: torch.Tensor,
                   scale: float | None = None, key_bits: int = 32) -> torch.Tensor:
    """The race keys log W - log E the kernels rank, as floats [B, H, L, L] (-inf off the
    candidates), for a given seed tensor from :func:`_draw_seed`. For tests: writes L x L."""
    batch, heads, length, _ = q.shape
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    stats, grid, common = _race_buffers(q, k, seed, tokens_per_frame, scale)
    keys = torch.full((batch, heads, length, length), float("-inf"), device=q.device, dtype=torch.float32)
    unused = torch.zeros(1, device=q.device, dtype=torch.int32)
    _race_pass(q, k, stats, seed, unused, unused, keys, grid, common, 0, 2, key_bits=key_bits)
    return keys


def unpack_drop_bitmask(bits: torch.Tensor, length: int) -> torch.Tensor:
    """The bool mask [B, H, L, L] (True = dropped) of a packed bitmask."""
    keys = torch.arange(length, device=bits.device)
    words = bits[..., keys // WORD_BITS]  # [B, H, L, L]
    return ((words >> (keys % WORD_BITS).to(torch.int32)) & 1).bool()


def pack_drop_mask(drop_mask: torch.Tensor) -> torch.Tensor:
    """A bool mask [..., L, L] as the packed bitmask [..., L, ceil(L / 32)] int32."""
    length = drop_mask.shape[-1]
    words = triton.cdiv(length, WORD_BITS)
    padded = torch.nn.functional.pad(drop_mask.to(torch.int64), (0, words * WORD_BITS - length))
    weights = torch.ones(WORD_BITS, dtype=torch.int64, device=drop_mask.device) << torch.arange(
        WORD_BITS, device=drop_mask.device)
    packed = (padded.unflatten(-1, (words, WORD_BITS)) * weights).sum(-1)
    # Bits 0-31 as an int64 below 2^32, reinterpreted as int32 (two's complement).
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


# --------------------------------------------------------------------------- attention
@triton.jit
def _dropped_tile(bits_ptr, bh, rows, word_index, L, words, BLOCK_N: tl.constexpr):
    word = tl.load(bits_ptr + (bh * L + rows) * words + word_index, mask=rows < L, other=0)
    return ((word[:, None] >> tl.arange(0, BLOCK_N)[None, :]) & 1) == 1


@triton.jit
def _attention_forward_kernel(q_ptr, k_ptr, v_ptr, bits_ptr, out_ptr, lse_ptr, L, D, H, scale,
                              sq_b, sq_h, sq_l, sq_d, sk_b, sk_h, sk_l, sk_d, sv_b, sv_h, sv_l, sv_d,
                              so_b, so_h, so_l, so_d,
                              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                              IEEE: tl.constexpr):
    block, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_rows(q_ptr + b * sq_b + h * sq_h, rows, offs_d, L, D, sq_l, sq_d)
    words = tl.cdiv(L, BLOCK_N)
    row_max = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    partition = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    for start in range(0, L, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        k = _load_rows(k_ptr + b * sk_b + h * sk_h, cols, offs_d, L, D, sk_l, sk_d)
        v = _load_rows(v_ptr + b * sv_b + h * sv_h, cols, offs_d, L, D, sv_l, sv_d)
        s = _dot(q, tl.trans(k), IEEE) * scale
        dropped = _dropped_tile(bits_ptr, bh, rows, start // BLOCK_N, L, words, BLOCK_N)
        s = tl.where(dropped | (cols[None, :] >= L), float("-inf"), s)
        new_max = tl.maximum(row_max, tl.max(s, 1))
        safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)  # a tile dropped whole: no NaN
        rescale = tl.exp(row_max - safe_max)
        probs = tl.exp(s - safe_max[:, None])
        partition = partition * rescale + tl.sum(probs, 1)
        acc = acc * rescale[:, None] + _dot(probs.to(v.dtype), v, IEEE)
        row_max = new_max
    out = acc / partition[:, None]
    in_range = rows < L
    tl.store(out_ptr + b * so_b + h * so_h + rows[:, None] * so_l + offs_d[None, :] * so_d,
             out.to(out_ptr.dtype.element_ty), mask=in_range[:, None] & (offs_d[None, :] < D))
    tl.store(lse_ptr + bh * L + rows, row_max + tl.log(partition), mask=in_range)


@triton.jit
def _attention_backward_kv_kernel(q_ptr, k_ptr, v_ptr, bits_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
                                  L, D, H, scale,
                                  sq_b, sq_h, sq_l, sq_d, sk_b, sk_h, sk_l, sk_d, sv_b, sv_h, sv_l, sv_d,
                                  sg_b, sg_h, sg_l, sg_d,
                                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                                  IEEE: tl.constexpr):
    """dK, dV of one tile of BLOCK_N keys (one bitmask word), summed over all queries."""
    word_index, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    cols = word_index * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    k = _load_rows(k_ptr + b * sk_b + h * sk_h, cols, offs_d, L, D, sk_l, sk_d)
    v = _load_rows(v_ptr + b * sv_b + h * sv_h, cols, offs_d, L, D, sv_l, sv_d)
    words = tl.cdiv(L, BLOCK_N)
    dk = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    for start in range(0, L, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        in_range = rows < L
        q = _load_rows(q_ptr + b * sq_b + h * sq_h, rows, offs_d, L, D, sq_l, sq_d)
        grad_out = _load_rows(do_ptr + b * sg_b + h * sg_h, rows, offs_d, L, D, sg_l, sg_d)
        lse = tl.load(lse_ptr + bh * L + rows, mask=in_range, other=0.0)
        delta = tl.load(delta_ptr + bh * L + rows, mask=in_range, other=0.0)
        s = _dot(q, tl.trans(k), IEEE) * scale
        dropped = _dropped_tile(bits_ptr, bh, rows, word_index, L, words, BLOCK_N)
        keep = ~dropped & in_range[:, None] & (cols[None, :] < L)
        probs = tl.where(keep, tl.exp(s - lse[:, None]), 0.0)
        dv += _dot(tl.trans(probs.to(grad_out.dtype)), grad_out, IEEE)
        grad_probs = _dot(grad_out, tl.trans(v), IEEE)
        grad_logits = probs * (grad_probs - delta[:, None])
        dk += _dot(tl.trans(grad_logits.to(q.dtype)), q, IEEE)
    mask = (cols[:, None] < L) & (offs_d[None, :] < D)
    out = bh * L * D + cols[:, None] * D + offs_d[None, :]
    tl.store(dk_ptr + out, (dk * scale).to(dk_ptr.dtype.element_ty), mask=mask)
    tl.store(dv_ptr + out, dv.to(dv_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _attention_backward_q_kernel(q_ptr, k_ptr, v_ptr, bits_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr,
                                 L, D, H, scale,
                                 sq_b, sq_h, sq_l, sq_d, sk_b, sk_h, sk_l, sk_d, sv_b, sv_h, sv_l, sv_d,
                                 sg_b, sg_h, sg_l, sg_d,
                                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                                 IEEE: tl.constexpr):
    """dQ of one block of queries, summed over all keys (no atomics: a separate sweep)."""
    block, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
    in_range = rows < L
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_rows(q_ptr + b * sq_b + h * sq_h, rows, offs_d, L, D, sq_l, sq_d)
    grad_out = _load_rows(do_ptr + b * sg_b + h * sg_h, rows, offs_d, L, D, sg_l, sg_d)
    lse = tl.load(lse_ptr + bh * L + rows, mask=in_range, other=0.0)
    delta = tl.load(delta_ptr + bh * L + rows, mask=in_range, other=0.0)
    words = tl.cdiv(L, BLOCK_N)
    dq = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    for start in range(0, L, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        k = _load_rows(k_ptr + b * sk_b + h * sk_h, cols, offs_d, L, D, sk_l, sk_d)
        v = _load_rows(v_ptr + b * sv_b + h * sv_h, cols, offs_d, L, D, sv_l, sv_d)
        s = _dot(q, tl.trans(k), IEEE) * scale
        dropped = _dropped_tile(bits_ptr, bh, rows, start // BLOCK_N, L, words, BLOCK_N)
        keep = ~dropped & in_range[:, None] & (cols[None, :] < L)
        probs = tl.where(keep, tl.exp(s - lse[:, None]), 0.0)
        grad_probs = _dot(grad_out, tl.trans(v), IEEE)
        grad_logits = probs * (grad_probs - delta[:, None])
        dq += _dot(grad_logits.to(k.dtype), k, IEEE)
    out = bh * L * D + rows[:, None] * D + offs_d[None, :]
    tl.store(dq_ptr + out, (dq * scale).to(dq_ptr.dtype.element_ty), mask=in_range[:, None] & (offs_d[None, :] < D))


def _attention_launch(q: torch.Tensor) -> dict:
    return dict(BLOCK_M=BLOCK_QUERIES, BLOCK_N=BLOCK_KEYS, BLOCK_D=max(16, triton.next_power_of_2(q.shape[3])),
                IEEE=q.dtype == torch.float32)


@torch.library.custom_op("dropmae::bitmask_attention_forward", mutates_args=())
def _bitmask_attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bits: torch.Tensor,
                               scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    batch, heads, length, dim = q.shape
    out = torch.empty(q.shape, device=q.device, dtype=q.dtype)  # contiguous, as the fake says
    lse = torch.empty(batch * heads, length, device=q.device, dtype=torch.float32)
    bits = bits.contiguous()
    grid = (triton.cdiv(length, BLOCK_QUERIES), batch * heads)
    _attention_forward_kernel[grid](q, k, v, bits, out, lse, length, dim, heads, scale,
                                    *q.stride(), *k.stride(), *v.stride(), *out.stride(), **_attention_launch(q))
    return out, lse


@_bitmask_attention_forward.register_fake
def _(q, k, v, bits, scale):
    batch, heads, length, _ = q.shape
    return q.new_empty(q.shape), q.new_empty(batch * heads, length, dtype=torch.float32)


@torch.library.custom_op("dropmae::bitmask_attention_backward", mutates_args=())
def _bitmask_attention_backward(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                bits: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                                scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    batch, heads, length, dim = q.shape
    bits = bits.contiguous()
    # delta_i = sum_j P_ij dP_ij = dO_i . O_i: one small [B, H, L] reduction.
    delta = (grad_out.float() * out.float()).sum(-1).reshape(batch * heads, length).contiguous()
    # Gradients contiguous [B, H, L, d] (the kernels index them so).
    dq = torch.empty(batch, heads, length, dim, device=q.device, dtype=q.dtype)
    dk = torch.empty(batch, heads, length, dim, device=q.device, dtype=k.dtype)
    dv = torch.empty(batch, heads, length, dim, device=q.device, dtype=v.dtype)
    strides = (*q.stride(), *k.stride(), *v.stride(), *grad_out.stride())
    launch = _attention_launch(q)
    _attention_backward_kv_kernel[(triton.cdiv(length, BLOCK_KEYS), batch * heads)](
        q, k, v, bits, grad_out, lse, delta, dk, dv, length, dim, heads, scale, *strides, **launch)
    _attention_backward_q_kernel[(triton.cdiv(length, BLOCK_QUERIES), batch * heads)](
        q, k, v, bits, grad_out, lse, delta, dq, length, dim, heads, scale, *strides, **launch)
    return dq, dk, dv


@_bitmask_attention_backward.register_fake
def _(grad_out, q, k, v, bits, out, lse, scale):
    # Contiguous, as the kernels write them (empty_like would copy a strided view's layout).
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, bits, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, bits, out, lse)
    ctx.scale = scale


def _backward(ctx, grad_out, grad_lse):
    q, k, v, bits, out, lse = ctx.saved_tensors
    dq, dk, dv = _bitmask_attention_backward(grad_out, q, k, v, bits, out, lse, ctx.scale)
    return dq, dk, dv, None, None


_bitmask_attention_forward.register_autograd(_backward, setup_context=_setup_context)


def bitmask_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bits: torch.Tensor,
                      scale: float | None = None) -> torch.Tensor:
    """softmax(q k^T * scale with dropped entries at -inf) v, [B, H, L, d], differentiable in q, k, v.

    ``bits`` is a packed drop bitmask [B, H, L, ceil(L / 32)] (:func:`asad_drop_bitmask`); the
    same result as ``F.scaled_dot_product_attention`` with the -inf bias of the same mask.
    """
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"bitmask_attention expects q, k, v [B, H, L, d] of one shape, got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    expected = (*q.shape[:3], triton.cdiv(q.shape[2], WORD_BITS))
    if tuple(bits.shape) != expected or bits.dtype != torch.int32:
        raise ValueError(f"bitmask_attention expects an int32 bitmask {expected}, got {bits.dtype} {tuple(bits.shape)}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return _bitmask_attention_forward(q, k, v, bits, scale)[0]


__all__ = ["asad_drop_bitmask", "asad_race_keys", "bitmask_attention", "pack_drop_mask", "unpack_drop_bitmask"]
