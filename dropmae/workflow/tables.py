"""The paper's tables, regenerated from the per-cell result files alone.

Every row names the checkpoint (path and sha256) and the recipe values that produced it. A value
is read from a result file a rule wrote; there are no defaults and no filled-in numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from dropmae.analysis.attention import display_name, save_attention_bars
from dropmae.config import Config
from dropmae.workflow.layout import (
    FIRST_BOX,
    SCRATCH,
    TRACKING_METRICS,
    ATTENTION_LAYERS,
    ATTENTION_PLOT,
    CELL_ATTENTION,
    CELL_METRICS,
    Cell,
    datasource_epochs,
    ensure_parent,
    table_cells,
    table_source,
    table_trackers,
    tracker_of,
    tracker_paths,
)

CELL_COLUMNS = ["source", "method", "epochs", "heldout_loss", "between_frame_share", "within_frame_share",
                "last_train_loss", "global_step", "heldout_pairs", "checkpoint", "checkpoint_sha256", "params"]
MARKDOWN_COLUMNS = {
    "source": "Source", "method": "Method", "epochs": "Epochs", "heldout_loss": "Held-out loss",
    "between_frame_share": "Between-frame attn.", "within_frame_share": "Within-frame attn.",
    "checkpoint_sha256": "Checkpoint (sha256)",
}


# Scores each benchmark protocol reports: GOT-10k AO / SR as fractions (the got10k toolkit),
# LaSOT / TNL2K / TrackingNet AUC / P / P_norm in percent (pytracking).
TRACKING_SCORES = {
    "got10k": (("ao", "AO"), ("sr50", "SR0.5"), ("sr75", "SR0.75")),
    "ope": (("auc", "AUC"), ("precision", "P"), ("norm_precision", "P_norm")),
}
TRACKER_ROWS = {SCRATCH: "No pre-training", FIRST_BOX: "First-frame box (trivial tracker)"}


class MissingResultError(FileNotFoundError):
    """A table needs a per-cell result file that no rule has written."""


def _read_metrics(cell: Cell) -> dict:
    path = Path(cell.paths(CELL_METRICS))
    if not path.is_file():
        raise MissingResultError(f"{path}: no result for cell {cell.name}; run its analyse stage first")
    return json.loads(path.read_text())


def _cell_rows(cells: list[Cell]) -> pd.DataFrame:
    rows = []
    for cell in cells:
        metrics = _read_metrics(cell)
        row = {column: metrics[column] for column in CELL_COLUMNS if column != "params"}
        row["params"] = json.dumps(metrics["params"], sort_keys=True)
        rows.append(row)
    return pd.DataFrame(rows, columns=CELL_COLUMNS)


def _tracking_scores(config: Config, tracker: str) -> dict:
    """``{benchmark}_{score}`` of one tracker on every evaluated benchmark that could be scored here
    (a split without ground truth, such as GOT-10k test, leaves its cells absent)."""
    scores = {}
    for benchmark in config.tracking.evaluate:
        path = Path(tracker_paths(TRACKING_METRICS, tracker, benchmark))
        if not path.is_file():
            raise MissingResultError(f"{path}: no tracking result for {tracker} on {benchmark}; run evaluate_tracker")
        metrics = json.loads(path.read_text())
        if not metrics["scored"]:
            continue
        protocol = "got10k" if metrics["format"] == "got10k" else "ope"
        for key, _ in TRACKING_SCORES[protocol]:
            scores[f"{benchmark}_{key}"] = metrics[key]
    return scores


def _tracking_header(config: Config, column: str) -> str | None:
    for benchmark, bench in config.tracking.benchmarks.items():
        protocol = "got10k" if bench.format == "got10k" else "ope"
        for key, label in TRACKING_SCORES[protocol]:
            if column == f"{benchmark}_{key}":
                return f"{benchmark} {label}" + (" (%)" if protocol == "got10k" else "")
    return None


def _with_tracking(config: Config, frame: pd.DataFrame, cells: list[Cell], table: str) -> pd.DataFrame:
    """The cells' rows with their trackers' scores, below the baseline rows of the table."""
    trackers = table_trackers(config, table)
    if not trackers:
        return frame
    scores = pd.DataFrame([_tracking_scores(config, tracker_of(cell)) for cell in cells], index=frame.index)
    frame = pd.concat([frame, scores], axis=1)
    baselines = [{"method": TRACKER_ROWS[t], **_tracking_scores(config, t)} for t in trackers if t in TRACKER_ROWS]
    if baselines:
        frame = pd.concat([pd.DataFrame(baselines), frame], ignore_index=True)
        # Baseline rows have no epochs or steps: keep these columns integer (nullable), not float.
        for column in ("epochs", "global_step", "heldout_pairs"):
            frame[column] = frame[column].astype("Int64")
    return frame


def _markdown(frame: pd.DataFrame, title: str, notes: list[str], config: Config | None = None) -> str:
    tracking = {c: _tracking_header(config, c) for c in frame.columns} if config is not None else {}
    tracking = {c: h for c, h in tracking.items() if h}
    shown = frame[[c for c in MARKDOWN_COLUMNS if c in frame.columns] + list(tracking)].copy()
    for column, header in tracking.items():
        if header.endswith("(%)"):  # the paper prints GOT-10k AO / SR in percent
            shown[column] = shown[column] * 100
    shown = shown.rename(columns=tracking)
    if "method" in shown:
        shown["method"] = shown["method"].map(lambda m: m if m in TRACKER_ROWS.values() else display_name(m))
    if "checkpoint_sha256" in shown:
        shown["checkpoint_sha256"] = shown["checkpoint_sha256"].str[:12]
    shown = shown.rename(columns=MARKDOWN_COLUMNS)
    # Baseline rows have no pretraining values: tabulate prints None as missingval, NaN / <NA> verbatim.
    shown = shown.astype(object).where(shown.notna(), None)
    body = shown.to_markdown(index=False, floatfmt=".4f", missingval="")
    return f"# {title}\n\n" + "".join(f"{note}\n" for note in notes) + "\n" + body + "\n"


def _write(frame: pd.DataFrame, csv_path: str | Path, md_path: str | Path, title: str, notes: list[str],
           config: Config | None = None) -> None:
    frame.to_csv(ensure_parent(csv_path), index=False)
    ensure_parent(md_path).write_text(_markdown(frame, title, notes, config))


TRACKING_NOTE = ("Tracking: DropTrack fine-tuned from each checkpoint (tracking.preset), run over "
                 "tracking.evaluate; GOT-10k-format benchmarks: AO / SR as the got10k toolkit computes them "
                 "(shown x 100); LaSOT / TNL2K / TrackingNet: AUC / P / P_norm in pytracking's convention.")


MEASURED = ("Held-out loss: masked-patch reconstruction loss on held-out pairs (eval mode, fixed masks). "
            "Between/within-frame attn.: share of a decoder query's attention mass on the other frame / "
            "its own frame, averaged over layers, heads and query locations.")


def table_pretraining(config: Config, csv_path, md_path) -> pd.DataFrame:
    """Method x epochs on one source, like the paper's pretraining comparison."""
    cells = table_cells(config, "pretraining")
    frame = _with_tracking(config, _cell_rows(cells), cells, "pretraining")
    _write(frame, csv_path, md_path, f"Pretraining comparison on {table_source(config)}",
           [MEASURED, TRACKING_NOTE, "Segmentation (J&F) columns are added by their stage."], config)
    return frame


def table_datasources(config: Config, csv_path, md_path) -> pd.DataFrame:
    """One row per data source for one method and epoch budget, like the paper's data-sources table."""
    cells = table_cells(config, "datasources")
    frame = _with_tracking(config, _cell_rows(cells), cells, "datasources")
    method = display_name(config.analysis.datasource_method)
    _write(frame, csv_path, md_path, f"Pretraining data sources ({method}, {datasource_epochs(config)} epochs)",
           [MEASURED, TRACKING_NOTE], config)
    return frame


def table_attention(config: Config, csv_path, md_path, layers_csv=ATTENTION_LAYERS,
                    plot_png=ATTENTION_PLOT) -> pd.DataFrame:
    """Within- and between-frame attention per decoder layer, TwinMAE against DropMAE."""
    frames = []
    for cell in table_cells(config, "attention"):
        path = Path(cell.paths(CELL_ATTENTION))
        if not path.is_file():
            raise MissingResultError(f"{path}: no attention result for cell {cell.name}")
        metrics = _read_metrics(cell)
        layers = pd.read_csv(path)
        layers.insert(0, "source", cell.source)
        layers["checkpoint"] = metrics["checkpoint"]
        layers["checkpoint_sha256"] = metrics["checkpoint_sha256"]
        frames.append(layers)
    frame = pd.concat(frames, ignore_index=True)
    frame.to_csv(ensure_parent(csv_path), index=False)

    # The figure and the DVC plot compare the methods at the largest epoch budget.
    epochs = max(config.pretrain.epochs)
    latest = frame[frame["epochs"] == epochs]
    wide = latest.pivot(index="layer", columns="method", values=["within_frame", "between_frame"])
    wide.columns = [f"{share}_{method}" for share, method in wide.columns]
    wide.reset_index().to_csv(ensure_parent(layers_csv), index=False)
    save_attention_bars(latest[["method", "layer", "within_frame", "between_frame"]], ensure_parent(plot_png))

    summary = (frame.groupby(["method", "epochs"], sort=False)[["within_frame", "between_frame"]].mean()
               .reset_index())
    lines = [f"# Decoder attention on held-out pairs ({table_source(config)})", "",
             "Share of a query's attention mass on its own frame (within) and on the other frame (between), "
             "per decoder layer, averaged over heads, query locations and held-out pairs.", ""]
    per_layer = frame.copy()
    per_layer["method"] = per_layer["method"].map(display_name)
    per_layer["checkpoint_sha256"] = per_layer["checkpoint_sha256"].str[:12]
    lines.append(per_layer[["method", "epochs", "layer", "within_frame", "between_frame", "checkpoint_sha256"]]
                 .rename(columns={"method": "Method", "epochs": "Epochs", "layer": "Layer",
                                  "within_frame": "Within-frame", "between_frame": "Between-frame",
                                  "checkpoint_sha256": "Checkpoint (sha256)"})
                 .to_markdown(index=False, floatfmt=".4f"))
    lines += ["", "Mean over layers:", "",
              summary.assign(method=summary["method"].map(display_name))
              .rename(columns={"method": "Method", "epochs": "Epochs", "within_frame": "Within-frame",
                               "between_frame": "Between-frame"})
              .to_markdown(index=False, floatfmt=".4f"), ""]
    ensure_parent(md_path).write_text("\n".join(lines))
    return frame


BUILDERS = {"pretraining": table_pretraining, "datasources": table_datasources, "attention": table_attention}


def build_table(config: Config, table: str, outputs: dict) -> pd.DataFrame:
    """One table from named outputs: csv and markdown (plus layers and plot for the attention table)."""
    extra = {"layers_csv": outputs["layers"], "plot_png": outputs["plot"]} if table == "attention" else {}
    return BUILDERS[table](config, outputs["csv"], outputs["markdown"], **extra)
