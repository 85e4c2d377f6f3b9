"""Reconstruction figure: original / masked / reconstructed for both frames of a few pairs."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from dropmae.config import config_from_dict  # noqa: E402
from dropmae.data.images import normalized_to_image  # noqa: E402
from dropmae.data.pairs import whole_frame_pairs  # noqa: E402
from dropmae.models.dropmae import DropMAE  # noqa: E402


@torch.no_grad()
def reconstruct_pairs(model: DropMAE, frames: torch.Tensor, seed: int = 0):
    """Pixels of (original, masked, reconstruction with visible patches kept), each [B, 2, 3, H, W]."""
    torch.manual_seed(seed)
    _, pred, mask = model(frames)
    if model.norm_pix_loss:  # undo the per-patch normalisation of the targets
        target = model.patchify(frames)
        mean = target.mean(dim=-1, keepdim=True)
        std = (target.var(dim=-1, keepdim=True) + 1e-6).sqrt()
        pred = pred * std + mean
    patch_mask = mask[..., None].expand(-1, -1, pred.shape[-1])
    visible = model.patchify(frames)
    reconstruction = model.unpatchify(torch.where(patch_mask.bool(), pred, visible))
    masked = model.unpatchify(visible * (1 - patch_mask))
    return frames, masked, reconstruction


def save_reconstruction_grid(
    model: DropMAE,
    state: dict,
    frames_root: str | Path,
    output_png: str | Path,
    num_pairs: int = 4,
    split: str = "val",
    seed: int = 0,
    checkpoint_name: str = "",
) -> Path:
    """Write a PNG grid: one row per frame of each held-out pair, columns original / masked / reconstruction.

    ``model`` (in eval mode) and its checkpoint ``state`` (config, run, epoch) come from
    :func:`dropmae.engine.pretrain.load_pretrained`; ``checkpoint_name`` (the file's name) goes
    into the title.
    """
    config = config_from_dict(state["config"])
    dataset = whole_frame_pairs(frames_root, config.model.img_size, config.pretrain.frame_gap, split=split, seed=seed)
    count = min(num_pairs, len(dataset))
    frames = torch.stack([dataset[i] for i in range(count)])
    original, masked, reconstruction = reconstruct_pairs(model, frames, seed=seed)

    columns = ("original", "masked", "reconstruction")
    figure, axes = plt.subplots(2 * count, 3, figsize=(3 * 2.2, 2 * count * 2.2), squeeze=False)
    for pair in range(count):
        for frame in range(2):
            row = 2 * pair + frame
            for col, images in enumerate((original, masked, reconstruction)):
                axis = axes[row, col]
                axis.imshow(normalized_to_image(images[pair, frame]).numpy())
                axis.set_xticks([]), axis.set_yticks([])
                if row == 0:
                    axis.set_title(columns[col], fontsize=9)
                if col == 0:
                    axis.set_ylabel(f"pair {pair + 1} frame {frame + 1}", fontsize=8)
    run = state["run"]
    source = f" ({checkpoint_name})" if checkpoint_name else ""
    figure.suptitle(f"{run['method']} epoch {state['epoch']}{source}", fontsize=9)
    figure.tight_layout()
    output_png = Path(output_png)
    output_png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output_png, dpi=100)
    plt.close(figure)
    return output_png
