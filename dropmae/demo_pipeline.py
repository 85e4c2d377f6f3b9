"""The embedded demo, end to end on the CPU: real clips -> frames -> TwinMAE and DropMAE -> figures."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from dropmae.config import Config, ConfigError, PretrainRun
from dropmae.data.extract import ExtractionSettings, extract_frames
from dropmae.data.pairs import FramePairDataset
from dropmae.demo import build_demo_video_tree
from dropmae.engine.evaluate import heldout_reconstruction_loss
from dropmae.engine.pretrain import pretrain
from dropmae.viz.reconstruct import load_pretrained, save_reconstruction_grid

DEMO_SOURCE = "demo"


def run_demo(config: Config, output_dir: Path, progress: bool = True) -> dict[str, Path]:
    """Build the demo videos, extract frames, pretrain every configured method, draw reconstructions."""
    if DEMO_SOURCE not in config.data.sources:
        raise ConfigError(f"data.sources needs a {DEMO_SOURCE!r} source for the demo (see config/demo.yaml)")
    if len(config.pretrain.epochs) != 1:
        raise ConfigError(f"the demo trains one epoch budget; pretrain.epochs lists {config.pretrain.epochs}")
    videos = build_demo_video_tree(config.data.sources[DEMO_SOURCE].videos, clip_frames=20)
    frames = Path(config.data.frames_root) / DEMO_SOURCE
    extract_frames(videos, frames, ExtractionSettings(**dataclasses.asdict(config.data.extraction)), progress=progress)
    heldout = FramePairDataset(frames, input_size=config.model.img_size, max_gap=config.pretrain.frame_gap,
                               split="val", crop_scale=(1.0, 1.0), seed=config.pretrain.seed)
    outputs: dict[str, Path] = {"frames": frames}
    losses = {}
    for method in config.pretrain.methods:
        run = PretrainRun(method=method, epochs=config.pretrain.epochs[0], source=DEMO_SOURCE)
        run_dir = output_dir / "runs" / f"{method}_ep{run.epochs}"
        outcome = pretrain(config, run, frames, run_dir, progress=progress)
        if outcome.status != "completed":
            raise RuntimeError(f"{method} stopped early ({outcome.status}); rerun the demo to resume it")
        model, _ = load_pretrained(outcome.checkpoint)
        losses[method] = heldout_reconstruction_loss(model, heldout, seed=config.pretrain.seed)
        outputs[f"{method} checkpoint"] = outcome.checkpoint
        outputs[f"{method} reconstructions"] = save_reconstruction_grid(
            outcome.checkpoint, frames, output_dir / f"reconstruction_{method}.png", num_pairs=3
        )
    summary = output_dir / "heldout_loss.json"
    summary.write_text(json.dumps({"heldout_pairs": len(heldout), "reconstruction_loss": losses}, indent=2) + "\n")
    outputs["held-out reconstruction loss"] = summary
    return outputs
