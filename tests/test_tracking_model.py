"""DropTrack model, candidate elimination, box decoding, checkpoint loading and losses (tiny, CPU)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dropmae.models.dropmae import DropMAE
from dropmae.models.encoder import CheckpointMismatchError, from_pretraining_config, load_pretrained_encoder
from dropmae.tracking.losses import focal_heatmap_loss, gaussian_heatmap, tracking_loss
from dropmae.tracking.model import DropTrack, decode_boxes, droptrack_from_checkpoint

CE_LOCATIONS = (1, 2)  # micro has 4 blocks
TINY = {
    "encoder": "micro",
    "patch_size": 8,
    "template_size": 32,
    "search_size": 64,
    "ce_locations": CE_LOCATIONS,
    "head_channels": 32,
    "drop_path_rate": 0.0,
}
NUM_SEARCH = (64 // 8) ** 2


def tiny_tracker(**overrides) -> DropTrack:
    torch.manual_seed(0)
    return DropTrack(**{**TINY, **overrides})


def crops(batch: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, 32, 32, generator=generator), torch.randn(batch, 3, 64, 64, generator=generator)


# ------------------------------------------------------------------------------ forward
def test_forward_shapes_and_ce_counts():
    model = tiny_tracker().eval()
    template, search = crops(batch=3)
    outputs = model(template, search)
    assert outputs["score_map"].shape == (3, 1, 8, 8)
    assert outputs["size_map"].shape == (3, 2, 8, 8)
    assert outputs["offset_map"].shape == (3, 2, 8, 8)
    assert outputs["pred_boxes"].shape == (3, 4)
    assert ((outputs["score_map"] > 0) & (outputs["score_map"] < 1)).all()
    # 64 search tokens: ceil(0.7 * 64) = 45, then ceil(0.7 * 45) = 32.
    assert outputs["kept_per_ce_block"] == [45, 32]
    assert outputs["kept_search_tokens"] == 32
    index = outputs["search_index"]
    assert index.shape == (3, 32)
    assert all(len(set(row.tolist())) == 32 for row in index) and 0 <= index.min() and index.max() < NUM_SEARCH

    assert model(template, search, ce_keep_ratio=0.5)["kept_per_ce_block"] == [32, 16]
    assert model(template, search, ce_keep_ratio=1.0)["kept_per_ce_block"] == [NUM_SEARCH, NUM_SEARCH]


def test_keep_ratio_one_equals_a_model_without_ce():
    with_ce = tiny_tracker().eval()
    without_ce = tiny_tracker(ce_locations=()).eval()
    without_ce.load_state_dict(with_ce.state_dict())
    template, search = crops()
    a = with_ce(template, search, ce_keep_ratio=1.0)
    b = without_ce(template, search)
    for key in ("score_map", "size_map", "offset_map", "pred_boxes"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert a["kept_search_tokens"] == b["kept_search_tokens"] == NUM_SEARCH
    # ...and elimination does change the result.
    assert not torch.equal(with_ce(template, search)["score_map"], a["score_map"])


def test_ce_keeps_the_tokens_the_template_centre_attends_to_most():
    model = tiny_tracker(ce_locations=(0,)).eval()
    template, search = crops(batch=2)
    tokens = model.embed(template, search)
    block = model.blocks[0]
    # Explicit attention of the template's centre token (cell (1, 1) of the 4x4 grid = position 5).
    attn = block.attn
    qkv = attn.qkv(block.norm1(tokens)).reshape(2, -1, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, _ = qkv.unbind(0)
    probabilities = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # [B, heads, L, L]
    relevance = probabilities[:, :, 5, model.num_template :].mean(dim=1)  # [B, Nx]
    _, kept = block.forward_eliminating(tokens, model.num_template, model.template_probe_index, 45)
    for row in range(2):
        expected = set(relevance[row].topk(45).indices.tolist())
        assert set(kept[row].tolist()) == expected


@pytest.mark.parametrize(
    ("template_size", "template_range", "expected"),
    [(64, "ctr_point", [27]), (96, "ctr_point", [65]), (64, "ctr_rec", [27, 28, 35, 36]), (32, "all", list(range(16)))],
)
def test_template_probe_tokens(template_size, template_range, expected):
    # OSTrack's CTR_POINT: cell (3, 3) of an 8x8 grid, (5, 5) of 12x12; CTR_REC: the centre 2x2.
    model = DropTrack(**{**TINY, "template_size": template_size, "ce_template_range": template_range})
    assert model.template_probe_index.tolist() == expected


def test_restore_puts_kept_tokens_back_at_their_positions():
    model = tiny_tracker().eval()
    template, search = crops(batch=3)
    backbone = model.forward_backbone(template, search)
    kept, index = backbone.search_tokens, backbone.search_index
    full = model.restore_search_tokens(kept, index)
    assert full.shape == (3, NUM_SEARCH, model.embed_dim)
    gathered = full.gather(1, index[..., None].expand(-1, -1, model.embed_dim))
    assert torch.equal(gathered, kept)
    eliminated = torch.ones(3, NUM_SEARCH, dtype=torch.bool)
    eliminated[torch.arange(3)[:, None], index] = False
    assert eliminated.sum() == 3 * (NUM_SEARCH - 32)
    assert (full[eliminated] == 0).all() and (full[~eliminated] != 0).any(dim=-1).all()


def test_bad_sizes_and_inputs_are_named():
    with pytest.raises(ValueError, match="template_size = 30 must be a positive multiple of patch_size = 8"):
        DropTrack(**{**TINY, "template_size": 30})
    with pytest.raises(ValueError, match="ce_locations"):
        DropTrack(**{**TINY, "ce_locations": (4,)})
    model = tiny_tracker()
    template, search = crops()
    with pytest.raises(ValueError, match=r"search must be \[B, 3, 64, 64\], got \(2, 3, 48, 48\)"):
        model(template, search[:, :, :48, :48])
    with pytest.raises(ValueError, match="template batch 1 != search batch 2"):
        model(template[:1], search)
    with pytest.raises(ValueError, match="ce_keep_ratio"):
        model(template, search, ce_keep_ratio=0.0)


# -------------------------------------------------------------------------- box decoding
def test_decode_boxes_reads_offset_and_size_at_the_argmax():
    score = torch.zeros(2, 1, 8, 8)
    size = torch.rand(2, 2, 8, 8)
    offset = torch.rand(2, 2, 8, 8)
    score[0, 0, 2, 5] = 0.9  # row (y) 2, column (x) 5
    score[1, 0, 7, 0] = 0.8
    offset[0, :, 2, 5] = torch.tensor([0.25, 0.5])
    size[0, :, 2, 5] = torch.tensor([0.3, 0.4])
    offset[1, :, 7, 0] = torch.tensor([-0.5, 0.0])
    size[1, :, 7, 0] = torch.tensor([0.1, 0.2])
    boxes = decode_boxes(score, size, offset)
    expected = torch.tensor([[5.25 / 8, 2.5 / 8, 0.3, 0.4], [-0.5 / 8, 7 / 8, 0.1, 0.2]])
    torch.testing.assert_close(boxes, expected)


def test_window_changes_the_argmax():
    score = torch.full((1, 1, 8, 8), 0.1)
    score[0, 0, 0, 7] = 0.9  # strong response in a corner
    score[0, 0, 4, 3] = 0.6  # weaker one near the centre
    size = torch.zeros(1, 2, 8, 8)
    offset = torch.zeros(1, 2, 8, 8)
    hann = torch.hann_window(8, periodic=False)
    window = hann[:, None] * hann[None, :]
    assert decode_boxes(score, size, offset)[0, :2].tolist() == [7 / 8, 0.0]
    assert decode_boxes(score, size, offset, window=window)[0, :2].tolist() == [3 / 8, 4 / 8]
    with pytest.raises(ValueError, match="size_map"):
        decode_boxes(score, size[:, :1], offset)


# ------------------------------------------------------------------- checkpoint loading
@pytest.fixture()
def pretraining_checkpoint(tmp_path):
    """A real micro DropMAE (64 px, patch 8: an 8x8 position grid) saved like a finished run."""
    torch.manual_seed(3)
    mae = DropMAE(img_size=64, patch_size=8, encoder="micro", decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=4)
    state = {
        "model": mae.state_dict(),
        "config": {
            "model": {"encoder": "micro", "img_size": 64, "patch_size": 8, "decoder_dim": 64, "decoder_depth": 2, "decoder_heads": 4}
        },
        "run": {"method": "dropmae", "epochs": 1},
    }
    path = tmp_path / "model.pth"
    torch.save(state, path)
    return path, mae.state_dict()


def test_loading_copies_the_encoder_and_interpolates_positions(pretraining_checkpoint):
    path, pretrained = pretraining_checkpoint
    model = tiny_tracker()
    report = load_pretrained_encoder(model, torch.load(path, weights_only=True))
    loaded = model.state_dict()
    encoder_keys = [k for k in pretrained if k.startswith(("patch_embed.", "blocks.", "norm.")) or k == "frame_embed"]
    assert len(encoder_keys) > 40
    for key in encoder_keys:
        assert torch.equal(loaded[key], pretrained[key]), key
    decoder_keys = {k for k in pretrained if k.startswith("decoder_") or k == "mask_token"}
    assert set(report.dropped) == decoder_keys and decoder_keys
    assert report.missing == [] and report.unexpected == []
    assert report.fresh and all(k.startswith("box_head.") for k in report.fresh)
    assert set(report.loaded) == set(encoder_keys) | {"pos_embed_template", "pos_embed_search"}
    # The search grid (64 / 8) is the pretraining grid: interpolation is the identity there.
    assert torch.equal(loaded["pos_embed_search"], pretrained["pos_embed"])
    grid = pretrained["pos_embed"].reshape(1, 8, 8, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(4, 4), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(1, 16, -1)
    torch.testing.assert_close(loaded["pos_embed_template"], expected)
    assert report.pretrain_grid == 8 and report.interpolated_to == {"pos_embed_template": 4, "pos_embed_search": 8}
    # The loaded tracker runs.
    assert torch.isfinite(model(*crops())["pred_boxes"]).all()


def test_missing_encoder_key_is_named(pretraining_checkpoint):
    _, pretrained = pretraining_checkpoint
    state = dict(pretrained)
    del state["blocks.1.attn.qkv.weight"]
    with pytest.raises(CheckpointMismatchError, match=r"blocks\.1\.attn\.qkv\.weight"):
        load_pretrained_encoder(tiny_tracker(), state)
    model = tiny_tracker()
    report = load_pretrained_encoder(model, state, strict_encoder=False)
    assert report.missing == ["blocks.1.attn.qkv.weight"]
    assert torch.equal(model.state_dict()["blocks.1.attn.proj.weight"], pretrained["blocks.1.attn.proj.weight"])


def test_shape_mismatch_names_both_shapes(pretraining_checkpoint):
    path, _ = pretraining_checkpoint
    tiny = DropTrack(**{**TINY, "encoder": "tiny"})  # 192-wide: the micro checkpoint is 96-wide
    expected = r"patch_embed\.proj\.weight: checkpoint \[96, 3, 8, 8\] vs model \[192, 3, 8, 8\]"
    with pytest.raises(CheckpointMismatchError, match=expected):
        load_pretrained_encoder(tiny, torch.load(path, weights_only=True), source=str(path))


def test_unexpected_key_is_reported(pretraining_checkpoint):
    _, pretrained = pretraining_checkpoint
    state = {"model": {**pretrained, "head.weight": torch.zeros(3)}}
    report = load_pretrained_encoder(tiny_tracker(), state)
    assert report.unexpected == ["head.weight"]


def test_build_from_the_checkpoint_config(pretraining_checkpoint):
    path, pretrained = pretraining_checkpoint
    state = torch.load(path, weights_only=True)
    model = from_pretraining_config(
        DropTrack, state, template_size=32, search_size=64, ce_locations=CE_LOCATIONS, head_channels=16
    )
    assert (model.encoder, model.patch_size, model.embed_dim) == ("micro", 8, 96)
    with pytest.raises(ValueError, match="encoder='base' contradicts"):
        from_pretraining_config(DropTrack, state["config"], template_size=32, search_size=64, encoder="base")
    with pytest.raises(ValueError, match="no config"):
        from_pretraining_config(DropTrack, {"model": pretrained}, template_size=32, search_size=64)
    model, report = droptrack_from_checkpoint(path, 32, 64, ce_locations=CE_LOCATIONS, head_channels=16)
    assert report.missing == [] and torch.equal(model.frame_embed, pretrained["frame_embed"])


# ------------------------------------------------------------------------------- losses
def test_heatmap_peaks_at_the_centre_cell():
    boxes = torch.tensor([[0.3, 0.6, 0.5, 0.5], [0.5, 0.5, 0.05, 0.05]])
    heatmap = gaussian_heatmap(boxes, 16)
    assert heatmap.shape == (2, 1, 16, 16)
    # Centre cell round(0.3 * 16) = 5 (x), round(0.6 * 16) = 10 (y); the only cell at 1.
    assert heatmap[0, 0, 10, 5] == 1 and (heatmap[0] == 1).sum() == 1
    # 8x8-cell box: CenterNet's radius 2.18 -> 2, sigma 5/6: a 5x5 support.
    support = heatmap[0, 0].nonzero()
    assert support[:, 0].tolist() == sorted(support[:, 0].tolist())
    assert (support.min(0).values.tolist(), support.max(0).values.tolist()) == ([8, 3], [12, 7])
    torch.testing.assert_close(heatmap[0, 0, 10, 6], torch.tensor(math.exp(-18 / 25)))
    # A box under one cell: radius 0, a single peak.
    assert heatmap[1, 0, 8, 8] == 1 and heatmap[1].count_nonzero() == 1


def test_focal_loss_prefers_the_right_map():
    target = gaussian_heatmap(torch.tensor([[0.3, 0.6, 0.4, 0.3], [0.7, 0.2, 0.2, 0.2]]), 16)
    right = target.clamp(0.01, 0.99)
    wrong = torch.roll(right, shifts=(5, 5), dims=(2, 3))
    assert focal_heatmap_loss(right, target) < 0.2 * focal_heatmap_loss(wrong, target)
    # Hard 0 / 1 predictions stay finite.
    assert torch.isfinite(focal_heatmap_loss(torch.roll(target, 3, 2), target))


def test_tracking_loss_is_zero_for_perfect_boxes():
    boxes = torch.tensor([[0.5, 0.5, 0.3, 0.2], [0.4, 0.6, 0.1, 0.3]])
    outputs = {"score_map": gaussian_heatmap(boxes, 8).clamp(1e-4, 1 - 1e-4), "pred_boxes": boxes.clone()}
    loss, stats = tracking_loss(outputs, boxes)
    assert stats["giou"] == pytest.approx(0.0, abs=1e-5) and stats["l1"] == 0.0
    assert stats["iou"] == pytest.approx(1.0)
    assert loss.item() == pytest.approx(stats["focal"], abs=1e-5)
    shifted = {**outputs, "pred_boxes": boxes + torch.tensor([0.1, 0.0, 0.0, 0.0])}
    _, worse = tracking_loss(shifted, boxes)
    assert worse["giou"] > 0.1 and worse["l1"] == pytest.approx(0.05) and worse["iou"] < 1
    with pytest.raises(ValueError, match="non-finite"):
        tracking_loss({**outputs, "pred_boxes": torch.full((2, 4), float("nan"))}, boxes)


def test_a_few_steps_on_one_batch_reduce_the_loss():
    model = tiny_tracker().train()
    template, search = crops(batch=4, seed=7)
    targets = torch.tensor([[0.5, 0.5, 0.3, 0.3], [0.3, 0.4, 0.2, 0.3], [0.6, 0.6, 0.4, 0.2], [0.5, 0.3, 0.2, 0.2]])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        loss, _ = tracking_loss(model(template, search), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses
