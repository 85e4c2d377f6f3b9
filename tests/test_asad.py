"""ASAD: exact counts, where it may drop, its distribution, and the model around it."""

from __future__ import annotations

import itertools

import pytest
import torch

from dropmae.models.asad import (
    ATTENTION_FLOOR,
    TEMPORAL_MATCH_FLOOR,
    asad_attention_bias,
    asad_drop_mask,
    asad_weights,
    num_dropped_entries,
    reference_asad_drop_mask,
)
from dropmae.models.dropmae import DropMAE

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _frame_of(length: int, n: int) -> torch.Tensor:
    return torch.arange(length) // n


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n,p", [(4, 0.5), (9, 0.1), (16, 0.3), (49, 0.1), (196, 0.1)])
@pytest.mark.parametrize("sharpness", [1.0, 40.0])
def test_drops_exactly_nd_within_frame_off_diagonal(device, n, p, sharpness):
    torch.manual_seed(n)
    logits = (torch.randn(2, 3, 2 * n, 2 * n) * sharpness).to(device)
    dropped = asad_drop_mask(logits, n, p).cpu()
    assert dropped.dtype == torch.bool and dropped.shape == logits.shape
    expected = int(p * (n - 1)) * 2 * n
    assert expected == num_dropped_entries(n, p)
    assert (dropped.sum(dim=(-1, -2)) == expected).all()
    frame = _frame_of(2 * n, n)
    cross_frame = frame[:, None] != frame[None, :]
    assert not dropped[..., cross_frame].any(), "a cross-frame entry was dropped"
    assert not dropped.diagonal(dim1=-2, dim2=-1).any(), "a diagonal entry was dropped"


def test_recipe_shape_drops_7448_of_76440():
    assert num_dropped_entries(196, 0.1) == 7448
    logits = torch.randn(1, 2, 392, 392)
    assert (asad_drop_mask(logits, 196, 0.1).sum(dim=(-1, -2)) == 7448).all()


def test_p_zero_drops_nothing():
    assert not asad_drop_mask(torch.randn(2, 2, 8, 8), 4, 0.0).any()
    assert not asad_drop_mask(torch.randn(2, 2, 8, 8), 4, 0.2).any()  # int(0.2 * 3) = 0


def test_weights_follow_the_recipe_formula():
    n = 3
    logits = torch.randn(1, 1, 2 * n, 2 * n)
    attention = logits.softmax(-1)[0, 0]
    weights = asad_weights(logits, n)[0, 0]  # [2, N, N]
    for frame in range(2):
        rows = slice(frame * n, (frame + 1) * n)
        other = slice((1 - frame) * n, (2 - frame) * n)
        f_tem = attention[rows, other].amax(-1) + TEMPORAL_MATCH_FLOOR
        floored = (attention[rows, rows] + ATTENTION_FLOOR) * (1 - torch.eye(n))
        expected = floored / floored.sum(-1, keepdim=True) * f_tem[:, None]
        torch.testing.assert_close(weights[frame], expected, rtol=1e-5, atol=1e-9)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="2 \\* tokens_per_frame"):
        asad_drop_mask(torch.randn(1, 1, 10, 10), 4, 0.1)
    with pytest.raises(ValueError, match="\\[0, 1\\)"):
        asad_drop_mask(torch.randn(1, 1, 8, 8), 4, 1.0)
    with pytest.raises(ValueError, match="\\[B, H, L, L\\]"):
        asad_drop_mask(torch.randn(8, 8), 4, 0.1)


def test_generator_makes_draws_reproducible():
    logits = torch.randn(2, 4, 32, 32)
    first = asad_drop_mask(logits, 16, 0.3, generator=torch.Generator().manual_seed(7))
    second = asad_drop_mask(logits, 16, 0.3, generator=torch.Generator().manual_seed(7))
    third = asad_drop_mask(logits, 16, 0.3, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first, second)
    assert not torch.equal(first, third)


def _exact_inclusion_probabilities(weights: torch.Tensor, k: int) -> torch.Tensor:
    """Inclusion probability of each item under sequential sampling of k items without
    replacement (probability proportional to weight among the items left): a DP over subsets."""
    w = weights.double().tolist()
    m = len(w)
    total = sum(w)
    reach = {frozenset(): 1.0}
    for _ in range(k):
        nxt: dict[frozenset, float] = {}
        for subset, prob in reach.items():
            left = total - sum(w[i] for i in subset)
            for i in range(m):
                if i not in subset and w[i] > 0:
                    key = subset | {i}
                    nxt[key] = nxt.get(key, 0.0) + prob * w[i] / left
        reach = nxt
    inclusion = torch.zeros(m, dtype=torch.float64)
    for subset, prob in reach.items():
        for i in subset:
            inclusion[i] += prob
    return inclusion


def test_inclusion_frequencies_match_sequential_sampling_without_replacement():
    """N = 3 (12 candidates per matrix, k = 6): the vectorised sampler and one
    torch.multinomial per matrix both agree with the exact inclusion probabilities."""
    n, p = 3, 0.5
    k = num_dropped_entries(n, p)
    assert k == 6
    torch.manual_seed(0)
    logits = torch.randn(1, 1, 2 * n, 2 * n) * 2.0
    weights = asad_weights(logits, n)[0, 0]  # [2, N, N]
    # Flat order of asad_weights: frame, query, key -> position in the [L, L] matrix.
    positions = [(f * n + i, f * n + j) for f in range(2) for i in range(n) for j in range(n)]
    exact = _exact_inclusion_probabilities(weights.flatten(), k)
    assert abs(exact.sum().item() - k) < 1e-9

    draws = 20000
    repeated = logits.expand(draws, 1, 2 * n, 2 * n).contiguous()
    fast = asad_drop_mask(repeated, n, p, generator=torch.Generator().manual_seed(1)).double().mean(0)[0]
    reference = reference_asad_drop_mask(repeated[:4000], n, p, generator=torch.Generator().manual_seed(2))
    reference = reference.double().mean(0)[0]
    rows, cols = zip(*positions)
    fast_freq = fast[list(rows), list(cols)]
    reference_freq = reference[list(rows), list(cols)]
    # Five standard errors per entry (36 entries, so a false alarm is ~1e-5 likely).
    tolerance_fast = 5 * (exact * (1 - exact) / draws).sqrt() + 1e-4
    tolerance_reference = 5 * (exact * (1 - exact) / 4000).sqrt() + 1e-4
    assert ((fast_freq - exact).abs() <= tolerance_fast).all(), (fast_freq, exact)
    assert ((reference_freq - exact).abs() <= tolerance_reference).all(), (reference_freq, exact)
    # Diagonal entries have zero weight and must never be drawn.
    assert all(exact[idx] == 0 for idx, (r, c) in enumerate(positions) if r == c)


def test_queries_with_strong_temporal_match_lose_more():
    """The drop share of a query grows with f_tem: the adaptive part of ASAD."""
    n = 8
    logits = torch.zeros(1, 1, 2 * n, 2 * n)
    logits[0, 0, 0, n] = 10.0  # query 0 matches key 0 of the other frame strongly
    dropped = asad_drop_mask(logits.expand(500, 1, -1, -1).contiguous(), n, 0.3).float().mean(0)[0]
    per_query = dropped.sum(-1)
    assert per_query[0] > 2 * per_query[1:n].mean()


def _tiny_model(asad_p: float) -> DropMAE:
    return DropMAE(img_size=32, patch_size=8, encoder="micro", decoder_embed_dim=32, decoder_depth=2,
                   decoder_num_heads=4, asad_p=asad_p)


def test_p_zero_is_exactly_twinmae():
    torch.manual_seed(0)
    twin = _tiny_model(0.0)
    drop = _tiny_model(0.3)
    drop.load_state_dict(twin.state_dict())
    frames = torch.randn(2, 2, 3, 32, 32)
    drop.set_asad_p(0.0)
    torch.manual_seed(1)
    loss_twin, pred_twin, mask_twin = twin(frames)
    torch.manual_seed(1)
    loss_drop, pred_drop, mask_drop = drop(frames)
    assert torch.equal(pred_twin, pred_drop) and torch.equal(loss_twin, loss_drop)
    # ASAD acts only while training, like dropout.
    drop.set_asad_p(0.3)
    twin.eval(), drop.eval()
    torch.manual_seed(1)
    eval_twin = twin(frames)[1]
    torch.manual_seed(1)
    assert torch.equal(eval_twin, drop(frames)[1])


def test_explicit_attention_path_matches_fused_path():
    """The ASAD attention path (explicit softmax) computes the same function as timm's fused one."""
    torch.manual_seed(0)
    model = _tiny_model(0.0).eval()
    frames = torch.randn(2, 2, 3, 32, 32)
    torch.manual_seed(3)
    fused = model(frames)[1]
    for block in model.decoder_blocks:
        block.attn.attention_sink = []
    torch.manual_seed(3)
    explicit = model(frames)[1]
    torch.testing.assert_close(explicit, fused, rtol=1e-5, atol=1e-5)
    attention = model.decoder_blocks[0].attn.attention_sink[0]
    torch.testing.assert_close(attention.sum(-1), torch.ones_like(attention.sum(-1)))


def test_dropped_entries_get_zero_attention_and_gradients_flow():
    torch.manual_seed(0)
    model = _tiny_model(0.5).train()
    for block in model.decoder_blocks:
        block.attn.attention_sink = []
    frames = torch.randn(2, 2, 3, 32, 32)
    loss, _, _ = model(frames)
    loss.backward()
    n = model.tokens_per_frame
    for block in model.decoder_blocks:
        attention = block.attn.attention_sink[0]
        zero = attention == 0
        # Exactly N_d entries per (sample, head) are dropped to zero probability.
        assert (zero.sum(dim=(-1, -2)) == num_dropped_entries(n, 0.5)).all()
        assert not zero.diagonal(dim1=-2, dim2=-1).any()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in model.decoder_blocks.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_distribution_and_does_not_sync():
    n, p = 16, 0.3
    logits = torch.randn(64, 4, 2 * n, 2 * n, device="cuda")
    torch.cuda.set_sync_debug_mode("error")  # any host-device synchronisation raises
    try:
        dropped = asad_drop_mask(logits, n, p)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert (dropped.sum(dim=(-1, -2)) == num_dropped_entries(n, p)).all()
    cpu_freq = asad_drop_mask(logits.cpu().expand(64, -1, -1, -1), n, p).float().mean(0)
    gpu_freq = dropped.float().mean(0).cpu()
    assert (cpu_freq - gpu_freq).abs().max() < 0.35


def test_every_combination_of_frames_is_consistent():
    """The flat-index mapping covers both frames and all query/key pairs of each block."""
    n = 3
    logits = torch.full((1, 1, 2 * n, 2 * n), 0.0)
    counts = torch.zeros(2 * n, 2 * n)
    for _ in range(200):
        counts += asad_drop_mask(logits, n, 0.5)[0, 0].float()
    frame = _frame_of(2 * n, n)
    for i, j in itertools.product(range(2 * n), repeat=2):
        allowed = frame[i] == frame[j] and i != j
        assert (counts[i, j] > 0) == allowed, (i, j)


def test_fused_asad_path_matches_explicit_path():
    """Training with ASAD runs fused attention with an additive -inf bias; the explicit path
    (-inf logits, then softmax) draws the same entries and computes the same output."""
    torch.manual_seed(0)
    model = _tiny_model(0.5).train()
    frames = torch.randn(2, 2, 3, 32, 32)
    torch.manual_seed(5)
    fused_loss, fused, _ = model(frames)
    for block in model.decoder_blocks:
        block.attn.attention_sink = []
    torch.manual_seed(5)
    explicit_loss, explicit, _ = model(frames)
    torch.testing.assert_close(explicit, fused, rtol=1e-5, atol=1e-5)
    torch.manual_seed(6)
    other = model(frames)[1]
    assert not torch.allclose(other, explicit)  # a different draw changes the output


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_bias_is_the_drop_mask_as_minus_infinity(dtype):
    logits = torch.randn(2, 3, 18, 18)
    dropped = asad_drop_mask(logits, 9, 0.3, generator=torch.Generator().manual_seed(4))
    bias = asad_attention_bias(logits, 9, 0.3, dtype, generator=torch.Generator().manual_seed(4))
    assert bias.dtype == dtype and bias.shape == logits.shape
    assert torch.equal(torch.isneginf(bias), dropped)
    assert (bias[~dropped] == 0).all()
