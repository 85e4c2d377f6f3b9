"""The fused Triton ASAD (dropmae.models.asad_triton) against the torch path and SDPA.

On a CUDA machine the tests run the compiled kernels. Without one, the Triton interpreter
runs the same kernels on the CPU, but only when TRITON_INTERPRET=1 is set before triton is
imported; so here one test reruns this file in a subprocess with that variable, and the
tests themselves run in the child. CI thereby checks the kernels' logic (not GPU limits:
shared memory, register pressure).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dropmae.models.asad import asad_weights, num_dropped_entries

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
ON_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if ON_CUDA else "cpu"
kernels = pytest.mark.skipif(not (ON_CUDA or INTERPRETED),
                             reason="run on CUDA, or under TRITON_INTERPRET=1 by test_kernels_under_the_interpreter")


def _run_this_file_interpreted(marker_expression: str) -> None:
    env = dict(os.environ, TRITON_INTERPRET="1")
    repo = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(repo), str(repo / "tests"), env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", marker_expression,
                             __file__], env=env, cwd=repo, capture_output=True, text=True, timeout=900)
    print(result.stdout[-4000:])
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-4000:]
    assert " passed" in result.stdout and " failed" not in result.stdout, result.stdout[-2000:]


@pytest.mark.slow  # 40-90 s on two shared cores
@pytest.mark.skipif(ON_CUDA or INTERPRETED, reason="the kernels run directly here")
def test_kernels_under_the_interpreter():
    _run_this_file_interpreted("not slow")


@pytest.mark.slow
@pytest.mark.skipif(ON_CUDA or INTERPRETED, reason="the kernels run directly here")
def test_slow_kernel_checks_under_the_interpreter():
    _run_this_file_interpreted("slow")  # the recipe's L and the inclusion frequencies: 5-9 minutes


def _qk(batch, heads, n, dim, seed=0, sharpness=1.0):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, 2 * n, dim, generator=generator) * sharpness
    k = torch.randn(batch, heads, 2 * n, dim, generator=generator)
    return q.to(DEVICE), k.to(DEVICE)


def _log_weights(q, k, n, scale):
    """log W of the torch path in the [B, H, L, L] layout, -inf off the within-frame blocks and on the diagonal."""
    weights = asad_weights((q * scale) @ k.transpose(-2, -1), n)  # [B, H, 2, N, N]
    full = torch.full((*q.shape[:2], 2 * n, 2 * n), float("-inf"), device=q.device)
    full[..., :n, :n] = weights[:, :, 0].log()
    full[..., n:, n:] = weights[:, :, 1].log()
    return full


def _same_generator(seed):
    return torch.Generator(device=DEVICE).manual_seed(seed)


@kernels
@pytest.mark.parametrize("n,dim", [(16, 8), (20, 32), (49, 16)])
def test_row_statistics_give_the_torch_weights(n, dim):
    from dropmae.models.asad_triton import _draw_seed, _race_buffers

    q, k = _qk(2, 2, n, dim, seed=n)
    scale = dim**-0.5
    stats, _, _ = _race_buffers(q, k, _draw_seed(q.device, None), n, scale)
    stats = stats.view(2, 2, 2 * n, -1)
    row_max, inv_partition, log_coef = stats[..., 0, None], stats[..., 1, None], stats[..., 2, None]
    logits = (q * scale) @ k.transpose(-2, -1)
    closed_form = log_coef + ((logits - row_max).exp() * inv_partition + 1e-6).log()
    expected = _log_weights(q, k, n, scale)
    within = expected.isfinite()
    torch.testing.assert_close(closed_form[within], expected[within], rtol=1e-4, atol=1e-4)


@kernels
@pytest.mark.parametrize("n,p,sharpness", [(16, 0.1, 1.0), (20, 0.3, 1.0), (49, 0.1, 6.0)])
def test_draw_is_exactly_the_top_nd_race_keys(n, p, sharpness):
    from dropmae.models.asad_triton import _draw_seed, asad_drop_bitmask, asad_race_keys, unpack_drop_bitmask

    q, k = _qk(2, 3, n, 16, seed=n, sharpness=sharpness)
    length, num_drop = 2 * n, num_dropped_entries(n, p)
    bits = asad_drop_bitmask(q, k, n, p, generator=_same_generator(5))
    assert bits.dtype == torch.int32 and bits.shape == (2, 3, length, (length + 31) // 32)
    dropped = unpack_drop_bitmask(bits, length).cpu()
    assert (dropped.sum((-1, -2)) == num_drop).all()
    frame = torch.arange(length) // n
    assert not dropped[..., frame[:, None] != frame[None, :]].any(), "a cross-frame entry was dropped"
    assert not dropped.diagonal(dim1=-2, dim2=-1).any(), "a diagonal entry was dropped"
    # The same seed gives the keys the selection ranked: the draw is their top N_d.
    keys = asad_race_keys(q, k, n, _draw_seed(q.device, _same_generator(5))).cpu()
    top = torch.zeros(keys.shape, dtype=torch.bool).flatten(2)
    top.scatter_(-1, keys.flatten(2).topk(num_drop, dim=-1).indices, True)
    assert torch.equal(top.view_as(dropped), dropped)
    # Keys are log W plus Gumbel noise -log E (mean: Euler's constant, variance pi^2 / 6).
    noise = (keys - _log_weights(q, k, n, 16**-0.5).cpu())[keys.isfinite()]
    assert abs(noise.mean() - 0.5772) < 0.08 and abs(noise.var() - 1.6449) < 0.25


@kernels
def test_equal_keys_are_broken_in_a_fixed_order_to_exactly_nd():
    """Keys cut to their top 10 bits (a test-only switch) tie by the hundreds: still exactly N_d,
    every key above the threshold taken, and at the threshold the first entries in the fixed
    order (query block, key tile, query, key), across the programs of several query blocks."""
    from dropmae.models.asad_triton import BLOCK_KEYS, BLOCK_QUERIES, _draw_bitmask, _draw_seed, asad_race_keys
    from dropmae.models.asad_triton import unpack_drop_bitmask

    n, p = 49, 0.3
    q, k = _qk(1, 2, n, 16, seed=3)
    length, num_drop, scale = 2 * n, num_dropped_entries(n, p), 16**-0.5
    seed = _draw_seed(q.device, _same_generator(9))
    dropped = unpack_drop_bitmask(_draw_bitmask(q, k, seed, n, num_drop, scale, key_bits=10), length).cpu()
    keys = asad_race_keys(q, k, n, seed, scale, key_bits=10).cpu()
    assert (dropped.sum((-1, -2)) == num_drop).all()
    query, key = torch.meshgrid(torch.arange(length), torch.arange(length), indexing="ij")
    order = ((query // BLOCK_QUERIES) * length + (key // BLOCK_KEYS)) * length * length + query * length + key
    for head in range(2):
        head_keys, head_dropped = keys[0, head], dropped[0, head]
        threshold = head_keys[head_dropped].min()
        assert (head_keys[~head_dropped & head_keys.isfinite()] <= threshold).all()
        at_threshold = head_keys == threshold
        assert at_threshold.sum() > head_dropped[at_threshold].sum() > 0, "no partial tie at the threshold"
        tie_order = order[at_threshold].argsort()
        taken = head_dropped[at_threshold][tie_order]
        assert taken[: taken.sum()].all(), "ties were not taken in the fixed order"


@pytest.mark.slow  # under the interpreter: 7 x 13 tiles x 6 passes of numpy
@kernels
def test_recipe_shape_drops_7448_of_76440():
    from dropmae.models.asad_triton import asad_drop_bitmask, unpack_drop_bitmask

    q, k = _qk(1, 2, 196, 32)
    dropped = unpack_drop_bitmask(asad_drop_bitmask(q, k, 196, 0.1), 392)
    assert (dropped.sum((-1, -2)) == 7448).all()
    frame = torch.arange(392, device=dropped.device) // 196
    assert not dropped[..., frame[:, None] != frame[None, :]].any()


@kernels
def test_generator_reproduces_a_draw_and_calls_without_one_differ():
    from dropmae.models.asad_triton import asad_drop_bitmask

    q, k = _qk(2, 2, 16, 8)
    first = asad_drop_bitmask(q, k, 16, 0.2, generator=_same_generator(3))
    assert torch.equal(asad_drop_bitmask(q, k, 16, 0.2, generator=_same_generator(3)), first)
    assert not torch.equal(asad_drop_bitmask(q, k, 16, 0.2, generator=_same_generator(4)), first)
    assert not torch.equal(asad_drop_bitmask(q, k, 16, 0.2), asad_drop_bitmask(q, k, 16, 0.2))
    # Different (sample, head)s of one call draw independently.
    same = _qk(1, 1, 16, 8)
    q2, k2 = same[0].expand(2, 2, -1, -1).contiguous(), same[1].expand(2, 2, -1, -1).contiguous()
    bits = asad_drop_bitmask(q2, k2, 16, 0.2)
    assert not torch.equal(bits[0, 0], bits[0, 1]) and not torch.equal(bits[0, 0], bits[1, 0])


@pytest.mark.slow  # under the interpreter: every (sample, head) is a program run in Python
@kernels
def test_inclusion_frequencies_match_sequential_sampling_without_replacement():
    """The existing DP over subsets (tests/test_asad.py) for N = 3, k = 6 of 12 candidates."""
    from test_asad import _exact_inclusion_probabilities

    from dropmae.models.asad_triton import asad_drop_bitmask, unpack_drop_bitmask

    n, p = 3, 0.5
    k_drop = num_dropped_entries(n, p)
    q, k = _qk(1, 1, n, 8, seed=1, sharpness=2.0)
    scale = 8**-0.5
    weights = asad_weights((q * scale) @ k.transpose(-2, -1), n)[0, 0].cpu()  # [2, N, N]
    positions = [(f * n + i, f * n + j) for f in range(2) for i in range(n) for j in range(n)]
    exact = _exact_inclusion_probabilities(weights.flatten(), k_drop)
    # Many (sample, head)s of one call are independent draws from the same weights. The
    # interpreter runs each in Python: fewer draws there, a looser (still 5-sigma) bound.
    draws = 20480 if ON_CUDA else 512
    heads = 32
    repeated_q = q.expand(draws // heads, heads, -1, -1).contiguous()
    repeated_k = k.expand(draws // heads, heads, -1, -1).contiguous()
    bits = asad_drop_bitmask(repeated_q, repeated_k, n, p, generator=_same_generator(11))
    frequency = unpack_drop_bitmask(bits, 2 * n).double().mean((0, 1)).cpu()
    rows, cols = zip(*positions)
    observed = frequency[list(rows), list(cols)]
    tolerance = 5 * (exact * (1 - exact) / draws).sqrt() + 1e-4
    assert ((observed - exact).abs() <= tolerance).all(), (observed, exact)


def test_pack_and_unpack_round_trip():
    from dropmae.models.asad_triton import pack_drop_mask, unpack_drop_bitmask

    for length in (6, 32, 40, 392):
        mask = torch.rand(2, 3, length, length, generator=torch.Generator().manual_seed(length)) < 0.4
        mask[..., -1] = True  # bit 31 of a word: the int32 sign bit
        bits = pack_drop_mask(mask)
        assert bits.dtype == torch.int32 and bits.shape == (2, 3, length, (length + 31) // 32)
        assert torch.equal(unpack_drop_bitmask(bits, length), mask)


def _random_drop_mask(batch, heads, length, seed, share=0.3):
    mask = torch.rand(batch, heads, length, length, generator=torch.Generator().manual_seed(seed)) < share
    mask.diagonal(dim1=-2, dim2=-1).fill_(False)
    mask[0, 0, 1, :] = True  # a row left with its diagonal only, and whole tiles dropped
    mask[0, 0, 1, 1] = False
    return mask.to(DEVICE)


@kernels
@pytest.mark.parametrize("length,dim", [(32, 8), (98, 32)])
def test_bitmask_attention_is_sdpa_with_the_minus_infinity_bias(length, dim):
    from dropmae.models.asad_triton import bitmask_attention, pack_drop_mask

    generator = torch.Generator().manual_seed(length)
    q, k, v, grad = (torch.randn(2, 2, length, dim, generator=generator).to(DEVICE) for _ in range(4))
    mask = _random_drop_mask(2, 2, length, seed=length)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    out = bitmask_attention(q, k, v, pack_drop_mask(mask))
    bias = torch.zeros(mask.shape, device=DEVICE).masked_fill(mask, float("-inf"))
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    got_grads = torch.autograd.grad(out, (q, k, v), grad)
    expected_grads = torch.autograd.grad(expected, (q, k, v), grad)
    for name, got, want in zip("qkv", got_grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=f"d{name}")


@pytest.mark.skipif(not ON_CUDA, reason="bf16 tensor-core dots: CUDA only")
def test_bitmask_attention_in_bf16_is_sdpa_within_bf16_tolerance():
    from dropmae.models.asad_triton import bitmask_attention, pack_drop_mask

    generator = torch.Generator().manual_seed(0)
    q, k, v, grad = (torch.randn(4, 16, 392, 32, generator=generator).cuda().bfloat16() for _ in range(4))
    mask = _random_drop_mask(4, 16, 392, seed=1, share=0.1)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    out = bitmask_attention(q, k, v, pack_drop_mask(mask))
    bias = torch.zeros(mask.shape, device="cuda", dtype=torch.bfloat16).masked_fill(mask, float("-inf"))
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    torch.testing.assert_close(out, expected, rtol=2e-2, atol=2e-2)
    for got, want in zip(torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(expected, (q, k, v), grad)):
        torch.testing.assert_close(got.float(), want.float(), rtol=5e-2, atol=5e-2)


@kernels
def test_training_step_with_the_same_mask_gives_the_torch_paths_loss(monkeypatch):
    """A whole DropMAE step: the Triton path (bitmask attention) and the torch path (SDPA with the
    bias) given the same drop mask give the same loss and gradients."""
    from dropmae.models import dropmae as dropmae_module
    from dropmae.models import asad_triton
    from dropmae.models.dropmae import DropMAE

    torch.manual_seed(0)
    shapes = dict(img_size=32, patch_size=8, encoder="micro", decoder_embed_dim=32, decoder_depth=2,
                  decoder_num_heads=2)
    model = DropMAE(**shapes, asad_p=0.2).to(DEVICE).train()
    frames = torch.randn(2, 2, 3, 32, 32, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    length = 2 * model.tokens_per_frame
    masks = {}  # one fixed mask per decoder layer call, shared by both paths

    def fixed_mask(call):
        if call not in masks:
            masks[call] = _random_drop_mask(2, 2, length, seed=100 + call, share=0.2)
        return masks[call]

    calls = {"torch": 0, "triton": 0}

    def torch_bias(logits, n, p, dtype, generator=None):
        mask = fixed_mask(calls["torch"])
        calls["torch"] += 1
        return torch.zeros(logits.shape, dtype=dtype, device=logits.device).masked_fill(mask, float("-inf"))

    def triton_bits(q, k, n, p, scale=None, generator=None):
        mask = fixed_mask(calls["triton"])
        calls["triton"] += 1
        return asad_triton.pack_drop_mask(mask)

    monkeypatch.setattr(dropmae_module, "asad_attention_bias", torch_bias)
    monkeypatch.setattr(asad_triton, "asad_drop_bitmask", triton_bits)
    results = {}
    for kernel in ("torch", "triton"):
        model.set_asad_kernel(kernel)
        model.zero_grad(set_to_none=True)
        torch.manual_seed(7)  # the same token masking
        loss = model(frames)[0]
        loss.backward()
        results[kernel] = loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}
    assert calls == {"torch": 2, "triton": 2}
    torch.testing.assert_close(results["triton"][0], results["torch"][0], rtol=1e-5, atol=1e-6)
    for name, grad in results["torch"][1].items():
        torch.testing.assert_close(results["triton"][1][name], grad, rtol=1e-4, atol=1e-6, msg=name)


@kernels
def test_training_model_with_triton_asad_compiles_to_one_graph():
    from dropmae.models.dropmae import DropMAE

    torch.manual_seed(0)
    model = DropMAE(img_size=32, patch_size=8, encoder="micro", decoder_embed_dim=32, decoder_depth=2,
                    decoder_num_heads=2, asad_p=0.2, asad_kernel="triton").to(DEVICE).train()
    explanation = torch._dynamo.explain(model)(torch.randn(2, 2, 3, 32, 32, device=DEVICE))
    assert explanation.graph_break_count == 0, explanation.break_reasons


@pytest.mark.skipif(not ON_CUDA, reason="host-device synchronisation exists on CUDA only")
def test_triton_asad_does_not_synchronise_with_the_host():
    from dropmae.models.asad_triton import asad_drop_bitmask, bitmask_attention

    q, k = _qk(4, 4, 196, 32)
    v = torch.randn_like(q).requires_grad_()
    q.requires_grad_()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host-device synchronisation raises
    try:
        out = bitmask_attention(q, k, v, asad_drop_bitmask(q, k, 196, 0.1))
        out.backward(torch.ones_like(out))
    finally:
        torch.cuda.set_sync_debug_mode("default")


@kernels
def test_custom_ops_pass_opcheck():
    """Fake (meta) kernels agree with the real ones on shapes and strides, for the strided q, k, v
    views the model passes (a wrong stride only shows under torch.compile's Inductor)."""
    from dropmae.models.asad_triton import _draw_seed, pack_drop_mask

    n, dim = 16, 8
    qkv = torch.randn(2, 2 * n, 3, 2, dim, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # as ASADAttention slices them
    bits = pack_drop_mask(_random_drop_mask(2, 2, 2 * n, seed=0))
    seed = _draw_seed(q.device, _same_generator(0))
    torch.library.opcheck(torch.ops.dropmae.asad_drop_bitmask.default, (q, k, seed, n, num_dropped_entries(n, 0.2),
                                                                           dim**-0.5))
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    torch.library.opcheck(torch.ops.dropmae.bitmask_attention_forward.default, (q, k, v, bits, dim**-0.5))


def test_asad_kernel_choice():
    from dropmae.models.dropmae import DropMAE, uses_triton_asad

    assert not uses_triton_asad("torch", torch.device("cuda"))
    assert uses_triton_asad("auto", torch.device("cuda"))
    assert not uses_triton_asad("auto", torch.device("cpu"))
    if not INTERPRETED:
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
            uses_triton_asad("triton", torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown ASAD kernel"):
        DropMAE(img_size=32, patch_size=8, encoder="micro", decoder_embed_dim=32, decoder_depth=1,
                decoder_num_heads=2, asad_kernel="cuda")
