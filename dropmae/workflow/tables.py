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
    ATTENTION_LAYERS,
    ATTENTION_PLOT,
    CELL_ATTENTION,
    CELL_METRICS,
    Cell,
    datasource_epochs,
    ensure_parent,
    table_cells,
    table_source,
)

CELL_COLUMNS = ["source", "method", "epochs", "heldout_loss", "between_frame_share", "within_frame_share",
                "last_train_loss", "global_step", "heldout_pairs", "checkpoint", "checkpoint_sha256", "params"]
MARKDOWN_COLUMNS = {
    "source": "Source", "method": "Method", "epochs": "Epochs", "heldout_loss": "Held-out loss",
    "between_frame_share": "Between-frame attn.", "within_frame_share": "Within-frame attn.",
    "checkpoint_sha256": "Checkpoint (sha256)",
}


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


def _markdown(frame: pd.DataFrame, title: str, notes: list[str]) -> str:
    shown = frame[[c for c in MARKDOWN_COLUMNS if c in frame.columns]].copy()
    if "method" in shown:
        shown["method"] = shown["method"].map(display_name)
    if "checkpoint_sha256" in shown:
        shown["checkpoint_sha256"] = shown["checkpoint_sha256"].str[:12]
    shown = shown.rename(columns=MARKDOWN_COLUMNS)
    body = shown.to_markdown(index=False, floatfmt=".4f")
    return f"# {title}\n\n" + "".join(f"{note}\n" for note in notes) + "\n" + body + "\n"


def _write(frame: pd.DataFrame, csv_path: str | Path, md_path: str | Path, title: str, notes: list[str]) -> None:
    frame.to_csv(ensure_parent(csv_path), index=False)
    ensure_parent(md_path).write_text(_markdown(frame, title, notes))


MEASURED = ("Held-out loss: masked-patch reconstruction loss on held-out pairs (eval mode, fixed masks). "
            "Between/within-frame attn.: share of a decoder query's attention mass on the other frame / "
            "its own frame, averaged over layers, heads and query locations.")


def table_pretraining(config: Config, csv_path, md_path) -> pd.DataFrame:
    """Method x epochs on one source, like the paper's pretraining comparison."""
    frame = _cell_rows(table_cells(config, "pretraining"))
    _write(frame, csv_path, md_path, f"Pretraining comparison on {table_source(config)}",
           [MEASURED, "Tracking (AO, SR) and segmentation (J&F) columns are added by their stages."])
    return frame


def table_datasources(config: Config, csv_path, md_path) -> pd.DataFrame:
    """One row per data source for one method and epoch budget, like the paper's data-sources table."""
    frame = _cell_rows(table_cells(config, "datasources"))
    method = display_name(config.analysis.datasource_method)
    _write(frame, csv_path, md_path, f"Pretraining data sources ({method}, {datasource_epochs(config)} epochs)",
           [MEASURED])
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
