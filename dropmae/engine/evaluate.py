"""Held-out reconstruction loss of a pretrained model."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from dropmae.models.dropmae import DropMAE


@torch.no_grad()
def heldout_reconstruction_loss(model: DropMAE, dataset: Dataset, batch_size: int = 8, seed: int = 0,
                                device: str | torch.device = "cpu") -> float:
    """Mean masked-patch loss over ``dataset`` in eval mode (no ASAD), with masks drawn from
    ``seed`` so that two models are scored on the same pairs and the same masks."""
    if len(dataset) == 0:
        raise ValueError("no held-out pairs to evaluate")
    model = model.eval().to(device)
    generator_state = torch.get_rng_state()
    torch.manual_seed(seed)
    total, count = 0.0, 0
    try:
        for frames in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            loss, _, _ = model(frames.to(device))
            total += loss.item() * frames.shape[0]
            count += frames.shape[0]
    finally:
        torch.set_rng_state(generator_state)
    return total / count
