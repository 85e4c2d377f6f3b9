"""A run's loss and learning-rate curves as two-column CSVs (step, value), from its log.jsonl:
the files DVC plots (``dvc plots show`` / ``dvc plots diff``) and the report draw."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

LOSS_CURVE = "loss.csv"
LR_CURVE = "lr.csv"
CURVE_FILES = {"loss": LOSS_CURVE, "lr": LR_CURVE}


def step_records(log_path: str | Path) -> pd.DataFrame:
    """One row per logged optimiser step (global_step, loss, lr), sorted by step.

    A run resumed from a checkpoint logs again the steps after that checkpoint: the last record
    of a step is the one of the run that went on, so it wins. A run shorter than log_every_steps
    has no step records; its epoch records (mean loss per epoch, no lr) stand in.
    """
    records = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.strip()]
    steps = [r for r in records if r.get("event") == "step"]
    if steps:
        frame = pd.DataFrame({"step": [r["global_step"] for r in steps], "loss": [r["loss"] for r in steps],
                              "lr": [r["lr"] for r in steps]})
    else:
        epochs = [r for r in records if r.get("event") == "epoch"]
        frame = pd.DataFrame({"step": [r["global_step"] for r in epochs], "loss": [r["train_loss"] for r in epochs],
                              "lr": [float("nan")] * len(epochs)})
    return frame.drop_duplicates("step", keep="last").sort_values("step", ignore_index=True)


def write_training_curves(log_path: str | Path, output_dir: str | Path) -> dict[str, Path]:
    """``loss.csv`` (step, loss) and ``lr.csv`` (step, lr) in ``output_dir``; returns their paths."""
    output_dir = Path(output_dir)
    frame = step_records(log_path)
    paths = {"loss": output_dir / LOSS_CURVE, "lr": output_dir / LR_CURVE}
    frame[["step", "loss"]].to_csv(paths["loss"], index=False)
    frame[["step", "lr"]].dropna().to_csv(paths["lr"], index=False)
    return paths
