"""``dropmae extract-frames``: decode videos to JPEG frames plus a manifest.

Layout of ``out_dir`` (the manifest and frame paths: :mod:`dropmae.data.manifest`)::

    manifest.csv                      one row per video of the source list
    frames/<video_id>/000000.jpg ...  the kept frames, numbered consecutively
    .status/<video_id>.json           per-video record; makes reruns skip finished videos
    .tmp/                             frames being written (discarded when a run starts)

Each video is written into ``.tmp`` and renamed into place; its status record is
written last, so a video counts as done only once its frames are complete.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import re
import shutil
import stat
import sys
import tempfile
import threading
from collections import Counter, deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import decord
import pandas as pd
from PIL import Image
from tqdm import tqdm

from dropmae.data.manifest import FRAMES_DIR, MANIFEST_COLUMNS, MANIFEST_NAME, read_manifest, split_for
from dropmae.data.packed import pack_frames
from dropmae.data.video_index import VideoEntry, index_videos
from dropmae.files import apply_umask

STATUS_DIR = ".status"
TMP_DIR = ".tmp"
# Frames decoded per get_batch call: bounds memory (16 x 1080p RGB is about 100 MB).
DECODE_CHUNK = 16
# Verdicts on a video's own bytes: a rerun gives the same answer, so they are final. Every other
# failure (unreadable: permission denied, error: no space left on device, crashed, timeout) may
# have an outside cause that has since been fixed, and is retried on the next run.
FINAL_FAILURES = ("missing", "empty", "not a video", "truncated", "corrupt", "single frame")
TIMEOUT_REASON = "timeout"
# The pool's own limit on top of each worker's: a worker whose watchdog could not end it (stuck
# in the kernel) is killed when nothing at all has finished for video_timeout_s plus this.
POOL_GRACE_S = 60.0


class ExtractionError(RuntimeError):
    """Too many videos of the source could not be extracted."""


@dataclass
class ExtractionSettings:
    """How frames are extracted; see ``validate`` for the allowed ranges."""

    short_side: int | None = 256  # resize so the short side is this (keeps aspect, never upscales); None: native
    frame_stride: int = 1  # keep every k-th frame
    jpeg_quality: int = 90
    workers: int = 2  # parallel processes
    max_bad_fraction: float = 0.1  # fail the run only if more than this share of videos is unusable
    val_fraction: float = 0.0  # share of videos marked split="val" by a stable hash of video_id
    pack: bool = False  # also pack the frames into shards + an index for training reads (dropmae.data.packed)
    video_timeout_s: float = 600.0  # one video's decode is ended after this (reason "timeout")

    def validate(self) -> None:
        """Raise ValueError naming the first field out of range."""
        checks = {
            "short_side": self.short_side is None or (isinstance(self.short_side, int) and self.short_side > 0),
            "frame_stride": isinstance(self.frame_stride, int) and self.frame_stride >= 1,
            "jpeg_quality": isinstance(self.jpeg_quality, int) and 1 <= self.jpeg_quality <= 100,
            "workers": isinstance(self.workers, int) and self.workers >= 1,
            "max_bad_fraction": 0.0 <= self.max_bad_fraction <= 1.0,
            "val_fraction": 0.0 <= self.val_fraction < 1.0,
            "pack": isinstance(self.pack, bool),
            "video_timeout_s": isinstance(self.video_timeout_s, (int, float)) and 0 < self.video_timeout_s < float("inf"),
        }
        allowed = {
            "short_side": "a positive int or None",
            "frame_stride": "an int >= 1",
            "jpeg_quality": "an int in 1..100",
            "workers": "an int >= 1",
            "max_bad_fraction": "in [0, 1]",
            "val_fraction": "in [0, 1)",
            "pack": "true or false",
            "video_timeout_s": "a positive number of seconds",
        }
        for field, ok in checks.items():
            if not ok:
                raise ValueError(f"ExtractionSettings.{field} must be {allowed[field]}, got {getattr(self, field)!r}")

    def output_settings(self) -> dict[str, Any]:
        """The settings that change the written frames (a change means re-extraction)."""
        return {"short_side": self.short_side, "frame_stride": self.frame_stride, "jpeg_quality": self.jpeg_quality}


def _status_path(out_dir: Path, video_id: str) -> Path:
    return out_dir / STATUS_DIR / f"{video_id}.json"


def _source_fingerprint(path: Path) -> tuple[int | None, int | None]:
    """(size, mtime_ns) of the source, (None, None) if it does not exist."""
    try:
        info = path.stat()
    except OSError:
        return None, None
    return info.st_size, info.st_mtime_ns


def _new_record(entry: VideoEntry, settings: ExtractionSettings, reason: str = "") -> dict[str, Any]:
    """A status record for ``entry``, failed until extraction fills it in."""
    size, mtime_ns = _source_fingerprint(entry.path)
    return {
        "video_id": entry.video_id,
        "source_path": str(entry.path),
        "label": entry.label,
        "source_size": size,
        "source_mtime_ns": mtime_ns,
        "settings": settings.output_settings(),
        "status": "failed",
        "reason": reason,
        "frame_count": 0,
        "width": None,
        "height": None,
    }


def _write_json_atomic(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(record, indent=1))
    os.replace(partial, path)


# --- one video (runs in a worker process) ------------------------------------

# Signatures of the containers in VIDEO_EXTENSIONS. ffmpeg itself cannot tell a
# truncated mp4 from a text file named .mp4 (both: "moov atom not found"), so the
# first bytes are checked by hand to give the two different reasons.
_ISO_BMFF_BOX_TYPES = (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot")


def _has_container_signature(header: bytes) -> bool:
    return (
        header[4:8] in _ISO_BMFF_BOX_TYPES  # mp4 / mov
        or header[:4] == b"\x1a\x45\xdf\xa3"  # Matroska / WebM (EBML)
        or (header[:4] == b"RIFF" and header[8:12] == b"AVI ")
    )


class _VideoFailure(Exception):
    """A video is unusable; the message is the reason recorded in the manifest."""


# decord prefixes messages with "[12:00:00] /github/workspace/src/....cc:123: ".
_DECORD_MESSAGE_PREFIX = re.compile(r"\[[\d:]+\] |\S+\.(?:cc|h):\d+: ")


def _short_error(error: BaseException) -> str:
    """Last line of a decord error without its timestamp and source-file prefixes."""
    lines = str(error).strip().splitlines() or [type(error).__name__]
    return _DECORD_MESSAGE_PREFIX.sub("", lines[-1]).strip()[:160]


def _open_video(path: Path):
    """Open ``path`` with decord, turning each way it can fail into a distinct reason."""
    if not os.path.lexists(path):
        raise _VideoFailure("missing: file not found")
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):  # a directory, FIFO (would block) or device
            raise _VideoFailure("unreadable: not a regular file (e.g. a directory)")
        with path.open("rb") as handle:
            header = handle.read(12)
    except OSError as error:
        raise _VideoFailure(f"unreadable: {error.strerror or error}") from None
    if info.st_size == 0:
        raise _VideoFailure("empty: zero-byte file")
    try:
        return decord.VideoReader(str(path), num_threads=1)
    except Exception as error:  # decord raises RuntimeError or DECORDError (a bare Exception)
        if not _has_container_signature(header):
            raise _VideoFailure(
                "not a video: no mp4/mkv/webm/avi signature and decord cannot open it"
            ) from None
        if isinstance(error, RuntimeError):
            # decord's RuntimeError means ffmpeg could not open the container at all.
            raise _VideoFailure(
                "truncated or corrupt: container header found but it cannot be opened "
                "(e.g. an mp4 cut short before its 'moov' index)"
            ) from None
        raise _VideoFailure(f"truncated or corrupt: indexing the packets failed ({_short_error(error)})") from None


def _locate_decode_failure(path: Path, start: int, stop: int) -> int | None:
    """First frame in [start, stop) that fails to decode when read one by one.

    decord reads ahead, so the batch that fails can start before the bad frame and
    the batch boundary is not reproducible; frame-by-frame reading is.
    """
    reader = decord.VideoReader(str(path), num_threads=1)
    for index in range(start, stop):
        try:
            reader[index].asnumpy()
        except Exception:
            return index
    return None


def _target_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    if short_side is None or min(width, height) <= short_side:
        return width, height
    scale = short_side / min(width, height)
    if width <= height:
        return short_side, max(1, round(height * scale))
    return max(1, round(width * scale)), short_side


def _write_frames(path: Path, reader, kept: list[int], settings: ExtractionSettings, folder: Path) -> tuple[int, int]:
    """Decode the ``kept`` frames in chunks, write them as JPEGs; returns (width, height)."""
    size = None
    for chunk_start in range(0, len(kept), DECODE_CHUNK):
        indices = kept[chunk_start : chunk_start + DECODE_CHUNK]
        try:
            batch = reader.get_batch(indices).asnumpy()
        except Exception as error:
            bad = _locate_decode_failure(path, indices[0], kept[-1] + 1)
            where = f"frame {bad}" if bad is not None else f"a frame at or after {indices[0]}"
            raise _VideoFailure(
                f"corrupt: decoding failed at {where} of {len(reader)} ({_short_error(error)})"
            ) from None
        for offset, array in enumerate(batch):
            image = Image.fromarray(array)
            if size is None:
                size = _target_size(image.width, image.height, settings.short_side)
            # decord's own resize (VideoReader(width=, height=)) returns mis-shaped
            # frames for widths below ~32 in decord 0.6.0, so resize with PIL.
            if image.size != size:
                image = image.resize(size, Image.BICUBIC)
            image.save(folder / f"{chunk_start + offset:06d}.jpg", quality=settings.jpeg_quality)
    assert size is not None
    return size


class _Watchdog:
    """Ends this worker process when one video takes longer than ``timeout_s``, after writing the
    video's record with reason "timeout". A decoder stuck inside C code (decord's get_batch can
    hang forever on some files) cannot be interrupted from Python, so the process itself ends;
    the pool then starts a fresh worker (see _extract_all)."""

    def __init__(self, record: dict[str, Any], status_path: Path, timeout_s: float):
        self._record, self._status_path, self._timeout_s = record, status_path, timeout_s
        self._lock = threading.Lock()
        self._finished = False
        self._timer = threading.Timer(timeout_s, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> "_Watchdog":
        self._timer.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._timer.cancel()

    def finish(self) -> bool:
        """Claim the right to write the record; False once the watchdog has fired."""
        with self._lock:
            if self._finished:
                return False
            self._finished = True
            return True

    def _expire(self) -> None:
        if not self.finish():
            return
        record = {**self._record, "status": "failed",
                  "reason": f"{TIMEOUT_REASON}: decoding took longer than video_timeout_s={self._timeout_s:g} s"}
        _write_json_atomic(self._status_path, record)
        os._exit(1)  # the decoding thread cannot be stopped any other way


def extract_one_video(entry: VideoEntry, out_dir: Path, settings: ExtractionSettings) -> dict[str, Any]:
    """Extract one video and write its status record; never raises for a bad video."""
    decord.logging.set_level(decord.logging.QUIET)  # ffmpeg noise; reasons go to the manifest
    record = _new_record(entry, settings)  # fingerprint taken before decoding starts
    with _Watchdog(record, _status_path(out_dir, entry.video_id), settings.video_timeout_s) as watchdog:
        record = _extract_video(entry, out_dir, settings, record)
        if watchdog.finish():
            _write_json_atomic(_status_path(out_dir, entry.video_id), record)
    return record


def _extract_video(entry: VideoEntry, out_dir: Path, settings: ExtractionSettings, record: dict[str, Any]) -> dict[str, Any]:
    """Decode and write one video's frames; returns its record (not yet written)."""
    final_dir = out_dir / FRAMES_DIR / entry.video_id
    tmp_root = out_dir / TMP_DIR
    tmp_root.mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(dir=tmp_root, prefix=entry.video_id.replace("/", "__") + "."))
    apply_umask(work_dir)  # mkdtemp makes it 0700, and it becomes the video's frames folder
    try:
        reader = _open_video(entry.path)
        total = len(reader)
        kept = list(range(0, total, settings.frame_stride))
        if len(kept) < 2:
            raise _VideoFailure(
                f"single frame: {len(kept)} frame(s) kept of {total} with stride "
                f"{settings.frame_stride}; a pair needs 2"
            )
        width, height = _write_frames(entry.path, reader, kept, settings, work_dir)
        shutil.rmtree(final_dir, ignore_errors=True)  # stale frames of an earlier, unrecorded run
        final_dir.parent.mkdir(parents=True, exist_ok=True)
        os.replace(work_dir, final_dir)
        record.update(status="ok", frame_count=len(kept), width=width, height=height)
    except _VideoFailure as failure:
        record["reason"] = str(failure)
    except Exception as error:  # an unforeseen decoder error must not stop the run
        record["reason"] = f"error: {type(error).__name__}: {_short_error(error)}"
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    if record["status"] == "failed":
        shutil.rmtree(final_dir, ignore_errors=True)
    return record


# --- the run -----------------------------------------------------------------


def _load_record(out_dir: Path, entry: VideoEntry) -> dict[str, Any] | None:
    try:
        return json.loads(_status_path(out_dir, entry.video_id).read_text())
    except (OSError, ValueError):
        return None


def _is_up_to_date(record: dict[str, Any] | None, entry: VideoEntry, out_dir: Path, settings: ExtractionSettings) -> bool:
    if record is None:
        return False
    size, mtime_ns = _source_fingerprint(entry.path)
    return (
        record.get("source_path") == str(entry.path)
        and record.get("source_size") == size
        and record.get("source_mtime_ns") == mtime_ns
        and record.get("settings") == settings.output_settings()
        and (record.get("status") == "ok" and (out_dir / FRAMES_DIR / entry.video_id).is_dir()
             or is_final_failure(record))
    )


def is_final_failure(record: dict[str, Any]) -> bool:
    """A failure judged on the video's own bytes (FINAL_FAILURES), not retried by a rerun."""
    return record.get("status") == "failed" and str(record.get("reason", "")).startswith(FINAL_FAILURES)


def _pool_context() -> multiprocessing.context.BaseContext:
    # forkserver, not fork: the caller may hold decord/torch/OpenMP threads, and
    # forking a threaded process can deadlock the child. The server preloads this
    # module once, so each worker starts in milliseconds (spawn would re-import).
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


@contextlib.contextmanager
def _main_script_not_rerun():
    """Keep new worker processes from re-running the caller's main script.

    forkserver / spawn workers import ``__main__`` from its file; when that file is a script
    without a ``__name__`` guard (a Snakemake workflow script, for one) each worker would rerun
    it and die. The workers only need this module, so the path is hidden while the pool lives.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if path is None or getattr(main, "__spec__", None) is not None:  # run with -m: imported by name
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


def _kill_workers(pool: ProcessPoolExecutor) -> None:
    # concurrent.futures has no public way to end a running task; its worker processes are the
    # only handle on a decode that ignored its own watchdog.
    for process in list(getattr(pool, "_processes", {}).values()):
        process.kill()


def _run_pool(todo: list[VideoEntry], out_dir: Path, settings: ExtractionSettings, bar: tqdm,
              workers: int) -> tuple[list[VideoEntry], str]:
    """Extract ``todo`` in a process pool; when a worker process dies or the pool stops answering,
    returns the unfinished videos and why ("crashed" or "stalled"); ([], "") when all are done."""
    pending = deque(todo)
    in_flight: dict[Future, VideoEntry] = {}
    # Each video ends within video_timeout_s (its watchdog), so some video must finish in that
    # time plus a grace while any runs; never wait longer than that.
    stall_limit = settings.video_timeout_s + POOL_GRACE_S
    with _main_script_not_rerun(), ProcessPoolExecutor(workers, mp_context=_pool_context()) as pool:
        while pending or in_flight:
            # A bounded number in flight keeps the suspects few when a worker crashes.
            while pending and len(in_flight) < 2 * workers:
                entry = pending.popleft()
                in_flight[pool.submit(extract_one_video, entry, out_dir, settings)] = entry
            done, _ = wait(in_flight, timeout=stall_limit, return_when=FIRST_COMPLETED)
            if not done:
                _kill_workers(pool)
                return [*in_flight.values(), *pending], "stalled"
            for future in done:
                entry = in_flight.pop(future)
                try:
                    future.result()
                except BrokenProcessPool:
                    return [entry, *in_flight.values(), *pending], "crashed"
                bar.update()
    return [], ""


def _extract_all(todo: list[VideoEntry], out_dir: Path, settings: ExtractionSettings, bar: tqdm) -> None:
    """Run the pool; when a worker process dies, retry its suspects one at a time."""
    while todo:
        left, _ = _run_pool(todo, out_dir, settings, bar, settings.workers)
        bar.update(sum(1 for entry in left if _load_record(out_dir, entry) is not None))  # e.g. timed out
        suspects = [entry for entry in left if _load_record(out_dir, entry) is None][: 2 * settings.workers]
        todo = [entry for entry in left if entry not in suspects and _load_record(out_dir, entry) is None]
        for entry in suspects:  # alone in a pool, a crash names its video
            unfinished, why = _run_pool([entry], out_dir, settings, bar, 1)
            if unfinished and _load_record(out_dir, entry) is None:
                reason = (f"{TIMEOUT_REASON}: the worker stopped answering for {settings.video_timeout_s:g} s + "
                          f"{POOL_GRACE_S:g} s and was killed" if why == "stalled" else
                          "crashed: decoding killed the worker process (e.g. a segfault in the decoder)")
                _write_json_atomic(_status_path(out_dir, entry.video_id), _new_record(entry, settings, reason))
                bar.update()
            elif unfinished:  # its watchdog wrote "timeout" before the worker ended
                bar.update()


def _manifest_frame(entries: list[VideoEntry], records: list[dict[str, Any]], val_fraction: float) -> pd.DataFrame:
    rows = [
        {
            "video_id": entry.video_id,
            "source_path": str(entry.path),
            "label": entry.label,  # from the current source list: relabelling needs no re-extraction
            "split": split_for(record["video_id"], val_fraction),
            "frame_count": record["frame_count"],
            "width": record["width"],
            "height": record["height"],
            "status": record["status"],
            "reason": record["reason"],
        }
        for entry, record in zip(entries, records)
    ]
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS).astype(
        {"frame_count": "Int64", "width": "Int64", "height": "Int64"}
    )


def _write_text_if_changed(path: Path, text: str) -> None:
    """Atomic write that leaves an identical file untouched (reruns rewrite nothing)."""
    if path.is_file() and path.read_text() == text:
        return
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def _failure_summary(manifest: pd.DataFrame, limit: int = 5) -> str:
    failed = manifest[manifest["status"] != "ok"].head(limit)
    return "\n".join(f"  {row.video_id} ({row.source_path}): {row.reason}" for row in failed.itertuples())


def extract_frames(
    source: str | Path | list[VideoEntry],
    out_dir: str | Path,
    settings: ExtractionSettings,
    progress: bool = True,
) -> pd.DataFrame:
    """Extract the frames of every video of ``source`` into ``out_dir``; returns the manifest.

    Bad videos are recorded as failed with a reason and skipped. Finished videos
    (ok, or failed for a reason of the video's own bytes: FINAL_FAILURES) whose source
    size, mtime and output settings are unchanged are not redone, so an interrupted run
    resumes; other failures (permission, disk full, timeout, crash) are retried. Raises ExtractionError after writing
    the manifest if more than ``settings.max_bad_fraction`` of the videos failed.
    """
    settings.validate()
    entries = list(source) if isinstance(source, list) else index_videos(source)
    repeated = sorted(video_id for video_id, count in Counter(e.video_id for e in entries).items() if count > 1)
    if repeated:
        raise ValueError(f"video ids must be unique, repeated: {repeated[:5]}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out_dir / TMP_DIR, ignore_errors=True)  # half-written videos of an interrupted run

    todo = [entry for entry in entries if not _is_up_to_date(_load_record(out_dir, entry), entry, out_dir, settings)]
    for entry in todo:  # from here on, a record means "done in this run" (crash recovery relies on it)
        _status_path(out_dir, entry.video_id).unlink(missing_ok=True)
    with tqdm(total=len(entries), initial=len(entries) - len(todo), desc="extract frames", unit="video",
              disable=not progress) as bar:
        _extract_all(todo, out_dir, settings, bar)
    shutil.rmtree(out_dir / TMP_DIR, ignore_errors=True)

    records = [_load_record(out_dir, entry) for entry in entries]
    lost = [entry.video_id for entry, record in zip(entries, records) if record is None]
    if lost:  # a worker always writes a record, so this is an internal error
        raise ExtractionError(f"no status record written for {lost[:5]}")
    manifest = _manifest_frame(entries, records, settings.val_fraction)
    manifest_path = out_dir / MANIFEST_NAME
    _write_text_if_changed(manifest_path, manifest.to_csv(index=False))

    failed = int((manifest["status"] != "ok").sum())
    if entries and failed / len(entries) > settings.max_bad_fraction:
        raise ExtractionError(
            f"{failed} of {len(entries)} videos failed ({failed / len(entries):.1%}), more than "
            f"max_bad_fraction={settings.max_bad_fraction:.1%}; manifest: {manifest_path}\n"
            f"first failures:\n{_failure_summary(manifest)}"
        )
    if settings.pack:
        pack_frames(out_dir)
    return read_manifest(out_dir)
