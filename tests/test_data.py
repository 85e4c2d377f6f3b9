"""Data pipeline on real clips: demo videos, indexing, frame extraction, frame-pair datasets."""

from __future__ import annotations

import collections
import hashlib
import json
import os
import pickle
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import decord
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from conftest import DEMO_CLIP_FRAMES, DEMO_SHORT_SIDE
from dropmae.data import (
    MANIFEST_NAME,
    ExtractionError,
    ExtractionSettings,
    FramePairDataset,
    PairAugmentation,
    VideoEntry,
    VideoFramePairDataset,
    VideoSourceError,
    extract_frames,
    frame_path,
    index_videos,
    read_manifest,
    sample_frame_pair,
    seed_worker,
)
from dropmae.data.manifest import split_for
from dropmae.data.pairs import seeded_cpu_rng
from dropmae.demo.videos import build_demo_video_tree, demo_clip_paths

DEMO_IDS = [f"{name}/{name}_{k}" for name in ("bigbuckbunny", "bikes", "carphone_pristine") for k in (0, 1)]


def file_mtimes(folder: Path) -> dict[str, int]:
    return {str(path.relative_to(folder)): path.stat().st_mtime_ns for path in folder.rglob("*") if path.is_file()}


@pytest.fixture(scope="module")
def demo_frames(tmp_path_factory, demo_tree) -> Path:
    """The demo tree extracted at short side 48, every frame."""
    out_dir = tmp_path_factory.mktemp("demo_frames")
    extract_frames(demo_tree, out_dir, ExtractionSettings(short_side=48), progress=False)
    return out_dir


@pytest.fixture(scope="module")
def bad_extraction(tmp_path_factory, video_list_csv) -> tuple[Path, pd.DataFrame]:
    """The CSV list (2 good clips, 8 bad files) extracted with failures allowed."""
    out_dir = tmp_path_factory.mktemp("bad_frames")
    manifest = extract_frames(video_list_csv, out_dir, ExtractionSettings(short_side=32, max_bad_fraction=1.0),
                              progress=False)
    return out_dir, manifest


# --- demo clips ----------------------------------------------------------------


def test_demo_clips_decode_with_decord():
    expected = {"bikes": (250, 272, 640), "carphone_pristine": (120, 144, 176), "bigbuckbunny": (132, 720, 1280)}
    paths = demo_clip_paths()
    assert set(paths) == set(expected)
    for name, (frame_count, height, width) in expected.items():
        reader = decord.VideoReader(str(paths[name]))
        assert len(reader) == frame_count, name
        assert reader[frame_count - 1].shape == (height, width, 3), name


def test_demo_tree_holds_short_real_clips(demo_tree):
    videos = sorted(demo_tree.rglob("*.mp4"))
    assert [str(p.relative_to(demo_tree).with_suffix("")) for p in videos] == DEMO_IDS
    for path in videos:
        reader = decord.VideoReader(str(path))
        height, width, _ = reader[0].shape
        assert len(reader) == DEMO_CLIP_FRAMES, path
        assert min(height, width) == DEMO_SHORT_SIDE and height % 2 == 0 and width % 2 == 0, path
        assert reader[0].asnumpy().std() > 10, f"{path} looks blank"
    before = file_mtimes(demo_tree)
    build_demo_video_tree(demo_tree, clip_frames=DEMO_CLIP_FRAMES, short_side=DEMO_SHORT_SIDE, max_clips=6)
    assert file_mtimes(demo_tree) == before, "rebuilding rewrote existing clips"


def test_demo_clips_are_the_same_bytes_in_every_process(tmp_path):
    """The DAG's demo clips come out byte for byte the same from two processes whose freed heap
    memory holds different bytes (x264's macroblock-tree rate control read such memory)."""
    build = ("import os, sys; from dropmae.demo.videos import build_demo_video_tree; "
             # The second process leaves random bytes in freed heap memory first, as other work would.
             "garbage = [os.urandom(40_000) for _ in range(int(sys.argv[2]))]; del garbage; "
             "build_demo_video_tree(sys.argv[1], clip_frames=20, max_clips=9)")
    digests = []
    for run in range(2):
        subprocess.run([sys.executable, "-c", build, str(tmp_path / f"run{run}"), str(run * 2000)], check=True)
        clips = sorted((tmp_path / f"run{run}").rglob("*.mp4"))
        assert len(clips) == 9
        digests.append({clip.relative_to(tmp_path / f"run{run}"): hashlib.sha256(clip.read_bytes()).hexdigest()
                        for clip in clips})
    assert digests[0] == digests[1]


# --- index_videos ----------------------------------------------------------------


def test_index_videos_on_a_tree(tmp_path):
    for name in ["loose.mp4", "walking/b.avi", "walking/b.MKV", "walking/a.webm", "air drumming/x.mp4",
                 "walking/notes.txt", ".hidden/c.mp4"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).touch()
    entries = index_videos(tmp_path)
    assert [(e.video_id, e.path.name, e.label) for e in entries] == [
        ("air drumming/x", "x.mp4", "air drumming"),
        ("loose", "loose.mp4", None),
        ("walking/a", "a.webm", "walking"),
        ("walking/b", "b.MKV", "walking"),
        ("walking/b__2", "b.avi", "walking"),  # same stem: de-duplicated in sorted-path order
    ]
    assert index_videos(tmp_path) == entries


def test_index_videos_on_a_csv_list(tmp_path):
    (tmp_path / "videos" / "run").mkdir(parents=True)
    (tmp_path / "videos" / "run" / "a.mp4").touch()
    list_file = tmp_path / "list.csv"
    list_file.write_text(f"path,label\nvideos/run/a.mp4,running\n\n{tmp_path}/elsewhere/b.mp4\nvideos/run/gone.mp4,running\n")
    entries = index_videos(list_file)
    assert entries == [
        VideoEntry("elsewhere/b", tmp_path / "elsewhere" / "b.mp4", None),
        VideoEntry("run/a", tmp_path / "videos" / "run" / "a.mp4", "running"),
        VideoEntry("run/gone", tmp_path / "videos" / "run" / "gone.mp4", "running"),  # missing: kept
    ]
    no_header = tmp_path / "no_header.csv"
    no_header.write_text("videos/run/a.mp4\n")
    assert index_videos(no_header) == [VideoEntry("run/a", tmp_path / "videos" / "run" / "a.mp4", None)]


def test_index_videos_errors(tmp_path):
    with pytest.raises(VideoSourceError, match="does not exist"):
        index_videos(tmp_path / "nowhere")
    (tmp_path / "empty" / "class").mkdir(parents=True)
    with pytest.raises(VideoSourceError, match="no videos found"):
        index_videos(tmp_path / "empty")
    bad_list = tmp_path / "bad.csv"
    bad_list.write_text("path,label\na.mp4,x\n,y\n")
    with pytest.raises(VideoSourceError, match=r"bad\.csv, line 3: empty path"):
        index_videos(bad_list)
    assert issubclass(VideoSourceError, ValueError)


# --- extract_frames ----------------------------------------------------------------


def test_extract_frames_writes_frames_and_manifest(demo_tree, demo_frames):
    manifest = read_manifest(demo_frames)
    assert manifest["video_id"].tolist() == DEMO_IDS
    assert list(manifest.columns) == ["video_id", "source_path", "label", "split", "frame_count", "width",
                                      "height", "status", "reason"]
    assert (manifest["status"] == "ok").all() and (manifest["reason"] == "").all()
    assert (manifest["frame_count"] == DEMO_CLIP_FRAMES).all() and (manifest["split"] == "train").all()
    assert manifest["label"].tolist() == [vid.split("/")[0] for vid in DEMO_IDS]
    for row in manifest.itertuples():
        assert row.source_path == str(demo_tree / f"{row.video_id}.mp4")
        frames = sorted((demo_frames / "frames" / row.video_id).iterdir())
        assert [f.name for f in frames] == [f"{i:06d}.jpg" for i in range(DEMO_CLIP_FRAMES)]
        with Image.open(frames[-1]) as image:
            assert image.size == (row.width, row.height) and min(image.size) == 48
    assert not (demo_frames / ".tmp").exists()


def test_extract_frames_honours_stride_and_never_upscales(tmp_path, demo_tree):
    entries = [e for e in index_videos(demo_tree) if e.video_id == "bikes/bikes_0"]
    manifest = extract_frames(entries, tmp_path, ExtractionSettings(short_side=500, frame_stride=3), progress=False)
    row = manifest.iloc[0]
    assert row["frame_count"] == len(range(0, DEMO_CLIP_FRAMES, 3)) == 6
    assert (row["width"], row["height"]) == (150, 64)  # native size: short side 500 would upscale
    source = decord.VideoReader(str(entries[0].path)).get_batch([3]).asnumpy()[0]
    with Image.open(frame_path(tmp_path, "bikes/bikes_0", 1)) as image:
        written = np.asarray(image.convert("RGB"), dtype=np.float32)
    assert np.abs(written - source).mean() < 4, "frame 1 of stride 3 should be source frame 3 (JPEG error only)"
    assert not frame_path(tmp_path, "bikes/bikes_0", 6).exists()
    # Other output settings: the video is extracted again.
    manifest = extract_frames(entries, tmp_path, ExtractionSettings(short_side=32), progress=False)
    assert (manifest.loc[0, "frame_count"], manifest.loc[0, "height"]) == (DEMO_CLIP_FRAMES, 32)
    assert len(list((tmp_path / "frames" / "bikes" / "bikes_0").iterdir())) == DEMO_CLIP_FRAMES


def test_extract_frames_records_each_bad_kind(bad_extraction, bad_videos):
    out_dir, manifest = bad_extraction
    by_label = manifest.set_index(manifest["label"].fillna("good"))
    expected_reason_start = {
        "missing": "missing: file not found",
        "zero_byte": "empty: zero-byte file",
        "not_a_video": "not a video:",
        "truncated": "truncated or corrupt: container header found but it cannot be opened",
        "truncated_indexed": "truncated or corrupt: indexing the packets failed",
        "corrupt": "corrupt: decoding failed at frame ",
        "single_frame": "single frame: 1 frame(s) kept of 1",
        "unreadable": "unreadable:",
    }
    assert set(expected_reason_start) == set(bad_videos)
    for kind, start in expected_reason_start.items():
        row = by_label.loc[kind]
        assert row["status"] == "failed", kind
        assert row["reason"].startswith(start), f"{kind}: {row['reason']}"
        assert row["frame_count"] == 0 and pd.isna(row["width"]), kind
        assert not (out_dir / "frames" / row["video_id"]).exists(), kind
    assert re.match(r"corrupt: decoding failed at frame \d+ of 16 ", by_label.loc["corrupt", "reason"])
    assert manifest["reason"][manifest["status"] == "failed"].nunique() == len(bad_videos)
    ok = manifest[manifest["status"] == "ok"]
    assert sorted(ok["video_id"]) == ["bikes/bikes_0", "carphone_pristine/carphone_pristine_0"]
    assert (ok["frame_count"] == DEMO_CLIP_FRAMES).all()


def test_extract_frames_fails_run_only_above_max_bad_fraction(tmp_path, bad_extraction, video_list_csv):
    out_dir, manifest = bad_extraction
    failed_share = (manifest["status"] == "failed").mean()  # 8 of 10
    # Reruns skip every video (all have records), so only the threshold check runs.
    extract_frames(video_list_csv, out_dir, ExtractionSettings(short_side=32, max_bad_fraction=failed_share),
                   progress=False)
    (out_dir / MANIFEST_NAME).unlink()
    with pytest.raises(ExtractionError) as raised:
        extract_frames(video_list_csv, out_dir, ExtractionSettings(short_side=32, max_bad_fraction=0.5),
                       progress=False)
    message = str(raised.value)
    assert "8 of 10 videos failed" in message and "max_bad_fraction=50.0%" in message
    assert str(out_dir / MANIFEST_NAME) in message and "missing: file not found" in message
    assert read_manifest(out_dir).equals(manifest), "the manifest must be written before raising"


def test_extract_frames_rerun_is_idempotent_and_resumes(tmp_path, demo_tree, demo_frames):
    out_dir = tmp_path / "frames_copy"
    shutil.copytree(demo_frames, out_dir)  # keep the shared fixture intact
    before = file_mtimes(out_dir)
    settings = ExtractionSettings(short_side=48)
    extract_frames(demo_tree, out_dir, settings, progress=False)
    assert file_mtimes(out_dir) == before, "a rerun rewrote files"

    # Interrupted run: one video lost its frames and record, a half-written temp dir is left.
    redo = "bikes/bikes_1"
    old_frames = {p.name: p.read_bytes() for p in (out_dir / "frames" / redo).iterdir()}
    shutil.rmtree(out_dir / "frames" / redo)
    (out_dir / ".status" / f"{redo}.json").unlink()
    (out_dir / ".tmp" / "bikes__bikes_1.abc").mkdir(parents=True)
    (out_dir / ".tmp" / "bikes__bikes_1.abc" / "000000.jpg").write_bytes(b"half")
    extract_frames(demo_tree, out_dir, settings, progress=False)
    after = file_mtimes(out_dir)
    changed = {name for name in after if after[name] != before.get(name)}
    assert changed == {f"frames/{redo}/{i:06d}.jpg" for i in range(DEMO_CLIP_FRAMES)} | {f".status/{redo}.json"}
    assert set(after) == set(before), "stray temp files must be discarded"
    assert {p.name: p.read_bytes() for p in (out_dir / "frames" / redo).iterdir()} == old_frames

    # A changed source (new mtime) is redone; a new val_fraction only rewrites the manifest.
    touched = demo_tree / "carphone_pristine" / "carphone_pristine_1.mp4"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 1_000_000_000))
    manifest = extract_frames(demo_tree, out_dir, ExtractionSettings(short_side=48, val_fraction=0.5), progress=False)
    record = json.loads((out_dir / ".status" / "carphone_pristine" / "carphone_pristine_1.json").read_text())
    assert record["source_mtime_ns"] == touched.stat().st_mtime_ns
    final = file_mtimes(out_dir)
    assert {name for name in final if final[name] != after[name]} == (
        {MANIFEST_NAME, ".status/carphone_pristine/carphone_pristine_1.json"}
        | {f"frames/carphone_pristine/carphone_pristine_1/{i:06d}.jpg" for i in range(DEMO_CLIP_FRAMES)}
    )
    assert manifest["split"].tolist() == [split_for(vid, 0.5) for vid in DEMO_IDS]


def test_split_for_is_a_stable_hash_share():
    ids = [f"class_{i % 7}/video_{i}" for i in range(4000)]
    val_share = np.mean([split_for(vid, 0.2) == "val" for vid in ids])
    assert 0.17 < val_share < 0.23
    assert all(split_for(vid, 0.0) == "train" for vid in ids[:100])
    assert [split_for(vid, 0.2) for vid in ids[:50]] == [split_for(vid, 0.2) for vid in ids[:50]]


@pytest.mark.parametrize(
    "field, value",
    [("short_side", 0), ("frame_stride", 0), ("jpeg_quality", 101), ("jpeg_quality", 0), ("workers", 0),
     ("max_bad_fraction", 1.5), ("val_fraction", 1.0), ("val_fraction", -0.1)],
)
def test_extraction_settings_rejected_naming_the_field(tmp_path, demo_tree, field, value):
    with pytest.raises(ValueError, match=f"ExtractionSettings.{field} must be"):
        extract_frames(demo_tree, tmp_path, ExtractionSettings(**{field: value}), progress=False)
    assert not (tmp_path / MANIFEST_NAME).exists()


def test_read_manifest_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="no frame manifest"):
        read_manifest(tmp_path)


# --- sample_frame_pair ----------------------------------------------------------------


def test_sample_frame_pair_exact_distribution():
    # n=5, gap=3: start uniform on 0..3, end uniform on start+1..min(5, start+3)-1.
    expected = {(0, 1): 1 / 8, (0, 2): 1 / 8, (1, 2): 1 / 8, (1, 3): 1 / 8, (2, 3): 1 / 8, (2, 4): 1 / 8,
                (3, 4): 1 / 4}
    rng = np.random.default_rng(0)
    draws = 40_000
    counts = collections.Counter(sample_frame_pair(5, 3, rng) for _ in range(draws))
    assert set(counts) == set(expected)
    for pair, probability in expected.items():
        # 5 standard deviations of a binomial share.
        assert abs(counts[pair] / draws - probability) < 5 * np.sqrt(probability * (1 - probability) / draws), pair


def test_sample_frame_pair_gap_range_and_order():
    rng = np.random.default_rng(1)
    pairs = [sample_frame_pair(1000, 50, rng) for _ in range(20_000)]
    gaps = {second - first for first, second in pairs}
    assert gaps == set(range(1, 50))
    assert all(0 <= first < second < 1000 for first, second in pairs)
    assert {sample_frame_pair(2, 50, rng) for _ in range(20)} == {(0, 1)}


def test_sample_frame_pair_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="num_frames"):
        sample_frame_pair(1, 50, rng)
    with pytest.raises(ValueError, match="max_gap"):
        sample_frame_pair(10, 1, rng)


# --- datasets ----------------------------------------------------------------


def test_frame_pair_dataset_items(demo_frames):
    dataset = FramePairDataset(demo_frames, input_size=32, max_gap=8)
    assert len(dataset) == len(DEMO_IDS)
    item = dataset[2]
    assert item.shape == (2, 3, 32, 32) and item.dtype == torch.float32
    assert torch.isfinite(item).all() and -2.2 < item.min() < item.max() < 2.7  # ImageNet-normalised
    first, second = dataset.pair_indices(2)
    assert 0 <= first < second < DEMO_CLIP_FRAMES and second - first <= 7
    with pytest.raises(ValueError, match="split='val'"):
        FramePairDataset(demo_frames, input_size=32, split="val")


def test_items_depend_only_on_seed_epoch_index(demo_frames):
    dataset = FramePairDataset(demo_frames, input_size=32, seed=3)
    dataset.set_epoch(4)
    forward = [dataset[i] for i in range(len(dataset))]
    backward = [dataset[i] for i in reversed(range(len(dataset)))][::-1]
    fresh = FramePairDataset(demo_frames, input_size=32, seed=3)
    fresh.set_epoch(4)
    for i in range(len(dataset)):
        assert torch.equal(forward[i], backward[i]) and torch.equal(forward[i], fresh[i]), i
    assert not torch.equal(forward[0], forward[1])
    other_seed = FramePairDataset(demo_frames, input_size=32, seed=4)
    other_seed.set_epoch(4)
    assert not torch.equal(other_seed[0], forward[0])


def test_dataloader_workers_do_not_change_items(demo_frames):
    dataset = FramePairDataset(demo_frames, input_size=32, seed=1)
    dataset.set_epoch(2)
    batches = {}
    for workers in (0, 2):
        loader = DataLoader(dataset, batch_size=2, shuffle=False, num_workers=workers, worker_init_fn=seed_worker)
        batches[workers] = torch.cat(list(loader))
    assert batches[0].shape == (len(DEMO_IDS), 2, 3, 32, 32)
    assert torch.equal(batches[0], batches[2])


def test_epochs_draw_different_pairs(demo_frames):
    dataset = FramePairDataset(demo_frames, input_size=32)
    pairs_by_epoch = []
    for epoch in range(3):
        dataset.set_epoch(epoch)
        pairs_by_epoch.append([dataset.pair_indices(i) for i in range(len(dataset))])
    assert pairs_by_epoch[0] != pairs_by_epoch[1] != pairs_by_epoch[2]
    dataset.set_epoch(0)
    first = dataset[0]
    dataset.set_epoch(1)
    assert not torch.equal(first, dataset[0])


def test_getitem_leaves_global_rngs_untouched(demo_frames):
    dataset = FramePairDataset(demo_frames, input_size=32)
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    states = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    dataset[0]
    assert torch.equal(torch.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1]) and random.getstate() == states[2]


def test_shared_crop_applies_one_crop_and_flip(demo_frames):
    with Image.open(frame_path(demo_frames, "bikes/bikes_0", 0)) as opened:
        image = opened.convert("RGB")
    torch.manual_seed(0)
    shared, independent = PairAugmentation(32, shared_crop=True), PairAugmentation(32)
    for _ in range(5):
        views = shared(image, image)
        assert views.shape == (2, 3, 32, 32) and torch.equal(views[0], views[1])
    assert any(not torch.equal(*independent(image, image)) for _ in range(5))


def test_colour_augmentation_changes_colours_not_geometry(demo_frames):
    with Image.open(frame_path(demo_frames, "bikes/bikes_0", 0)) as opened:
        image = opened.convert("RGB")

    def views(**colours) -> torch.Tensor:
        with seeded_cpu_rng(3):
            return PairAugmentation(32, shared_crop=True, normalize=False, **colours)(image, image)

    plain, gray, jittered = views(), views(grayscale_p=1.0), views(color_jitter_p=1.0)
    # The same crop and flip (the colour draws come after them), other colours.
    assert torch.equal(plain, views(color_jitter_p=0.0, grayscale_p=0.0))
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])
    luma = (0.299 * plain[:, 0] + 0.587 * plain[:, 1] + 0.114 * plain[:, 2]).float()
    assert (gray[:, 0].float() - luma).abs().max() <= 1.0
    assert not torch.equal(jittered, plain)
    independent = PairAugmentation(32, normalize=False, color_jitter_p=1.0)
    with seeded_cpu_rng(3):
        first, second = independent(image, image)
    assert not torch.equal(first, second)
    with pytest.raises(ValueError, match="decode_on_device"):
        PairAugmentation(32, grayscale_p=0.2).sample_params(image, image)
    with pytest.raises(ValueError, match="color_jitter_p"):
        PairAugmentation(32, color_jitter_p=2.0)


class _WorkerRandomness(Dataset):
    """Returns the state of numpy's legacy global RNG as seen by the worker that loads the item."""

    seed, epoch, rank = 5, 1, 0

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> tuple[int, int]:
        return torch.utils.data.get_worker_info().id, int(np.random.randint(1 << 30))


def test_seed_worker_gives_each_worker_its_own_reproducible_numpy_state():
    def draws() -> list[tuple[int, int]]:
        loader = DataLoader(_WorkerRandomness(), batch_size=None, num_workers=2, worker_init_fn=seed_worker)
        return [(int(worker), int(value)) for worker, value in loader]

    first_run = draws()
    assert first_run == draws()
    by_worker = {worker: value for worker, value in first_run[:2]}
    assert len(by_worker) == 2 and by_worker[0] != by_worker[1]


def test_video_frame_pair_dataset_on_real_clips_skips_bad_files(demo_tree, demo_frames, bad_videos):
    entries = index_videos(demo_tree) + [
        VideoEntry(f"bad/{kind}", path, None) for kind, path in bad_videos.items() if kind != "corrupt"
    ]
    with pytest.warns(UserWarning, match=r"skipped 7 of 13 videos") as warned:
        dataset = VideoFramePairDataset(entries, input_size=32, seed=2)
    assert "single_frame.mp4" in str(warned[0].message) and "zero_byte.mp4" in str(warned[0].message)
    assert [e.video_id for e in dataset.entries] == DEMO_IDS and len(dataset) == len(DEMO_IDS)
    dataset = pickle.loads(pickle.dumps(dataset))  # must be picklable for DataLoader workers
    item = dataset[1]
    assert item.shape == (2, 3, 32, 32) and item.dtype == torch.float32 and torch.equal(item, dataset[1])
    # Same (seed, epoch, index) recipe as the frame dataset: same pair indices.
    from_frames = FramePairDataset(demo_frames, input_size=32, seed=2)
    assert [dataset.pair_indices(i) for i in range(6)] == [from_frames.pair_indices(i) for i in range(6)]
