"""Comparison figures and plot data from per-model metrics.json files (dropmae.workflow.figures)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dropmae.config import load_config
from dropmae.workflow import figures, layout
from workflow_support import REPO, TINY_OVERLAY, with_segmentation, with_tracking, write_yaml


def _write_json(path: str, values: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(values))


@pytest.fixture
def config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    overlay = write_yaml(tmp_path / "tiny.yaml", with_segmentation(with_tracking(TINY_OVERLAY)))
    return load_config([REPO / "params.yaml", overlay])


def test_tracking_curves_hold_every_table_tracker_with_its_ao_in_the_legend(config):
    trackers = layout.curve_trackers(config)
    assert trackers == ["scratch", "demo/random_init", "first_box", "demo/twinmae_ep1", "demo/dropmae_ep1"]
    thresholds = np.linspace(0, 1, 101)
    for rank, name in enumerate(trackers):
        ao = 0.1 * (rank + 1)
        _write_json(layout.TRACKING.paths(layout.TRACKING_METRICS, name, "demo"), {
            "scored": True, "format": "got10k", "ao": ao, "sr50": 0.2, "sr75": 0.1,
            "success_curve": (thresholds < ao * 2).astype(float).tolist(),
            "precision_curve": np.clip(np.arange(51) / (10 * (rank + 1)), 0, 1).tolist(),
            "precision_thresholds": list(range(51))})
    outputs = layout.tracking_curves_outputs("demo")
    frames = figures.tracking_curves(config, "demo", outputs)
    success = pd.read_csv(outputs["success"])
    assert list(success.columns) == ["threshold", "tracker", "success"] and len(success) == 5 * 101
    assert list(dict.fromkeys(success["tracker"])) == ["No pre-training", "Random init (demo)", "First-frame box",
                                                       "TwinMAE (demo, 1 ep)", "DropMAE (demo, 1 ep)"]
    precision = pd.read_csv(outputs["precision"])
    assert list(precision.columns) == ["threshold", "tracker", "precision"]
    dropmae = precision[precision["tracker"] == "DropMAE (demo, 1 ep)"]
    assert dropmae["threshold"].tolist() == list(range(51)) and dropmae["precision"].iloc[25] == pytest.approx(0.5)
    assert np.allclose(frames["success"]["success"], success["success"])
    for role in ("success_plot", "precision_plot"):
        assert Path(outputs[role]).stat().st_size > 10_000


def test_tracking_curves_of_a_split_without_ground_truth_are_empty_and_the_figure_says_so(config):
    for name in layout.curve_trackers(config):
        _write_json(layout.TRACKING.paths(layout.TRACKING_METRICS, name, "demo"), {"scored": False, "format": "got10k"})
    outputs = layout.tracking_curves_outputs("demo")
    figures.tracking_curves(config, "demo", outputs)
    assert pd.read_csv(outputs["success"]).empty and Path(outputs["success_plot"]).stat().st_size > 1000


def test_segmentation_sequences_average_objects_per_sequence(config):
    for rank, name in enumerate(layout.curve_segmenters(config)):
        _write_json(layout.SEGMENTATION.paths(layout.SEGMENTATION_METRICS, name, "demo"), {
            "scored": True, "format": "davis2017", "jf": 0.5, "j": 0.5, "f": 0.5,
            "per_sequence": {"seq_a": {"objects": [1, 2], "j": [0.2, 0.4], "f": [0.6, 0.8 - 0.1 * rank]},
                             "seq_b": {"objects": [1], "j": [0.9], "f": [0.7]}}})
    outputs = layout.segmentation_sequences_outputs("demo")
    frame = figures.segmentation_sequences(config, "demo", outputs)
    assert len(frame) == 2 * len(layout.curve_segmenters(config))
    first = frame[(frame["segmenter"] == "No pre-training") & (frame["sequence"] == "seq_a")].iloc[0]
    assert (first.j, first.f, first.jf) == pytest.approx((0.3, 0.7, 0.5))
    assert pd.read_csv(outputs["csv"]).shape == frame.shape
    assert Path(outputs["plot"]).stat().st_size > 10_000


def test_training_curves_figure_draws_every_table_run_of_a_kind(config):
    runs = layout.training_curve_runs(config)
    assert list(runs) == ["pretraining", "tracking", "segmentation"]
    assert list(runs["tracking"]) == ["scratch", "demo/random_init", "demo/twinmae_ep1", "demo/dropmae_ep1"]
    assert runs["pretraining"]["demo/dropmae_ep1"] == "runs/pretrain/demo/dropmae_ep1"
    for rank, run_dir in enumerate(runs["tracking"].values()):
        Path(run_dir).mkdir(parents=True)
        steps = np.arange(1, 11)
        pd.DataFrame({"step": steps, "loss": 2.0 / (steps + rank)}).to_csv(Path(run_dir) / "loss.csv", index=False)
        pd.DataFrame({"step": steps, "lr": 1e-4}).to_csv(Path(run_dir) / "lr.csv", index=False)
    path = figures.training_curves_figure(runs["tracking"], "curves.png", "tracking")
    assert path.stat().st_size > 10_000
