"""Decoder attention analysis: within-frame vs between-frame attention and temporal matching maps.

Reproduces the paper's figure of the average within-frame and between-frame attention per
decoder layer (TwinMAE vs DropMAE; ASAD should raise the between-frame share) and the
temporal matching probability f_tem(i) = max_j A[i, j] over keys j of the *other* frame.
Token layout of the decoder: L = 2N tokens, the N tokens of frame 1 first, then frame 2,
each frame row-major on its patch grid.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from dropmae.config import config_from_dict  # noqa: E402
from dropmae.data.images import normalized_to_image  # noqa: E402
from dropmae.data.pairs import FramePairDataset, whole_frame_pairs  # noqa: E402
from dropmae.models.dropmae import DropMAE  # noqa: E402
from dropmae.engine.pretrain import load_pretrained  # noqa: E402

DISPLAY_NAMES = {"twinmae": "TwinMAE", "dropmae": "DropMAE"}
SHARE_COLUMNS = ("layer", "within_frame", "between_frame")


def display_name(method: str) -> str:
    return DISPLAY_NAMES.get(method, method)


# ----------------------------------------------------------------- pure functions
def _check_pair_attention(attention: torch.Tensor, tokens_per_frame: int) -> None:
    length = 2 * tokens_per_frame
    if attention.dim() != 4 or attention.shape[-2:] != (length, length):
        raise ValueError(
            f"expected attention [B, H, {length}, {length}] for {tokens_per_frame} tokens per frame, "
            f"got {tuple(attention.shape)}"
        )


def attention_shares(attention: torch.Tensor, tokens_per_frame: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention mass on the query's own frame and on the other frame, per pair.

    attention [B, H, 2N, 2N] (softmax rows) -> (within [B], between [B]), each the mean over
    heads and all 2N query positions; within + between = 1 for softmax rows.
    """
    _check_pair_attention(attention, tokens_per_frame)
    n = tokens_per_frame
    mass_on_first = attention[..., :n].sum(dim=-1)  # [B, H, 2N]
    mass_on_second = attention[..., n:].sum(dim=-1)
    within = torch.cat((mass_on_first[..., :n], mass_on_second[..., n:]), dim=-1)
    between = torch.cat((mass_on_second[..., :n], mass_on_first[..., n:]), dim=-1)
    return within.mean(dim=(1, 2)), between.mean(dim=(1, 2))


def temporal_matching_probability(attention: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
    """f_tem of every query: attention [B, H, 2N, 2N] -> [B, 2, N], the largest attention a query
    gives to one key of the other frame, averaged over heads (index 1 = frame of the query)."""
    _check_pair_attention(attention, tokens_per_frame)
    n = tokens_per_frame
    first_to_second = attention[..., :n, n:].amax(dim=-1)  # [B, H, N]
    second_to_first = attention[..., n:, :n].amax(dim=-1)
    return torch.stack((first_to_second, second_to_first), dim=2).mean(dim=1)


# ------------------------------------------------------------ running the model
@contextmanager
def collect_decoder_attention(model: DropMAE) -> Iterator[list[list[torch.Tensor]]]:
    """Collect decoder attention: yields one list per decoder layer (layer 1 first); each forward
    appends that layer's softmax attention [B, H, 2N, 2N]. The sinks are removed on exit."""
    attention_layers = [block.attn for block in model.decoder_blocks]
    sinks: list[list[torch.Tensor]] = []
    try:
        for layer in attention_layers:
            layer.attention_sink = []
            sinks.append(layer.attention_sink)
        yield sinks
    finally:
        for layer in attention_layers:
            layer.attention_sink = None


@contextmanager
def _seeded_inference(model: DropMAE, seed: int, device: torch.device) -> Iterator[None]:
    """Eval mode, no gradients and the global RNG (which draws the masks) seeded from ``seed``;
    the caller's RNG state and the model's training flag are restored afterwards."""
    was_training = model.training
    cuda_devices = list(range(torch.cuda.device_count())) if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda_devices, device_type="cuda"), torch.no_grad():
            torch.manual_seed(seed)
            model.eval()
            yield
    finally:
        model.train(was_training)


def _single_forward_attention(sink: list[torch.Tensor]) -> torch.Tensor:
    (attention,) = sink  # exactly one forward per batch
    sink.clear()
    return attention


def decoder_attention_shares(
    model: DropMAE,
    dataset: Sequence[torch.Tensor],
    num_pairs: int,
    batch_size: int = 8,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> pd.DataFrame:
    """Mean within-frame and between-frame attention of each decoder layer over the first
    ``num_pairs`` pairs (items [2, 3, H, W]) of ``dataset``, averaged over heads and all query
    positions (visible and mask tokens). Masks are drawn from ``seed``, so two models are
    compared on the same pairs and the same masks.

    Returns one row per decoder layer: layer (1-based), within_frame, between_frame, pairs.
    """
    if len(dataset) == 0:
        raise ValueError("the dataset is empty: no frame pairs to measure attention on")
    if num_pairs < 1 or batch_size < 1:
        raise ValueError(f"num_pairs and batch_size must be >= 1, got {num_pairs} and {batch_size}")
    device = torch.device(device)
    model.to(device)
    count = min(num_pairs, len(dataset))
    depth = len(model.decoder_blocks)
    within_sum = torch.zeros(depth, dtype=torch.float64)
    between_sum = torch.zeros(depth, dtype=torch.float64)
    with _seeded_inference(model, seed, device), collect_decoder_attention(model) as sinks:
        for start in range(0, count, batch_size):
            frames = torch.stack([dataset[i] for i in range(start, min(start + batch_size, count))])
            model(frames.to(device))
            for layer, sink in enumerate(sinks):
                within, between = attention_shares(_single_forward_attention(sink), model.tokens_per_frame)
                within_sum[layer] += within.sum().item()
                between_sum[layer] += between.sum().item()
    return pd.DataFrame(
        {
            "layer": np.arange(1, depth + 1),
            "within_frame": (within_sum / count).numpy(),
            "between_frame": (between_sum / count).numpy(),
            "pairs": count,
        }
    )


def temporal_matching_maps(model: DropMAE, frames: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """f_tem of every token: frames [B, 2, 3, H, W] -> [B, layers, 2, gh, gw] on the patch grid of
    each frame (mean over heads), on the model's device; masks drawn from ``seed``."""
    device = next(model.parameters()).device
    with _seeded_inference(model, seed, device), collect_decoder_attention(model) as sinks:
        model(frames.to(device))
    maps = torch.stack(
        [temporal_matching_probability(_single_forward_attention(sink), model.tokens_per_frame) for sink in sinks],
        dim=1,
    )  # [B, layers, 2, N]
    return maps.unflatten(-1, tuple(model.grid_size))


# ----------------------------------------------------------------- checkpoints
def analysis_pairs(state: dict, frames_root: str | Path, split: str | None, seed: int) -> FramePairDataset:
    """Pairs of ``split`` for a checkpoint ``state``: whole frames, unflipped, at its input size."""
    config = config_from_dict(state["config"])
    return whole_frame_pairs(frames_root, config.model.img_size, config.pretrain.frame_gap, split=split, seed=seed)


def attention_shares_for_checkpoint(
    checkpoint_path: str | Path,
    frames_root: str | Path,
    num_pairs: int,
    batch_size: int,
    seed: int,
    split: str | None = "val",
    device: str | torch.device = "cpu",
) -> pd.DataFrame:
    """decoder_attention_shares of a pretraining checkpoint on the pairs of ``split`` (see
    analysis_pairs), with the columns method and epoch (from the checkpoint) in front."""
    model, state = load_pretrained(checkpoint_path)
    dataset = analysis_pairs(state, frames_root, split, seed)
    shares = decoder_attention_shares(model, dataset, num_pairs, batch_size=batch_size, seed=seed, device=device)
    shares.insert(0, "epoch", state["epoch"])
    shares.insert(0, "method", state["run"]["method"])
    return shares


# --------------------------------------------------------------------- figures
def _save(figure: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def save_attention_bars(shares: pd.DataFrame, path: str | Path) -> Path:
    """PNG bar chart like the paper's figure: per decoder layer, within-frame and between-frame
    bars for each method. ``shares`` needs columns method, layer, within_frame, between_frame."""
    missing = [c for c in ("method", *SHARE_COLUMNS) if c not in shares.columns]
    if missing:
        raise ValueError(f"attention shares lack the column(s) {missing}")
    if shares.empty:
        raise ValueError("no attention shares to plot")
    methods = list(dict.fromkeys(shares["method"]))  # order of first appearance
    layers = np.sort(shares["layer"].unique())
    bar_width = 0.8 / (2 * len(methods))
    colours = plt.get_cmap("tab20").colors  # pairs of dark/light shades: one pair per method

    figure, axis = plt.subplots(figsize=(max(5.0, 1.2 * len(layers) + 1.5), 4.0), layout="constrained")
    for m, method in enumerate(methods):
        rows = shares[shares["method"] == method].set_index("layer").reindex(layers)
        for k, (column, label) in enumerate((("within_frame", "within-frame"), ("between_frame", "between-frame"))):
            offset = (2 * m + k - (2 * len(methods) - 1) / 2) * bar_width
            axis.bar(
                np.arange(len(layers)) + offset,
                rows[column].to_numpy(),
                width=bar_width,
                color=colours[(2 * m + k) % len(colours)],
                hatch="//" if k else None,
                edgecolor="white" if k else None,
                label=f"{display_name(method)}: {label}",
            )
    axis.set_xticks(np.arange(len(layers)), [str(layer) for layer in layers])
    axis.set_xlabel("decoder layer")
    axis.set_ylabel("average attention (share of the query's mass)")
    axis.set_ylim(0, 1)
    axis.grid(axis="y", alpha=0.3)
    axis.set_axisbelow(True)
    pairs = f" over {int(shares['pairs'].max())} pairs" if "pairs" in shares.columns else ""
    axis.set_title(f"Within-frame and between-frame decoder attention{pairs}", fontsize=10)
    figure.legend(loc="outside lower center", ncol=len(methods), fontsize=8)
    return _save(figure, path)


def save_temporal_matching_heatmap(
    model: DropMAE,
    state: dict,
    frames_root: str | Path,
    path: str | Path,
    num_pairs: int = 2,
    split: str | None = "val",
    seed: int = 0,
) -> Path:
    """PNG, one row per held-out pair: frame 1, frame 2, then each frame with its f_tem map
    (mean over decoder layers, upsampled to the image) overlaid on one shared colour scale.
    ``model`` and its checkpoint ``state`` come from :func:`dropmae.engine.pretrain.load_pretrained`."""
    dataset = analysis_pairs(state, frames_root, split, seed)
    count = min(num_pairs, len(dataset))
    frames = torch.stack([dataset[i] for i in range(count)])
    maps = temporal_matching_maps(model, frames, seed=seed).mean(dim=1).cpu()  # [B, 2, gh, gw]
    maps = F.interpolate(maps, size=frames.shape[-2:], mode="bilinear", align_corners=False)
    upper = float(maps.max())

    figure, axes = plt.subplots(count, 4, figsize=(4 * 2.6, count * 2.4 + 0.5), squeeze=False, layout="constrained")
    for pair in range(count):
        images = [normalized_to_image(frames[pair, frame]).numpy() for frame in range(2)]
        for frame in range(2):
            axes[pair, frame].imshow(images[frame])
            overlay_axis = axes[pair, 2 + frame]
            overlay_axis.imshow(images[frame])
            heat = overlay_axis.imshow(maps[pair, frame].numpy(), cmap="inferno", alpha=0.6, vmin=0.0, vmax=upper)
            figure.colorbar(heat, ax=overlay_axis, fraction=0.046, pad=0.02)
        titles = ("frame 1", "frame 2", "frame 1: f_tem", "frame 2: f_tem")
        for col, axis in enumerate(axes[pair]):
            axis.set_xticks([]), axis.set_yticks([])
            if pair == 0:
                axis.set_title(titles[col], fontsize=9)
        axes[pair, 0].set_ylabel(f"pair {pair + 1}", fontsize=8)
    method = display_name(state["run"]["method"])
    figure.suptitle(
        f"{method} epoch {state['epoch']}: temporal matching probability (mean over decoder layers)", fontsize=9
    )
    return _save(figure, path)
