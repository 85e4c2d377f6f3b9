"""What each stage of the experiment DAG does. Snakemake's workflow scripts and the DVC stage
commands (``dropmae stage ...``) both call these functions, with paths from :mod:`layout`."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from dropmae.config import Config, config_from_dict, config_to_dict
from dropmae.engine.checkpoint import LAST_CHECKPOINT, atomic_torch_save, load_checkpoint
from dropmae.workflow.layout import Cell, ensure_parent, frames_dir

RUN_ARTIFACTS = ("checkpoint-*.pth", "log.jsonl", "summary.json")
# Settings that change how a run is executed or logged but not what it computes; a checkpoint
# written under other values of these is resumed as it is.
OPERATIONAL_KEYS = {
    "pretrain": {"methods", "epochs", "num_workers", "keep_epochs", "checkpoint_every_steps", "log_every_steps"},
    "data.extraction": {"workers", "max_bad_fraction"},
}

# The analysis settings an analyse job depends on (rule params and dvc.yaml params).
ANALYSIS_KEYS = ("heldout_pairs", "batch_size", "seed", "figure_pairs")


def build_demo_videos(output_dir: str | Path) -> Path:
    from dropmae.demo import build_demo_video_tree

    return build_demo_video_tree(output_dir, clip_frames=20)


def extract_source(config: Config, source: str, output_dir: str | Path) -> pd.DataFrame:
    from dropmae.data.extract import ExtractionSettings, extract_frames

    settings = ExtractionSettings(**dataclasses.asdict(config.data.extraction))
    manifest = extract_frames(config.data.sources[source].videos, output_dir, settings, progress=False)
    counts = manifest["status"].value_counts().to_dict()
    print(f"extracted {source}: {counts} -> {output_dir}")
    return manifest


# ----------------------------------------------------------------------------- pretraining
def run_signature(config: Config, cell: Cell) -> dict:
    """Everything a pretraining run's result depends on (operational keys left out)."""
    values = config_to_dict(config)
    data = values["data"]
    extraction = {k: v for k, v in data["extraction"].items() if k not in OPERATIONAL_KEYS["data.extraction"]}
    pretrain = {k: v for k, v in values["pretrain"].items() if k not in OPERATIONAL_KEYS["pretrain"]}
    return {
        "cell": dataclasses.asdict(cell),
        "videos": data["sources"][cell.source]["videos"],
        "extraction": extraction,
        "model": values["model"],
        "pretrain": pretrain,
    }


def _signature_of_checkpoint(state: dict, cell: Cell) -> dict | None:
    try:
        return run_signature(config_from_dict(state["config"]), cell)
    except Exception:  # written by another version of the config: not resumable
        return None


def supersede_stale_run(config: Config, cell: Cell, run_dir: Path, report: Callable[[str], None] = print) -> None:
    """Move a finished or differently configured run out of the way (never delete it).

    The engine resumes from checkpoint-last; that is right after an interruption, wrong when
    the DAG reruns the cell because its inputs or parameters changed.
    """
    last = run_dir / LAST_CHECKPOINT
    if not last.is_file():
        return
    state = load_checkpoint(last)
    finished = state["epoch"] >= cell.epochs
    same = _signature_of_checkpoint(state, cell) == run_signature(config, cell)
    if same and not finished:
        report(f"resuming {cell.name} from {last} (epoch {state['epoch']}, global step {state['global_step']})")
        return
    archive = run_dir / "superseded" / time.strftime("%Y%m%d-%H%M%S")
    archive.mkdir(parents=True)
    for pattern in RUN_ARTIFACTS:
        for path in run_dir.glob(pattern):
            shutil.move(str(path), archive / path.name)
    why = "it had finished" if finished else "its configuration differs"
    report(f"{cell.name}: the previous run was moved to {archive} ({why}); starting afresh")


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pretrain_data_path(config: Config, cell: Cell) -> str:
    """Extracted frames (pretrain.input: frames) or the source's videos (pretrain.input: video)."""
    if config.pretrain.input == "frames":
        return frames_dir(config, cell.source)
    return config.data.sources[cell.source].videos


def pretrain_cell(config: Config, cell: Cell, data_path: str | Path, model_path: str | Path,
                  run_summary_path: str | Path, report: Callable[[str], None] = print) -> dict:
    """Train one cell through the launcher; write the final weights and a summary of the launch."""
    from dropmae.launch.submitit_launch import launch_pretraining

    model_path, run_summary_path = ensure_parent(model_path), ensure_parent(run_summary_path)
    run_dir = model_path.parent
    supersede_stale_run(config, cell, run_dir, report)
    result = launch_pretraining(config, cell.run(), data_path, run_dir, report=report)
    state = load_checkpoint(run_dir / LAST_CHECKPOINT)
    final = {key: state[key] for key in ("model", "config", "run", "epoch", "global_step")}
    atomic_torch_save(final, model_path)
    summary = {**result, "cell": dataclasses.asdict(cell), "model": str(model_path),
               "model_sha256": sha256_of(model_path), "signature": run_signature(config, cell)}
    run_summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    report(f"{cell.name}: {result['global_step']} steps, last loss {result['last_loss']}, wrote {model_path}")
    return summary


# ----------------------------------------------------------------------------- analysis
def analyse_cell(config: Config, cell: Cell, model_path: str | Path, run_summary_path: str | Path,
                 frames_dir: str | Path, metrics_path: str | Path, attention_path: str | Path,
                 reconstruction_png: str | Path, temporal_matching_png: str | Path) -> dict:
    """Held-out reconstruction loss, decoder attention shares per layer, and the two figures."""
    from dropmae.analysis.attention import decoder_attention_shares, save_temporal_matching_heatmap
    from dropmae.data.pairs import whole_frame_pairs
    from dropmae.engine.evaluate import heldout_reconstruction_loss
    from dropmae.viz.reconstruct import load_pretrained, save_reconstruction_grid

    a = config.analysis
    model, state = load_pretrained(model_path)
    trained_config = config_from_dict(state["config"])  # the cell's own input size and frame gap
    # Raises, naming the folder, when the manifest has no held-out videos.
    heldout = whole_frame_pairs(frames_dir, trained_config.model.img_size, trained_config.pretrain.frame_gap,
                                split="val", seed=a.seed)
    subset = torch.utils.data.Subset(heldout, range(min(a.heldout_pairs, len(heldout))))
    loss = heldout_reconstruction_loss(model, subset, batch_size=a.batch_size, seed=a.seed)
    shares = decoder_attention_shares(model, subset, num_pairs=len(subset), batch_size=a.batch_size, seed=a.seed)
    shares.insert(0, "method", cell.method)
    shares.insert(1, "epochs", cell.epochs)
    shares.to_csv(ensure_parent(attention_path), index=False)
    save_reconstruction_grid(model_path, frames_dir, reconstruction_png, num_pairs=a.figure_pairs, seed=a.seed)
    save_temporal_matching_heatmap(model_path, frames_dir, temporal_matching_png, num_pairs=a.figure_pairs,
                                   seed=a.seed)
    run_summary = json.loads(Path(run_summary_path).read_text())
    metrics = {
        **dataclasses.asdict(cell),
        "heldout_loss": loss,
        "heldout_pairs": len(subset),
        "within_frame_share": float(shares["within_frame"].mean()),
        "between_frame_share": float(shares["between_frame"].mean()),
        "last_train_loss": run_summary["last_loss"],
        "global_step": run_summary["global_step"],
        "checkpoint": str(model_path),
        "checkpoint_sha256": sha256_of(model_path),
        "params": cell_parameters(trained_config, cell),
    }
    ensure_parent(metrics_path).write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def cell_parameters(config: Config, cell: Cell) -> dict:
    """The recipe values a table reader needs to tell cells apart."""
    m, p = config.model, config.pretrain
    return {
        "encoder": m.encoder, "img_size": m.img_size, "patch_size": m.patch_size,
        "asad_p": p.asad_p if cell.method == "dropmae" else 0.0, "mask_ratio": p.mask_ratio,
        "masking": p.masking, "frame_gap": p.frame_gap, "batch_size": p.batch_size, "accum_iter": p.accum_iter,
        "blr": p.blr, "warmup_epochs": p.warmup_epochs, "norm_pix_loss": p.norm_pix_loss, "seed": p.seed,
    }
