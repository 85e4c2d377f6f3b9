"""DropSeg model, soft aggregation, checkpoint loading and the bootstrapped loss (tiny, CPU)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dropmae.models.dropmae import DropMAE
from dropmae.models.encoder import CheckpointMismatchError, from_pretraining_config, load_pretrained_encoder
from dropmae.segmentation.losses import bootstrap_fraction, bootstrapped_cross_entropy
from dropmae.segmentation.model import DropSeg, dropseg_from_checkpoint, soft_aggregate

TINY = {"encoder": "micro", "patch_size": 8, "image_size": 32, "decoder_channels": 16, "drop_path_rate": 0.0}


def tiny_segmenter(**overrides) -> DropSeg:
    torch.manual_seed(0)
    return DropSeg(**{**TINY, **overrides})


def frames(batch: int = 2, size: tuple[int, int] = (32, 32), seed: int = 1):
    """(reference_rgb, reference_mask, query_rgb): random images and a 0/1 box mask."""
    generator = torch.Generator().manual_seed(seed)
    reference = torch.randn(batch, 3, *size, generator=generator)
    query = torch.randn(batch, 3, *size, generator=generator)
    mask = torch.zeros(batch, 1, *size)
    mask[..., size[0] // 4 : size[0] // 2, size[1] // 3 :] = 1
    return reference, mask, query


# ------------------------------------------------------------------------------ forward
@pytest.mark.parametrize(("patch_size", "image_size", "stages"), [(8, 32, 1), (16, 64, 2), (4, 32, 0)])
def test_forward_shapes(patch_size, image_size, stages):
    model = tiny_segmenter(patch_size=patch_size, image_size=image_size).eval()
    logits = model(*frames(batch=3, size=(image_size, image_size)))
    assert logits.shape == (3, 1, image_size, image_size) and torch.isfinite(logits).all()
    upsamplings = [m for m in model.mask_decoder.stages if isinstance(m, torch.nn.Upsample)]
    assert len(upsamplings) == stages  # 1/patch -> 1/4 in 2x steps


def test_patch_size_must_reach_stride_four():
    for bad in (12, 6, 2):
        with pytest.raises(ValueError, match=f"4 times a power of two.*got {bad}"):
            DropSeg(**{**TINY, "patch_size": bad, "image_size": 48})
    with pytest.raises(ValueError, match="image_size = 36 must be a positive multiple of patch_size = 8"):
        DropSeg(**{**TINY, "image_size": 36})


def test_inference_at_another_size_interpolates_and_caches_the_position_table():
    model = tiny_segmenter().eval()
    reference, mask, query = frames(batch=2, size=(48, 64))  # 6x8 grid, training grid is 4x4
    with torch.no_grad():
        logits = model(reference, mask, query)
        assert logits.shape == (2, 1, 48, 64) and torch.isfinite(logits).all()
        table = model.position_table(6, 8)
        assert table is model.position_table(6, 8)  # cached
        grid = model.pos_embed.reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
        expected = F.interpolate(grid, size=(6, 8), mode="bicubic", align_corners=False)
        torch.testing.assert_close(table, expected.permute(0, 2, 3, 1).reshape(1, 48, -1))
        model.pos_embed.add_(1.0)  # a changed table (optimiser step, load) invalidates the cache
        assert not torch.equal(model.position_table(6, 8), table)
    # Training at another size keeps the gradient to pos_embed.
    model.train()
    model(reference, mask, query).sum().backward()
    assert model.pos_embed.grad is not None and model.pos_embed.grad.abs().sum() > 0


def test_fresh_mask_embedding_leaves_the_pretrained_tokens():
    model = tiny_segmenter().eval()
    reference, mask, query = frames()
    tokens = model.embed(reference, mask, query)
    expected_reference = model.patch_embed(reference) + model.pos_embed + model.frame_embed[0]
    expected_query = model.patch_embed(query) + model.pos_embed + model.frame_embed[1]
    torch.testing.assert_close(tokens, torch.cat((expected_reference, expected_query), dim=1))
    # ...and once trained, the mask does change the reference tokens.
    torch.nn.init.normal_(model.mask_embed.proj.weight)
    assert not torch.allclose(model.embed(reference, mask, query)[:, :16], expected_reference)


def test_bad_inputs_are_named():
    model = tiny_segmenter()
    reference, mask, query = frames()
    with pytest.raises(ValueError, match="frame size 30x32 must be positive multiples of patch_size = 8"):
        model(reference[:, :, :30], mask[:, :, :30], query[:, :, :30])
    with pytest.raises(ValueError, match=r"reference_mask must be \[B, 1, H, W\]"):
        model(reference, mask[:, 0], query)
    with pytest.raises(ValueError, match="query_rgb"):
        model(reference, mask, query[:1])
    with pytest.raises(ValueError, match="object_ids must be distinct non-zero"):
        model.segment(reference[0], mask[0, 0].long(), [1, 1], query[0])


# ---------------------------------------------------------------------- multiple objects
def test_soft_aggregate_matches_a_hand_computation():
    probs = torch.tensor([[0.6, 0.0], [0.3, 1.0]])  # 2 objects, 2 pixels
    aggregated = soft_aggregate(probs)
    assert aggregated.shape == (3, 2)
    torch.testing.assert_close(aggregated.sum(0), torch.ones(2))
    # Pixel 0: background 0.4 * 0.7 = 0.28; softmax of log-odds = odds / sum of odds.
    odds = torch.tensor([0.28 / 0.72, 0.6 / 0.4, 0.3 / 0.7])
    torch.testing.assert_close(aggregated[:, 0], odds / odds.sum())
    # Pixel 1: certain object 2 (clamped to 1 - 1e-7), so nearly all mass goes there.
    assert aggregated[2, 1] > 0.999
    random = torch.rand(4, 5, 6, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(soft_aggregate(random).sum(0), torch.ones(5, 6))


def test_segment_batches_objects_and_aggregates():
    model = tiny_segmenter().eval()
    reference, _, query = frames(batch=1)
    labels = torch.zeros(32, 32, dtype=torch.long)
    labels[4:12, 4:20] = 3
    labels[20:30, 10:30] = 7
    probabilities = model.segment(reference[0], labels, [7, 3], query[0])
    assert probabilities.shape == (3, 32, 32)
    torch.testing.assert_close(probabilities.sum(0), torch.ones(32, 32))
    # Same as one forward per object, aggregated by hand (objects do not interact).
    with torch.no_grad():
        per_object = [model(reference, (labels == i).float()[None, None], query)[0, 0].sigmoid() for i in (7, 3)]
    torch.testing.assert_close(probabilities, soft_aggregate(torch.stack(per_object)), rtol=1e-5, atol=1e-6)
    assert torch.equal(model.segment(reference[0], labels, [], query[0]), torch.ones(1, 32, 32))


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
    model, report = dropseg_from_checkpoint(path, image_size=32, decoder_channels=16)
    loaded = model.state_dict()
    encoder_keys = [k for k in pretrained if k.startswith(("patch_embed.", "blocks.", "norm.")) or k == "frame_embed"]
    assert len(encoder_keys) > 40
    for key in encoder_keys:
        assert torch.equal(loaded[key], pretrained[key]), key
    decoder_keys = {k for k in pretrained if k.startswith("decoder_") or k == "mask_token"}
    assert set(report.dropped) == decoder_keys and decoder_keys
    assert report.missing == [] and report.unexpected == []
    assert set(report.fresh) == {k for k in loaded if k.startswith(("mask_embed.", "mask_decoder."))}
    assert {"mask_embed.proj.weight", "mask_decoder.predictor.weight"} <= set(report.fresh)
    assert set(report.loaded) == set(encoder_keys) | {"pos_embed"}
    grid = pretrained["pos_embed"].reshape(1, 8, 8, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(4, 4), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(1, 16, -1)
    torch.testing.assert_close(loaded["pos_embed"], expected)
    assert report.pretrain_grid == 8 and report.interpolated_to == {"pos_embed": 4}
    assert (loaded["mask_embed.proj.weight"] == 0).all()
    # At the pretraining size the table is the pretraining one.
    same_size, _ = dropseg_from_checkpoint(path, image_size=64, decoder_channels=16)
    assert torch.equal(same_size.pos_embed, pretrained["pos_embed"])
    assert torch.isfinite(model(*frames())).all()


def test_missing_encoder_key_is_named(pretraining_checkpoint):
    path, pretrained = pretraining_checkpoint
    state = torch.load(path, weights_only=True)
    del state["model"]["blocks.2.mlp.fc1.bias"]
    with pytest.raises(CheckpointMismatchError, match=r"blocks\.2\.mlp\.fc1\.bias"):
        dropseg_from_checkpoint(state, image_size=32)
    model = tiny_segmenter()
    report = load_pretrained_encoder(model, state, strict_encoder=False)
    assert report.missing == ["blocks.2.mlp.fc1.bias"]
    assert torch.equal(model.blocks[2].mlp.fc1.weight, pretrained["blocks.2.mlp.fc1.weight"])


def test_shape_mismatch_names_the_key(pretraining_checkpoint):
    path, _ = pretraining_checkpoint
    wider = DropSeg(**{**TINY, "encoder": "tiny"})  # 192-wide: the micro checkpoint is 96-wide
    expected = r"patch_embed\.proj\.weight: checkpoint \[96, 3, 8, 8\] vs model \[192, 3, 8, 8\]"
    with pytest.raises(CheckpointMismatchError, match=expected):
        load_pretrained_encoder(wider, torch.load(path, weights_only=True), source=str(path))


def test_build_from_the_checkpoint_config(pretraining_checkpoint):
    path, _ = pretraining_checkpoint
    state = torch.load(path, weights_only=True)
    model = from_pretraining_config(DropSeg, state, image_size=64, decoder_channels=8)
    assert (model.encoder, model.patch_size, model.grid) == ("micro", 8, 8)
    with pytest.raises(ValueError, match="patch_size=16 contradicts"):
        from_pretraining_config(DropSeg, state["config"], image_size=64, patch_size=16)


def test_parameter_groups_split_fresh_and_pretrained():
    model = tiny_segmenter()
    fresh, backbone = model.parameter_groups(backbone_lr_scale=0.1)
    assert (fresh["lr_scale"], backbone["lr_scale"]) == (1.0, 0.1)
    named = dict(model.named_parameters())
    fresh_ids = {id(p) for p in fresh["params"]}
    assert fresh_ids == {id(p) for n, p in named.items() if n.startswith(("mask_embed.", "mask_decoder."))}
    assert len(fresh["params"]) + len(backbone["params"]) == len(named)
    assert id(model.pos_embed) in {id(p) for p in backbone["params"]}


# ------------------------------------------------------------------------------- losses
def test_full_fraction_is_the_plain_binary_cross_entropy():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 1, 8, 8, generator=generator)
    target = (torch.rand(3, 1, 8, 8, generator=generator) > 0.5).float()
    expected = F.binary_cross_entropy_with_logits(logits, target)
    torch.testing.assert_close(bootstrapped_cross_entropy(logits, target, 1.0), expected)
    torch.testing.assert_close(bootstrapped_cross_entropy(logits, target[:, 0].bool(), 1.0), expected)


def test_bootstrapping_keeps_the_hardest_pixels_of_each_image():
    # Image 0: losses known by construction; image 1: all zero-logit pixels (loss log 2 each).
    logits = torch.zeros(2, 1, 2, 5)
    logits[0, 0] = torch.tensor([[-4.0, -3.0, -2.0, -1.0, 0.0], [1.0, 2.0, 3.0, 4.0, 5.0]])
    target = torch.ones(2, 1, 2, 5)
    per_pixel = F.softplus(-logits).flatten(1)  # BCE with target 1 = log(1 + exp(-x))
    # 10 pixels, 0.3 -> int(3.0) = 3 hardest per image: logits -4, -3, -2 in image 0.
    hardest = torch.cat((per_pixel[0, :3], per_pixel[1, :3]))
    torch.testing.assert_close(bootstrapped_cross_entropy(logits, target, 0.3), hardest.mean())
    assert hardest[:3].tolist() == sorted(per_pixel[0].tolist(), reverse=True)[:3]
    # Per image, not over the batch: the batch's 6 largest would all come from image 0.
    assert bootstrapped_cross_entropy(logits, target, 0.3) < per_pixel.flatten().topk(6).values.mean()
    # A tiny fraction still keeps one pixel.
    torch.testing.assert_close(
        bootstrapped_cross_entropy(logits, target, 0.01), torch.stack((per_pixel[0, 0], per_pixel[1, 0])).mean()
    )


def test_multi_class_bootstrapped_cross_entropy():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 4, 4, generator=generator)
    target = torch.randint(0, 3, (2, 4, 4), generator=generator)
    torch.testing.assert_close(bootstrapped_cross_entropy(logits, target, 1.0), F.cross_entropy(logits, target))
    per_pixel = F.cross_entropy(logits, target, reduction="none").flatten(1)
    expected = per_pixel.sort(dim=1, descending=True).values[:, :4].mean()  # int(16 * 0.25) = 4
    torch.testing.assert_close(bootstrapped_cross_entropy(logits, target, 0.25), expected)
    with pytest.raises(ValueError, match="integer class indices"):
        bootstrapped_cross_entropy(logits, target.float(), 0.5)
    with pytest.raises(ValueError, match="top_fraction"):
        bootstrapped_cross_entropy(logits, target, 0.0)


def test_bootstrap_schedule_boundaries():
    assert bootstrap_fraction(0, 100, 300) == 1.0
    assert bootstrap_fraction(99, 100, 300) == 1.0
    assert bootstrap_fraction(100, 100, 300) == 1.0
    assert bootstrap_fraction(200, 100, 300) == pytest.approx(0.15 + 0.85 / 2)
    assert bootstrap_fraction(300, 100, 300) == pytest.approx(0.15)
    assert bootstrap_fraction(10_000, 100, 300, final=0.3) == 0.3
    # STCN's defaults: 20k -> 70k iterations.
    assert bootstrap_fraction(45_000) == pytest.approx(0.575)
    assert bootstrap_fraction(5, 5, 5) == 0.15 and bootstrap_fraction(4, 5, 5) == 1.0
    assert math.isclose(bootstrap_fraction(150, 100, 300), 0.15 + 0.85 * 0.75)
    with pytest.raises(ValueError, match="warm_start <= warm_end"):
        bootstrap_fraction(0, 300, 100)
