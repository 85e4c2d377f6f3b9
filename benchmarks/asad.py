"""ASAD speed, measured side by side in one run.

1. The drop mask: asad_drop_mask against (a) a per-(sample, head) loop with torch.multinomial
   and (b) the authors' approach: a Python loop over the B*H matrices to zero diagonals, one
   batched torch.multinomial, and a boolean-index write; at the paper's decoder shape (H = 16,
   L = 392). On CUDA also the fused Triton draw (asad_triton.asad_drop_bitmask), which starts
   from q and k (it recomputes the logits) while the others start from the logits.
2. One decoder layer (CUDA): where DropMAE's extra time goes, torch path (logits, bias, SDPA
   with the bias) against the Triton path (bitmask draw, bitmask attention) and TwinMAE's SDPA.
3. One DropMAE training step against one TwinMAE training step (same weights, same batch) at
   ViT-B size, with each ASAD kernel (--asad-kernels), and each model's peak memory on CUDA.

    python benchmarks/asad.py                      # CPU
    python benchmarks/asad.py --device cuda --batch 64 --step-batch 64 --compile
    python benchmarks/asad.py --skip-mask --encoder micro --compile   # eager and compiled ratio, CPU

Targets: asad_drop_mask >= 3x the per-head loop on CPU; on a GPU the Triton draw >= 10x the
authors' approach, DropMAE/TwinMAE step time <= 1.10 and peak memory <= 1.10x TwinMAE's.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.nn.functional as F
from timing import interleaved_times, time_call  # benchmarks/timing.py

from dropmae.models.asad import (
    ATTENTION_FLOOR,
    TEMPORAL_MATCH_FLOOR,
    asad_attention_bias,
    asad_drop_mask,
    num_dropped_entries,
    reference_asad_drop_mask,
)
from dropmae.models.dropmae import DropMAE


# The Triton paths run on CUDA, or on the CPU under TRITON_INTERPRET=1 (a smoke test of this script at tiny sizes).
TRITON_HERE = os.environ.get("TRITON_INTERPRET") == "1"


def authors_style_asad_drop_mask(logits: torch.Tensor, tokens_per_frame: int, p: float) -> torch.Tensor:
    """The structure of the public code: full weight matrices, a Python loop over the B*H
    matrices to zero their diagonals, one batched multinomial, a boolean-index write."""
    n = tokens_per_frame
    batch, heads, length, _ = logits.shape
    attention = logits.detach().float().softmax(-1)
    within = torch.zeros(length, length, dtype=torch.bool, device=logits.device)
    within[:n, :n] = True
    within[n:, n:] = True
    cross_max = attention.masked_fill(within, 0).amax(-1, keepdim=True) + TEMPORAL_MATCH_FLOOR
    weights = (attention + ATTENTION_FLOOR).masked_fill(~within, 0).view(batch * heads, length, length)
    for index in range(batch * heads):
        weights[index].fill_diagonal_(0)
    weights = weights.view(batch, heads, length, length)
    weights = weights / weights.sum(-1, keepdim=True) * cross_max
    picked = torch.multinomial(weights.view(batch * heads, -1), num_dropped_entries(n, p), replacement=False)
    drop_mask = torch.zeros(batch * heads, length * length, dtype=torch.bool, device=logits.device)
    rows = torch.arange(batch * heads, device=logits.device)[:, None].expand_as(picked)
    drop_mask[rows, picked] = True
    return drop_mask.view(batch, heads, length, length)


def bench_mask(device: torch.device, batch: int, heads: int, tokens_per_frame: int, p: float, repeats: int,
               head_dim: int) -> None:
    length = 2 * tokens_per_frame
    logits = torch.randn(batch, heads, length, length, device=device)
    print(f"\n== ASAD drop mask: B={batch} H={heads} L={length} p={p} on {device} ==")
    ours = time_call(lambda: asad_drop_mask(logits, tokens_per_frame, p), device, repeats)
    loop = time_call(lambda: reference_asad_drop_mask(logits, tokens_per_frame, p), device, max(1, repeats // 2))
    authors = time_call(lambda: authors_style_asad_drop_mask(logits, tokens_per_frame, p), device, max(1, repeats // 2))
    print(f"asad_drop_mask (vectorised)     {ours * 1e3:10.2f} ms")
    print(f"per-(sample, head) multinomial  {loop * 1e3:10.2f} ms   ratio {loop / ours:6.2f}x")
    print(f"authors' approach               {authors * 1e3:10.2f} ms   ratio {authors / ours:6.2f}x")
    if device.type == "cuda" or TRITON_HERE:
        from dropmae.models.asad_triton import asad_drop_bitmask

        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        q, k = (torch.randn(batch, heads, length, head_dim, device=device, dtype=dtype) for _ in range(2))
        fused = time_call(lambda: asad_drop_bitmask(q, k, tokens_per_frame, p), device, repeats, warmup=2)
        print(f"Triton asad_drop_bitmask (q, k) {fused * 1e3:10.2f} ms   authors' approach / Triton "
              f"{authors / fused:6.2f}x (target >= 10x)   asad_drop_mask / Triton {ours / fused:6.2f}x")


def bench_layer(device: torch.device, batch: int, heads: int, tokens_per_frame: int, p: float, repeats: int,
                head_dim: int) -> None:
    """One decoder layer's attention at bf16: TwinMAE, the torch ASAD and the Triton ASAD."""
    from dropmae.models.asad_triton import asad_drop_bitmask, bitmask_attention

    length = 2 * tokens_per_frame
    scale = head_dim**-0.5
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    print(f"\n== one decoder layer: B={batch} H={heads} L={length} d={head_dim} {str(dtype).removeprefix('torch.')} on {device} ==")
    q, k, v, grad = (torch.randn(batch, heads, length, head_dim, device=device, dtype=dtype) for _ in range(4))
    q, k, v = (t.requires_grad_() for t in (q, k, v))

    def forward_backward(attention):
        def run():
            torch.autograd.backward(attention(), grad)
        return run

    def torch_asad():
        with torch.no_grad():
            logits = (q * scale) @ k.transpose(-2, -1)
            bias = asad_attention_bias(logits, tokens_per_frame, p, q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)

    def triton_asad():
        return bitmask_attention(q, k, v, asad_drop_bitmask(q, k, tokens_per_frame, p, scale=scale), scale=scale)

    logits = (q.detach() * scale) @ k.detach().transpose(-2, -1)
    bias = asad_attention_bias(logits, tokens_per_frame, p, q.dtype)
    bits = asad_drop_bitmask(q, k, tokens_per_frame, p, scale=scale)
    parts = {
        "logits q k^T": lambda: (q.detach() * scale) @ k.detach().transpose(-2, -1),
        "asad_attention_bias (torch)": lambda: asad_attention_bias(logits, tokens_per_frame, p, q.dtype),
        "asad_drop_bitmask (Triton)": lambda: asad_drop_bitmask(q, k, tokens_per_frame, p, scale=scale),
        "SDPA fwd+bwd, no bias (TwinMAE)": forward_backward(lambda: F.scaled_dot_product_attention(q, k, v)),
        "SDPA fwd+bwd, -inf bias": forward_backward(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=bias)),
        "bitmask_attention fwd+bwd (Triton)": forward_backward(lambda: bitmask_attention(q, k, v, bits, scale=scale)),
        "whole layer, torch ASAD": forward_backward(torch_asad),
        "whole layer, Triton ASAD": forward_backward(triton_asad),
    }
    times = interleaved_times(parts, device, repeats, warmup=2)
    for name, seconds in times.items():
        print(f"{name:36s} {seconds * 1e3:8.3f} ms")
    twin = times["SDPA fwd+bwd, no bias (TwinMAE)"]
    print(f"extra over TwinMAE per layer: torch ASAD {(times['whole layer, torch ASAD'] - twin) * 1e3:.3f} ms, "
          f"Triton ASAD {(times['whole layer, Triton ASAD'] - twin) * 1e3:.3f} ms")
    print(f"sizes: bf16 bias {bias.numel() * 2 / 2**20:.0f} MiB, bitmask {bits.numel() * 4 / 2**20:.0f} MiB")


def bench_step(device: torch.device, batch: int, repeats: int, encoder: str, p: float, compile_too: bool,
               kernels: list[str]) -> None:
    print(f"\n== one training step, ViT-{encoder} pair model, batch {batch}, on {device}"
          f"{', eager and torch.compile' if compile_too else ''}, ASAD kernels {kernels} ==")
    torch.manual_seed(0)
    twin = DropMAE(encoder=encoder, asad_p=0.0).to(device).train()
    models = {"twinmae": twin}
    for kernel in kernels:
        drop = DropMAE(encoder=encoder, asad_p=p, asad_kernel=kernel).to(device).train()
        drop.load_state_dict(twin.state_dict())
        models[f"dropmae-{kernel}"] = drop
    frames = torch.randn(batch, 2, 3, 224, 224, device=device)
    dtype = torch.bfloat16 if device.type == "cuda" else None
    optimizers = {
        name: torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=device.type == "cuda")
        for name, model in models.items()
    }

    def step(run, optimizer):
        def one_step():
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = run(frames)[0]
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return one_step

    variants = {"": lambda model: model}
    if compile_too:
        variants[" compiled"] = torch.compile
    steps = {name + suffix: step(wrap(model), optimizers[name])
             for suffix, wrap in variants.items() for name, model in models.items()}
    times = interleaved_times(steps, device, repeats, warmup=3 if compile_too else 1)
    for suffix in variants:
        twin_time = times["twinmae" + suffix]
        print(f"{'twinmae' + suffix:26s} step {twin_time * 1e3:9.1f} ms {batch / twin_time:9.1f} pairs/s")
        for name in models:
            if name != "twinmae":
                drop_time = times[name + suffix]
                print(f"{name + suffix:26s} step {drop_time * 1e3:9.1f} ms {batch / drop_time:9.1f} pairs/s   "
                      f"DropMAE/TwinMAE {drop_time / twin_time:.3f} (target <= 1.10)")
    if device.type == "cuda":
        # Peak of one eager step above what is resident before it, plus the model's own
        # parameters and AdamW moments: each model's peak as if it were alone on the GPU.
        peaks = {}
        for name, model in models.items():
            run_step = steps[name]
            torch.cuda.synchronize(device)
            resident = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            run_step()
            torch.cuda.synchronize(device)
            own = 3 * sum(t.numel() * t.element_size() for t in model.parameters())
            peaks[name] = torch.cuda.max_memory_allocated(device) - resident + own
        for name, peak in peaks.items():
            print(f"peak memory {name:16s} {peak / 2**30:7.2f} GiB   ratio to TwinMAE "
                  f"{peak / peaks['twinmae']:.3f}" + ("" if name == "twinmae" else " (target <= 1.10)"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=16, help="batch of the drop-mask benchmark")
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--tokens-per-frame", type=int, default=196)
    parser.add_argument("--p", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--step-batch", type=int, default=2, help="batch of the training-step benchmark")
    parser.add_argument("--step-repeats", type=int, default=5)
    parser.add_argument("--encoder", default="base")
    parser.add_argument("--head-dim", type=int, default=32, help="decoder head width of the Triton draw and layer")
    parser.add_argument("--skip-step", action="store_true")
    parser.add_argument("--skip-mask", action="store_true")
    parser.add_argument("--skip-layer", action="store_true")
    parser.add_argument("--asad-kernels", default=None,
                        help="comma-separated ASAD kernels of the step benchmark (default: torch,triton on CUDA, torch)")
    parser.add_argument("--compile", action="store_true", help="also time the steps under torch.compile")
    args = parser.parse_args()
    device = torch.device(args.device)
    kernels = (args.asad_kernels or ("torch,triton" if device.type == "cuda" or TRITON_HERE else "torch")).split(",")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""))
    if not args.skip_mask:
        bench_mask(device, args.batch, args.heads, args.tokens_per_frame, args.p, args.repeats, args.head_dim)
    if not args.skip_layer and (device.type == "cuda" or TRITON_HERE):
        bench_layer(device, args.batch, args.heads, args.tokens_per_frame, args.p, 2 * args.repeats, args.head_dim)
    if not args.skip_step:
        bench_step(device, args.step_batch, args.step_repeats, args.encoder, args.p, args.compile, kernels)


if __name__ == "__main__":
    main()
