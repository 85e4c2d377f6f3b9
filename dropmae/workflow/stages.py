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

import numpy as np
import pandas as pd
import torch

from dropmae.config import Config, config_from_dict, config_to_dict
from dropmae.engine.checkpoint import LAST_CHECKPOINT, atomic_torch_save, load_checkpoint
from dropmae.workflow import layout
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
    """Move a finished or differently configured pretraining run out of the way (never delete it)."""
    signature = run_signature(config, cell)
    _supersede_stale(run_dir, cell.name, lambda state: (state["epoch"] >= cell.epochs,
                                                        _signature_of_checkpoint(state, cell) == signature), report)


def _supersede_stale(run_dir: Path, name: str, judge: Callable[[dict], tuple[bool, bool]],
                     report: Callable[[str], None]) -> None:
    """The engine resumes from checkpoint-last; that is right after an interruption, wrong when
    the DAG reruns the run because its inputs or parameters changed. ``judge(state)`` says
    (finished, same configuration)."""
    last = run_dir / LAST_CHECKPOINT
    if not last.is_file():
        return
    state = load_checkpoint(last)
    finished, same = judge(state)
    if same and not finished:
        report(f"resuming {name} from {last} (epoch {state['epoch']}, global step {state['global_step']})")
        return
    archive = run_dir / "superseded" / time.strftime("%Y%m%d-%H%M%S")
    archive.mkdir(parents=True)
    for pattern in RUN_ARTIFACTS:
        for path in run_dir.glob(pattern):
            shutil.move(str(path), archive / path.name)
    why = "it had finished" if finished else "its configuration differs"
    report(f"{name}: the previous run was moved to {archive} ({why}); starting afresh")


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


# ----------------------------------------------------------------------------- tracking
# Tracking settings that change how a fine-tuning runs or how it is scored, not what it learns.
TRACKING_OPERATIONAL_KEYS = {"preset", "baseline", "benchmarks", "evaluate", "num_workers", "checkpoint_every_steps",
                             "log_every_steps", "clip_margin"}
TRACKING_TEST_KEYS = ("template_factor", "search_factor", "clip_margin")


def build_demo_benchmark_stage(videos_root: str | Path, summary_path: str | Path) -> dict:
    """The embedded tracking / segmentation benchmark, next to its summary."""
    from dropmae.tracking.demo_benchmark import DemoBenchmarkSettings, build_demo_benchmark

    summary_path = ensure_parent(summary_path)
    # Val targets are objects also seen in training: the bank has 17 objects, too few for a
    # micro tracker to generalise to held-out ones (GOT-10k's one-shot rule is an option there).
    summary = build_demo_benchmark(videos_root, summary_path.parent, DemoBenchmarkSettings(holdout_val_objects=False))
    summary_path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def tracker_signature(config: Config, tracker: str) -> dict:
    """Everything a fine-tuned tracker depends on besides its pretraining checkpoint (operational keys left out)."""
    values = config_to_dict(config)["tracking"]
    signature = {k: v for k, v in values.items() if k not in TRACKING_OPERATIONAL_KEYS}
    signature["train_data"] = {name: values["benchmarks"][name] for name in values["train"]}
    if tracker == layout.SCRATCH:  # the encoder's size then comes from model.*
        signature["model"] = {"encoder": config.model.encoder, "patch_size": config.model.patch_size}
    return signature


def finetune_tracker_stage(config: Config, tracker: str, pretrained_model: str | Path | None, model_path: str | Path,
                           summary_path: str | Path, report: Callable[[str], None] = print) -> dict:
    """Fine-tune one tracker through the launcher; write its final weights and a summary."""
    from dropmae.launch.submitit_launch import launch_tracker_finetuning

    model_path, summary_path = ensure_parent(model_path), ensure_parent(summary_path)
    run_dir = model_path.parent
    signature = tracker_signature(config, tracker)

    def judge(state: dict) -> tuple[bool, bool]:
        try:
            same = tracker_signature(config_from_dict(state["config"]), tracker) == signature
        except Exception:  # written by another version of the config
            same = False
        return state["epoch"] >= config.tracking.epochs, same and state.get("pretrained") == (
            None if pretrained_model is None else str(pretrained_model))

    _supersede_stale(run_dir, f"tracker {tracker}", judge, report)
    result = launch_tracker_finetuning(config, tracker, pretrained_model, run_dir, report=report)
    state = load_checkpoint(run_dir / LAST_CHECKPOINT)
    final = {key: state[key] for key in ("model", "config", "pretrained", "architecture", "epoch", "global_step")}
    atomic_torch_save(final, model_path)
    summary = {**result, "tracker": tracker, "pretrained": None if pretrained_model is None else str(pretrained_model),
               "pretrained_sha256": None if pretrained_model is None else sha256_of(pretrained_model),
               "model": str(model_path), "model_sha256": sha256_of(model_path), "signature": signature}
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    report(f"tracker {tracker}: {result['global_step']} steps, last loss {result['last_loss']}, wrote {model_path}")
    return summary


def evaluate_tracker_stage(config: Config, tracker: str, benchmark: str, model_path: str | Path | None,
                           metrics_path: str | Path, plot_path: str | Path, raw_dir: str | Path,
                           report: Callable[[str], None] = print) -> dict:
    """Run one tracker over a benchmark split, write official-format results, score them where the
    split has ground truth, and plot the success curve."""
    from dropmae.tracking.datasets import read_benchmark
    from dropmae.tracking.metrics import evaluate_got10k, evaluate_ope, save_success_plot
    from dropmae.tracking.tracker import DropTracker, TrackerSettings, run_first_box_baseline, run_sequence, write_result
    from dropmae.tracking.train import load_finetuned_tracker

    t = config.tracking
    bench, split = t.benchmarks[benchmark], t.evaluate[benchmark].split
    sequences = read_benchmark(bench.format, bench.root, split)  # errors name the file before any tracking
    raw_dir = Path(raw_dir)
    if raw_dir.exists():
        shutil.rmtree(raw_dir)
    raw_dir.mkdir(parents=True)
    if tracker == layout.FIRST_BOX:
        run = run_first_box_baseline
    else:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model, trained = load_finetuned_tracker(model_path, device)
        # Crop factors are the fine-tuning's (the network saw those scales); the margin is this run's.
        settings = TrackerSettings(trained.tracking.template_factor, trained.tracking.search_factor, t.clip_margin)
        online = DropTracker(model, settings, device)
        run = lambda sequence: run_sequence(online, sequence)  # noqa: E731
    frames = 0
    for sequence in sequences:
        boxes, times = run(sequence)
        write_result(bench.format, raw_dir, sequence.name, boxes, times)
        frames += len(boxes)
    scored = all(len(s.boxes) == len(s.frames) for s in sequences)
    metrics: dict = {"tracker": tracker, "benchmark": benchmark, "format": bench.format, "split": split,
                     "sequences": len(sequences), "frames": frames, "scored": scored, "results": str(raw_dir)}
    if model_path is not None:
        metrics.update(checkpoint=str(model_path), checkpoint_sha256=sha256_of(model_path))
    if scored:
        if bench.format == "got10k":
            scores = evaluate_got10k(sequences, raw_dir)
        else:
            scores = evaluate_ope(sequences, raw_dir, bench.format)
        curve = scores.pop("success_curve")
        metrics.update({k: v for k, v in scores.items() if not isinstance(v, (dict, list))})
        metrics["success_curve"] = [float(v) for v in curve]
        headline = scores.get("ao", scores.get("auc"))
        save_success_plot({tracker: (np.linspace(0, 1, len(curve)), np.asarray(curve))}, ensure_parent(plot_path),
                          f"{benchmark} ({split}): {tracker}")
        report(f"{tracker} on {benchmark} {split}: {headline}")
    else:
        report(f"{benchmark} {split} ships first-frame boxes only: wrote result files for its evaluation server")
        _placeholder_plot(plot_path, f"{benchmark} {split}: no ground truth here; submit {raw_dir}")
    ensure_parent(metrics_path).write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def _placeholder_plot(path: str | Path, message: str) -> None:
    """The rule's plot output when a split cannot be scored here: a figure that says why."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 1.5))
    axis.axis("off")
    axis.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    figure.savefig(ensure_parent(path), dpi=100)
    plt.close(figure)
