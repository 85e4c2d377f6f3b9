"""Packed frames: the fast pretraining read path gives the plain path's pairs, pixel for pixel."""

from __future__ import annotations

import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from dropmae.config import ConfigError, load_config
from dropmae.data.extract import ExtractionSettings, extract_frames
from dropmae.data.manifest import frame_path, read_manifest
from dropmae.data.packed import (
    INFO_NAME,
    PackedFramesError,
    PackedIndex,
    PackedReader,
    pack_frames,
    packed_dir,
)
from dropmae.data.pairs import (
    FramePairDataset,
    PackedFramePairDataset,
    normalize_frames,
)


@pytest.fixture(scope="module")
def packed_frames(tmp_path_factory, demo_tree) -> Path:
    """The demo tree extracted at short side 48 and packed by the extraction itself."""
    out_dir = tmp_path_factory.mktemp("packed_frames")
    extract_frames(demo_tree, out_dir, ExtractionSettings(short_side=48, pack=True), progress=False)
    return out_dir


def test_every_packed_frame_is_its_file_byte_for_byte(packed_frames):
    manifest = read_manifest(packed_frames)
    reader = PackedReader(PackedIndex.load(packed_frames))
    frames = 0
    for row in manifest[manifest["status"] == "ok"].itertuples():
        for frame in range(int(row.frame_count)):
            assert reader.read(row.video_id, frame) == frame_path(packed_frames, row.video_id, frame).read_bytes()
            frames += 1
    assert frames >= 96  # the demo tree: 8 clips x 12 frames
    with pytest.raises(IndexError, match="packed frames"):
        reader.read(manifest["video_id"].iloc[0], int(manifest["frame_count"].iloc[0]))


def test_small_shards_split_between_frames_and_repacking_is_skipped(tmp_path, packed_frames):
    root = tmp_path / "frames"
    shutil.copytree(packed_frames, root)
    shutil.rmtree(packed_dir(root))
    info = pack_frames(root, shard_bytes=20_000)  # a few frames per shard
    assert info["shards"] > 5 and len(list(packed_dir(root).glob("shard-*.bin"))) == info["shards"]
    index = PackedIndex.load(root)
    ends = index.offset + index.length
    for shard in range(info["shards"]):  # frames fill each shard back to back, none straddles two
        in_shard = index.shard == shard
        assert index.offset[in_shard][0] == 0
        assert (packed_dir(root) / f"shard-{shard:05d}.bin").stat().st_size == ends[in_shard].max()
    stamp = (packed_dir(root) / INFO_NAME).stat().st_mtime_ns
    assert pack_frames(root, shard_bytes=20_000) == info
    assert (packed_dir(root) / INFO_NAME).stat().st_mtime_ns == stamp


def test_packed_pairs_equal_plain_pairs_after_device_normalisation(packed_frames):
    plain = FramePairDataset(packed_frames, input_size=32, max_gap=6, split=None, seed=3)
    packed = PackedFramePairDataset(packed_frames, input_size=32, max_gap=6, split=None, seed=3)
    assert packed.video_ids == plain.video_ids
    for epoch in (0, 5):
        plain.set_epoch(epoch)
        packed.set_epoch(epoch)
        for index in range(len(plain)):
            assert packed.pair_indices(index) == plain.pair_indices(index)
            crops = packed[index]
            assert crops.dtype == torch.uint8 and crops.shape == (2, 3, 32, 32)
            # The same bytes, decoder, crop and operations: equal, not merely close.
            assert torch.equal(normalize_frames(crops), plain[index])


def test_workers_and_pickling_read_the_same_batches(packed_frames):
    dataset = PackedFramePairDataset(packed_frames, input_size=32, max_gap=6, split=None, seed=1)
    dataset.set_epoch(2)
    count = len(dataset) - len(dataset) % 2
    in_process = torch.stack([dataset[i] for i in range(count)])
    clone = pickle.loads(pickle.dumps(dataset))  # what a spawned worker receives
    assert torch.equal(torch.stack([clone[i] for i in range(count)]), in_process)
    loader = DataLoader(dataset, batch_size=2, num_workers=2, sampler=range(count))
    assert torch.equal(torch.cat(list(loader)), in_process)


def test_missing_stale_and_truncated_packs_are_named(tmp_path, packed_frames):
    root = tmp_path / "frames"
    shutil.copytree(packed_frames, root)
    # Stale: the manifest changed since packing (a video dropped).
    manifest_path = root / "manifest.csv"
    lines = manifest_path.read_text().splitlines()
    manifest_path.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(PackedFramesError, match="packed from another manifest.*pack-frames"):
        PackedIndex.load(root)
    pack_frames(root)
    PackedIndex.load(root)
    # Truncated: a shard lost its tail.
    index = PackedIndex.load(root)
    last = int(np.argmax(index.offset + index.length))
    shard_path = packed_dir(root) / f"shard-{int(index.shard[last]):05d}.bin"
    shard_path.write_bytes(shard_path.read_bytes()[:-10])
    video = next(v for v, row in index.video_row.items() if index.first_row[row] <= last < index.first_row[row + 1])
    frame = last - int(index.first_row[index.video_row[video]])
    with pytest.raises(PackedFramesError, match=f"{shard_path.name}: short read for frame {frame}"):
        PackedReader(index).read(video, frame)
    # Missing: never packed.
    shutil.rmtree(packed_dir(root))
    with pytest.raises(PackedFramesError, match="no packed frames; run `dropmae pack-frames"):
        PackedFramePairDataset(root, input_size=32, split=None)
    # A frame file gone before packing: named, and no half-written pack is left behind.
    victim = frame_path(root, video, 0)
    victim.unlink()
    with pytest.raises(PackedFramesError, match=f"{victim}: cannot read frame 0"):
        pack_frames(root)
    assert not packed_dir(root).exists()


def test_cli_packs_an_extraction(tmp_path, packed_frames):
    root = tmp_path / "frames"
    shutil.copytree(packed_frames, root)
    shutil.rmtree(packed_dir(root))
    done = subprocess.run([sys.executable, "-m", "dropmae.cli", "pack-frames", str(root), "--shard-mib", "1"],
                          capture_output=True, text=True, check=True)
    assert "packed" in done.stdout and "shard(s)" in done.stdout
    PackedIndex.load(root)


def test_packed_input_needs_the_extraction_to_pack(tmp_path):
    with pytest.raises(ConfigError, match="data.extraction.pack: must be true when pretrain.input is packed"):
        load_config([], ["pretrain.input=packed"])
    config = load_config([], ["pretrain.input=packed", "data.extraction.pack=true"])
    assert config.pretrain.input == "packed"
    with pytest.raises(ConfigError, match="pretrain.input: must be packed when pretrain.decode_on_device is true"):
        load_config([], ["pretrain.decode_on_device=true"])


def test_repeated_sampling_adds_pairs_and_keeps_the_first(packed_frames):
    single = PackedFramePairDataset(packed_frames, input_size=32, max_gap=6, split=None, seed=4)
    repeated = PackedFramePairDataset(packed_frames, input_size=32, max_gap=6, split=None, seed=4, repeats=3)
    for index in range(3):
        pairs = repeated[index]
        assert pairs.shape == (3, 2, 3, 32, 32)
        assert torch.equal(pairs[0], single[index])  # repeat 0 is the recipe's pair
        assert repeated.pair_indices(index, 0) == single.pair_indices(index)
        assert not torch.equal(pairs[1], pairs[2])
    draws = {repeated.pair_indices(index, repeat) for index in range(len(repeated)) for repeat in range(3)}
    assert len(draws) > len(repeated)


def test_repeated_sampling_trains_on_pairs_not_videos(frames_root, tmp_path):
    import json

    from conftest import tiny_config

    from dropmae.config import Cell
    from dropmae.engine.pretrain import pretrain

    with pytest.raises(ConfigError, match="pretrain.batch_size: must be a multiple of pretrain.repeated_sampling"):
        load_config([], ["pretrain.batch_size=3", "pretrain.repeated_sampling=2"])
    plain = pretrain(tiny_config(epochs=[1]), Cell("dropmae", 1), frames_root, tmp_path / "a", progress=False)
    repeated = pretrain(tiny_config(epochs=[1], repeated_sampling=2), Cell("dropmae", 1), frames_root,
                        tmp_path / "b", progress=False)
    # batch_size 2 pairs per step: one video per step with 2 repeats, so twice the steps per epoch.
    assert repeated.global_step == 2 * plain.global_step
    start = json.loads((tmp_path / "b" / "log.jsonl").read_text().splitlines()[0])
    assert start["effective_batch"] == 2 and start["steps_per_epoch"] == repeated.global_step
