"""Decoder attention analysis: within/between-frame shares, f_tem maps and the figures."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

from dropmae.analysis.attention import (
    analysis_pairs,
    attention_shares,
    attention_shares_for_checkpoint,
    collect_decoder_attention,
    decoder_attention_shares,
    save_attention_bars,
    save_temporal_matching_heatmap,
    temporal_matching_maps,
    temporal_matching_probability,
)
from dropmae.config import Cell, config_from_dict
from dropmae.data.extract import ExtractionSettings, extract_frames
from dropmae.data.pairs import FramePairDataset
from dropmae.engine.checkpoint import load_checkpoint
from dropmae.engine.pretrain import load_pretrained, pretrain
from dropmae.models.dropmae import DropMAE

IMG_SIZE, PATCH_SIZE, DECODER_DEPTH, DECODER_HEADS = 32, 8, 2, 4
TOKENS_PER_FRAME = (IMG_SIZE // PATCH_SIZE) ** 2
TINY = {
    "model": {"encoder": "micro", "img_size": IMG_SIZE, "patch_size": PATCH_SIZE, "decoder_dim": 32,
              "decoder_depth": DECODER_DEPTH, "decoder_heads": DECODER_HEADS},
    "pretrain": {"methods": ["dropmae"], "epochs": [1], "asad_p": 0.3, "batch_size": 2, "frame_gap": 8,
                 "warmup_epochs": 1, "num_workers": 0, "log_every_steps": 1, "checkpoint_every_steps": 0},
}


def micro_model(asad_p: float = 0.3) -> DropMAE:
    torch.manual_seed(0)
    return DropMAE(img_size=IMG_SIZE, patch_size=PATCH_SIZE, encoder="micro", decoder_embed_dim=32,
                   decoder_depth=DECODER_DEPTH, decoder_num_heads=DECODER_HEADS, asad_p=asad_p)


def random_attention(batch: int, heads: int, tokens_per_frame: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    length = 2 * tokens_per_frame
    return (3 * torch.randn(batch, heads, length, length, generator=generator)).softmax(dim=-1)


def naive_shares(attention: torch.Tensor, tokens_per_frame: int) -> tuple[list[float], list[float]]:
    """Per pair: mean over heads and queries of the mass on the query's frame / on the other frame."""
    batch, heads, length, _ = attention.shape
    within, between = [], []
    for b in range(batch):
        own_total, other_total = 0.0, 0.0
        for h in range(heads):
            for query in range(length):
                query_frame = query // tokens_per_frame
                for key in range(length):
                    value = float(attention[b, h, query, key])
                    if key // tokens_per_frame == query_frame:
                        own_total += value
                    else:
                        other_total += value
        within.append(own_total / (heads * length))
        between.append(other_total / (heads * length))
    return within, between


def naive_f_tem(attention: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
    """[B, 2, N]: per query, max attention on one key of the other frame, mean over heads."""
    batch, heads, length, _ = attention.shape
    result = torch.zeros(batch, 2, tokens_per_frame)
    for b in range(batch):
        for query in range(length):
            frame, position = divmod(query, tokens_per_frame)
            other = range(tokens_per_frame) if frame == 1 else range(tokens_per_frame, length)
            per_head = [max(float(attention[b, h, query, key]) for key in other) for h in range(heads)]
            result[b, frame, position] = sum(per_head) / heads
    return result


@pytest.fixture(scope="module")
def frames_root(demo_tree, tmp_path_factory) -> Path:
    """Extracted frames of the 6 demo clips: 2 in the val split, 4 in train."""
    out = tmp_path_factory.mktemp("analysis") / "frames"
    extract_frames(demo_tree, out, ExtractionSettings(short_side=40, workers=1, val_fraction=0.5), progress=False)
    return out


@pytest.fixture(scope="module")
def pairs(frames_root) -> FramePairDataset:
    return FramePairDataset(frames_root, input_size=IMG_SIZE, max_gap=8, split=None, crop_scale=(1.0, 1.0))


@pytest.fixture(scope="module")
def checkpoint(frames_root, tmp_path_factory) -> Path:
    """A tiny DropMAE trained for one epoch (2 steps) on the train split."""
    outcome = pretrain(config_from_dict(TINY), Cell("dropmae", 1), frames_root,
                       tmp_path_factory.mktemp("analysis_run"), progress=False)
    assert outcome.status == "completed"
    return outcome.checkpoint


# ------------------------------------------------------------------ pure functions
def test_attention_shares_match_a_per_query_loop():
    attention = random_attention(batch=2, heads=3, tokens_per_frame=4)
    within, between = attention_shares(attention, tokens_per_frame=4)
    expected_within, expected_between = naive_shares(attention, 4)
    assert within.shape == between.shape == (2,)
    torch.testing.assert_close(within, torch.tensor(expected_within), atol=1e-5, rtol=0)
    torch.testing.assert_close(between, torch.tensor(expected_between), atol=1e-5, rtol=0)
    torch.testing.assert_close(within + between, torch.ones(2), atol=1e-5, rtol=0)


def test_attention_on_the_other_frame_only_is_all_between():
    n = 4
    other_frame = torch.zeros(2 * n, 2 * n)
    other_frame[:n, n:] = 1.0 / n  # frame-1 queries spread over frame 2
    other_frame[n:, :n] = 1.0 / n
    attention = other_frame.expand(2, 3, -1, -1)
    within, between = attention_shares(attention, n)
    torch.testing.assert_close(between, torch.ones(2))
    torch.testing.assert_close(within, torch.zeros(2))
    torch.testing.assert_close(temporal_matching_probability(attention, n), torch.full((2, 2, n), 1.0 / n))
    # The transposed layout (own frame only) is all within.
    own_frame = torch.block_diag(torch.full((n, n), 1.0 / n), torch.full((n, n), 1.0 / n)).expand(2, 3, -1, -1)
    within, between = attention_shares(own_frame, n)
    torch.testing.assert_close(within, torch.ones(2))
    torch.testing.assert_close(between, torch.zeros(2))


def test_temporal_matching_probability_matches_a_per_query_loop():
    attention = random_attention(batch=2, heads=3, tokens_per_frame=4, seed=1)
    f_tem = temporal_matching_probability(attention, tokens_per_frame=4)
    torch.testing.assert_close(f_tem, naive_f_tem(attention, 4), atol=1e-6, rtol=0)


def test_attention_of_the_wrong_length_is_rejected():
    with pytest.raises(ValueError, match=r"\[B, H, 8, 8\]"):
        attention_shares(random_attention(1, 2, tokens_per_frame=3), tokens_per_frame=4)


# ------------------------------------------------------------------ the model
def test_collect_decoder_attention_records_each_layer_and_restores_the_sink():
    model = micro_model().eval()
    frames = torch.randn(3, 2, 3, IMG_SIZE, IMG_SIZE)
    with collect_decoder_attention(model) as sinks:
        model(frames)
        assert len(sinks) == DECODER_DEPTH
        for sink in sinks:
            (attention,) = sink
            assert attention.shape == (3, DECODER_HEADS, 2 * TOKENS_PER_FRAME, 2 * TOKENS_PER_FRAME)
            torch.testing.assert_close(attention.sum(dim=-1), torch.ones(attention.shape[:-1]))
    assert all(block.attn.attention_sink is None for block in model.decoder_blocks)

    with pytest.raises(RuntimeError, match="boom"), collect_decoder_attention(model):
        raise RuntimeError("boom")
    assert all(block.attn.attention_sink is None for block in model.decoder_blocks)


def test_decoder_attention_shares_match_a_per_query_reference(pairs):
    """5 pairs in batches of 2 (the last one partial) against the per-query loop on each batch."""
    model = micro_model()
    shares = decoder_attention_shares(model, pairs, num_pairs=5, batch_size=2, seed=3)
    assert list(shares.columns) == ["layer", "within_frame", "between_frame", "pairs"]
    assert shares["layer"].tolist() == list(range(1, DECODER_DEPTH + 1))
    assert (shares["pairs"] == 5).all()
    totals = (shares["within_frame"] + shares["between_frame"]).to_numpy()
    assert abs(totals - 1).max() < 1e-5

    torch.manual_seed(3)
    expected = [[0.0, 0.0] for _ in range(DECODER_DEPTH)]
    model.eval()
    with torch.no_grad(), collect_decoder_attention(model) as sinks:
        for batch in ([0, 1], [2, 3], [4]):
            model(torch.stack([pairs[i] for i in batch]))
            for layer, sink in enumerate(sinks):
                within, between = naive_shares(sink.pop(), TOKENS_PER_FRAME)
                expected[layer][0] += sum(within) / 5
                expected[layer][1] += sum(between) / 5
    assert shares["within_frame"].to_numpy() == pytest.approx([w for w, _ in expected], abs=1e-5)
    assert shares["between_frame"].to_numpy() == pytest.approx([b for _, b in expected], abs=1e-5)


def test_same_seed_same_numbers_with_state_restored(pairs):
    model = micro_model().train()
    rng_before = torch.get_rng_state()
    first = decoder_attention_shares(model, pairs, num_pairs=3, batch_size=2, seed=0)
    assert model.training
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert all(block.attn.attention_sink is None for block in model.decoder_blocks)
    pd.testing.assert_frame_equal(first, decoder_attention_shares(model, pairs, num_pairs=3, batch_size=2, seed=0))
    # Guard: the seed draws the masks, so another seed gives other numbers.
    other = decoder_attention_shares(model, pairs, num_pairs=3, batch_size=2, seed=1)
    assert not (other["within_frame"].to_numpy() == first["within_frame"].to_numpy()).all()


def test_num_pairs_beyond_the_dataset_uses_every_pair(pairs):
    shares = decoder_attention_shares(micro_model(), pairs, num_pairs=100, batch_size=4)
    assert (shares["pairs"] == len(pairs)).all()


def test_shares_read_what_the_decoder_attends(pairs):
    """Decoder attention replaced by all-other-frame attention: every layer reports between = 1."""
    model = micro_model()
    n = TOKENS_PER_FRAME
    other_frame = torch.zeros(2 * n, 2 * n)
    other_frame[:n, n:] = other_frame[n:, :n] = 1.0 / n

    def replace_recorded_attention(module, inputs, output):
        recorded = module.attention_sink[-1]
        module.attention_sink[-1] = other_frame.expand_as(recorded).clone()

    for block in model.decoder_blocks:
        block.attn.register_forward_hook(replace_recorded_attention)
    shares = decoder_attention_shares(model, pairs, num_pairs=3, batch_size=2)
    assert shares["between_frame"].to_numpy() == pytest.approx([1.0] * DECODER_DEPTH)
    assert shares["within_frame"].to_numpy() == pytest.approx([0.0] * DECODER_DEPTH)


def test_empty_dataset_is_a_clear_error():
    with pytest.raises(ValueError, match="dataset is empty"):
        decoder_attention_shares(micro_model(), [], num_pairs=4)


def test_temporal_matching_maps_lie_on_each_frames_patch_grid(pairs):
    model = micro_model().train()
    frames = torch.stack([pairs[0], pairs[1]])
    maps = temporal_matching_maps(model, frames, seed=5)
    grid = IMG_SIZE // PATCH_SIZE
    assert maps.shape == (2, DECODER_DEPTH, 2, grid, grid)
    assert model.training

    torch.manual_seed(5)
    with torch.no_grad(), collect_decoder_attention(model.eval()) as sinks:
        model(frames)
    for layer, (attention,) in enumerate(sinks):
        expected = naive_f_tem(attention, TOKENS_PER_FRAME)  # [B, 2, N], row-major patches
        for position in range(TOKENS_PER_FRAME):
            row, col = divmod(position, grid)
            torch.testing.assert_close(maps[:, layer, :, row, col], expected[:, :, position], atol=1e-6, rtol=0)


# ------------------------------------------------------------------ figures
def test_attention_bars_png(tmp_path):
    shares = pd.DataFrame({
        "method": ["twinmae"] * 3 + ["dropmae"] * 3,
        "layer": [1, 2, 3] * 2,
        "within_frame": [0.8, 0.7, 0.9, 0.6, 0.5, 0.7],
        "between_frame": [0.2, 0.3, 0.1, 0.4, 0.5, 0.3],
        "pairs": 10,
    })
    png = save_attention_bars(shares, tmp_path / "figures" / "bars.png")
    assert png.stat().st_size > 0
    with Image.open(png) as image:
        assert image.format == "PNG"
        width, height = image.size
    assert width > height  # layers along x
    with pytest.raises(ValueError, match="between_frame"):
        save_attention_bars(shares.drop(columns="between_frame"), tmp_path / "bad.png")


def test_checkpoint_shares_and_heatmap(checkpoint, frames_root, tmp_path):
    shares = attention_shares_for_checkpoint(checkpoint, frames_root, num_pairs=2, batch_size=2, seed=0)
    assert shares["method"].tolist() == ["dropmae"] * DECODER_DEPTH
    assert shares["epoch"].tolist() == [1] * DECODER_DEPTH
    assert (shares["pairs"] == 2).all()  # the 2 val videos
    totals = (shares["within_frame"] + shares["between_frame"]).to_numpy()
    assert abs(totals - 1).max() < 1e-5

    sizes = {}
    model, state = load_pretrained(checkpoint)
    for count in (1, 2):
        png = save_temporal_matching_heatmap(model, state, frames_root, tmp_path / f"f_tem_{count}.png",
                                             num_pairs=count)
        assert png.stat().st_size > 0
        with Image.open(png) as image:
            assert image.format == "PNG"
            sizes[count] = image.size
    assert sizes[1][0] == sizes[2][0]  # four columns either way
    assert sizes[1][0] > sizes[1][1]
    assert sizes[2][1] > sizes[1][1]  # one row per pair


def test_analysis_pairs_are_never_flipped(checkpoint, frames_root):
    """Frames are seen whole and unflipped: the same frame gives the same image under any seed."""
    state = load_checkpoint(checkpoint)
    images_by_start = {}
    for seed in range(20):
        dataset = analysis_pairs(state, frames_root, split=None, seed=seed)
        start, _ = dataset.pair_indices(0)
        images_by_start.setdefault(start, []).append(dataset[0][0])
    repeated = [images for images in images_by_start.values() if len(images) > 1]
    assert repeated  # 20 seeds, at most 15 start frames in a 16-frame clip
    for images in repeated:
        assert all(torch.equal(image, images[0]) for image in images[1:])
