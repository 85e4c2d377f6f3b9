"""Packed frames: the extracted JPEGs of many videos in a few large shard files plus one index.

Why: with one file per frame, a training pair costs two opens and two directory lookups, and
a K400 epoch (about 237k videos x ~300 frames) is some 70 million files; on the network file
systems of a cluster those metadata operations, not decoding, bound the loader. Packed, a pair
is two ``pread`` calls on shard files a worker keeps open, at offsets read from an in-memory
index; no directory is listed while training.

Layout, inside an extraction folder (``dropmae extract-frames`` output)::

    packed/shard-00000.bin ...  the JPEG bytes of consecutive frames, copied unchanged
    packed/index.npz            per video: id, frame count, first row
    packed/{shard,offset,length}.npy  per frame, memory-mapped by readers (K400: ~70M frames, 1.1 GB
                                that every DataLoader worker then shares through the page cache)
    packed/info.json            the manifest digest it was packed from, shard count, bytes

The bytes are the extracted files' bytes, so a frame decodes to exactly the same pixels as
from its file: the packed loader is a faster path to the same data, not different data.
Packing is atomic (written to ``packed.partial/`` and renamed) and skipped when the index
already matches the manifest.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dropmae.data.manifest import frame_path, read_manifest
from dropmae.progress import track

PACKED_DIR = "packed"
INDEX_NAME = "index.npz"
INFO_NAME = "info.json"
DEFAULT_SHARD_BYTES = 1 << 30  # 1 GiB: few files, and each still fits a cluster's per-file limits


class PackedFramesError(RuntimeError):
    """The packed frames are missing, stale or do not match the manifest."""


def _ok_videos(frames_root: Path) -> tuple[list[str], list[int], str]:
    """(video ids, frame counts, digest) of the manifest rows a pair dataset may read."""
    manifest = read_manifest(frames_root)
    usable = manifest[(manifest["status"] == "ok") & (manifest["frame_count"] >= 1)]
    ids = usable["video_id"].tolist()
    counts = [int(count) for count in usable["frame_count"]]
    digest = hashlib.sha256("\n".join(f"{v},{c}" for v, c in zip(ids, counts)).encode()).hexdigest()
    return ids, counts, digest


def packed_dir(frames_root: str | Path) -> Path:
    return Path(frames_root) / PACKED_DIR


def pack_frames(frames_root: str | Path, shard_bytes: int = DEFAULT_SHARD_BYTES) -> dict:
    """Pack the frames of every ok video of the manifest; returns the info record.

    Reads the frames once, in manifest order, and appends them to shard files of at most
    ``shard_bytes`` (a frame never straddles two shards). Nothing is written in place: the
    new pack replaces an old one only when complete.
    """
    frames_root = Path(frames_root)
    if shard_bytes < 1:
        raise ValueError(f"shard_bytes must be >= 1, got {shard_bytes}")
    ids, counts, digest = _ok_videos(frames_root)
    target = packed_dir(frames_root)
    info_path = target / INFO_NAME
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        if info.get("manifest_digest") == digest:
            return info
    partial = frames_root / (PACKED_DIR + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()

    total_frames = sum(counts)
    shard_of = np.empty(total_frames, np.int32)
    offset_of = np.empty(total_frames, np.int64)
    length_of = np.empty(total_frames, np.int32)
    shard, written, row = 0, 0, 0
    handle = (partial / f"shard-{shard:05d}.bin").open("wb")
    try:
        for video_id, count in track(list(zip(ids, counts)), desc=f"pack {frames_root}", unit="video"):
            for frame in range(count):
                path = frame_path(frames_root, video_id, frame)
                try:
                    data = path.read_bytes()
                except OSError as error:
                    raise PackedFramesError(
                        f"{path}: cannot read frame {frame} of {video_id!r} listed in the manifest "
                        f"({error.strerror or error}); re-run the extraction"
                    ) from None
                if written and written + len(data) > shard_bytes:
                    handle.close()
                    shard, written = shard + 1, 0
                    handle = (partial / f"shard-{shard:05d}.bin").open("wb")
                handle.write(data)
                shard_of[row], offset_of[row], length_of[row] = shard, written, len(data)
                written += len(data)
                row += 1
    finally:
        handle.close()
    first_row = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
    np.savez(partial / INDEX_NAME, video_ids=np.array(ids, dtype=str), frame_counts=np.array(counts, np.int64),
             first_row=first_row)
    for name, values in (("shard", shard_of), ("offset", offset_of), ("length", length_of)):
        np.save(partial / f"{name}.npy", values)
    info = {"manifest_digest": digest, "videos": len(ids), "frames": total_frames, "shards": shard + 1,
            "bytes": int(length_of.sum())}
    (partial / INFO_NAME).write_text(json.dumps(info, indent=1) + "\n")
    if target.exists():
        shutil.rmtree(target)
    os.replace(partial, target)
    return info


@dataclass(frozen=True)
class PackedIndex:
    """Where every frame of every packed video lies."""

    root: Path
    video_row: dict[str, int]  # video id -> its position in the arrays below
    frame_counts: np.ndarray  # [V]
    first_row: np.ndarray  # [V + 1]: frames of video v are rows first_row[v] .. first_row[v + 1] - 1
    shard: np.ndarray  # [F]
    offset: np.ndarray  # [F]
    length: np.ndarray  # [F]

    @classmethod
    def load(cls, frames_root: str | Path) -> PackedIndex:
        root = packed_dir(frames_root)
        index_path = root / INDEX_NAME
        if not index_path.is_file():
            raise PackedFramesError(
                f"{index_path}: no packed frames; run `dropmae pack-frames {frames_root}` "
                "(or set data.extraction.pack: true)"
            )
        _, _, digest = _ok_videos(Path(frames_root))
        info = json.loads((root / INFO_NAME).read_text())
        if info.get("manifest_digest") != digest:
            raise PackedFramesError(
                f"{root}: packed from another manifest than {Path(frames_root) / 'manifest.csv'}; "
                f"re-run `dropmae pack-frames {frames_root}`"
            )
        with np.load(index_path) as arrays:
            ids, frame_counts, first_row = arrays["video_ids"].tolist(), arrays["frame_counts"], arrays["first_row"]
        per_frame = [np.load(root / f"{name}.npy", mmap_mode="r") for name in ("shard", "offset", "length")]
        return cls(root, {video_id: row for row, video_id in enumerate(ids)}, frame_counts, first_row, *per_frame)

    def location(self, video_id: str, frame: int) -> tuple[int, int, int]:
        """(shard, offset, length) of one frame."""
        video = self.video_row[video_id]
        if not 0 <= frame < self.frame_counts[video]:
            raise IndexError(f"{video_id!r} has {self.frame_counts[video]} packed frames, asked for frame {frame}")
        row = self.first_row[video] + frame
        return int(self.shard[row]), int(self.offset[row]), int(self.length[row])


class PackedReader:
    """Reads frame bytes from the shards; keeps one open descriptor per shard in each process.

    Picklable without its descriptors (spawned workers open their own); forked workers share the
    parent's, which is safe because ``pread`` never moves a file offset.
    """

    def __init__(self, index: PackedIndex) -> None:
        self.index = index
        self._descriptors: dict[int, int] = {}

    def __getstate__(self) -> dict:
        return {"index": self.index}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["index"])

    def _descriptor(self, shard: int) -> int:
        descriptor = self._descriptors.get(shard)
        if descriptor is None:
            descriptor = os.open(self.index.root / f"shard-{shard:05d}.bin", os.O_RDONLY)
            self._descriptors[shard] = descriptor
        return descriptor

    def read(self, video_id: str, frame: int) -> bytes:
        shard, offset, length = self.index.location(video_id, frame)
        data = os.pread(self._descriptor(shard), length, offset)
        if len(data) != length:
            raise PackedFramesError(
                f"{self.index.root / f'shard-{shard:05d}.bin'}: short read for frame {frame} of {video_id!r} "
                f"({len(data)} of {length} bytes); the pack is truncated, re-run `dropmae pack-frames`"
            )
        return data

    def read_image(self, video_id: str, frame: int) -> Image.Image:
        """The frame as an RGB PIL image, decoded exactly as from its extracted file."""
        return Image.open(io.BytesIO(self.read(video_id, frame))).convert("RGB")

    def close(self) -> None:
        for descriptor in self._descriptors.values():
            os.close(descriptor)
        self._descriptors = {}

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
