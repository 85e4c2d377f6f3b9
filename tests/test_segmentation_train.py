"""Segmenter fine-tuning on the shared loop (exact resume), the fine-tune / evaluate / probe stages of
the DAG, and bad benchmark data stopping them before any work, on a small demo benchmark built
from the real clips."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY
from dropmae.config import Cell, config_from_dict, config_to_dict
from dropmae.engine.checkpoint import LAST_CHECKPOINT, load_checkpoint
from dropmae.demo.benchmark import DemoBenchmarkSettings, build_demo_benchmark
from dropmae.engine.pretrain import build_model
from dropmae.segmentation.datasets import SegmentationDataError, read_davis, read_label_mask
from dropmae.segmentation.train import finetune_segmenter
from dropmae.workflow import layout
from dropmae.workflow.stages import evaluate_segmenter_stage, finetune_segmenter_stage, probe_stage

LOCAL_LAUNCHER = {
    "executor": "local",
    "finetune": {"partition": None, "nodes": 1, "gpus_per_node": 0, "cpus_per_task": 1, "mem_gb_per_node": 2,
                 "time_min": 10},
}


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory, demo_tree):
    """DAVIS layout: 4 train and 2 val sequences of 8 frames, 96x64."""
    root = tmp_path_factory.mktemp("segmentation") / "bench"
    build_demo_benchmark(demo_tree, root, DemoBenchmarkSettings(train_sequences=4, val_sequences=2, train_photo_sequences=0,
                                                                frames_per_sequence=8, frame_size=(96, 64)))
    return root / "davis"


def segmentation_config(benchmark, **segmentation):
    values = json.loads(json.dumps(TINY))
    values["launcher"] = LOCAL_LAUNCHER
    values["segmentation"] = {
        "preset": "demo_micro", "benchmarks": {"demo": {"format": "davis2017", "root": str(benchmark)}},
        "train": {"demo": {"split": "train"}}, "evaluate": {"demo": {"split": "val"}},
        "image_size": 32, "decoder_channels": 16, "epochs": 2, "samples_per_epoch": 8, "batch_size": 4,
        "probe": {"topk": 3, "n_context": 2, "neighbourhood": 2}, **segmentation,
    }
    return config_from_dict(values)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, benchmark):
    """A micro DropMAE checkpoint in the layout the pretrain stage writes (model.pth)."""
    config = segmentation_config(benchmark)
    torch.manual_seed(0)
    model = build_model(config, Cell("dropmae", 1))
    path = tmp_path_factory.mktemp("pretrained") / "model.pth"
    torch.save({"model": model.state_dict(), "config": config_to_dict(config),
                "run": {"method": "dropmae", "epochs": 1, "source": "demo"}, "epoch": 1, "global_step": 1}, path)
    return path


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, benchmark, pretrained):
    """finetune_segmenter_stage through submitit's local executor: one epoch of 2 steps."""
    config = segmentation_config(benchmark, epochs=1)
    run = tmp_path_factory.mktemp("segment") / "demo" / "dropmae_ep1"
    messages = []
    summary = finetune_segmenter_stage(config, "demo/dropmae_ep1", pretrained, run / "model.pth", run / "run.json",
                                       messages.append)
    return config, run, summary, messages


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_finetuning_resumes_bit_for_bit(benchmark, pretrained, tmp_path):
    config = segmentation_config(benchmark)
    straight = finetune_segmenter(config, pretrained, tmp_path / "straight", progress=False)
    assert straight.status == "completed" and straight.global_step == 4
    first = finetune_segmenter(config, pretrained, tmp_path / "resumed", stop_after_steps=1, progress=False)
    assert first.status == "interrupted" and first.global_step == 1
    finetune_segmenter(config, pretrained, tmp_path / "resumed", progress=False)
    a = load_checkpoint(tmp_path / "straight" / LAST_CHECKPOINT)["model"]
    b = load_checkpoint(tmp_path / "resumed" / LAST_CHECKPOINT)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line) for line in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    assert log[0]["pretrained"] == str(pretrained)
    assert [r["global_step"] for r in log if r["event"] == "epoch"] == [2, 4]


def test_the_finetune_stage_writes_the_model_and_moves_a_stale_run_aside(finetuned, benchmark, pretrained):
    config, run, summary, _ = finetuned
    assert summary["executor"] == "local" and summary["status"] == "completed" and summary["global_step"] == 2
    assert summary["segmenter"] == "demo/dropmae_ep1" and summary["pretrained_sha256"] == sha256(pretrained)
    recorded = json.loads((run / "run.json").read_text())
    assert recorded["model_sha256"] == sha256(run / "model.pth")
    assert recorded["signature"]["lr"] == config.segmentation.lr
    final = torch.load(run / "model.pth", weights_only=False)
    assert "optimizer" not in final and final["architecture"] == {"encoder": "micro", "patch_size": 8}

    # A rerun (here with a changed recipe value) moves the finished run aside instead of resuming it.
    other = run.parent / "changed"
    shutil.copytree(run, other)
    messages = []
    changed = segmentation_config(benchmark, epochs=1, lr=5e-4)
    finetune_segmenter_stage(changed, "demo/dropmae_ep1", pretrained, other / "model.pth", other / "run.json",
                             messages.append)
    assert any("the previous run was moved to" in m for m in messages)
    assert len(list((other / "superseded").glob("*/" + LAST_CHECKPOINT))) == 1
    assert json.loads((other / "run.json").read_text())["signature"]["lr"] == 5e-4


def test_the_evaluate_stage_scores_result_pngs_and_draws_overlays(finetuned, benchmark, tmp_path):
    config, run, _, _ = finetuned
    sequences = read_davis(benchmark, "2017", "val")
    out = tmp_path / "trained"
    metrics = evaluate_segmenter_stage(config, "demo/dropmae_ep1", "demo", run / "model.pth", out / "metrics.json",
                                       out / "overlays.png", out / "raw")
    assert metrics == json.loads((out / "metrics.json").read_text())
    assert metrics["scored"] and 0 <= metrics["jf"] <= 1
    assert metrics["jf"] == pytest.approx((metrics["j"] + metrics["f"]) / 2)
    assert metrics["sequences"] == 2 and metrics["frames"] == 16 and metrics["frames_per_second"] > 0
    assert metrics["objects"] == sum(len(s.object_ids) for s in sequences)
    assert metrics["checkpoint_sha256"] == sha256(run / "model.pth")
    for sequence in sequences:
        written = sorted((out / "raw" / sequence.name).glob("*.png"))
        assert [p.name for p in written] == [sequence.mask_name(i) for i in range(len(sequence))]
        with Image.open(written[3]) as image:
            assert image.mode == "P" and image.size == (96, 64)
        # Frame 0 is the reference annotation itself.
        assert np.array_equal(read_label_mask(written[0]), sequence.read_annotation(0))
    assert (out / "overlays.png").stat().st_size > 1000

    trivial_dir = tmp_path / "first_mask"
    trivial = evaluate_segmenter_stage(config, layout.FIRST_MASK, "demo", None, trivial_dir / "metrics.json",
                                       trivial_dir / "overlays.png", trivial_dir / "raw")
    assert trivial["scored"] and 0 < trivial["jf"] < 1 and "checkpoint" not in trivial
    last = trivial_dir / "raw" / sequences[0].name / sequences[0].mask_name(7)
    assert np.array_equal(read_label_mask(last), sequences[0].read_annotation(0))


def test_the_probe_stage_scores_the_frozen_encoder(benchmark, pretrained, tmp_path):
    config = segmentation_config(benchmark)
    cell = layout.Cell(source="demo", method="dropmae", epochs=1)
    metrics = probe_stage(config, cell, "demo", pretrained, tmp_path / "metrics.json", tmp_path / "overlays.png",
                          tmp_path / "raw")
    assert metrics == json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["scored"] and 0 <= metrics["jf"] <= 1 and metrics["frames"] == 16
    assert metrics["settings"]["topk"] == 3 and metrics["settings"]["n_context"] == 2
    assert (metrics["method"], metrics["epochs"]) == ("dropmae", 1)
    assert metrics["checkpoint_sha256"] == sha256(pretrained)
    assert len(list((tmp_path / "raw").glob("*/*.png"))) == 16
    assert (tmp_path / "overlays.png").stat().st_size > 1000


def test_a_missing_benchmark_root_stops_every_stage_before_work(benchmark, pretrained, tmp_path):
    config = segmentation_config(tmp_path / "not-there")
    out = tmp_path / "out"
    with pytest.raises(SegmentationDataError, match="not-there: DAVIS root does not exist"):
        evaluate_segmenter_stage(config, layout.FIRST_MASK, "demo", None, out / "metrics.json", out / "o.png",
                                 out / "raw")
    with pytest.raises(SegmentationDataError, match="not-there"):
        probe_stage(config, layout.Cell(source="demo", method="dropmae", epochs=1), "demo", pretrained, out / "metrics.json",
                    out / "o.png", out / "raw")
    with pytest.raises(SegmentationDataError, match="not-there"):
        finetune_segmenter(config, pretrained, out / "run", progress=False)
    assert not out.exists()


def test_a_missing_first_frame_annotation_is_named_before_work(benchmark, pretrained, tmp_path):
    broken = shutil.copytree(benchmark, tmp_path / "davis")
    name = (broken / "ImageSets" / "2017" / "val.txt").read_text().split()[1]
    (broken / "Annotations" / "480p" / name / "00000.png").unlink()
    config = segmentation_config(broken)
    out = tmp_path / "out"
    expected = f"{name}/00000.png: first-frame annotation is missing"
    with pytest.raises(SegmentationDataError, match=expected):
        evaluate_segmenter_stage(config, "demo/dropmae_ep1", "demo", pretrained, out / "metrics.json", out / "o.png",
                                 out / "raw")
    with pytest.raises(SegmentationDataError, match=expected):
        probe_stage(config, layout.Cell(source="demo", method="dropmae", epochs=1), "demo", pretrained, out / "metrics.json",
                    out / "o.png", out / "raw")
    assert not out.exists()
