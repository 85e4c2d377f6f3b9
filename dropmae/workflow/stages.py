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

from dropmae.config import PRETRAIN_OPERATIONAL_KEYS, Config, config_from_dict, config_to_dict
from dropmae.engine.checkpoint import LAST_CHECKPOINT, atomic_torch_save, load_checkpoint
from dropmae.engine.loop import default_device
from dropmae.progress import track
from dropmae.workflow import layout
from dropmae.workflow.layout import Cell, ExternalEncoder, RandomInit, ensure_parent, frames_dir

RUN_ARTIFACTS = ("checkpoint-*.pth", "log.jsonl", "summary.json")
# What a finished pretraining cell's model.pth holds (checkpoint-last without optimiser, scaler and RNG state).
PRETRAINED_MODEL_KEYS = ("model", "config", "run", "epoch", "global_step")
# Settings that change how a run is executed or logged but not what it computes; a checkpoint
# written under other values of these is resumed as it is.
OPERATIONAL_KEYS = {
    "pretrain": PRETRAIN_OPERATIONAL_KEYS,
    # a pack holds the same bytes as the frames; a video that times out is retried on the next run
    "data.extraction": {"workers", "max_bad_fraction", "pack", "video_timeout_s"},
}

# The analysis settings an analyse job depends on (rule params and dvc.yaml params).
ANALYSIS_KEYS = ("heldout_pairs", "batch_size", "seed", "figure_pairs")


def build_demo_videos(output_dir: str | Path) -> Path:
    from dropmae.demo.videos import build_demo_video_tree

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
        "cell": cell.record(),
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
    """Extracted frames (pretrain.input: frames or packed) or the source's videos (pretrain.input: video)."""
    if config.pretrain.input in ("frames", "packed"):
        return frames_dir(config, cell.source)
    return config.data.sources[cell.source].videos


def pretrain_cell(config: Config, cell: Cell, data_path: str | Path, model_path: str | Path,
                  run_summary_path: str | Path, report: Callable[[str], None] = print) -> dict:
    """Train one cell through the launcher; write the final weights and a summary of the launch."""
    from dropmae.launch.submitit_launch import launch_pretraining

    model_path, run_summary_path = ensure_parent(model_path), ensure_parent(run_summary_path)
    run_dir = model_path.parent
    supersede_stale_run(config, cell, run_dir, report)
    result = launch_pretraining(config, cell, data_path, run_dir, report=report)
    state = load_checkpoint(run_dir / LAST_CHECKPOINT)
    final = {key: state[key] for key in PRETRAINED_MODEL_KEYS}
    atomic_torch_save(final, model_path)
    summary = {**result, "cell": cell.record(), "model": str(model_path),
               "model_sha256": sha256_of(model_path), "signature": run_signature(config, cell)}
    run_summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    report(f"{cell.name}: {result['global_step']} steps, last loss {result['last_loss']}, wrote {model_path}")
    return summary


def random_init_signature(config: Config) -> dict:
    """Everything the random-init control's weights depend on: the model and the seed."""
    return {"model": config_to_dict(config)["model"], "seed": config.pretrain.seed}


def random_init_stage(config: Config, control: RandomInit, model_path: str | Path, metrics_path: str | Path,
                      report: Callable[[str], None] = print) -> dict:
    """Save a source's control encoder: the model a twinmae cell starts training from, untrained,
    as a finished cell's model.pth (so every loader takes it unchanged), and its identity for the tables."""
    from dropmae.engine.pretrain import build_model
    from dropmae.seeding import derive_seed

    run = Cell(method="twinmae", epochs=0, source=control.source)  # twinmae: no ASAD, nothing to drop
    torch.manual_seed(derive_seed(config.pretrain.seed, 0))  # pretrain()'s seed on rank 0, whose weights DDP broadcasts
    model = build_model(config, run)
    state = {"model": model.state_dict(), "config": config_to_dict(config), "run": dataclasses.asdict(run),
             "epoch": 0, "global_step": 0}  # PRETRAINED_MODEL_KEYS, as pretrain_cell writes them
    atomic_torch_save(state, ensure_parent(model_path))
    m = config.model
    metrics = {"source": control.source, "method": layout.RANDOM_INIT, "epochs": 0, "global_step": 0,
               "checkpoint": str(model_path), "checkpoint_sha256": sha256_of(model_path),
               "params": {"encoder": m.encoder, "img_size": m.img_size, "patch_size": m.patch_size,
                          "seed": config.pretrain.seed}}
    ensure_parent(metrics_path).write_text(json.dumps(metrics, indent=2) + "\n")
    report(f"{control.name}: untrained {m.encoder} model (seed {config.pretrain.seed}), wrote {model_path}")
    return metrics


def import_external_stage(config: Config, encoder: ExternalEncoder, model_path: str | Path, metrics_path: str | Path,
                          report: Callable[[str], None] = print) -> dict:
    """Convert an external pretrained encoder (external_encoders.<key>) to a cell's model.pth format,
    with its identity for the tables: label, format, the source file's sha256 and the load report."""
    from timm.layers import build_sincos2d_pos_embed

    from dropmae.models.external import load_external_encoder

    spec = config.external_encoders[encoder.key]
    source_sha256 = sha256_of(spec.path)
    checkpoint, load_report = load_external_encoder(spec.path, spec.format)
    table = checkpoint["model"]["pos_embed"].float()
    grid = load_report.img_size // load_report.patch_size
    # The probe rebuilds a sin-cos table for other frame sizes only when the file's table is ours.
    sincos = bool(torch.allclose(table[0], build_sincos2d_pos_embed([grid, grid], table.shape[-1]), atol=1e-5))
    identity = {"key": encoder.key, "label": spec.label, "format": load_report.format, "source": spec.path,
                "source_sha256": source_sha256, "sincos_positions": sincos, "load_report": load_report.record()}
    atomic_torch_save({"model": checkpoint["model"], "config": checkpoint["config"], "external": identity},
                      ensure_parent(model_path))
    metrics = {**encoder.record(), "source": layout.EXTERNAL, "method": spec.label, "label": spec.label,
               "format": load_report.format, "checkpoint": spec.path, "checkpoint_sha256": source_sha256,
               "converted": str(model_path), "converted_sha256": sha256_of(model_path), "sincos_positions": sincos,
               "load_report": load_report.record(),
               "params": {"encoder": load_report.encoder, "img_size": load_report.img_size,
                          "patch_size": load_report.patch_size, "format": load_report.format}}
    ensure_parent(metrics_path).write_text(json.dumps(metrics, indent=2) + "\n")
    report(f"{encoder.name}: {load_report.summary()}; wrote {model_path}")
    return metrics


# ----------------------------------------------------------------------------- analysis
def analyse_cell(config: Config, cell: Cell, model_path: str | Path, run_summary_path: str | Path,
                 frames_dir: str | Path, metrics_path: str | Path, attention_path: str | Path,
                 reconstruction_png: str | Path, temporal_matching_png: str | Path) -> dict:
    """Held-out reconstruction loss, decoder attention shares per layer, and the two figures."""
    from dropmae.analysis.attention import decoder_attention_shares, save_temporal_matching_heatmap
    from dropmae.data.pairs import whole_frame_pairs
    from dropmae.engine.evaluate import heldout_reconstruction_loss
    from dropmae.engine.pretrain import load_pretrained
    from dropmae.viz.reconstruct import save_reconstruction_grid

    a = config.analysis
    model, state = load_pretrained(model_path)  # once: every step below takes this model
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
    save_reconstruction_grid(model, state, frames_dir, reconstruction_png, num_pairs=a.figure_pairs, seed=a.seed,
                             checkpoint_name=Path(model_path).name)
    save_temporal_matching_heatmap(model, state, frames_dir, temporal_matching_png, num_pairs=a.figure_pairs,
                                   seed=a.seed)
    run_summary = json.loads(Path(run_summary_path).read_text())
    metrics = {
        **cell.record(),
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


def demo_benchmark_settings():
    """The settings the DAG builds the demo benchmark with (and benchmarks/demo_payoff.py renders with)."""
    from dropmae.demo.benchmark import DemoBenchmarkSettings

    # Val targets are objects also seen in training: the bank has 17 objects, too few for a
    # micro tracker to generalise to held-out ones (GOT-10k's one-shot rule is an option there);
    # the unseen split holds the objects no stage trains on.
    return DemoBenchmarkSettings(holdout_val_objects=False)


def demo_benchmark_signature() -> dict:
    """What the demo benchmark is built from, besides the videos: its settings and photo lists."""
    from dropmae.demo.benchmark import TRAIN_PHOTOS, UNSEEN_PHOTOS

    return {"settings": demo_benchmark_settings().as_dict(), "train_photos": list(TRAIN_PHOTOS),
            "unseen_photos": list(UNSEEN_PHOTOS)}


def build_demo_benchmark_stage(videos_root: str | Path, summary_path: str | Path) -> dict:
    """The embedded tracking / segmentation benchmark, next to its summary."""
    from dropmae.demo.benchmark import build_demo_benchmark

    summary_path = ensure_parent(summary_path)
    summary = build_demo_benchmark(videos_root, summary_path.parent, demo_benchmark_settings())
    summary_path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def _downstream_signature(config: Config, section: str, operational: set[str], name: str) -> dict:
    """Everything a fine-tuned model of config.<section> depends on besides its pretraining checkpoint."""
    values = config_to_dict(config)[section]
    signature = {k: v for k, v in values.items() if k not in operational}
    signature["train_data"] = {benchmark: values["benchmarks"][benchmark] for benchmark in values["train"]}
    if name == layout.SCRATCH:  # the encoder's size then comes from model.*
        signature["model"] = {"encoder": config.model.encoder, "patch_size": config.model.patch_size}
    return signature


def tracker_signature(config: Config, tracker: str) -> dict:
    """Everything a fine-tuned tracker depends on besides its pretraining checkpoint (operational keys left out)."""
    return _downstream_signature(config, "tracking", TRACKING_OPERATIONAL_KEYS, tracker)


def _finetune_downstream(config: Config, task: layout.Downstream, name: str, pretrained_model: str | Path | None,
                         model_path: str | Path, summary_path: str | Path, signature_of: Callable[[Config], dict],
                         launch: Callable[..., dict], report: Callable[[str], None]) -> dict:
    """Fine-tune one tracker or segmenter through the launcher; write its final weights and a summary.

    A previous run in the folder is resumed only when it is unfinished and was started with the
    same signature and pretraining checkpoint; otherwise it is moved aside.
    """
    model_path, summary_path = ensure_parent(model_path), ensure_parent(summary_path)
    run_dir = model_path.parent
    signature = signature_of(config)
    pretrained = None if pretrained_model is None else str(pretrained_model)
    what = f"{task.wildcard} {name}"

    def judge(state: dict) -> tuple[bool, bool]:
        try:
            same = signature_of(config_from_dict(state["config"])) == signature
        except Exception:  # written by another version of the config
            same = False
        return state["epoch"] >= task.settings(config).epochs, same and state.get("pretrained") == pretrained

    _supersede_stale(run_dir, what, judge, report)
    result = launch(config, name, pretrained_model, run_dir, report=report)
    state = load_checkpoint(run_dir / LAST_CHECKPOINT)
    final = {key: state[key] for key in ("model", "config", "pretrained", "architecture", "epoch", "global_step")}
    atomic_torch_save(final, model_path)
    summary = {**result, task.wildcard: name, "pretrained": pretrained,
               "pretrained_sha256": None if pretrained_model is None else sha256_of(pretrained_model),
               "model": str(model_path), "model_sha256": sha256_of(model_path), "signature": signature}
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    report(f"{what}: {result['global_step']} steps, last loss {result['last_loss']}, wrote {model_path}")
    return summary


def finetune_tracker_stage(config: Config, tracker: str, pretrained_model: str | Path | None, model_path: str | Path,
                           summary_path: str | Path, report: Callable[[str], None] = print) -> dict:
    """Fine-tune one tracker through the launcher; write its final weights and a summary."""
    from dropmae.launch.submitit_launch import launch_tracker_finetuning

    return _finetune_downstream(config, layout.TRACKING, tracker, pretrained_model, model_path, summary_path,
                                lambda values: tracker_signature(values, tracker), launch_tracker_finetuning, report)


def _fresh_folder(path: str | Path) -> Path:
    """An empty folder for a run's result files (a rerun leaves no stale file behind)."""
    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def evaluate_tracker_stage(config: Config, tracker: str, benchmark: str, model_path: str | Path | None,
                           metrics_path: str | Path, plot_path: str | Path, raw_dir: str | Path,
                           report: Callable[[str], None] = print) -> dict:
    """Run one tracker over a benchmark split, write official-format results, score them where the
    split has ground truth, and plot the success curve."""
    from dropmae.tracking.datasets import read_benchmark
    from dropmae.tracking.metrics import OPE_CENTER_THRESHOLDS, evaluate_got10k, evaluate_ope, save_success_plot
    from dropmae.tracking.tracker import DropTracker, TrackerSettings, run_first_box_baseline, run_sequence, write_result
    from dropmae.tracking.train import load_finetuned_tracker

    t = config.tracking
    bench, split = t.benchmarks[benchmark], t.evaluate[benchmark].split
    sequences = read_benchmark(bench.format, bench.root, split)  # errors name the file before any tracking
    raw_dir = _fresh_folder(raw_dir)
    if tracker == layout.FIRST_BOX:
        run = run_first_box_baseline
    else:
        device = default_device()
        model, trained = load_finetuned_tracker(model_path, device)
        # Crop factors are the fine-tuning's (the network saw those scales); the margin is this run's.
        settings = TrackerSettings(trained.tracking.template_factor, trained.tracking.search_factor, t.clip_margin)
        online = DropTracker(model, settings, device)
        run = lambda sequence: run_sequence(online, sequence)  # noqa: E731
    frames = 0
    for sequence in track(sequences, desc=f"track {tracker} on {benchmark} ({split})", unit="sequence"):
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
        # Centre-error precision over 0..50 px (OTB / LaSOT; computed for GOT-10k too), for the precision plot.
        metrics["precision_curve"] = [float(v) for v in scores["precision_curve"]]
        metrics["precision_thresholds"] = OPE_CENTER_THRESHOLDS.tolist()
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


# ----------------------------------------------------------------------------- segmentation
# Segmentation settings that change how a fine-tuning runs or how its segmenter is run and scored
# (inference keys and the probe), not what it learns.
SEGMENTATION_OPERATIONAL_KEYS = {"preset", "baseline", "benchmarks", "evaluate", "num_workers",
                                 "checkpoint_every_steps", "log_every_steps", "frame_short_side", "use_previous_frame",
                                 "probe"}
SEGMENTATION_TEST_KEYS = ("frame_short_side", "use_previous_frame")


def segmenter_signature(config: Config, segmenter: str) -> dict:
    """Everything a fine-tuned segmenter depends on besides its pretraining checkpoint (operational keys left out)."""
    return _downstream_signature(config, "segmentation", SEGMENTATION_OPERATIONAL_KEYS, segmenter)


def finetune_segmenter_stage(config: Config, segmenter: str, pretrained_model: str | Path | None,
                             model_path: str | Path, summary_path: str | Path,
                             report: Callable[[str], None] = print) -> dict:
    """Fine-tune one segmenter (DropSeg) through the launcher; write its final weights and a summary."""
    from dropmae.launch.submitit_launch import launch_segmenter_finetuning

    return _finetune_downstream(config, layout.SEGMENTATION, segmenter, pretrained_model, model_path, summary_path,
                                lambda values: segmenter_signature(values, segmenter), launch_segmenter_finetuning,
                                report)


def _segmentation_split(config: Config, benchmark: str) -> tuple:
    """(benchmark entry, split, sequences) of a segmentation.evaluate benchmark; a bad folder or
    file stops here, named, before any model is loaded."""
    from dropmae.segmentation.datasets import read_segmentation_benchmark

    s = config.segmentation
    bench, split = s.benchmarks[benchmark], s.evaluate[benchmark].split
    return bench, split, read_segmentation_benchmark(bench.format, bench.root, split)


def _davis_scores(sequences: list, raw_dir: Path) -> dict:
    """J&F and friends of the result PNGs when every sequence can be scored here (DAVIS skips the
    first and last annotated frames, so a split annotated on its first frame only cannot be)."""
    from dropmae.segmentation.metrics import evaluate_davis

    if not all(len(sequence.annotated_indices) >= 3 for sequence in sequences):
        return {"scored": False}
    return {"scored": True, **evaluate_davis(sequences, raw_dir)}


def _write_scored(metrics: dict, sequences: list, raw_dir: Path, metrics_path: str | Path, overlay_path: str | Path,
                  title: str, report: Callable[[str], None]) -> dict:
    """Score the result PNGs, draw the overlay figure, write metrics.json."""
    from dropmae.viz.masks import save_mask_overlays

    metrics.update(_davis_scores(sequences, raw_dir))
    save_mask_overlays(sequences, raw_dir, ensure_parent(overlay_path), title=title)
    if metrics["scored"]:
        report(f"{title}: J&F {metrics['jf']:.4f} (J {metrics['j']:.4f}, F {metrics['f']:.4f}) "
               f"over {metrics['objects']} objects")
    else:
        report(f"{title}: annotated on the first frame only: wrote result files for its evaluation server")
    ensure_parent(metrics_path).write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def evaluate_segmenter_stage(config: Config, segmenter: str, benchmark: str, model_path: str | Path | None,
                             metrics_path: str | Path, overlay_path: str | Path, raw_dir: str | Path,
                             report: Callable[[str], None] = print) -> dict:
    """Segment a benchmark split from each sequence's first-frame mask, write DAVIS result PNGs,
    score them (J&F) where the split has annotations past the first frame, and draw overlays."""
    from dropmae.segmentation.metrics import copy_first_mask_baseline
    from dropmae.segmentation.segmenter import DropSegmenter, SegmenterSettings, run_segmentation_benchmark
    from dropmae.segmentation.train import load_finetuned_segmenter

    bench, split, sequences = _segmentation_split(config, benchmark)
    raw_dir = _fresh_folder(raw_dir)
    if segmenter == layout.FIRST_MASK:
        copy_first_mask_baseline(sequences, raw_dir)
        timing = {"frames": sum(len(sequence) for sequence in sequences), "seconds": None, "frames_per_second": None}
    else:
        device = default_device()
        model, _ = load_finetuned_segmenter(model_path, device)
        # Inference settings are this run's (they change no weights), unlike the crop size trained with.
        online = DropSegmenter(model, SegmenterSettings.from_config(config.segmentation), device)
        timing = run_segmentation_benchmark(online, sequences, raw_dir)
    metrics: dict = {"segmenter": segmenter, "benchmark": benchmark, "format": bench.format, "split": split,
                     "sequences": len(sequences), **timing, "results": str(raw_dir)}
    if model_path is not None:
        metrics.update(checkpoint=str(model_path), checkpoint_sha256=sha256_of(model_path))
    return _write_scored(metrics, sequences, raw_dir, metrics_path, overlay_path,
                         f"{segmenter} on {benchmark} ({split})", report)


def probe_stage(config: Config, cell: Cell | RandomInit, benchmark: str, model_path: str | Path,
                metrics_path: str | Path, overlay_path: str | Path, raw_dir: str | Path,
                report: Callable[[str], None] = print) -> dict:
    """Label propagation with the frozen pretraining encoder of one cell, or the random-init control
    (no fine-tuning), scored like a segmenter."""
    from dropmae.segmentation.probe import PropagationSettings, frame_encoder_from_checkpoint, run_probe

    bench, split, sequences = _segmentation_split(config, benchmark)
    probe = dataclasses.asdict(config.segmentation.probe)
    probe.pop("enabled")
    settings = PropagationSettings(**probe)
    raw_dir = _fresh_folder(raw_dir)
    encoder, positions = model_path, "rebuild"
    if isinstance(cell, ExternalEncoder) and not load_checkpoint(model_path)["external"]["sincos_positions"]:
        # A learned (timm) or other table cannot be rebuilt as sin-cos for other grids: interpolate it.
        positions = "interpolate"
        encoder = frame_encoder_from_checkpoint(model_path, default_device(), positions=positions)
        report(f"{cell.name}: its position table is not our sin-cos table; the probe interpolates it")
    timing = run_probe(encoder, sequences, raw_dir, settings, default_device())
    metrics: dict = {**cell.record(), "benchmark": benchmark, "format": bench.format, "split": split,
                     **timing, "settings": dataclasses.asdict(settings), "positions": positions,
                     "results": str(raw_dir),
                     "checkpoint": str(model_path), "checkpoint_sha256": sha256_of(model_path)}
    return _write_scored(metrics, sequences, raw_dir, metrics_path, overlay_path,
                         f"probe {cell.name} on {benchmark} ({split})", report)


# ----------------------------------------------------------------------------- comparison figures
def tracking_curves_stage(config: Config, benchmark: str, outputs: dict[str, str]) -> None:
    """Every table tracker's success and precision curves on one benchmark: CSVs for DVC and the two figures."""
    from dropmae.workflow.figures import tracking_curves

    tracking_curves(config, benchmark, outputs)


def segmentation_sequences_stage(config: Config, benchmark: str, outputs: dict[str, str]) -> None:
    """Every table segmenter's J&F per sequence of one benchmark: the CSV and the bar chart."""
    from dropmae.workflow.figures import segmentation_sequences

    segmentation_sequences(config, benchmark, outputs)


def training_curves_stage(config: Config, kind: str, figure_path: str | Path) -> None:
    """Every table run of one kind (pretraining, tracking, segmentation): loss and lr per step in one figure."""
    from dropmae.workflow.figures import training_curves_figure

    runs = layout.training_curve_runs(config)[kind]
    training_curves_figure(runs, figure_path, f"{kind}: every run of the tables")
