"""Overlay figure: a segmenter's (or the probe's) predicted masks over their frames, a few sequences."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import imgviz
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from dropmae.data.images import davis_palette, read_rgb  # noqa: E402
from dropmae.segmentation.datasets import SegmentationSequence, read_label_mask  # noqa: E402


def save_mask_overlays(sequences: Sequence[SegmentationSequence], result_root: str | Path, path: str | Path,
                       title: str | None = None, rows: int = 4, columns: int = 4) -> Path:
    """PNG grid: one row for each of the first ``rows`` sequences, ``columns`` frames evenly spaced
    from the first to the last, each with its result mask ``result_root/<seq>/<frame>.png`` blended
    in the DAVIS colours. Returns ``path``."""
    shown = list(sequences)[:rows]
    if not shown:
        raise ValueError("no sequences to draw")
    colours = np.asarray(davis_palette(), dtype=np.uint8).reshape(256, 3)
    figure, axes = plt.subplots(len(shown), columns, figsize=(2.2 * columns, 1.8 * len(shown)), squeeze=False)
    for row, sequence in zip(axes, shown):
        picks = np.unique(np.linspace(0, len(sequence) - 1, columns).round().astype(int))
        for axis, index in zip(row, picks):
            labels = read_label_mask(Path(result_root) / sequence.name / sequence.mask_name(index))
            # imgviz blends a label map into its frame; background (0) stays as it is, objects at 0.5.
            overlay = imgviz.label2rgb(labels, image=read_rgb(sequence.frames[index]), alpha={0: 0.0}, colormap=colours)
            axis.imshow(overlay)
            axis.set_title(f"{sequence.name} #{index}", fontsize=7)
        for axis in row:
            axis.axis("off")
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
