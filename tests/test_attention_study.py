"""The seeded attention study: statistics, intervals, config checks, and a tiny end-to-end run."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from dropmae.analysis import attention_study as study
from dropmae.config import ConfigError, PretrainConfig, config_from_dict, load_config
from dropmae.data.extract import ExtractionSettings, extract_frames
from dropmae.engine.pretrain import TrainingOutcome
from dropmae.workflow import layout, stages

REPO = Path(__file__).resolve().parents[1]
DEPTH = 2
TINY_STUDY = {
    "data": {"sources": {"demo": {"videos": "data/demo-videos"}}},
    "model": {"encoder": "micro", "img_size": 32, "patch_size": 8, "decoder_dim": 32, "decoder_depth": DEPTH,
              "decoder_heads": 4},
    "pretrain": {"epochs": [1], "asad_p": 0.3, "batch_size": 2, "frame_gap": 8, "warmup_epochs": 0,
                 "num_workers": 0, "log_every_steps": 1, "checkpoint_every_steps": 0},
    "attention_study": {"seeds": [0, 1], "heldout_pairs": 2, "batch_size": 2,
                        "settings": {"recipe": {}, "shared_crop": {"shared_crop": True}}},
}


def tiny_study_config(**study_keys) -> object:
    values = json.loads(json.dumps(TINY_STUDY))
    values["attention_study"].update(study_keys)
    return config_from_dict(values)


# ----------------------------------------------------------------- intervals
def test_t_interval_matches_hand_computed_values():
    # differences 1..5: mean 3, sd sqrt(2.5), t(0.975, 4) = 2.776445 -> 3 -/+ 1.963243
    low, high = study.t_interval(3.0, math.sqrt(2.5), 5)
    assert low == pytest.approx(1.036757, abs=1e-6) and high == pytest.approx(4.963243, abs=1e-6)
    # differences 0.1, 0.3: mean 0.2, sd 0.141421, t(0.975, 1) = 12.706205 -> 0.2 -/+ 1.270620
    low, high = study.t_interval(0.2, math.sqrt(0.02), 2)
    assert low == pytest.approx(-1.070620, abs=1e-6) and high == pytest.approx(1.470620, abs=1e-6)


def test_summary_pairs_the_methods_by_seed():
    rows = []
    for seed, (twin, drop) in enumerate([(0.40, 0.41), (0.50, 0.52), (0.45, 0.48), (0.42, 0.46), (0.47, 0.52)]):
        for method, between in (("twinmae", twin), ("dropmae", drop)):
            rows.append({"setting": "recipe", "seed": seed, "method": method, "layer": 1, "within_frame": 1 - between,
                         "between_frame": between, "structure": 0.1, "same_position": 0.01})
    summary = study.summarise(pd.DataFrame(rows))
    between = summary[(summary["measure"] == "between_frame") & (summary["layer"] == "1")].iloc[0]
    # per-seed differences 0.01 .. 0.05: the mean and interval of 1..5 above, scaled by 0.01
    assert between["difference"] == pytest.approx(0.03)
    assert (between["ci_low"], between["ci_high"]) == pytest.approx((0.01036757, 0.04963243), abs=1e-8)
    assert between["seeds"] == 5 and bool(between["excludes_zero"])
    assert between["twinmae"] == pytest.approx(0.448) and between["dropmae"] == pytest.approx(0.478)
    structure = summary[(summary["measure"] == "structure") & (summary["layer"] == "1")].iloc[0]
    assert structure["difference"] == pytest.approx(0.0) and not bool(structure["excludes_zero"])
    # one row per measure for layer 1 and for the mean over layers
    assert len(summary) == len(study.MEASURES) * 2 and set(summary["layer"]) == {"1", study.ALL_LAYERS}


# ----------------------------------------------------------------- statistics
def test_attention_statistics_of_uniform_and_one_hot_rows():
    n = 4
    uniform = torch.full((1, 2, 2 * n, 2 * n), 1 / (2 * n))
    within, between, structure, same = study.attention_statistics(uniform, n)[0].tolist()
    assert (within, between, structure, same) == pytest.approx((0.5, 0.5, 0.0, 1 / (2 * n)), abs=1e-6)
    # every query attends only to its own position in the other frame
    matched = torch.eye(2 * n).roll(n, dims=1).expand(1, 2, -1, -1)
    assert study.attention_statistics(matched, n)[0].tolist() == pytest.approx([0.0, 1.0, 1.0, 1.0], abs=1e-6)
    # ... or only to itself: all within, fully structured, nothing on the other frame's same position
    assert study.attention_statistics(torch.eye(2 * n).expand(1, 2, -1, -1), n)[0].tolist() == pytest.approx(
        [1.0, 0.0, 1.0, 0.0], abs=1e-6)


def test_attention_statistics_agree_with_a_loop_per_row():
    n, generator = 3, torch.Generator().manual_seed(0)
    attention = (2 * torch.randn(2, 3, 2 * n, 2 * n, generator=generator)).softmax(dim=-1)
    got = study.attention_statistics(attention, n)
    for b in range(2):
        structure, same = [], []
        for h in range(3):
            for query in range(2 * n):
                row = attention[b, h, query]
                structure.append(1 - float(-(row * row.log()).sum()) / math.log(2 * n))
                same.append(float(row[(query + n) % (2 * n)]))
        assert got[b, 2].item() == pytest.approx(sum(structure) / len(structure), abs=1e-5)
        assert got[b, 3].item() == pytest.approx(sum(same) / len(same), abs=1e-6)


# ----------------------------------------------------------------- config
@pytest.mark.parametrize("study_keys, named", [
    ({"settings": {"short_gap": {"frame_gapp": 3}}}, "attention_study.settings.short_gap.frame_gapp"),
    ({"settings": {"short_gap": {"seed": 3}}}, "attention_study.settings.short_gap.seed"),
    ({"settings": {"short_gap": {"frame_gap": 1}}},
     "attention_study.settings.short_gap (with attention_study.pretrain): pretrain.frame_gap"),
    ({"settings": {"longer": {"epochs": 0}}}, "attention_study.settings.longer.epochs"),
    ({"settings": {"bad name": {}}}, "attention_study.settings.bad name"),
    ({"settings": {}}, "attention_study.settings"),
    ({"pretrain": {"blr": -1.0}}, "attention_study.settings.recipe (with attention_study.pretrain): pretrain.blr"),
    ({"seeds": [3]}, "attention_study.seeds"),
    ({"seeds": [1, 1]}, "attention_study.seeds"),
    ({"source": "k400"}, "attention_study.source"),
    ({"heldout_pairs": 0}, "attention_study.heldout_pairs"),
])
def test_bad_study_config_names_the_key(study_keys, named):
    with pytest.raises(ConfigError, match=named.replace("(", r"\(").replace(")", r"\)")):
        tiny_study_config(**study_keys)


def test_settings_override_pretrain_in_order():
    config = tiny_study_config(pretrain={"epochs": 3, "frame_gap": 5},
                               settings={"base": {}, "gap": {"frame_gap": 3}, "long": {"epochs": 9}})
    runs = {run.setting: study.run_config(config, run) for run in study.study_runs(config) if run.seed == 1}
    assert [trained.pretrain.frame_gap for trained, _ in runs.values()] == [5, 3, 5]
    assert [cell.epochs for _, cell in runs.values()] == [3, 3, 9]
    assert all(trained.pretrain.seed == 1 and cell.source == "demo" for trained, cell in runs.values())


def test_overlays_replace_the_settings_and_validate():
    demo = load_config([REPO / "params.yaml", REPO / "config/demo.yaml", REPO / "config/attention_study_demo.yaml"])
    gpu = load_config([REPO / "params.yaml", REPO / "config/attention_study_gpu.yaml"])
    for config in (demo, gpu):
        assert set(config.attention_study.settings) == {"recipe", "shared_crop", "short_gap", "longer"}
        assert len(config.attention_study.seeds) >= 5
    assert demo.model.encoder == "micro" and gpu.model.encoder == "small" and gpu.model.decoder_depth == 8


def test_study_pretrain_keys_are_the_run_signature_keys_and_dvc_declares_them():
    every = {f.name for f in dataclasses.fields(PretrainConfig)}
    assert set(study.STUDY_PRETRAIN_KEYS) == (every - stages.OPERATIONAL_KEYS["pretrain"] - {"seed"}) | {"epochs"}
    stage = yaml.safe_load((REPO / "studies/dvc.yaml").read_text())["stages"]["attention_study"]
    assert sorted(stage["params"]) == sorted(["attention_study", "model",
                                              *(f"pretrain.{key}" for key in study.STUDY_PRETRAIN_KEYS)])


# ----------------------------------------------------------------- running
@pytest.fixture(scope="module")
def study_frames(demo_tree, tmp_path_factory) -> Path:
    """The 6 demo clips extracted, half of them held out."""
    out = tmp_path_factory.mktemp("attention_study") / "frames"
    extract_frames(demo_tree, out, ExtractionSettings(short_side=40, workers=1, val_fraction=0.5), progress=False)
    return out


def test_heldout_pairs_draw_more_pairs_per_video_when_there_are_few(study_frames):
    config = tiny_study_config(heldout_pairs=7)
    pairs = study.heldout_pairs(study_frames, config)
    videos = len(pairs.datasets[0])  # one pair per val video and seed
    assert videos < 7 <= len(pairs) < 7 + videos
    assert not torch.equal(pairs[0], pairs[videos])  # the same video, another pair of frames


def test_both_methods_of_a_seed_start_from_the_same_weights_and_data_order(study_frames, tmp_path, monkeypatch):
    starts = {}

    def capture(task, settings, output_dir, context, device, **kwargs):
        starts[task.name] = ({key: value.clone() for key, value in task.model.state_dict().items()}, settings,
                             task.model.asad_p)
        return TrainingOutcome("completed", settings.epochs, 0, Path(output_dir) / "checkpoint-last.pth", 0.0)

    monkeypatch.setattr("dropmae.engine.pretrain.run_training", capture)
    config = tiny_study_config()
    for method in ("twinmae", "dropmae"):
        study.train_run(config, study.StudyRun("recipe", 1, method), study_frames, tmp_path, "cpu", print)
    (twin, twin_loop, twin_p), (drop, drop_loop, drop_p) = starts["twinmae"], starts["dropmae"]
    assert twin.keys() == drop.keys() and all(torch.equal(twin[key], drop[key]) for key in twin)
    assert twin_loop == drop_loop and twin_loop.seed == 1  # the loop's seed orders the data and the crops
    assert (twin_p, drop_p) == (0.0, 0.3)


def test_a_tiny_study_writes_its_files_and_resumes(study_frames, tmp_path, monkeypatch):
    config = tiny_study_config()
    outputs = layout.attention_study_outputs(str(tmp_path / "results"))
    summary = study.run_attention_study(config, study_frames, outputs, tmp_path / "runs", device="cpu")

    runs = pd.read_csv(outputs["runs"])
    assert list(runs.columns) == study.RUN_COLUMNS
    assert len(runs) == 2 * 2 * 2 * DEPTH  # settings x seeds x methods x decoder layers
    assert runs[["within_frame", "between_frame"]].sum(axis=1).to_numpy() == pytest.approx(1.0, abs=1e-5)
    assert ((runs["structure"] >= 0) & (runs["structure"] <= 1)).all() and (runs["pairs"] == 2).all()
    written = pd.read_csv(outputs["summary"])
    assert list(written.columns) == ["setting", "measure", "layer", "twinmae", "dropmae", "difference", "ci_low",
                                     "ci_high", "seeds", "excludes_zero"]
    assert len(written) == len(summary) == 2 * len(study.MEASURES) * (DEPTH + 1)
    assert (written["seeds"] == 2).all()
    markdown = Path(outputs["markdown"]).read_text()
    assert "95% interval" in markdown and "`shared_crop`: shared_crop=True" in markdown
    assert Path(outputs["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A second call trains nothing: every run is finished and configured the same.
    monkeypatch.setattr(study, "pretrain", lambda *args, **kwargs: pytest.fail("a finished run was trained again"))
    again = study.run_attention_study(config, study_frames, outputs, tmp_path / "runs", device="cpu")
    pd.testing.assert_frame_equal(again.reset_index(drop=True), summary.reset_index(drop=True))
