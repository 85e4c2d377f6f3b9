"""Tracker inference speed: frames per second of DropTrack's track() step, measured side by side
in one run for candidate elimination on (the recipe's keep ratio) and off (keep ratio 1).

    python benchmarks/tracker_fps.py                      # micro demo tracker on the CPU
    python benchmarks/tracker_fps.py --encoder base --template 128 --search 256   # OSTrack-256 (GPU if present)
    python benchmarks/tracker_fps.py --encoder base --template 192 --search 384 --patch 16

A frame's time covers what track() does: the search crop (cv2), normalisation, the network
and the box decoding with the Hann window; the template is cut once, as in a real run.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from dropmae.engine.loop import default_device
from dropmae.tracking.model import DropTrack
from dropmae.tracking.tracker import DropTracker, TrackerSettings


def frames_per_second(tracker: DropTracker, frames: list[np.ndarray], box, warmup: int) -> float:
    tracker.initialize(frames[0], box)
    for frame in frames[1 : 1 + warmup]:
        tracker.track(frame)
    if tracker.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for frame in frames[1 + warmup :]:
        tracker.track(frame)
    if tracker.device.type == "cuda":
        torch.cuda.synchronize()
    return (len(frames) - 1 - warmup) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="micro")
    parser.add_argument("--patch", type=int, default=8)
    parser.add_argument("--template", type=int, default=32)
    parser.add_argument("--search", type=int, default=64)
    parser.add_argument("--search-factor", type=float, default=4.0)
    parser.add_argument("--ce-locations", type=int, nargs="*", default=None, help="default: 2 (micro) or 3 6 9")
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = default_device()
    locations = args.ce_locations if args.ce_locations is not None else ([2] if args.encoder == "micro" else [3, 6, 9])
    rng = np.random.default_rng(0)
    size = 4 * args.search
    frames = [rng.integers(0, 255, (size * 3 // 4, size, 3), dtype=np.uint8) for _ in range(args.frames)]
    box = [size / 2 - args.template / 2, size * 3 / 8 - args.template / 2, args.template, args.template]
    print(f"DropTrack {args.encoder}/{args.patch}, template {args.template}, search {args.search}, "
          f"{len(frames)} frames of {frames[0].shape[1]}x{frames[0].shape[0]} on {device}"
          + ("" if device.type == "cuda" else f" ({torch.get_num_threads()} threads)"))
    results = {}
    for keep_ratio in (1.0, 0.7):
        torch.manual_seed(0)
        model = DropTrack(args.encoder, args.patch, args.template, args.search, ce_locations=locations,
                          ce_keep_ratio=keep_ratio)
        tracker = DropTracker(model, TrackerSettings(2.0, args.search_factor, 10.0), device)
        results[keep_ratio] = frames_per_second(tracker, frames, box, args.warmup)
        print(f"  keep ratio {keep_ratio:.1f} at blocks {locations}: {results[keep_ratio]:8.1f} frames/s")
    print(f"  candidate elimination speed-up: {results[0.7] / results[1.0]:.2f}x")


if __name__ == "__main__":
    main()
