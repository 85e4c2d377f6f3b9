"""Figures and plot data that compare the DAG's models on one benchmark, from their metrics.json alone.

- Tracking: every tracker's success curve (overlap thresholds, GOT-10k AO or OPE AUC in the
  legend) and precision curve (centre error 0..50 px, precision at 20 px in the legend) on one
  plot each, as the got10k toolkit's and pytracking's analysis draw them, and the curves as
  long CSVs (threshold, tracker, rate) that DVC plots with one line per tracker.
- Segmentation: J&F of every segmenter per sequence, as a CSV and a grouped bar chart.
- Training: every run's loss and lr against the step (from its loss.csv and lr.csv), per kind.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from dropmae.analysis.attention import display_name
from dropmae.config import Config
from dropmae.workflow import layout

BASELINE_LABELS = {layout.SCRATCH: "No pre-training", layout.FIRST_BOX: "First-frame box",
                   layout.FIRST_MASK: "First-frame mask"}


def model_label(name: str) -> str:
    """A model's name in a legend: "DropMAE (demo, 200 ep)", "Random init (demo)", "No pre-training"."""
    if name in BASELINE_LABELS:
        return BASELINE_LABELS[name]
    encoder = layout.encoder_of_model(name)
    if isinstance(encoder, layout.RandomInit):
        return f"Random init ({encoder.source})"
    return f"{display_name(encoder.method)} ({encoder.source}, {encoder.epochs} ep)"


def _read_scored(path: str | Path) -> dict | None:
    """A metrics.json a rule wrote, or None when its split has no ground truth here (evaluation server only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no result; run the evaluation rule that writes it")
    metrics = json.loads(path.read_text())
    return metrics if metrics["scored"] else None


def _no_data_figure(path: str | Path, message: str) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 1.5))
    axis = figure.add_subplot()
    axis.axis("off")
    axis.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    figure.savefig(layout.ensure_parent(path), dpi=100)


def tracking_curves(config: Config, benchmark: str, outputs: dict[str, str]) -> dict[str, pd.DataFrame]:
    """Success and precision curves of every tracker of the tables on ``benchmark``: the CSVs
    (threshold, tracker, success / precision) and the two figures; returns the two frames."""
    from dropmae.tracking.metrics import save_precision_plot, save_success_plot

    split = config.tracking.evaluate[benchmark].split
    success, precision, headline, scored, score_name = [], [], {}, {}, "AO"
    for name in layout.curve_trackers(config):
        metrics = _read_scored(layout.TRACKING.paths(layout.TRACKING_METRICS, name, benchmark))
        if metrics is None:
            continue
        label = model_label(name)
        # GOT-10k: AO (the toolkit's legend); OPE benchmarks: the AUC (percent in metrics.json).
        headline[label] = metrics["ao"] if "ao" in metrics else metrics["auc"] / 100
        score_name = "AO" if "ao" in metrics else "AUC"
        success_x = np.linspace(0.0, 1.0, len(metrics["success_curve"]))
        precision_x = np.asarray(metrics["precision_thresholds"], dtype=float)
        scored[label] = ((success_x, np.asarray(metrics["success_curve"])),
                         (precision_x, np.asarray(metrics["precision_curve"])))
        success.append(pd.DataFrame({"threshold": success_x, "tracker": label, "success": metrics["success_curve"]}))
        precision.append(pd.DataFrame({"threshold": precision_x, "tracker": label,
                                       "precision": metrics["precision_curve"]}))
    frames = {"success": pd.concat(success, ignore_index=True) if success else
              pd.DataFrame(columns=["threshold", "tracker", "success"]),
              "precision": pd.concat(precision, ignore_index=True) if precision else
              pd.DataFrame(columns=["threshold", "tracker", "precision"])}
    for curve, frame in frames.items():
        frame.to_csv(layout.ensure_parent(outputs[curve]), index=False)
    if not scored:
        for role in ("success_plot", "precision_plot"):
            _no_data_figure(outputs[role], f"{benchmark} ({split}): no ground truth here, nothing to plot")
        return frames
    save_success_plot({label: curves[0] for label, curves in scored.items()}, outputs["success_plot"],
                      f"Success plot on {benchmark} ({split}); legend: [{score_name}]", scores=headline)
    save_precision_plot({label: curves[1] for label, curves in scored.items()}, outputs["precision_plot"],
                        f"Precision plot on {benchmark} ({split}); legend: [precision at 20 px]")
    return frames


def segmentation_sequences(config: Config, benchmark: str, outputs: dict[str, str]) -> pd.DataFrame:
    """J&F, J and F of every segmenter of the tables per sequence of ``benchmark`` (the DAVIS means
    over the sequence's objects): the CSV (fractions) and a grouped bar chart (percent)."""
    split = config.segmentation.evaluate[benchmark].split
    rows = []
    for name in layout.curve_segmenters(config):
        metrics = _read_scored(layout.SEGMENTATION.paths(layout.SEGMENTATION_METRICS, name, benchmark))
        if metrics is None:
            continue
        for sequence, record in metrics["per_sequence"].items():
            if not record["objects"]:
                continue
            j, f = float(np.mean(record["j"])), float(np.mean(record["f"]))
            rows.append({"sequence": sequence, "segmenter": model_label(name), "jf": (j + f) / 2, "j": j, "f": f,
                         "objects": len(record["objects"])})
    frame = pd.DataFrame(rows, columns=["sequence", "segmenter", "jf", "j", "f", "objects"])
    frame.to_csv(layout.ensure_parent(outputs["csv"]), index=False)
    if frame.empty:
        _no_data_figure(outputs["plot"], f"{benchmark} ({split}): no annotations past the first frame here")
        return frame
    save_sequence_bars(frame, outputs["plot"], f"J&F per sequence on {benchmark} ({split})")
    return frame


def save_sequence_bars(frame: pd.DataFrame, path: str | Path, title: str) -> Path:
    """Grouped bars: one group per sequence, one bar per segmenter, J&F in percent; the legend
    gives each segmenter's mean over the sequences shown."""
    from matplotlib.figure import Figure

    wide = frame.pivot(index="sequence", columns="segmenter", values="jf") * 100
    segmenters = list(dict.fromkeys(frame["segmenter"]))
    wide = wide[segmenters]
    positions = np.arange(len(wide))
    width = 0.8 / len(segmenters)
    figure = Figure(figsize=(max(6.0, 0.35 * len(wide) * len(segmenters) + 2.0), 4.2), layout="constrained")
    axis = figure.add_subplot()
    for k, segmenter in enumerate(segmenters):
        axis.bar(positions + (k - (len(segmenters) - 1) / 2) * width, wide[segmenter].to_numpy(), width=width,
                 label=f"{segmenter} [{wide[segmenter].mean():.1f}]")
    axis.set_xticks(positions, wide.index, rotation=45, ha="right", fontsize=7)
    axis.set(ylabel="J&F (%)", ylim=(0, 100), title=title)
    axis.grid(axis="y", alpha=0.3)
    axis.set_axisbelow(True)
    figure.legend(loc="outside lower center", ncol=min(len(segmenters), 3), fontsize=7.5)
    path = layout.ensure_parent(path)
    figure.savefig(path, dpi=150)
    return path


def training_curves_figure(runs: dict[str, str | Path], path: str | Path, title: str) -> Path:
    """Loss (log scale) and lr against the optimiser step of every run ({model name: run folder with
    loss.csv and lr.csv}), one line per run, in two panels."""
    from matplotlib.figure import Figure

    from dropmae.engine.curves import LOSS_CURVE, LR_CURVE

    figure = Figure(figsize=(10.0, 4.0), layout="constrained")
    loss_axis, lr_axis = figure.subplots(1, 2)
    for name, run_dir in runs.items():
        label = model_label(name)
        loss = pd.read_csv(Path(run_dir) / LOSS_CURVE)
        lr = pd.read_csv(Path(run_dir) / LR_CURVE)
        loss_axis.plot(loss["step"], loss["loss"], label=label)
        lr_axis.plot(lr["step"], lr["lr"], label=label)
    loss_axis.set(xlabel="optimiser step", ylabel="training loss", yscale="log", title="loss")
    lr_axis.set(xlabel="optimiser step", ylabel="learning rate", title="learning rate (head / base group)")
    for axis in (loss_axis, lr_axis):
        axis.grid(alpha=0.3)
    figure.suptitle(title)
    figure.legend(*loss_axis.get_legend_handles_labels(), loc="outside lower center", ncol=3, fontsize=7.5)
    path = layout.ensure_parent(path)
    figure.savefig(path, dpi=150)
    return path
