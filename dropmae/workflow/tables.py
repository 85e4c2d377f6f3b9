"""The paper's tables, regenerated from the per-cell result files alone.

Every row names the checkpoint (path and sha256) and the recipe values that produced it. A value
is read from a result file a rule wrote; there are no defaults and no filled-in numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from dropmae.analysis.attention import display_name, save_attention_bars
from dropmae.config import SEGMENTATION_FORMATS, Config
from dropmae.workflow.layout import (
    ATTENTION_LAYERS,
    ATTENTION_PLOT,
    CELL_ATTENTION,
    CELL_METRICS,
    DOWNSTREAM,
    FIRST_BOX,
    FIRST_MASK,
    PROBE_METRICS,
    RANDOM_INIT,
    SCRATCH,
    SEGMENTATION,
    TRACKING,
    Cell,
    Downstream,
    ExternalEncoder,
    RandomInit,
    datasource_epochs,
    ensure_parent,
    external_encoders,
    random_init_control,
    table_cells,
    table_probe_encoders,
    table_source,
)

CELL_COLUMNS = ["source", "method", "epochs", "heldout_loss", "between_frame_share", "within_frame_share",
                "last_train_loss", "global_step", "heldout_pairs", "checkpoint", "checkpoint_sha256", "params"]
# Markdown rounds as the paper prints: scores (AO / SR / J&F in percent, AUC / P) to one decimal,
# losses and attention shares to three; the CSV keeps full precision.
SCORE_DECIMALS = 1
THREE_DECIMAL_COLUMNS = ("heldout_loss", "between_frame_share", "within_frame_share", "last_train_loss",
                         "within_frame", "between_frame")
MARKDOWN_COLUMNS = {
    "source": "Source", "method": "Method", "epochs": "Epochs", "heldout_loss": "Held-out loss",
    "between_frame_share": "Between-frame attn.", "within_frame_share": "Within-frame attn.",
    "checkpoint_sha256": "Checkpoint (sha256)",
}


# Scores each benchmark protocol reports: GOT-10k AO / SR as fractions (the got10k toolkit),
# LaSOT / TNL2K / TrackingNet AUC / P / P_norm in percent (pytracking), DAVIS J&F / J / F as
# fractions (the DAVIS protocol). Fractions are printed x 100 in markdown, as the paper does.
SCORES = {
    "got10k": (("ao", "AO"), ("sr50", "SR0.5"), ("sr75", "SR0.75")),
    "ope": (("auc", "AUC"), ("precision", "P"), ("norm_precision", "P_norm")),
    "davis": (("jf", "J&F"), ("j", "J"), ("f", "F")),
}
FRACTION_PROTOCOLS = {"got10k", "davis"}
PROBE_SCORES = (("jf", "J&F"),)  # the probe's column: {benchmark}_probe_jf
# Rows above the cells, in this order; the random-init row is the table source's control (layout.RandomInit).
BASELINE_ROWS = {SCRATCH: "No pre-training", RANDOM_INIT: "Random init (never trained)",
                 FIRST_BOX: "First-frame box (trivial tracker)", FIRST_MASK: "First-frame mask (trivial segmenter)"}


def _protocol(format: str) -> str:
    if format == "got10k":
        return "got10k"
    return "davis" if format in SEGMENTATION_FORMATS else "ope"


class MissingResultError(FileNotFoundError):
    """A table needs a per-cell result file that no rule has written."""


def _read_metrics(cell: Cell | RandomInit | ExternalEncoder) -> dict:
    path = Path(cell.paths(CELL_METRICS))
    if not path.is_file():
        stage = {RandomInit: "random_init", ExternalEncoder: "import_external"}.get(type(cell), "analyse")
        raise MissingResultError(f"{path}: no result for {cell.name}; run its {stage} stage first")
    return json.loads(path.read_text())


def _control_identity(control: RandomInit) -> dict:
    """The random-init row's source, checkpoint and recipe, as its random_init stage wrote them."""
    metrics = _read_metrics(control)
    identity = {key: metrics[key] for key in ("source", "epochs", "global_step", "checkpoint", "checkpoint_sha256")}
    return {**identity, "params": json.dumps(metrics["params"], sort_keys=True)}


def _external_identity(encoder: ExternalEncoder) -> dict:
    """An external encoder's row identity, as its import_external stage wrote it: the label as the
    method, the file it came from and that file's sha256, the format and sizes read from it."""
    metrics = _read_metrics(encoder)
    identity = {key: metrics[key] for key in ("source", "method", "checkpoint", "checkpoint_sha256")}
    return {**identity, "params": json.dumps(metrics["params"], sort_keys=True)}


def _cell_rows(cells: list[Cell]) -> pd.DataFrame:
    rows = []
    for cell in cells:
        metrics = _read_metrics(cell)
        row = {column: metrics[column] for column in CELL_COLUMNS if column != "params"}
        row["params"] = json.dumps(metrics["params"], sort_keys=True)
        rows.append(row)
    return pd.DataFrame(rows, columns=CELL_COLUMNS)


def _scores_of(path: Path, prefix: str, keys, missing: str) -> dict:
    """``{prefix}{score}`` of one metrics.json a rule wrote, or nothing when its split could not be
    scored here (GOT-10k test, DAVIS test-dev: result files for the evaluation server only)."""
    if not path.is_file():
        raise MissingResultError(f"{path}: {missing}")
    metrics = json.loads(path.read_text())
    if not metrics["scored"]:
        return {}
    return {f"{prefix}{key}": metrics[key] for key, _ in keys or SCORES[_protocol(metrics["format"])]}


def _downstream_scores(config: Config, task: Downstream, name: str) -> dict:
    """``{benchmark}_{score}`` of one tracker or segmenter on every benchmark of <section>.evaluate."""
    scores = {}
    for benchmark in task.settings(config).evaluate:
        scores.update(_scores_of(Path(task.paths(task.metrics, name, benchmark)), f"{benchmark}_", None,
                                 f"no {task.section} result for {name} on {benchmark}; run evaluate_{task.wildcard}"))
    return scores


def _probe_scores(config: Config, cell: Cell | RandomInit) -> dict:
    """``{benchmark}_probe_jf`` of one cell's (or the control's) frozen encoder on every
    segmentation.evaluate benchmark."""
    scores = {}
    for benchmark in config.segmentation.evaluate:
        scores.update(_scores_of(Path(cell.paths(PROBE_METRICS, benchmark=benchmark)), f"{benchmark}_probe_",
                                 PROBE_SCORES, f"no probe result for {cell.name} on {benchmark}; run probe"))
    return scores


def _score_headers(config: Config) -> dict[str, str]:
    """Markdown header of every score column the configured benchmarks can give."""
    headers = {}
    benchmarks = [*config.tracking.benchmarks.items(), *config.segmentation.benchmarks.items()]
    for benchmark, bench in benchmarks:
        protocol = _protocol(bench.format)
        unit = " (%)" if protocol in FRACTION_PROTOCOLS else ""
        for key, label in SCORES[protocol]:
            headers[f"{benchmark}_{key}"] = f"{benchmark} {label}{unit}"
    for benchmark in config.segmentation.benchmarks:
        for key, label in PROBE_SCORES:
            headers[f"{benchmark}_probe_{key}"] = f"{benchmark} probe {label} (%)"
    return headers


def _with_downstream(config: Config, frame: pd.DataFrame, cells: list[Cell], table: str) -> pd.DataFrame:
    """The cells' rows with their trackers', segmenters' and probe's scores, below the table's
    baseline rows (no pretraining: both scratch models in one row; the random-init control: its
    tracker, segmenter and probe in one row; the trivial tracker and segmenter)."""
    tasks = [(task, task.table_models(config, table)) for task in DOWNSTREAM]
    tasks = [(task, models) for task, models in tasks if models]
    probed = table_probe_encoders(config, table)
    externals = external_encoders(config, table)
    if not tasks and not probed and not externals:
        return frame
    rows = []
    for cell in cells:
        row = {}
        for task, _ in tasks:
            row.update(_downstream_scores(config, task, cell.name))
        if cell in probed:
            row.update(_probe_scores(config, cell))
        rows.append(row)
    frame = pd.concat([frame, pd.DataFrame(rows, index=frame.index)], axis=1)
    control = random_init_control(config, table)
    baselines = []
    for kind, label in BASELINE_ROWS.items():
        encoder = control if kind == RANDOM_INIT else None
        name = encoder.name if encoder else kind
        holders = [task for task, models in tasks if name in models]
        if not holders and encoder not in probed:
            continue
        row = {"method": label, **(_control_identity(encoder) if encoder else {})}
        for task in holders:
            row.update(_downstream_scores(config, task, name))
        if encoder in probed:
            row.update(_probe_scores(config, encoder))
        baselines.append(row)
    # External encoders sit between the baselines and the cells, each with all its scores.
    for encoder in externals:
        row = _external_identity(encoder)
        for task, models in tasks:
            if encoder.name in models:
                row.update(_downstream_scores(config, task, encoder.name))
        if encoder in probed:
            row.update(_probe_scores(config, encoder))
        baselines.append(row)
    if baselines:
        frame = pd.concat([pd.DataFrame(baselines), frame], ignore_index=True)
        # Baseline rows have no epochs or steps: keep these columns integer (nullable), not float.
        for column in ("epochs", "global_step", "heldout_pairs"):
            frame[column] = frame[column].astype("Int64")
    return frame


def _markdown(frame: pd.DataFrame, title: str, notes: list[str], config: Config | None = None) -> str:
    headers = _score_headers(config) if config is not None else {}
    scores = {c: headers[c] for c in frame.columns if c in headers}
    shown = frame[[c for c in MARKDOWN_COLUMNS if c in frame.columns] + list(scores)].copy()
    for column, header in scores.items():
        if header.endswith("(%)"):  # the paper prints GOT-10k AO / SR and DAVIS J&F in percent
            shown[column] = shown[column] * 100
    for column in scores:
        shown[column] = _rounded(shown[column], SCORE_DECIMALS)
    for column in THREE_DECIMAL_COLUMNS:
        if column in shown:
            shown[column] = _rounded(shown[column], 3)
    numeric = [column in scores or column in THREE_DECIMAL_COLUMNS or column == "epochs" for column in shown.columns]
    shown = shown.rename(columns=scores)
    if "method" in shown:
        shown["method"] = shown["method"].map(lambda m: m if m in BASELINE_ROWS.values() else display_name(m))
    if "checkpoint_sha256" in shown:
        shown["checkpoint_sha256"] = shown["checkpoint_sha256"].str[:12]
    shown = shown.rename(columns=MARKDOWN_COLUMNS)
    # Baseline rows have no pretraining values: tabulate prints None as missingval, NaN / <NA> verbatim.
    shown = shown.astype(object).where(shown.notna(), None)
    # Numbers are already text at their precision: tabulate must not parse and reformat them.
    body = shown.to_markdown(index=False, missingval="", disable_numparse=True,
                             colalign=["right" if flag else "left" for flag in numeric])
    return f"# {title}\n\n" + "".join(f"{note}\n" for note in notes) + "\n" + body + "\n"


def _rounded(values: pd.Series, decimals: int) -> pd.Series:
    """Numbers as text with ``decimals`` decimals; missing values stay missing."""
    return values.map(lambda value: None if pd.isna(value) else f"{value:.{decimals}f}").astype(object)


def _write(frame: pd.DataFrame, csv_path: str | Path, md_path: str | Path, title: str, notes: list[str],
           config: Config | None = None) -> None:
    frame.to_csv(ensure_parent(csv_path), index=False)
    ensure_parent(md_path).write_text(_markdown(frame, title, notes, config))


MEASURED = ("Held-out loss: masked-patch reconstruction loss on held-out pairs (eval mode, fixed masks). "
            "Between/within-frame attn.: share of a decoder query's attention mass on the other frame / "
            "its own frame, averaged over layers, heads and query locations.")
TRACKING_NOTE = ("Tracking: DropTrack fine-tuned from each checkpoint (tracking.preset), run over "
                 "tracking.evaluate; GOT-10k-format benchmarks: AO / SR as the got10k toolkit computes them "
                 "(shown x 100); LaSOT / TNL2K / TrackingNet: AUC / P / P_norm in pytracking's convention.")
SEGMENTATION_NOTE = ("Segmentation: DropSeg fine-tuned from each checkpoint (segmentation.preset), every frame "
                     "segmented from the first frame and its mask over segmentation.evaluate; J&F, J, F as the DAVIS "
                     "protocol computes them (first and last frames excluded; shown x 100). Probe J&F: label "
                     "propagation with the frozen pretraining encoder (segmentation.probe), no fine-tuning.")

CONTROL_NOTE = ("Random init (never trained): the table source's pretraining model built and seeded as a cell's "
                "(pretrain.seed) but not trained, then fine-tuned and probed like the cells: a cell's gap to it is "
                "what its pretraining added (analysis.random_init_control).")


EXTERNAL_NOTE = ("Rows with source 'external': pretrained encoders from outside the DAG (params.yaml "
                 "external_encoders), converted to our encoder (class-token slot dropped, the authors' frame "
                 "embeddings mapped to ours, zeros where the file has none) and fine-tuned and probed like the "
                 "cells; the sha256 is the file's own.")


def _notes(config: Config, table: str) -> list[str]:
    """The measured quantities, and a note on each downstream task the table shows."""
    notes = [MEASURED]
    if external_encoders(config, table):
        notes.append(EXTERNAL_NOTE)
    if TRACKING.table_models(config, table):
        notes.append(TRACKING_NOTE)
    if SEGMENTATION.table_models(config, table) or table_probe_encoders(config, table):
        notes.append(SEGMENTATION_NOTE)
    if random_init_control(config, table):
        notes.append(CONTROL_NOTE)
    return notes


def table_pretraining(config: Config, csv_path, md_path) -> pd.DataFrame:
    """Method x epochs on one source, like the paper's pretraining comparison."""
    cells = table_cells(config, "pretraining")
    frame = _with_downstream(config, _cell_rows(cells), cells, "pretraining")
    _write(frame, csv_path, md_path, f"Pretraining comparison on {table_source(config)}",
           _notes(config, "pretraining"), config)
    return frame


def table_datasources(config: Config, csv_path, md_path) -> pd.DataFrame:
    """One row per data source for one method and epoch budget, like the paper's data-sources table."""
    cells = table_cells(config, "datasources")
    frame = _with_downstream(config, _cell_rows(cells), cells, "datasources")
    method = display_name(config.analysis.datasource_method)
    _write(frame, csv_path, md_path, f"Pretraining data sources ({method}, {datasource_epochs(config)} epochs)",
           _notes(config, "datasources"), config)
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
                 .to_markdown(index=False, floatfmt=".3f"))
    lines += ["", "Mean over layers:", "",
              summary.assign(method=summary["method"].map(display_name))
              .rename(columns={"method": "Method", "epochs": "Epochs", "within_frame": "Within-frame",
                               "between_frame": "Between-frame"})
              .to_markdown(index=False, floatfmt=".3f"), ""]
    ensure_parent(md_path).write_text("\n".join(lines))
    return frame


BUILDERS = {"pretraining": table_pretraining, "datasources": table_datasources, "attention": table_attention}


def build_table(config: Config, table: str, outputs: dict) -> pd.DataFrame:
    """One table from named outputs: csv and markdown (plus layers and plot for the attention table)."""
    extra = {"layers_csv": outputs["layers"], "plot_png": outputs["plot"]} if table == "attention" else {}
    return BUILDERS[table](config, outputs["csv"], outputs["markdown"], **extra)
