"""ASAD speed, measured side by side in one run.

1. asad_drop_mask against (a) a per-(sample, head) loop with torch.multinomial and
   (b) the authors' approach: a Python loop over the B*H matrices to zero diagonals,
   one batched torch.multinomial, and a boolean-index write; at the paper's decoder
   shape (H = 16, L = 392).
2. One DropMAE training step against one TwinMAE training step (same weights, same
   batch) at ViT-B size.

    python benchmarks/asad.py                      # CPU
    python benchmarks/asad.py --device cuda --batch 64 --step-batch 64 --compile
    python benchmarks/asad.py --skip-mask --encoder micro --compile   # eager and compiled ratio, CPU

Targets: asad_drop_mask >= 3x the per-head loop on CPU, >= 10x the authors' approach on
a GPU; DropMAE/TwinMAE step time <= 1.25 on CPU and <= 1.03 on a GPU.
"""

from __future__ import annotations

import argparse

import torch
from timing import interleaved_times, time_call  # benchmarks/timing.py

from dropmae.models.asad import (
    ATTENTION_FLOOR,
    TEMPORAL_MATCH_FLOOR,
    asad_drop_mask,
    num_dropped_entries,
    reference_asad_drop_mask,
)
from dropmae.models.dropmae import DropMAE


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


def bench_mask(device: torch.device, batch: int, heads: int, tokens_per_frame: int, p: float, repeats: int) -> None:
    logits = torch.randn(batch, heads, 2 * tokens_per_frame, 2 * tokens_per_frame, device=device)
    print(f"\n== ASAD drop mask: B={batch} H={heads} L={2 * tokens_per_frame} p={p} on {device} ==")
    ours = time_call(lambda: asad_drop_mask(logits, tokens_per_frame, p), device, repeats)
    loop = time_call(lambda: reference_asad_drop_mask(logits, tokens_per_frame, p), device, max(1, repeats // 2))
    authors = time_call(lambda: authors_style_asad_drop_mask(logits, tokens_per_frame, p), device, max(1, repeats // 2))
    print(f"asad_drop_mask (vectorised)     {ours * 1e3:10.2f} ms")
    print(f"per-(sample, head) multinomial  {loop * 1e3:10.2f} ms   ratio {loop / ours:6.2f}x")
    print(f"authors' approach               {authors * 1e3:10.2f} ms   ratio {authors / ours:6.2f}x")


def bench_step(device: torch.device, batch: int, repeats: int, encoder: str, p: float, compile_too: bool) -> None:
    print(f"\n== one training step, ViT-{encoder} pair model, batch {batch}, on {device}"
          f"{', eager and torch.compile' if compile_too else ''} ==")
    torch.manual_seed(0)
    twin = DropMAE(encoder=encoder, asad_p=0.0).to(device).train()
    drop = DropMAE(encoder=encoder, asad_p=p).to(device).train()
    drop.load_state_dict(twin.state_dict())
    frames = torch.randn(batch, 2, 3, 224, 224, device=device)
    dtype = torch.bfloat16 if device.type == "cuda" else None
    models = {"twinmae": twin, "dropmae": drop}
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
        twin_time, drop_time = times["twinmae" + suffix], times["dropmae" + suffix]
        print(f"TwinMAE{suffix:9s} step  {twin_time * 1e3:10.1f} ms")
        print(f"DropMAE{suffix:9s} step  {drop_time * 1e3:10.1f} ms   DropMAE/TwinMAE {drop_time / twin_time:.3f}")


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
    parser.add_argument("--skip-step", action="store_true")
    parser.add_argument("--skip-mask", action="store_true")
    parser.add_argument("--compile", action="store_true", help="also time the steps under torch.compile")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""))
    if not args.skip_mask:
        bench_mask(device, args.batch, args.heads, args.tokens_per_frame, args.p, args.repeats)
    if not args.skip_step:
        bench_step(device, args.step_batch, args.step_repeats, args.encoder, args.p, args.compile)


if __name__ == "__main__":
    main()
