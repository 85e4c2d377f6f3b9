"""The shared ViT encoder: one builder for the three models, and the position-table resampler."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed

from dropmae.models.dropmae import DropMAE
from dropmae.models.encoder import CheckpointMismatchError, encoder_spec, resample_position_table
from dropmae.segmentation.model import DropSeg
from dropmae.tracking.model import DropTrack


def bicubic_formula(table: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """What the tracker and the segmenter computed before they shared timm's resampler."""
    side, dim = int(table.shape[1] ** 0.5), table.shape[2]
    grid = table.float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(rows, cols), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, rows * cols, dim).to(table.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("rows", "cols"), [(8, 8), (4, 4), (12, 12), (3, 5), (16, 6)])
def test_resampling_is_the_bicubic_formula_bit_for_bit(dtype, rows, cols):
    table = torch.randn(1, 64, 24, generator=torch.Generator().manual_seed(rows * cols)).to(dtype).requires_grad_()
    ours, formula = resample_position_table(table, rows, cols), bicubic_formula(table, rows, cols)
    assert ours.dtype == dtype and torch.equal(ours, formula)
    (ours_grad,) = torch.autograd.grad(ours.float().square().sum(), table)
    (formula_grad,) = torch.autograd.grad(formula.float().square().sum(), table)
    assert torch.equal(ours_grad, formula_grad)
    assert torch.equal(resample_position_table(table, rows), bicubic_formula(table, rows, rows))


def test_timms_default_antialiasing_would_change_the_numbers():
    table = torch.randn(1, 64, 24, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(resample_abs_pos_embed(table, [4, 4], num_prefix_tokens=0), bicubic_formula(table, 4, 4))


def test_a_table_that_is_not_a_square_grid_is_named():
    with pytest.raises(CheckpointMismatchError, match=r"pos_embed \(1, 10, 8\) is not a square grid"):
        resample_position_table(torch.zeros(1, 10, 8), 4)


def test_the_three_models_build_the_same_encoder():
    torch.manual_seed(0)
    mae = DropMAE(img_size=32, patch_size=8, encoder="micro", decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
    track = DropTrack("micro", patch_size=8, template_size=16, search_size=32, ce_locations=(1,), head_channels=8)
    seg = DropSeg("micro", patch_size=8, image_size=32, decoder_channels=8)
    encoder = {k: v.shape for k, v in mae.encoder_state_dict().items() if k != "pos_embed"}
    for model in (track, seg):
        state = model.state_dict()
        assert {k: state[k].shape for k in encoder} == encoder
        assert all(block.norm1.eps == 1e-6 and block.attn.qkv.bias is not None for block in model.blocks)
    with pytest.raises(ValueError, match="unknown encoder 'huge'"):
        encoder_spec("huge")
