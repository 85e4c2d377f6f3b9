"""Label-propagation probe: frozen-encoder features, propagation rules, and the DAVIS result files."""

from __future__ import annotations

from pathlib import Path

import imgviz
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dropmae.models.dropmae import DropMAE
from dropmae.segmentation import probe
from dropmae.segmentation.datasets import SegmentationSequence, read_davis
from dropmae.segmentation.probe import (
    PropagationSettings,
    encoder_input_size,
    frame_encoder_from_checkpoint,
    propagate_labels,
    run_probe,
)


# ------------------------------------------------------------------------ checkpoints
def micro_checkpoint() -> tuple[dict, DropMAE]:
    """A micro DropMAE (64 px, patch 8: 8x8 grid) in the layout pretraining writes."""
    torch.manual_seed(0)
    mae = DropMAE(img_size=64, patch_size=8, encoder="micro", decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=4)
    with torch.no_grad():  # a trained frame embedding is not zero; make frame 0 and 1 differ
        mae.frame_embed.normal_(std=0.5)
    state = {
        "model": mae.state_dict(),
        "config": {"model": {"encoder": "micro", "img_size": 64, "patch_size": 8, "decoder_dim": 64,
                             "decoder_depth": 2, "decoder_heads": 4}},
        "run": {"method": "dropmae", "epochs": 1},
        "epoch": 1,
    }
    return state, mae


@pytest.fixture(scope="module")
def checkpoint_file(tmp_path_factory) -> tuple[Path, DropMAE]:
    state, mae = micro_checkpoint()
    path = tmp_path_factory.mktemp("checkpoint") / "checkpoint-last.pth"
    torch.save(state, path)
    return path, mae.eval()


def normalised(images: np.ndarray) -> torch.Tensor:
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std


# --------------------------------------------------------------------------- encoder
def test_features_of_a_non_square_frame_are_unit_cells_on_its_grid(checkpoint_file, real_frames):
    path, _ = checkpoint_file
    encoder = frame_encoder_from_checkpoint(path, batch_size=2)
    frames = normalised(real_frames[:5, :, :144])  # real 64 x 144 frames: an 8 x 18 grid
    features = encoder(frames)
    assert features.shape == (5, 96, 8, 18)
    torch.testing.assert_close(features.norm(dim=1), torch.ones(5, 8, 18))
    # Frames are encoded independently: batching (2 per run here) does not change a frame's features.
    torch.testing.assert_close(encoder(frames[3:4]), features[3:4], rtol=1e-4, atol=1e-5)
    # 150 px is not a multiple of 8: resized to the nearest multiple (152), the grid covers the frame.
    assert encoder(normalised(real_frames[:2])).shape == (2, 96, 8, 19)
    assert encoder(normalised(real_frames[:2]), short_side=32).shape == (2, 96, 4, 9)  # 32 x 75 -> 32 x 72
    assert encoder_input_size(37, 50, 8) == (40, 48) and encoder_input_size(3, 3, 8) == (8, 8)
    # uint8 input gives the same features as normalising by hand.
    torch.testing.assert_close(encoder.encode_rgb(real_frames[:5, :, :144]), features, rtol=1e-4, atol=1e-5)


def test_training_grid_matches_the_pretraining_encoder_on_frame_one(checkpoint_file, real_frames):
    path, mae = checkpoint_file
    encoder = frame_encoder_from_checkpoint(path)
    frames = normalised(real_frames[:2, :, :64])
    # The pretraining model's own first-frame tokens: its pos_embed buffer and frame_embed[0].
    with torch.no_grad():
        tokens = mae.patch_embed(frames) + mae.pos_embed + mae.frame_embed[0]
        for block in mae.blocks:
            tokens = block(tokens)
        expected = F.normalize(mae.norm(tokens), dim=-1).transpose(1, 2).reshape(2, 96, 8, 8)
    torch.testing.assert_close(encoder(frames), expected, rtol=1e-4, atol=1e-5)
    # The rebuilt sin-cos table of a wider grid keeps the training table as its top-left block.
    wide = encoder.position_table((8, 13)).reshape(8, 13, 96)
    torch.testing.assert_close(wide[:, :8].reshape(64, 96), mae.pos_embed[0])


def test_learned_position_table_needs_interpolation(checkpoint_file, real_frames):
    path, _ = checkpoint_file
    state = torch.load(path, weights_only=True)
    state["model"]["pos_embed"] = state["model"]["pos_embed"] + 0.1
    with pytest.raises(ValueError, match="positions='interpolate'"):
        frame_encoder_from_checkpoint(state)
    encoder = frame_encoder_from_checkpoint(state, positions="interpolate")
    table = encoder.position_table((4, 6))
    square = state["model"]["pos_embed"][0].T.reshape(1, 96, 8, 8)
    expected = F.interpolate(square, size=(4, 6), mode="bicubic", align_corners=False)[0].reshape(96, 24).T
    torch.testing.assert_close(table, expected)
    assert encoder(normalised(real_frames[:1, :32, :48])).shape == (1, 96, 4, 6)


def test_checkpoint_problems_are_named(checkpoint_file):
    path, _ = checkpoint_file
    state = torch.load(path, weights_only=True)
    del state["model"]["blocks.2.mlp.fc1.weight"]
    with pytest.raises(ValueError, match=r"blocks\.2\.mlp\.fc1\.weight"):
        frame_encoder_from_checkpoint(state)
    with pytest.raises(ValueError, match="patch_size"):
        frame_encoder_from_checkpoint({"model": {}, "config": {"model": {"encoder": "micro", "img_size": 64}}})
    wrong = {**state, "config": {"model": {"encoder": "tiny", "img_size": 64, "patch_size": 8}}}
    with pytest.raises(ValueError, match=r"patch_embed\.proj\.weight: checkpoint \[96, 3, 8, 8\] vs tiny"):
        frame_encoder_from_checkpoint(wrong)


# ----------------------------------------------------------------------- propagation
def position_codes(height: int, width: int) -> torch.Tensor:
    """One-hot features [D = h*w + 1, h, w]: the feature of cell (i, j) is e_(i*w + j)."""
    return torch.eye(height * width + 1)[: height * width].T.reshape(-1, height, width)


def shifted(codes: torch.Tensor, dy: int, dx: int, fill: torch.Tensor) -> torch.Tensor:
    """The scene moved by (dy, dx) cells: cell (i, j) shows what was at (i - dy, j - dx); cells
    whose content came from outside show ``fill``."""
    out = fill[:, None, None].expand_as(codes).clone()
    height, width = codes.shape[1:]
    out[:, dy:, dx:] = codes[:, : height - dy, : width - dx]
    return out


def test_a_translated_square_gets_translated():
    height, width, patch = 6, 8, 4
    codes = position_codes(height, width)
    background = codes[:, 0, 0]  # new content looks like the top-left background cell
    features = torch.stack([codes, shifted(codes, 1, 2, background), shifted(codes, 2, 3, background)])
    grid_labels = np.zeros((height, width), np.uint8)
    grid_labels[1:3, 2:4] = 5
    grid_labels[3, 1] = 2
    first = np.kron(grid_labels, np.ones((patch, patch), np.uint8))  # 24 x 32 px frame
    settings = PropagationSettings(topk=1, n_context=2, neighbourhood=0)
    labels = propagate_labels(features, first, settings)
    assert labels.dtype == torch.uint8 and labels.shape == (3, 24, 32)
    assert np.array_equal(labels[0].numpy(), first)
    for t, (dy, dx) in enumerate([(1, 2), (2, 3)], start=1):
        expected = np.zeros_like(grid_labels)
        expected[dy:, dx:] = grid_labels[: height - dy, : width - dx]
        # Pixels near a cell's centre take its label; bilinear upsampling rounds the corners.
        assert np.array_equal(labels[t, patch // 2 :: patch, patch // 2 :: patch].numpy(), expected), t
        assert set(labels[t].unique().tolist()) == {0, 2, 5}


def test_topk_one_copies_the_nearest_neighbour():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 16, 5, 7, generator=generator)
    first = torch.randint(0, 4, (5, 7), generator=generator)
    labels = propagate_labels(features, first, PropagationSettings(topk=1, neighbourhood=0, normalise_channels=False))
    query = F.normalize(features[1].flatten(1), dim=0)
    keys = F.normalize(features[0].flatten(1), dim=0)
    nearest = (query.T @ keys).argmax(dim=1)
    assert torch.equal(labels[1].flatten().long(), first.flatten()[nearest])


def test_neighbourhood_excludes_a_far_match():
    height, width = 6, 8
    codes = position_codes(height, width)
    first = torch.zeros(height, width, dtype=torch.long)
    first[5, 7] = 1
    query = codes[:, 0:1, 0:1].expand_as(codes).clone()  # everywhere the background of (0, 0) ...
    query[:, 0, 0] = codes[:, 5, 7]  # ... except the object, now at the far corner
    features = torch.stack([codes, query])
    found = propagate_labels(features, first, PropagationSettings(topk=1, neighbourhood=0))
    assert found[1, 0, 0] == 1 and found[1].sum() == 1
    near_only = propagate_labels(features, first, PropagationSettings(topk=1, neighbourhood=2))
    assert near_only[1].sum() == 0
    # CRW's convention: the window restricts only the predicted frames, not the first one.
    crw = PropagationSettings(topk=1, neighbourhood=2, neighbourhood_on_first_frame=False)
    assert propagate_labels(features, first, crw)[1, 0, 0] == 1


def vote_features() -> tuple[torch.Tensor, torch.Tensor]:
    """Frame 1's cell (0, 0) matches one cell of object 1 at similarity 0.9 and two cells of
    object 2 at 0.8; every other cell matches only background."""
    dims = torch.eye(5)
    background = dims[4]
    first_frame = background[:, None, None].repeat(1, 3, 4)
    first_frame[:, 2, 1] = 0.9 * dims[0] + 0.19**0.5 * dims[1]
    first_frame[:, 2, 2] = 0.8 * dims[0] + 0.6 * dims[2]
    first_frame[:, 2, 3] = 0.8 * dims[0] + 0.6 * dims[3]
    labels = torch.zeros(3, 4, dtype=torch.long)
    labels[2, 1], labels[2, 2], labels[2, 3] = 1, 2, 2
    second_frame = background[:, None, None].repeat(1, 3, 4)
    second_frame[:, 0, 0] = dims[0]
    return torch.stack([first_frame, second_frame]), labels


@pytest.mark.parametrize(("temperature", "winner"), [(0.1, 1), (1.0, 2)])
def test_temperature_weights_the_topk_votes(temperature, winner):
    # softmax over (0.9, 0.8, 0.8) / T: at 0.1 one vote of e^9 beats 2 e^8; at 1 it does not.
    features, first = vote_features()
    settings = PropagationSettings(topk=3, neighbourhood=0, temperature=temperature, normalise_channels=False)
    labels = propagate_labels(features, first, settings)  # patch 1: pixels are cells
    assert labels[1, 0, 0] == winner and labels[1].flatten()[1:].eq(0).all()


def test_channel_normalisation_lets_a_weak_object_win():
    features, first = vote_features()
    first[2, 2:] = 0  # only object 1 remains: at T = 1 cell (0, 0) gets 0.36 object 1, 0.64 background
    plain = PropagationSettings(topk=3, neighbourhood=0, temperature=1.0, normalise_channels=False)
    assert propagate_labels(features, first, plain)[1, 0, 0] == 0
    dino = PropagationSettings(topk=3, neighbourhood=0, temperature=1.0)
    assert propagate_labels(features, first, dino)[1, 0, 0] == 1


@pytest.mark.parametrize(
    ("field_name", "value"),
    [("topk", 0), ("topk", 2.5), ("n_context", -1), ("neighbourhood", True), ("temperature", 0.0),
     ("temperature", float("nan")), ("frame_short_side", 0), ("normalise_channels", 1)],
)
def test_bad_settings_name_the_field(field_name, value):
    with pytest.raises(ValueError, match=rf"PropagationSettings\.{field_name} must"):
        PropagationSettings(**{field_name: value})


def test_bad_labels_are_rejected():
    features = torch.randn(2, 4, 3, 3)
    with pytest.raises(ValueError, match="integer"):
        propagate_labels(features, np.zeros((6, 6), np.float32), PropagationSettings())
    with pytest.raises(ValueError, match="0..255"):
        propagate_labels(features, np.full((6, 6), 300), PropagationSettings())


# ----------------------------------------------------------------------------- probe
def tiny_sequence(name: str, frames: list[Path], annotation: Path, object_ids=(1,)) -> SegmentationSequence:
    """A DAVIS 2017 sequence annotated on its first frame only (the probe reads no other annotation)."""
    with Image.open(frames[0]) as image:
        size = (image.height, image.width)
    object_ids = tuple(object_ids)
    return SegmentationSequence(name, "davis2017", tuple(frames), {0: annotation}, object_ids,
                                dict.fromkeys(object_ids, 0), size)


def write_annotation(labels: np.ndarray, path: Path) -> Path:
    image = Image.fromarray(labels)
    image.putpalette(imgviz.label_colormap().flatten().tolist())
    image.save(path)
    return path


def test_run_probe_writes_davis_palette_pngs(checkpoint_file, real_frames, tmp_path):
    path, _ = checkpoint_file
    frame_dir = tmp_path / "JPEGImages" / "bikes"
    frame_dir.mkdir(parents=True)
    frames = []
    for index, frame in enumerate(real_frames[:6]):  # real 64 x 150 frames (150 is not a multiple of 8)
        frames.append(frame_dir / f"{index:05d}.jpg")
        Image.fromarray(frame).save(frames[-1], quality=95)
    first = np.zeros((64, 150), np.uint8)
    first[10:40, 20:60] = 1
    first[30:60, 90:140] = 3
    first[0:4, 0:4] = 255  # void: not an object
    annotation = write_annotation(first, tmp_path / "00000.png")
    sequence = tiny_sequence("bikes", frames, annotation, object_ids=[1, 3])

    settings = PropagationSettings(frame_short_side=None)
    timing = run_probe(path, [sequence], tmp_path / "results", settings, device="cpu")
    assert timing["frames"] == 6 and timing["sequences"] == 1 and timing["seconds"] > 0
    assert timing["frames_per_second"] == pytest.approx(6 / timing["seconds"])

    written = sorted((tmp_path / "results" / "bikes").iterdir())
    assert [p.name for p in written] == [f"{i:05d}.png" for i in range(6)]
    palette = imgviz.label_colormap().flatten().tolist()
    predicted = []
    for png in written:
        with Image.open(png) as image:
            assert image.mode == "P" and image.size == (150, 64)
            assert image.getpalette()[: len(palette)] == palette
            predicted.append(np.array(image))
    assert np.array_equal(predicted[0], np.where(first == 255, 0, first))
    assert set(np.unique(np.stack(predicted)).tolist()) <= {0, 1, 3}
    # The objects barely move in six frames of a real clip: most of each survives.
    for object_id in (1, 3):
        assert (predicted[-1] == object_id).sum() > 0.3 * (first == object_id).sum()


def test_run_probe_names_a_bad_annotation(checkpoint_file, real_frames, tmp_path):
    path, _ = checkpoint_file
    frames = []
    for index, frame in enumerate(real_frames[:2]):
        frames.append(tmp_path / f"{index:05d}.jpg")
        Image.fromarray(frame).save(frames[-1])
    small = write_annotation(np.zeros((32, 32), np.uint8), tmp_path / "small.png")
    with pytest.raises(ValueError, match="small.png"):
        run_probe(path, [tiny_sequence("a", frames, small)], tmp_path / "out", PropagationSettings())
    rgb = tmp_path / "rgb.png"
    Image.fromarray(real_frames[0]).save(rgb)
    with pytest.raises(ValueError, match="rgb.png: RGB mask"):
        run_probe(path, [tiny_sequence("a", frames, rgb)], tmp_path / "out", PropagationSettings())


def write_davis_layout(root: Path, year: str, frames: np.ndarray, first: np.ndarray) -> Path:
    """A DAVIS-2017-download folder with one val sequence "bikes" annotated on its first frame."""
    frame_dir = root / "JPEGImages" / "480p" / "bikes"
    mask_dir = root / "Annotations" / "480p" / "bikes"
    frame_dir.mkdir(parents=True)
    mask_dir.mkdir(parents=True)
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(frame_dir / f"{index:05d}.jpg", quality=95)
    write_annotation(first, mask_dir / "00000.png")
    (root / "ImageSets" / year).mkdir(parents=True)
    (root / "ImageSets" / year / "val.txt").write_text("bikes\n")
    return root


def test_run_probe_on_davis2016_takes_every_object_label_as_the_one_object(checkpoint_file, real_frames, tmp_path):
    """DAVIS 2016 read from the DAVIS 2017 download: its masks hold objects 1 and 2, and 2016 scores
    them as one object, so the probe propagates their union (not object 1 alone)."""
    path, _ = checkpoint_file
    first = np.zeros((64, 150), np.uint8)
    first[10:40, 20:60] = 1
    first[30:60, 90:140] = 2
    first[0:4, 0:4] = 255  # void: not an object
    union = ((first != 0) & (first != 255)).astype(np.uint8)
    (sequence,) = read_davis(write_davis_layout(tmp_path / "davis", "2016", real_frames[:6], first), "2016", "val")
    assert sequence.object_ids == (1,)
    (binary,) = read_davis(write_davis_layout(tmp_path / "binary", "2017", real_frames[:6], union), "2017", "val")

    settings = PropagationSettings(frame_short_side=None)
    run_probe(path, [sequence], tmp_path / "results_2016", settings, device="cpu")
    run_probe(path, [binary], tmp_path / "results_binary", settings, device="cpu")
    predicted = []
    for index in range(6):
        with Image.open(tmp_path / "results_2016" / "bikes" / f"{index:05d}.png") as image:
            predicted.append(np.array(image))
    assert np.array_equal(predicted[0], union)
    assert set(np.unique(np.stack(predicted)).tolist()) == {0, 1}
    assert (predicted[-1] == 1).sum() > 0.3 * union.sum()  # both parts of the object survive, not just label 1
    assert (predicted[-1][30:60, 90:140] == 1).sum() > 0.3 * (first == 2).sum()
    # Exactly what the probe gives for the same object written as one label in a DAVIS 2017 mask.
    for index in range(6):
        name = f"bikes/{index:05d}.png"
        assert (tmp_path / "results_2016" / name).read_bytes() == (tmp_path / "results_binary" / name).read_bytes()


def test_chunked_affinity_and_upsampling_match_one_pass(monkeypatch):
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(5, 8, 6, 7, generator=generator)
    first = torch.randint(0, 3, (24, 28), generator=generator)
    settings = PropagationSettings(topk=4, n_context=2, neighbourhood=2, temperature=0.5)
    whole = propagate_labels(features, first, settings)
    monkeypatch.setattr(probe, "_LOGITS_PER_CHUNK", 100)  # 100 logits: one query per chunk at M * N = 126
    monkeypatch.setattr(probe, "_PIXELS_PER_CHUNK", 1)  # one frame per upsampling chunk
    assert torch.equal(propagate_labels(features, first, settings), whole)
    assert len(whole.unique()) > 1  # not trivially all background
