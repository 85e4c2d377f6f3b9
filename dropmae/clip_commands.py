"""Commands on a user's own data: track or segment one clip with a fine-tuned model, and score
any tracker's or segmenter's result files on a benchmark (``dropmae track | segment |
score-tracking | score-vos``; cli.py wires them).

Clips come as a video file (decoded with PyAV, frame by frame) or a folder of JPEG / PNG frames
(natural sort order). Results are written in the benchmarks' own formats, so the scoring
commands and the official toolkits read them: GOT-10k box files and DAVIS palette PNGs.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from dropmae.data.images import natural_sort_key, read_rgb

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")


class ClipInputError(ValueError):
    """A clip, box or mask the commands cannot use; the message names the file or value."""


# ------------------------------------------------------------------------------ clips
def frame_files(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ClipInputError(f"{folder}: not a folder of frames")
    frames = sorted((p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES),
                    key=lambda p: natural_sort_key(p.name))
    if len(frames) < 2:
        raise ClipInputError(f"{folder}: {len(frames)} frame(s) ({'/'.join(FRAME_SUFFIXES)}); a clip needs at least 2")
    return frames


def clip_length(video: str | Path | None, frames: str | Path | None) -> int | None:
    """Frames in the clip when known without decoding it (the progress bar's total)."""
    if frames is not None:
        return len(frame_files(frames))
    import av

    with av.open(str(video)) as container:
        return container.streams.video[0].frames or None


def clip_rate(video: str | Path | None) -> float:
    """The video's frame rate (25 for a frames folder)."""
    if video is None:
        return 25.0
    import av

    with av.open(str(video)) as container:
        rate = container.streams.video[0].average_rate
        return float(rate) if rate else 25.0


def read_clip(video: str | Path | None = None, frames: str | Path | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """(frame name, uint8 RGB [H, W, 3]) for every frame of a video file or a frames folder, in order;
    video frames are named 00000, 00001, ... (DAVIS's file stems)."""
    if (video is None) == (frames is None):
        raise ClipInputError("give exactly one of --video FILE and --frames DIR")
    if frames is not None:
        for path in frame_files(frames):
            yield path.stem, read_rgb(path)
        return
    import av

    if not Path(video).is_file():
        raise ClipInputError(f"{video}: video file does not exist")
    try:
        with av.open(str(video)) as container:
            for index, frame in enumerate(container.decode(video=0)):
                yield f"{index:05d}", frame.to_ndarray(format="rgb24")
    except av.error.FFmpegError as error:
        raise ClipInputError(f"{video}: cannot be decoded ({error})") from None


class VideoWriter:
    """An H.264 mp4 written frame by frame (even sizes: odd ones are padded by one pixel)."""

    def __init__(self, path: str | Path, rate: float) -> None:
        import av

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(self.path), "w", format="mp4")
        self.stream = self.container.add_stream("libx264", rate=round(rate) or 25)
        self.stream.pix_fmt = "yuv420p"
        self.size: tuple[int, int] | None = None

    def write(self, rgb: np.ndarray) -> None:
        import av

        height, width = rgb.shape[:2]
        if self.size is None:
            self.size = (height + height % 2, width + width % 2)
            self.stream.height, self.stream.width = self.size
        padded = np.zeros((*self.size, 3), dtype=np.uint8)
        padded[:height, :width] = rgb
        for packet in self.stream.encode(av.VideoFrame.from_ndarray(padded, format="rgb24")):
            self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode(None):
            self.container.mux(packet)
        self.container.close()


def _progress(total: int | None, description: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="frame", disable=not enabled)


# ------------------------------------------------------------------------------ tracking
def parse_box(text: str) -> np.ndarray:
    """"x,y,w,h" (pixels, top-left corner) -> float array; w and h must be positive."""
    try:
        box = np.array([float(value) for value in text.split(",")])
    except ValueError:
        raise ClipInputError(f"--box {text!r}: expected four numbers x,y,w,h") from None
    if box.shape != (4,) or not np.isfinite(box).all() or box[2] <= 0 or box[3] <= 0:
        raise ClipInputError(f"--box {text!r}: expected x,y,w,h with w, h > 0")
    return box


def draw_box(rgb: np.ndarray, box: np.ndarray, colour=(255, 48, 48)) -> np.ndarray:
    import cv2

    image = np.ascontiguousarray(rgb).copy()
    x, y, w, h = (int(round(v)) for v in box)
    thickness = max(2, round(max(image.shape[:2]) / 200))
    cv2.rectangle(image, (x, y), (x + w - 1, y + h - 1), colour, thickness)
    return image


def track_clip(tracker_path: str | Path, first_box: np.ndarray, output: str | Path, *, video=None, frames=None,
               name: str | None = None, output_video: str | Path | None = None, device: str | None = None,
               progress: bool = True) -> dict:
    """Track the target of ``first_box`` through the clip with a fine-tuned tracker (OSTrack's test
    protocol, as the evaluate stage runs it). Writes GOT-10k result files
    ``output/<name>/<name>_001.txt`` (x,y,w,h per frame, frame 0 = the given box) and
    ``<name>_time.txt`` (seconds per frame), and with ``output_video`` an mp4 with the boxes drawn."""
    import torch

    from dropmae.engine.loop import default_device
    from dropmae.tracking.results import write_got10k_result
    from dropmae.tracking.tracker import DropTracker, TrackerSettings
    from dropmae.tracking.train import load_finetuned_tracker

    name = name or Path(video or frames).stem
    device = device or default_device()
    model, trained = load_finetuned_tracker(tracker_path, device)
    settings = TrackerSettings(trained.tracking.template_factor, trained.tracking.search_factor,
                               trained.tracking.clip_margin)
    tracker = DropTracker(model, settings, device)
    writer = VideoWriter(output_video, clip_rate(video)) if output_video else None
    boxes, times = [], []
    with _progress(clip_length(video, frames), f"tracking {name}", progress) as bar:
        for index, (_, rgb) in enumerate(read_clip(video, frames)):
            start = time.perf_counter()
            if index == 0:
                height, width = rgb.shape[:2]
                if first_box[0] >= width or first_box[1] >= height or first_box[0] + first_box[2] <= 0 \
                        or first_box[1] + first_box[3] <= 0:
                    raise ClipInputError(f"--box {first_box.tolist()} lies outside the {width}x{height} first frame")
                tracker.initialize(rgb, first_box)
                box = first_box
            else:
                box = tracker.track(rgb)
            if torch.device(device).type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
            boxes.append(np.asarray(box, dtype=np.float64))
            if writer:
                writer.write(draw_box(rgb, box))
            bar.update()
    if writer:
        writer.close()
    write_got10k_result(output, name, np.stack(boxes), np.asarray(times))
    return {"name": name, "frames": len(boxes), "seconds": float(sum(times[1:])),
            "fps": (len(boxes) - 1) / sum(times[1:]) if sum(times[1:]) > 0 else None,
            "result": str(Path(output) / name / f"{name}_001.txt"), "video": str(output_video) if writer else None}


# ------------------------------------------------------------------------------ segmentation
def overlay_labels(rgb: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The frame with each object's DAVIS palette colour blended in."""
    from dropmae.data.images import davis_palette

    palette = np.asarray(davis_palette(), dtype=np.float32).reshape(-1, 3)
    colours = palette[labels]
    blended = rgb.astype(np.float32)
    objects = labels > 0
    blended[objects] = (1 - alpha) * blended[objects] + alpha * colours[objects]
    return blended.round().astype(np.uint8)


def segment_clip(segmenter_path: str | Path, first_mask: str | Path, output: str | Path, *, video=None, frames=None,
                 output_video: str | Path | None = None, device: str | None = None, progress: bool = True) -> dict:
    """Segment every frame from the first frame and its mask (the paper's protocol) with a
    fine-tuned segmenter. ``first_mask``: a palette or greyscale PNG of object ids (0 background,
    255 void). Writes ``output/<frame name>.png`` (DAVIS palette PNGs, frame 0 = the given
    mask), ``output/times.txt`` (seconds per frame) and with ``output_video`` an overlay mp4."""
    import torch

    from dropmae.data.images import write_label_mask
    from dropmae.engine.loop import default_device
    from dropmae.segmentation.datasets import VOID_LABEL, read_label_mask
    from dropmae.segmentation.segmenter import DropSegmenter, SegmenterSettings
    from dropmae.segmentation.train import load_finetuned_segmenter

    labels = read_label_mask(first_mask)
    object_ids = [int(k) for k in np.unique(labels) if 0 < k < VOID_LABEL]
    if not object_ids:
        raise ClipInputError(f"{first_mask}: no object in the first-frame mask (labels {np.unique(labels).tolist()})")
    device = device or default_device()
    model, trained = load_finetuned_segmenter(segmenter_path, device)
    segmenter = DropSegmenter(model, SegmenterSettings.from_config(trained.segmentation), device)
    output = Path(output)
    writer = VideoWriter(output_video, clip_rate(video)) if output_video else None
    times, count = [], 0
    with _progress(clip_length(video, frames), "segmenting", progress) as bar:
        for index, (frame_name, rgb) in enumerate(read_clip(video, frames)):
            start = time.perf_counter()
            if index == 0:
                if labels.shape != rgb.shape[:2]:
                    raise ClipInputError(f"{first_mask}: mask is {labels.shape[1]}x{labels.shape[0]} (WxH) but the "
                                         f"first frame is {rgb.shape[1]}x{rgb.shape[0]}")
                segmenter.initialize(rgb, labels, object_ids)
                predicted = np.where(labels == VOID_LABEL, 0, labels).astype(np.uint8)
            else:
                predicted = segmenter.segment(rgb)
            if torch.device(device).type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
            write_label_mask(output / f"{frame_name}.png", predicted)
            if writer:
                writer.write(overlay_labels(rgb, predicted))
            count += 1
            bar.update()
    if writer:
        writer.close()
    np.savetxt(output / "times.txt", np.asarray(times), fmt="%.6f")
    return {"frames": count, "objects": object_ids, "seconds": float(sum(times[1:])), "results": str(output),
            "video": str(output_video) if writer else None}


# ------------------------------------------------------------------------------ scoring
TRACKING_SCORE_FORMATS = ("got10k", "lasot", "tnl2k", "trackingnet")


def _flat_got10k_results(results: Path, names: list[str], staging: Path) -> Path:
    """GOT-10k results as OSTrack / pytracking write them before packing (``<seq>.txt``, tab or
    comma separated, ``<seq>_time.txt``) -> the toolkit's ``<seq>/<seq>_001.txt`` layout in ``staging``."""
    from dropmae.tracking.results import read_box_result, read_times, write_got10k_result

    for name in names:
        boxes = read_box_result(results / f"{name}.txt")
        times_path = results / f"{name}_time.txt"
        times = read_times(times_path) if times_path.is_file() else np.zeros(len(boxes))
        write_got10k_result(staging, name, boxes, times)
    return staging


def score_tracking(format: str, root: str | Path, results: str | Path, output: str | Path,
                   split: str | None = None, tracker_name: str = "tracker") -> dict:
    """Score result files of any tracker on a benchmark split with its official protocol (GOT-10k:
    the got10k toolkit's AO / SR; LaSOT / TNL2K / TrackingNet: pytracking's AUC / P / P_norm).
    Writes ``output/metrics.json``, ``per_sequence.csv``, ``success.png`` and (OPE) ``precision.png``."""
    import tempfile

    from dropmae.tracking.datasets import read_benchmark
    from dropmae.tracking.metrics import evaluate_got10k, evaluate_ope, save_precision_plot, save_success_plot

    if format not in TRACKING_SCORE_FORMATS:
        raise ClipInputError(f"--format {format!r}: expected one of {TRACKING_SCORE_FORMATS}")
    results, output = Path(results), Path(output)
    if not results.is_dir():
        raise ClipInputError(f"{results}: results folder does not exist")
    sequences = read_benchmark(format, root, split)
    output.mkdir(parents=True, exist_ok=True)
    if format == "got10k":
        names = [sequence.name for sequence in sequences]
        flat = not (results / names[0]).is_dir() and (results / f"{names[0]}.txt").is_file()
        with tempfile.TemporaryDirectory() as staging:
            folder = _flat_got10k_results(results, names, Path(staging)) if flat else results
            metrics = evaluate_got10k(sequences, folder)
        save_success_plot({tracker_name: (metrics["thresholds"], metrics["success_curve"])}, output / "success.png",
                          f"Success plot on GOT-10k {split or 'val'}", scores={tracker_name: metrics["ao"]})
        columns = ("ao", "sr50", "sr75", "num_frames", "fps")
    else:
        metrics = evaluate_ope(sequences, results, format)
        save_success_plot({tracker_name: (metrics["overlap_thresholds"], metrics["success_curve"])},
                          output / "success.png", f"Success plot on {format}")
        save_precision_plot({tracker_name: (metrics["center_thresholds"], metrics["precision_curve"])},
                            output / "precision.png", f"Precision plot on {format}")
        save_precision_plot({tracker_name: (metrics["norm_center_thresholds"], metrics["norm_precision_curve"])},
                            output / "norm_precision.png", f"Normalized precision plot on {format}", at_threshold=0.2,
                            xlabel="Normalized location error threshold")
        columns = ("auc", "precision", "norm_precision", "avg_overlap", "num_frames", "num_valid_frames", "fps")
    with open(output / "per_sequence.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sequence", *columns])
        for name, values in metrics["per_sequence"].items():
            writer.writerow([name, *(values[column] for column in columns)])
    summary = {"format": format, "split": split, "root": str(root), "results": str(results), **metrics}
    (output / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _decay(values: np.ndarray) -> float:
    """davis2017-evaluation's decay: mean of the first quarter of the frames minus mean of the last
    quarter (four bins with shared edge frames, their np.linspace / round construction)."""
    edges = (np.round(np.linspace(1, len(values), 5) + 1e-10) - 1).astype(int)
    bins = [values[edges[i]:edges[i + 1] + 1] for i in range(4)]
    return float(np.nanmean(bins[0]) - np.nanmean(bins[3]))


def score_vos(root: str | Path, results: str | Path, output: str | Path, split: str = "val",
              format: str = "davis2017") -> dict:
    """J&F of result PNGs ``results/<seq>/<frame>.png`` on a DAVIS split (davis2017-evaluation's
    protocol, :mod:`dropmae.segmentation.metrics`). Writes davis2017-evaluation's two files,
    ``output/global_results-<split>.csv`` (J&F-Mean, J-Mean, J-Recall, J-Decay, F-Mean,
    F-Recall, F-Decay) and ``per-sequence_results-<split>.csv`` (Sequence = <seq>_<object id>,
    J-Mean, F-Mean), and ``metrics.json``."""
    from dropmae.segmentation.datasets import VOID_LABEL, read_segmentation_benchmark
    from dropmae.segmentation.metrics import (
        _scored_frames,
        boundary_f_measure,
        evaluate_davis,
        read_result_mask,
        region_similarity,
    )

    results, output = Path(results), Path(output)
    if not results.is_dir():
        raise ClipInputError(f"{results}: results folder does not exist")
    sequences = read_segmentation_benchmark(format, root, split)
    metrics = evaluate_davis(sequences, results)
    # Decay needs the per-frame values (evaluate_davis keeps means and recalls only): the same frames again.
    j_decays, f_decays = [], []
    for sequence in sequences:
        scored = _scored_frames(sequence)
        truth = np.stack([sequence.read_annotation(index) for index in scored])
        truth[truth == VOID_LABEL] = 0
        predicted = np.stack([read_result_mask(results / sequence.name / sequence.mask_name(index), truth.shape[1:],
                                               sequence.binary) for index in scored])
        for object_id in metrics["per_sequence"][sequence.name]["objects"]:
            frames = np.asarray(scored) > sequence.object_first_frame[object_id]
            pred, true = predicted[frames] == object_id, truth[frames] == object_id
            j_decays.append(_decay(region_similarity(pred, true)))
            f_decays.append(_decay(boundary_f_measure(pred, true)))
    global_row = {"J&F-Mean": metrics["jf"], "J-Mean": metrics["j"], "J-Recall": metrics["j_recall"],
                  "J-Decay": float(np.mean(j_decays)), "F-Mean": metrics["f"], "F-Recall": metrics["f_recall"],
                  "F-Decay": float(np.mean(f_decays))}
    output.mkdir(parents=True, exist_ok=True)
    with open(output / f"global_results-{split}.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(global_row)
        writer.writerow([f"{value:.6f}" for value in global_row.values()])
    with open(output / f"per-sequence_results-{split}.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Sequence", "J-Mean", "F-Mean"])
        for name, record in metrics["per_sequence"].items():
            for object_id, j, f in zip(record["objects"], record["j"], record["f"]):
                writer.writerow([f"{name}_{object_id}", f"{j:.6f}", f"{f:.6f}"])
    summary = {"format": format, "split": split, "root": str(root), "results": str(results), **global_row,
               **metrics}
    (output / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
