"""Frames, normalisation, file names and mask files shared by both tasks (dropmae.data.images)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dropmae.data.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    davis_palette,
    natural_sort_key,
    normalized_to_image,
    to_normalized_tensor,
    visible_file_names,
    write_label_mask,
)


def test_natural_sort():
    names = ["10.jpg", "2.jpg", "1.jpg", "frame_10.png", "frame_9.png"]
    assert sorted(names, key=natural_sort_key) == ["1.jpg", "2.jpg", "10.jpg", "frame_9.png", "frame_10.png"]


def test_visible_file_names_skip_hidden_files_folders_and_other_suffixes(tmp_path):
    for name in ("a.JPG", "b.jpg", ".c.jpg", "d.png"):
        (tmp_path / name).touch()
    (tmp_path / "e.jpg").mkdir()
    assert sorted(visible_file_names(tmp_path, (".jpg",))) == ["a.JPG", "b.jpg"]
    with pytest.raises(FileNotFoundError):
        visible_file_names(tmp_path / "missing", (".jpg",))


def test_normalisation_is_the_tasks_formula_bit_for_bit():
    """The tracker, the segmenter and the probe each normalised frames this way before they shared it."""
    images = np.random.default_rng(0).integers(0, 256, (3, 20, 24, 3), dtype=np.uint8)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    one = torch.from_numpy(images[0]).permute(2, 0, 1).float().div_(255.0)
    assert torch.equal(to_normalized_tensor(images[0]), (one - mean) / std)
    batch = torch.from_numpy(images).permute(0, 3, 1, 2)
    assert torch.equal(to_normalized_tensor(images), (batch.float() / 255 - mean[None]) / std[None])
    assert torch.equal(to_normalized_tensor(images[:, ::-1], "cpu")[1], to_normalized_tensor(images[1, ::-1]))
    back = normalized_to_image(to_normalized_tensor(images[2]))
    assert back.shape == (20, 24, 3) and torch.allclose(back * 255, torch.from_numpy(images[2]).float(), atol=1e-3)
    with pytest.raises(ValueError, match="uint8 RGB"):
        to_normalized_tensor(images[0].astype(np.float32))


def test_masks_are_written_atomically_as_davis_palette_pngs(tmp_path):
    labels = np.zeros((5, 7), np.int64)
    labels[1:3, 2:6] = 2
    path = write_label_mask(tmp_path / "seq" / "00000.png", labels)
    with Image.open(path) as image:
        assert image.mode == "P" and image.getpalette()[:9] == list(davis_palette()[:9]) == [0, 0, 0, 128, 0, 0, 0, 128, 0]
        assert np.array_equal(np.array(image), labels)
    assert [p.name for p in path.parent.iterdir()] == ["00000.png"]
    with pytest.raises(ValueError, match="integer array"):
        write_label_mask(tmp_path / "bad.png", labels.astype(np.float32))
