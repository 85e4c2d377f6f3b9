"""Tracker fine-tuning on the shared loop, exact resume, inference and the evaluate stage, on a
small demo benchmark built from the real clips."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import TINY
from dropmae.config import Cell, config_from_dict
from dropmae.data.images import read_rgb
from dropmae.demo.benchmark import DemoBenchmarkSettings, build_demo_benchmark
from dropmae.engine.checkpoint import LAST_CHECKPOINT, load_checkpoint
from dropmae.engine.pretrain import build_model
from dropmae.tracking.datasets import read_got10k
from dropmae.tracking.processing import HUE_STEPS, CropSettings, TrackingPairDataset, crop_around, rotate_hues
from dropmae.tracking.tracker import DropTracker, TrackerSettings, hann_window_2d, run_first_box_baseline, run_sequence
from dropmae.tracking.train import finetune_tracker, keep_ratio_at, load_finetuned_tracker, training_sequences
from dropmae.workflow.stages import evaluate_tracker_stage


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory, demo_tree):
    root = tmp_path_factory.mktemp("tracking") / "bench"
    build_demo_benchmark(demo_tree, root, DemoBenchmarkSettings(train_sequences=4, val_sequences=2, train_photo_sequences=0,
                                                                frames_per_sequence=12, frame_size=(96, 64)))
    return root / "got10k"


def tracking_config(benchmark, **tracking):
    values = json.loads(json.dumps(TINY))
    values["tracking"] = {
        "preset": "demo_micro", "benchmarks": {"demo": {"format": "got10k", "root": str(benchmark)}},
        "train": {"demo": {"split": "train"}}, "evaluate": {"demo": {"split": "val"}},
        "template_size": 16, "search_size": 32, "epochs": 2, "samples_per_epoch": 12, "batch_size": 4,
        "ce_locations": [1], "ce_start_epoch": 0, "ce_warm_epochs": 1, "head_channels": 16, **tracking,
    }
    return config_from_dict(values)


def test_keep_ratio_schedule_follows_ostrack():
    assert keep_ratio_at(0, 0.7, 20, 50) == 1.0
    assert keep_ratio_at(20, 0.7, 20, 50) == pytest.approx(1.0)
    assert keep_ratio_at(45, 0.7, 20, 50) == pytest.approx(0.85)
    assert keep_ratio_at(70, 0.7, 20, 50) == 0.7


def test_hann_window_is_ostracks_centred_window():
    window = hann_window_2d(4)[0, 0]
    expected = 0.5 * (1 - np.cos(2 * np.pi * np.arange(1, 5) / 5))
    assert np.allclose(window.numpy(), np.outer(expected, expected))


def test_crop_maps_boxes_both_ways_and_pads_with_zeros():
    image = np.full((40, 60, 3), 200, np.uint8)
    crop = crop_around(image, [50, 30, 8, 8], factor=4.0, size=64)  # runs off the right and bottom edges
    assert crop.image.shape == (64, 64, 3) and crop.image[-1, -1].sum() == 0 and crop.image[0, 0].sum() > 0
    box = np.array([50.0, 30.0, 8.0, 8.0])
    inside = crop.box_to_crop(box)
    assert inside[:2] + inside[2:] / 2 == pytest.approx([32, 32])  # the box sits in the centre
    assert crop.box_to_image(inside) == pytest.approx(box)


def test_training_pairs_are_deterministic_and_hold_the_target(benchmark):
    config = tracking_config(benchmark)
    dataset = TrackingPairDataset(training_sequences(config), 8, CropSettings.from_config(config.tracking), seed=3)
    first, again = dataset[5], dataset[5]
    assert all(torch.equal(first[k], again[k]) for k in first)
    boxes = torch.stack([dataset[i]["search_box"] for i in range(8)])
    centres = boxes[:, :2]
    assert ((centres >= 0) & (centres < 1)).all() and (boxes[:, 2:] > 0).all()
    assert first["template"].shape == (3, 16, 16) and first["search"].shape == (3, 32, 32)


def test_hue_rotation_turns_both_crops_alike_and_keeps_grey():
    rng = np.random.default_rng(0)
    template = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    grey = np.repeat(rng.integers(0, 256, (8, 8, 1), dtype=np.uint8), 3, axis=2)
    turned_template, turned_grey = rotate_hues([template, grey], HUE_STEPS // 3)  # 120 degrees
    assert np.array_equal(turned_grey, grey)  # no hue, nothing to turn
    assert np.abs(turned_template.astype(int) - template).max() > 50
    # red -> green -> blue: a third of the circle moves each primary to the next one
    primaries = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]]], np.uint8)
    assert rotate_hues([primaries], HUE_STEPS // 3)[0].tolist() == [[[0, 255, 0], [0, 0, 255], [255, 0, 0]]]


def test_hue_rotation_probability_changes_only_the_colours(benchmark):
    config = tracking_config(benchmark)
    plain = TrackingPairDataset(training_sequences(config), 8, CropSettings.from_config(config.tracking), seed=3)
    settings = replace(CropSettings.from_config(config.tracking), hue_rotation_probability=1.0)
    turned = TrackingPairDataset(training_sequences(config), 8, settings, seed=3)
    assert torch.equal(plain[2]["search_box"], turned[2]["search_box"])
    assert not torch.equal(plain[2]["search"], turned[2]["search"])


def test_finetuning_resumes_bit_for_bit(benchmark, tmp_path):
    config = tracking_config(benchmark)
    pretrained = tmp_path / "pretrained.pth"
    model = build_model(config, Cell("dropmae", 1))
    torch.save({"model": model.state_dict(), "config": {"model": {"encoder": "micro", "patch_size": 8}}}, pretrained)
    straight = finetune_tracker(config, pretrained, tmp_path / "straight", progress=False)
    assert straight.status == "completed" and straight.global_step == 6
    first = finetune_tracker(config, pretrained, tmp_path / "resumed", stop_after_steps=4, progress=False)
    assert first.status == "interrupted" and first.global_step == 4
    finetune_tracker(config, pretrained, tmp_path / "resumed", progress=False)
    a = load_checkpoint(tmp_path / "straight" / LAST_CHECKPOINT)["model"]
    b = load_checkpoint(tmp_path / "resumed" / LAST_CHECKPOINT)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line) for line in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    epochs = [r for r in log if r["event"] == "epoch"]
    assert [r["keep_ratio"] for r in epochs] == [1.0, pytest.approx(0.7)]  # CE schedule reached the model
    assert log[0]["pretrained"] == str(pretrained)


def test_backbone_learns_at_a_tenth_of_the_head_lr(benchmark, tmp_path):
    from dropmae.tracking.train import TrackerTask, build_tracker_model

    config = tracking_config(benchmark, backbone_lr_scale=0.1, lr_drop_epoch=10)  # recipe scale (demo_micro: 1.0)
    model, _ = build_tracker_model(config, None)
    task = TrackerTask(config, model, None, "t", None)
    head, backbone = task.build_optimizer(fused=False).param_groups
    assert head["lr_scale"] == 1.0 and backbone["lr_scale"] == 0.1
    assert {id(p) for p in head["params"]} == {id(p) for p in model.box_head.parameters()}
    assert task.learning_rate(9.9) == config.tracking.lr and task.learning_rate(10.0) == pytest.approx(config.tracking.lr * 0.1)


def test_optional_warmup_raises_the_lr_linearly_then_follows_the_step_schedule(benchmark):
    from dropmae.config import ConfigError
    from dropmae.tracking.train import TrackerTask

    config = tracking_config(benchmark, warmup_epochs=4, lr_drop_epoch=10)
    task = TrackerTask(config, None, None, "t", None)
    lr = config.tracking.lr
    assert task.learning_rate(0.0) == 0.0
    assert task.learning_rate(1.0) == pytest.approx(lr / 4) and task.learning_rate(3.0) == pytest.approx(lr * 3 / 4)
    assert task.learning_rate(4.0) == lr and task.learning_rate(10.0) == pytest.approx(lr * 0.1)
    assert TrackerTask(tracking_config(benchmark), None, None, "t", None).learning_rate(0.0) == lr  # the recipe: none
    with pytest.raises(ConfigError, match="tracking.warmup_epochs"):
        tracking_config(benchmark, warmup_epochs=12, lr_drop_epoch=10)


def test_tracker_runs_sequences_and_the_evaluate_stage_scores_them(benchmark, tmp_path):
    config = tracking_config(benchmark, epochs=1)
    finetune_tracker(config, None, tmp_path / "run", progress=False)
    model, trained = load_finetuned_tracker(tmp_path / "run" / LAST_CHECKPOINT)
    sequence = read_got10k(benchmark, "val")[0]
    tracker = DropTracker(model, TrackerSettings.from_config(trained.tracking))
    boxes, times = run_sequence(tracker, sequence)
    height, width = read_rgb(sequence.frames[0]).shape[:2]
    assert boxes.shape == (12, 4) and np.array_equal(boxes[0], sequence.boxes[0]) and (times > 0).all()
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= width + 1e-6).all()

    out = tmp_path / "eval"
    metrics = evaluate_tracker_stage(config, "scratch", "demo", tmp_path / "run" / LAST_CHECKPOINT,
                                     out / "metrics.json", out / "success.png", out / "raw")
    assert metrics["scored"] and 0 <= metrics["ao"] <= 1 and metrics["sequences"] == 2
    assert (out / "raw" / sequence.name / f"{sequence.name}_001.txt").is_file()
    assert (out / "success.png").stat().st_size > 1000

    trivial = evaluate_tracker_stage(config, "first_box", "demo", None, tmp_path / "fb" / "metrics.json",
                                     tmp_path / "fb" / "success.png", tmp_path / "fb" / "raw")
    repeated, _ = run_first_box_baseline(sequence)
    assert (repeated == sequence.boxes[0]).all() and trivial["ao"] < 1


def test_a_missing_frame_is_named(benchmark, tmp_path):
    with pytest.raises(FileNotFoundError, match="gone.jpg"):
        read_rgb(tmp_path / "gone.jpg")


def test_a_zero_size_initial_box_is_refused(benchmark, tmp_path):
    config = tracking_config(benchmark, epochs=1)
    finetune_tracker(config, None, tmp_path / "run", progress=False)
    model, trained = load_finetuned_tracker(tmp_path / "run" / LAST_CHECKPOINT)
    tracker = DropTracker(model, TrackerSettings.from_config(trained.tracking))
    with pytest.raises(ValueError, match="initial box"):
        tracker.initialize(np.zeros((64, 96, 3), np.uint8), [10, 10, 0, 5])
