"""dropmae track / segment / score-tracking / score-vos on the demo benchmark's real clips, with
tiny (untrained) micro models; the scores agree with the got10k toolkit and vos-benchmark."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from got10k.experiments import ExperimentGOT10k
from PIL import Image
from vos_benchmark.benchmark import benchmark as vos_benchmark

from dropmae.cli import main
from dropmae.config import config_to_dict, load_config
from dropmae.demo.benchmark import DemoBenchmarkSettings, build_demo_benchmark
from dropmae.segmentation.datasets import read_label_mask
from dropmae.segmentation.model import DropSeg
from dropmae.segmentation.train import segmenter_model_arguments
from dropmae.tracking.model import DropTrack
from dropmae.tracking.results import write_got10k_result
from dropmae.tracking.train import tracker_model_arguments
from workflow_support import REPO, TINY_OVERLAY, with_segmentation, with_tracking, write_yaml

SETTINGS = DemoBenchmarkSettings(train_sequences=1, train_photo_sequences=0, val_sequences=3, frames_per_sequence=8,
                                 frame_size=(64, 48), objects_per_sequence=2)


@pytest.fixture(scope="module")
def bench(tmp_path_factory, demo_tree) -> Path:
    root = tmp_path_factory.mktemp("clips") / "bench"
    build_demo_benchmark(demo_tree, root, SETTINGS)
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A micro tracker and segmenter as the fine-tuning stages save them (untrained: the commands'
    plumbing is under test, not the scores)."""
    folder = tmp_path_factory.mktemp("models")
    config = load_config([REPO / "params.yaml",
                          write_yaml(folder / "tiny.yaml", with_segmentation(with_tracking(TINY_OVERLAY)))])
    torch.manual_seed(0)
    architecture = {"encoder": "micro", "patch_size": 8}
    tracker = DropTrack(**architecture, **tracker_model_arguments(config))
    segmenter = DropSeg(**architecture, **segmenter_model_arguments(config))
    paths = {"tracker": folder / "tracker.pth", "segmenter": folder / "segmenter.pth"}
    for name, model in (("tracker", tracker), ("segmenter", segmenter)):
        torch.save({"model": model.state_dict(), "config": config_to_dict(config), "architecture": architecture},
                   paths[name])
    return paths


def val_names(bench: Path) -> list[str]:
    return (bench / "got10k" / "val" / "list.txt").read_text().split()


def first_box(bench: Path, name: str) -> str:
    return (bench / "got10k" / "val" / name / "groundtruth.txt").read_text().splitlines()[0]


def video_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_track_writes_got10k_files_and_an_annotated_video(bench, models, tmp_path, demo_tree):
    name = val_names(bench)[0]
    output = tmp_path / "tracks"
    assert main(["track", "--tracker", str(models["tracker"]), "--frames", str(bench / "got10k" / "val" / name),
                 "--box", first_box(bench, name), "--output", str(output), "--output-video",
                 str(tmp_path / "track.mp4"), "--quiet", "--device", "cpu"]) == 0
    boxes = np.loadtxt(output / name / f"{name}_001.txt", delimiter=",")
    times = np.loadtxt(output / name / f"{name}_time.txt")
    assert boxes.shape == (SETTINGS.frames_per_sequence, 4) and len(times) == SETTINGS.frames_per_sequence
    assert np.allclose(boxes[0], [float(v) for v in first_box(bench, name).split(",")])
    assert video_frames(tmp_path / "track.mp4") == SETTINGS.frames_per_sequence
    # A video file works the same way; a box outside the frame is named.
    clip = next(demo_tree.rglob("*.mp4"))
    assert main(["track", "--tracker", str(models["tracker"]), "--video", str(clip), "--box", "10,10,20,16",
                 "--output", str(output), "--quiet", "--device", "cpu"]) == 0
    assert len(np.loadtxt(output / clip.stem / f"{clip.stem}_001.txt", delimiter=",")) == video_frames(clip)
    assert main(["track", "--tracker", str(models["tracker"]), "--video", str(clip), "--box", "900,10,20,16",
                 "--output", str(output), "--quiet", "--device", "cpu"]) == 2


def test_score_tracking_agrees_with_the_got10k_toolkit(bench, tmp_path):
    """Another tracker's result files (the ground truth, jittered) scored by both."""
    results = tmp_path / "results" / "GOT-10k" / "ours"  # where the toolkit looks for tracker "ours"
    rng = np.random.default_rng(0)
    for name in val_names(bench):
        truth = np.loadtxt(bench / "got10k" / "val" / name / "groundtruth.txt", delimiter=",")
        jitter = rng.normal(0, 0.15, truth.shape) * truth[:, 2:].repeat(2, axis=1)
        boxes = np.concatenate([truth[:, :2] + jitter[:, :2], np.maximum(truth[:, 2:] + jitter[:, 2:], 1)], axis=1)
        write_got10k_result(results, name, boxes, rng.uniform(0.01, 0.02, len(truth)))
    assert main(["score-tracking", "--format", "got10k", "--root", str(bench / "got10k"), "--results", str(results),
                 "--output", str(tmp_path / "scores")]) == 0
    ours = json.loads((tmp_path / "scores" / "metrics.json").read_text())
    toolkit = ExperimentGOT10k(str(bench / "got10k"), subset="val", result_dir=str(tmp_path / "results"),
                               report_dir=str(tmp_path / "reports")).report(["ours"])["ours"]["overall"]
    assert ours["ao"] == pytest.approx(toolkit["ao"], abs=1e-9)
    assert ours["sr50"] == pytest.approx(toolkit["sr"], abs=1e-9)
    assert np.allclose(ours["success_curve"], toolkit["succ_curve"], atol=1e-9)
    assert (tmp_path / "scores" / "success.png").stat().st_size > 1000
    with open(tmp_path / "scores" / "per_sequence.csv") as handle:
        assert [row["sequence"] for row in csv.DictReader(handle)] == val_names(bench)
    # OSTrack's unpacked layout (<seq>.txt, tab separated) gives the same scores.
    flat = tmp_path / "flat"
    flat.mkdir()
    for name in val_names(bench):
        boxes = np.loadtxt(results / name / f"{name}_001.txt", delimiter=",")
        np.savetxt(flat / f"{name}.txt", boxes, fmt="%.4f", delimiter="\t")
    assert main(["score-tracking", "--format", "got10k", "--root", str(bench / "got10k"), "--results", str(flat),
                 "--output", str(tmp_path / "flat_scores")]) == 0
    assert json.loads((tmp_path / "flat_scores" / "metrics.json").read_text())["ao"] == pytest.approx(ours["ao"],
                                                                                                    abs=1e-6)


def test_segment_writes_palette_pngs_and_an_overlay_video(bench, models, tmp_path):
    davis = bench / "davis"
    name = (davis / "ImageSets" / "2017" / "val.txt").read_text().split()[0]
    first = davis / "Annotations" / "480p" / name / "00000.png"
    output = tmp_path / "masks"
    assert main(["segment", "--segmenter", str(models["segmenter"]), "--frames",
                 str(davis / "JPEGImages" / "480p" / name), "--mask", str(first), "--output", str(output),
                 "--output-video", str(tmp_path / "overlay.mp4"), "--quiet", "--device", "cpu"]) == 0
    pngs = sorted(output.glob("*.png"))
    assert [p.stem for p in pngs] == [f"{t:05d}" for t in range(SETTINGS.frames_per_sequence)]
    with Image.open(pngs[3]) as image:
        assert image.mode == "P"
    np.testing.assert_array_equal(read_label_mask(pngs[0]), read_label_mask(first))
    assert video_frames(tmp_path / "overlay.mp4") == SETTINGS.frames_per_sequence
    (tmp_path / "empty.png").write_bytes(first.read_bytes())
    Image.fromarray(np.zeros((48, 64), np.uint8)).save(tmp_path / "empty.png")
    assert main(["segment", "--segmenter", str(models["segmenter"]), "--frames",
                 str(davis / "JPEGImages" / "480p" / name), "--mask", str(tmp_path / "empty.png"), "--output",
                 str(output), "--quiet", "--device", "cpu"]) == 2


def test_score_vos_agrees_with_vos_benchmark(bench, models, tmp_path):
    davis = bench / "davis"
    names = (davis / "ImageSets" / "2017" / "val.txt").read_text().split()
    results, gt_root = tmp_path / "results", tmp_path / "gt"
    for name in names:
        assert main(["segment", "--segmenter", str(models["segmenter"]), "--frames",
                     str(davis / "JPEGImages" / "480p" / name), "--mask",
                     str(davis / "Annotations" / "480p" / name / "00000.png"), "--output", str(results / name),
                     "--quiet", "--device", "cpu"]) == 0
        (results / name / "times.txt").unlink()  # vos-benchmark reads every file of a result folder as a mask
        shutil.copytree(davis / "Annotations" / "480p" / name, gt_root / name)
    assert main(["score-vos", "--root", str(davis), "--results", str(results), "--output", str(tmp_path / "s")]) == 0
    with open(tmp_path / "s" / "global_results-val.csv") as handle:
        ours = {key: float(value) for key, value in next(csv.DictReader(handle)).items()}
    jf, j, f, per_object = vos_benchmark([str(gt_root)], [str(results)], num_processes=1, verbose=False)
    assert (ours["J&F-Mean"], ours["J-Mean"], ours["F-Mean"]) == pytest.approx((jf[0] / 100, j[0] / 100, f[0] / 100),
                                                                            abs=1e-5)
    with open(tmp_path / "s" / "per-sequence_results-val.csv") as handle:
        rows = {row["Sequence"]: (float(row["J-Mean"]), float(row["F-Mean"])) for row in csv.DictReader(handle)}
    official = {f"{name}_{k}": (iou[k] / 100, boundary[k] / 100)
                for name, (iou, boundary) in per_object[0].items() for k in iou}
    assert rows.keys() == official.keys()
    for key, values in rows.items():
        assert values == pytest.approx(official[key], abs=1e-5)
    assert {"J-Decay", "F-Decay", "J-Recall", "F-Recall"} <= ours.keys()


def test_every_command_says_what_it_reads_and_writes(capsys):
    for command in ("track", "segment", "score-tracking", "score-vos", "export-encoder"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert "Reads" in text and ("Writes" in text or "writes" in text) and "example:" in text


def test_score_tracking_in_lasot_layout_writes_auc_precision_and_plots(bench, tmp_path):
    """The demo's val clips laid out as LaSOT (<class>/<class>-<n>/img, groundtruth.txt, occlusion
    labels) and a pytracking-style tab-separated result file per sequence."""
    from dropmae.tracking.datasets import read_benchmark
    from dropmae.tracking.metrics import evaluate_ope

    root, results = tmp_path / "lasot", tmp_path / "results"
    results.mkdir()
    rng = np.random.default_rng(1)
    for index, name in enumerate(val_names(bench), start=1):
        source = bench / "got10k" / "val" / name
        sequence = root / "demo" / f"demo-{index}"
        shutil.copytree(source, sequence / "img", ignore=shutil.ignore_patterns("*.txt", "*.label", "*.ini"))
        truth = np.loadtxt(source / "groundtruth.txt", delimiter=",")
        shutil.copy(source / "groundtruth.txt", sequence / "groundtruth.txt")
        for labels in ("full_occlusion.txt", "out_of_view.txt"):
            (sequence / labels).write_text(",".join(["0"] * len(truth)) + "\n")
        np.savetxt(results / f"demo-{index}.txt", truth + rng.normal(0, 2, truth.shape), fmt="%.2f", delimiter="\t")
    assert main(["score-tracking", "--format", "lasot", "--root", str(root), "--results", str(results),
                 "--output", str(tmp_path / "scores"), "--name", "jittered"]) == 0
    ours = json.loads((tmp_path / "scores" / "metrics.json").read_text())
    expected = evaluate_ope(read_benchmark("lasot", root), results, "lasot")
    assert (ours["auc"], ours["precision"], ours["norm_precision"]) == pytest.approx(
        (expected["auc"], expected["precision"], expected["norm_precision"]))
    assert 0 < ours["auc"] < 100
    for plot in ("success.png", "precision.png", "norm_precision.png"):
        assert (tmp_path / "scores" / plot).stat().st_size > 1000
