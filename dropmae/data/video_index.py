"""Find the videos of a dataset: a Kinetics-style folder tree or a CSV list file."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm")

# Characters kept in a video id; everything else becomes "_". Kinetics class names
# hold spaces and parentheses, YouTube ids dashes and underscores.
_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9 _.,()+=@&'-]")


class VideoSourceError(ValueError):
    """The video source (folder or list file) is missing or malformed."""


@dataclass(frozen=True)
class VideoEntry:
    """One video of a dataset.

    ``video_id`` is unique, stable and filesystem-safe: ``"<class>/<stem>"`` for a
    video in a class folder, ``"<stem>"`` for one directly under the root.
    """

    video_id: str
    path: Path
    label: str | None


def _safe_component(name: str) -> str:
    """One path component of a video id: unsafe characters replaced, never hidden or empty."""
    safe = _UNSAFE_ID_CHARS.sub("_", name).strip()
    # A leading dot would hide the folder (and "." / ".." would escape it).
    return "_" + safe if not safe or safe.startswith(".") else safe


def _video_id_for(path: Path, with_parent: bool) -> str:
    stem = _safe_component(path.stem)
    return f"{_safe_component(path.parent.name)}/{stem}" if with_parent and path.parent.name else stem


def _deduplicate_ids(entries: list[VideoEntry]) -> list[VideoEntry]:
    """Keep the first id as is, suffix later repeats with ``__2``, ``__3``... (input order)."""
    taken = {entry.video_id for entry in entries}
    seen: set[str] = set()
    unique = []
    for entry in entries:
        video_id = entry.video_id
        if video_id in seen:
            copy_number = 2
            while f"{entry.video_id}__{copy_number}" in taken:
                copy_number += 1
            video_id = f"{entry.video_id}__{copy_number}"
            taken.add(video_id)
            entry = VideoEntry(video_id, entry.path, entry.label)
        seen.add(video_id)
        unique.append(entry)
    return unique


def _is_video_file(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS and not path.name.startswith(".")


def _index_tree(root: Path) -> list[VideoEntry]:
    entries = [VideoEntry(_video_id_for(p, False), p, None) for p in root.iterdir() if _is_video_file(p)]
    for class_dir in root.iterdir():
        if class_dir.is_dir() and not _is_video_file(class_dir) and not class_dir.name.startswith("."):
            entries += [
                VideoEntry(_video_id_for(p, True), p, class_dir.name)
                for p in class_dir.iterdir()
                if _is_video_file(p)
            ]
    # A directory named like a video (x.mp4) is kept: extraction records it as unreadable.
    if not entries:
        raise VideoSourceError(
            f"{root}: no videos found (looked for {', '.join(VIDEO_EXTENSIONS)} files "
            "directly in it and in its class folders <root>/<class>/)"
        )
    return sorted(entries, key=lambda entry: (entry.video_id, str(entry.path)))


def _index_list_file(list_file: Path) -> list[VideoEntry]:
    entries = []
    with list_file.open(newline="") as handle:
        for line_number, row in enumerate(csv.reader(handle), start=1):
            row = [field.strip() for field in row]
            if not row or row == [""]:
                continue
            if line_number == 1 and [field.lower() for field in row] in (["path"], ["path", "label"]):
                continue
            if len(row) > 2:
                raise VideoSourceError(
                    f"{list_file}, line {line_number}: expected 'path[,label]', got {len(row)} fields"
                )
            if not row[0]:
                raise VideoSourceError(f"{list_file}, line {line_number}: empty path field")
            path = Path(row[0]).expanduser()
            path = path if path.is_absolute() else list_file.parent / path
            label = row[1] if len(row) == 2 and row[1] else None
            entries.append(VideoEntry(_video_id_for(path, True), path, label))
    if not entries:
        raise VideoSourceError(f"{list_file}: the list file names no videos")
    # Missing files stay in the index: extraction records them as failed.
    return sorted(entries, key=lambda entry: (entry.video_id, str(entry.path)))


def index_videos(source: str | Path) -> list[VideoEntry]:
    """List the videos of ``source``, sorted by video id.

    ``source`` is either a folder (``root/<class>/<video>`` with the class as label,
    or ``root/<video>`` without a label) or a CSV list file with rows ``path[,label]``
    (optional ``path,label`` header; relative paths are taken from the list file's
    folder). Listed files that do not exist are kept.
    """
    source = Path(source).expanduser()
    if not source.exists():
        raise VideoSourceError(f"{source}: video source does not exist")
    if source.is_dir():
        entries = _index_tree(source)
    elif _is_video_file(source):
        raise VideoSourceError(f"{source}: expected a folder of videos or a CSV list, got a single video")
    else:
        entries = _index_list_file(source)
    return _deduplicate_ids(entries)
