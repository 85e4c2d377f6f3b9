"""Our per-epoch training loss against a published per-epoch log, as a table and a plot.

The published log is MAE's ``log.txt`` (what DropMAE's authors release for their K400 / K700
pretraining): one JSON object per line per epoch, ``{"train_lr": ..., "train_loss": ...,
"epoch": e, ...}``, where ``e`` is the 0-based index of the epoch just trained. Our loop
(:mod:`dropmae.engine.loop`) writes ``log.jsonl`` whose ``event: "epoch"`` records count epochs
*completed* (``epoch: e + 1`` after the epoch with index ``e``). Everything here uses MAE's
convention: epoch ``e`` is the (e+1)-th epoch.

When the two runs plan different numbers of epochs (a 800-epoch run against a 1600-epoch log),
the loss is compared by epoch where both exist and by fraction of training: the mean loss of
epoch ``e`` of ``N`` sits at the middle of that epoch, fraction ``(e + 0.5) / N``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from dropmae.engine.loop import METRICS_LOG, SUMMARY_FILE  # noqa: E402

TABLE_COLUMNS = ("row", "alignment", "epoch", "reference_epoch", "fraction", "ours", "reference", "difference",
                 "ratio")
MARKDOWN_EPOCH_ROWS = 12  # per alignment; the CSV has every row


class TrainingLogError(ValueError):
    """A log that cannot be read or compared; the message names the file (and line)."""


@dataclass(frozen=True)
class LossCurve:
    """Mean training loss per epoch of one run."""

    label: str
    path: Path
    losses: dict[int, float]  # epoch index (MAE's 0-based convention) -> mean train loss, sorted
    total_epochs: int  # the epochs the run plans: the denominator of the fraction of training
    resumed_mid_epoch: tuple[int, ...] = field(default=())  # epochs whose mean covers only the steps after a resume

    def fractions(self) -> np.ndarray:
        return (np.array(list(self.losses), dtype=float) + 0.5) / self.total_epochs


def json_lines(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) of every non-blank line; a missing or empty file, or a line that is not a
    JSON object, is a TrainingLogError naming the file and line."""
    if not path.is_file():
        raise TrainingLogError(f"{path}: no such file")
    found = False
    with path.open() as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise TrainingLogError(f"{path}, line {number}: not valid JSON ({error.msg})") from None
            if not isinstance(record, dict):
                raise TrainingLogError(f"{path}, line {number}: expected a JSON object, got {type(record).__name__}")
            found = True
            yield number, record
    if not found:
        raise TrainingLogError(f"{path}: empty file, no JSON lines")


def _field(record: dict, key: str, path: Path, number: int, integer: bool = False) -> float | int:
    if key not in record:
        raise TrainingLogError(f"{path}, line {number}: no {key!r} key (found: {', '.join(sorted(record))})")
    value = record[key]
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not is_number or (integer and value != int(value)):
        kind = "an integer" if integer else "a finite number"
        raise TrainingLogError(f"{path}, line {number}: {key!r} is {value!r}, not {kind}")
    return int(value) if integer else float(value)


def read_reference_log(path: str | Path, total_epochs: int | None = None) -> LossCurve:
    """A published MAE-style log: ``train_loss`` and ``epoch`` on every line.

    ``total_epochs`` defaults to the last epoch logged + 1 (the log does not name its plan).
    """
    path = Path(path)
    losses: dict[int, float] = {}
    for number, record in json_lines(path):
        epoch = _field(record, "epoch", path, number, integer=True)
        # A resumed MAE run appends the epochs after its checkpoint again: the later line wins.
        losses[epoch] = _field(record, "train_loss", path, number)
    losses = dict(sorted(losses.items()))
    return LossCurve(f"reference ({path.name})", path, losses, total_epochs or max(losses) + 1)


def _planned_epochs(run_dir: Path, start: dict | None) -> int | None:
    summary = run_dir / SUMMARY_FILE
    if summary.is_file():  # a finished run
        return int(json.loads(summary.read_text())["epochs"])
    if start is not None and isinstance(start.get("run"), dict) and "epochs" in start["run"]:
        return int(start["run"]["epochs"])  # a pretraining run still going
    return None


def read_run_log(run_dir: str | Path) -> LossCurve:
    """Per-epoch mean train loss of one of our runs, from its ``log.jsonl``.

    Uses the loop's ``event: "epoch"`` records, which average every optimiser step of the
    epoch; ``event: "step"`` records are written only every ``log_every_steps`` steps, so a
    mean over them would be a sample. A run resumed mid-epoch logs for that epoch the mean of
    the steps after the resume: such epochs are listed in ``resumed_mid_epoch``.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TrainingLogError(f"{run_dir}: no such run folder")
    path = run_dir / METRICS_LOG
    if not path.is_file():
        raise TrainingLogError(f"{path}: not found (a run folder of `dropmae pretrain` has one)")
    losses: dict[int, float] = {}
    resumed: set[int] = set()
    start = None
    for number, record in json_lines(path):
        event = record.get("event")
        if event == "start" and start is None:
            start = record
        elif event == "epoch":
            completed = _field(record, "epoch", path, number, integer=True)
            losses[completed - 1] = _field(record, "train_loss", path, number)
        elif event == "interrupted" and record.get("step", 0) > 0:  # mid-epoch: 'epoch' is the 0-based index
            resumed.add(int(record["epoch"]))
    if not losses:
        raise TrainingLogError(f"{path}: no epoch record (event 'epoch'): the run has not finished an epoch")
    losses = dict(sorted(losses.items()))
    total = _planned_epochs(run_dir, start) or max(losses) + 1
    return LossCurve(f"ours ({run_dir.name})", path, losses, total, tuple(sorted(resumed & set(losses))))


def _rows(alignment: str, epochs, reference_epochs, fractions, ours, reference) -> pd.DataFrame:
    ours, reference = np.asarray(ours, dtype=float), np.asarray(reference, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(reference != 0, ours / reference, np.nan)
    return pd.DataFrame({"row": "epoch", "alignment": alignment, "epoch": np.asarray(epochs, dtype=int),
                         "reference_epoch": np.asarray(reference_epochs, dtype=float),
                         "fraction": np.asarray(fractions, dtype=float), "ours": ours, "reference": reference,
                         "difference": ours - reference, "ratio": ratio})


def align_by_epoch(ours: LossCurve, reference: LossCurve) -> pd.DataFrame:
    """One row per epoch both logs have."""
    common = sorted(set(ours.losses) & set(reference.losses))
    return _rows("epoch", common, common, [(e + 0.5) / ours.total_epochs for e in common],
                 [ours.losses[e] for e in common], [reference.losses[e] for e in common])


def align_by_fraction(ours: LossCurve, reference: LossCurve) -> pd.DataFrame:
    """One row per epoch of ours, with the reference interpolated linearly at the same fraction of
    training; ``reference_epoch`` says where (fractional between two logged epochs). Fractions
    outside the reference's logged range get no row: nothing is extrapolated."""
    ours_fraction, ref_fraction = ours.fractions(), reference.fractions()
    inside = (ours_fraction >= ref_fraction[0]) & (ours_fraction <= ref_fraction[-1])
    epochs = np.array(list(ours.losses))[inside]
    fractions = ours_fraction[inside]
    return _rows("fraction", epochs, fractions * reference.total_epochs - 0.5, fractions,
                 np.array(list(ours.losses.values()))[inside],
                 np.interp(fractions, ref_fraction, list(reference.losses.values())))


def _summary(rows: pd.DataFrame) -> pd.DataFrame:
    """The last aligned epoch (how far along our run is against the published curve) and the mean over all."""
    last = rows.iloc[[-1]].assign(row="last")
    mean = pd.DataFrame({"row": ["mean"], "alignment": rows["alignment"].iloc[0], "ours": rows["ours"].mean(),
                         "reference": rows["reference"].mean()})
    mean["difference"] = mean["ours"] - mean["reference"]
    mean["ratio"] = mean["ours"] / mean["reference"]
    return pd.concat([last, mean], ignore_index=True)


def compare_losses(ours: LossCurve, reference: LossCurve) -> pd.DataFrame:
    """Rows aligned by epoch, and by fraction of training when the planned epochs differ; each
    alignment's per-epoch rows (``row == "epoch"``) are followed by its ``last`` and ``mean`` rows."""
    alignments = [align_by_epoch(ours, reference)]
    if ours.total_epochs != reference.total_epochs:
        alignments.append(align_by_fraction(ours, reference))
    alignments = [rows for rows in alignments if len(rows)]
    if not alignments:
        raise TrainingLogError(f"{ours.path} and {reference.path} share no epoch "
                               f"(ours: {_span(ours)}; reference: {_span(reference)})")
    table = pd.concat([part for rows in alignments for part in (rows, _summary(rows))], ignore_index=True)
    table["epoch"] = table["epoch"].astype("Int64")
    return table[list(TABLE_COLUMNS)]


def _span(curve: LossCurve) -> str:
    return f"epochs {min(curve.losses)}-{max(curve.losses)} of {curve.total_epochs}"


def _markdown(table: pd.DataFrame, ours: LossCurve, reference: LossCurve) -> str:
    notes = [f"- Ours: `{ours.path}`, {len(ours.losses)} epochs logged, {_span(ours)}.",
             f"- Reference: `{reference.path}`, {len(reference.losses)} epochs logged, {_span(reference)}.",
             "- Epochs are 0-based as in MAE's log.txt; difference = ours - reference, ratio = ours / reference.",
             "- Alignment `epoch`: the same epoch index in both logs."]
    if ours.total_epochs != reference.total_epochs:
        notes.append("- Alignment `fraction`: the same fraction of training, (epoch + 0.5) / planned epochs; the "
                     "reference is interpolated linearly between its logged epochs (`reference_epoch`).")
    if ours.resumed_mid_epoch:
        notes.append(f"- Our epochs {', '.join(map(str, ours.resumed_mid_epoch))} were resumed mid-epoch: their "
                     "mean covers the steps after the resume only.")
    sections = []
    for alignment, rows in table.groupby("alignment", sort=False):
        per_epoch = rows[rows["row"] == "epoch"]
        picked = np.unique(np.linspace(0, len(per_epoch) - 1, min(MARKDOWN_EPOCH_ROWS, len(per_epoch))).round())
        shown = pd.concat([per_epoch.iloc[picked.astype(int)], rows[rows["row"] != "epoch"]])
        shown = shown.drop(columns="alignment").astype(object).where(shown.notna(), None)
        heading = f"## Aligned by {alignment} ({len(per_epoch)} epochs, {len(picked)} shown; the CSV has all)"
        sections.append(heading + "\n\n" + shown.to_markdown(index=False, floatfmt=".4f", missingval="") + "\n")
    return "# Training loss against the reference\n\n" + "\n".join(notes) + "\n\n" + "\n".join(sections)


def plot_losses(ours: LossCurve, reference: LossCurve, path: str | Path, log_y: bool = False) -> Path:
    """Loss vs epoch for both curves; a second panel vs fraction of training when the plans differ."""
    by_fraction = ours.total_epochs != reference.total_epochs
    figure, axes = plt.subplots(1, 2 if by_fraction else 1, figsize=(12 if by_fraction else 6.5, 4.2), squeeze=False)
    panels = [(axes[0, 0], "epoch", lambda curve: list(curve.losses))]
    if by_fraction:
        panels.append((axes[0, 1], "fraction of training, (epoch + 0.5) / planned epochs", LossCurve.fractions))
    for ax, xlabel, x_of in panels:
        for curve, style in ((reference, {"color": "0.45", "lw": 1.2}), (ours, {"color": "C3", "lw": 1.5})):
            label = f"{curve.label}: {len(curve.losses)} of {curve.total_epochs} epochs"
            ax.plot(x_of(curve), list(curve.losses.values()), label=label, **style)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("mean train loss")
        if log_y:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return Path(path)


def write_comparison(run_dir: str | Path, reference_log: str | Path, output_dir: str | Path,
                     reference_epochs: int | None = None, log_y: bool = False) -> tuple[pd.DataFrame, dict[str, Path]]:
    """Read both logs, write ``loss_comparison.{csv,md,png}`` into ``output_dir``; (table, paths)."""
    ours, reference = read_run_log(run_dir), read_reference_log(reference_log, reference_epochs)
    table = compare_losses(ours, reference)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {kind: output_dir / f"loss_comparison.{kind}" for kind in ("csv", "md", "png")}
    table.to_csv(paths["csv"], index=False)
    paths["md"].write_text(_markdown(table, ours, reference))
    plot_losses(ours, reference, paths["png"], log_y=log_y)
    return table, paths
