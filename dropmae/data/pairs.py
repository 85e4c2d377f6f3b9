"""Frame-pair datasets for DropMAE pretraining: one random pair per video per epoch.

Reproducibility: the randomness of an item (frame indices and augmentation) is a
pure function of ``(seed, epoch, index)``, so an item is the same whichever
DataLoader worker loads it and however many items were loaded before; resuming
training at an epoch replays exactly the same pairs. ``__getitem__`` never touches
the caller's global RNGs.

With DataLoader workers, call ``set_epoch`` before iterating each epoch and do not
use ``persistent_workers=True``: persistent workers keep the dataset copy (and its
epoch) they were started with.
"""

from __future__ import annotations

import contextlib
import io
import random
import warnings
from pathlib import Path

import decord
import numpy as np
import torch
from PIL import Image
from torch.utils.data import get_worker_info
from torchvision.transforms import InterpolationMode, v2

from dropmae.data.device_decode import EncodedPairs
from dropmae.data.images import IMAGENET_MEAN, IMAGENET_STD
from dropmae.data.manifest import frame_path, read_manifest
from dropmae.data.packed import PackedIndex, PackedReader
from dropmae.data.sampler import EpochSeededDataset
from dropmae.data.video_index import VideoEntry, index_videos


def sample_frame_pair(num_frames: int, max_gap: int, rng: np.random.Generator) -> tuple[int, int]:
    """Indices (earlier, later) of a pair: start ~ U{0..n-2}, end ~ U{start+1..min(n, start+max_gap)-1}.

    With ``max_gap=50`` the two frames are 1 to 49 frames apart.
    """
    if num_frames < 2:
        raise ValueError(f"a frame pair needs num_frames >= 2, got {num_frames}")
    if max_gap < 2:
        raise ValueError(f"max_gap must be >= 2 (the gap is 1..max_gap-1), got {max_gap}")
    start = int(rng.integers(0, num_frames - 1))  # high is exclusive: 0..n-2
    end = int(rng.integers(start + 1, min(num_frames, start + max_gap)))
    return start, end


# Colour jitter strengths of SimCLR / MoCo v2 (brightness, contrast, saturation, hue), applied
# with probability ``color_jitter_p``: a departure from the MAE recipe (crop and flip only).
COLOR_JITTER_STRENGTHS = (0.4, 0.4, 0.4, 0.1)


class PairAugmentation:
    """RandomResizedCrop (bicubic) + horizontal flip + ImageNet normalisation for a frame pair.

    By default crop and flip are drawn independently for each frame (as in the
    authors' code); ``shared_crop=True`` applies the same crop box and flip to both.
    Randomness comes from torch's global RNG.

    ``color_jitter_p`` / ``grayscale_p`` > 0 add, after the flip, colour jitter
    (:data:`COLOR_JITTER_STRENGTHS`) and grayscale conversion with those probabilities, drawn per
    frame like the crop (once for both with ``shared_crop``). Neither is in the recipe; at 0 (the
    default) they are left out of the pipeline, so the random draws are the recipe's.

    ``normalize=False`` stops at the uint8 crops: a quarter of the bytes through the
    DataLoader's shared memory and the host-to-device copy; :func:`normalize_frames` then
    finishes on the device with the same operations, so the floats are the same.
    """

    def __init__(
        self,
        input_size: int,
        crop_scale: tuple[float, float] = (0.2, 1.0),
        hflip: bool = True,
        shared_crop: bool = False,
        normalize: bool = True,
        color_jitter_p: float = 0.0,
        grayscale_p: float = 0.0,
    ) -> None:
        for name, probability in (("color_jitter_p", color_jitter_p), ("grayscale_p", grayscale_p)):
            if not 0.0 <= probability <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {probability}")
        self.input_size = input_size
        self.shared_crop = shared_crop
        self.changes_colours = color_jitter_p > 0 or grayscale_p > 0
        steps = [
            v2.RandomResizedCrop(input_size, scale=crop_scale, interpolation=InterpolationMode.BICUBIC),
            v2.RandomHorizontalFlip(p=0.5 if hflip else 0.0),
        ]
        if color_jitter_p > 0:
            steps.append(v2.RandomApply([v2.ColorJitter(*COLOR_JITTER_STRENGTHS)], p=color_jitter_p))
        if grayscale_p > 0:
            steps.append(v2.RandomGrayscale(p=grayscale_p))
        steps.append(v2.ToImage())
        if normalize:
            steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
        self.transform = v2.Compose(steps)

    def __call__(self, first: Image.Image, second: Image.Image) -> torch.Tensor:
        """[2, 3, input_size, input_size]: float32, or uint8 with ``normalize=False``."""
        if self.shared_crop:
            # v2 transforms draw their parameters once per call for all inputs.
            first_view, second_view = self.transform(first, second)
        else:
            first_view, second_view = self.transform(first), self.transform(second)
        return torch.stack([first_view, second_view]).as_subclass(torch.Tensor)

    def sample_params(self, first: Image.Image, second: Image.Image) -> list[tuple[int, int, int, int, bool]]:
        """(top, left, height, width, flipped) of each frame: what ``__call__`` would draw, pixels untouched.

        The same calls on torch's RNG in the same order as ``__call__`` (torchvision's own
        ``make_params``, then the flip's coin), so the frames need only their size (a JPEG
        opened but not decoded). Tested against ``__call__``. Colour changes are pixel work with
        no parameters to hand on, so an augmentation with them refuses.
        """
        if self.changes_colours:
            raise ValueError("colour jitter / grayscale need the decoded pixels: they are applied on the CPU "
                             "path only (pretrain.decode_on_device must be false)")
        crop, flip = self.transform.transforms[:2]

        def draw(*images: Image.Image) -> tuple[int, int, int, int, bool]:
            box = crop.make_params(list(images))
            flipped = not bool(torch.rand(1) >= flip.p)  # RandomHorizontalFlip's test, verbatim
            return box["top"], box["left"], box["height"], box["width"], flipped

        if self.shared_crop:
            shared = draw(first, second)
            return [shared, shared]
        return [draw(first), draw(second)]


def normalize_frames(frames: torch.Tensor) -> torch.Tensor:
    """uint8 crops [..., 3, H, W] (anywhere, e.g. on the GPU) -> the float32 the augmentation would give.

    Float input is returned as it is, so a task accepts either kind of batch.
    """
    if frames.is_floating_point():
        return frames
    scaled = v2.functional.to_dtype(frames, torch.float32, scale=True)
    return v2.functional.normalize(scaled, list(IMAGENET_MEAN), list(IMAGENET_STD))


@contextlib.contextmanager
def seeded_cpu_rng(seed: int):
    """torch's CPU generator seeded with ``seed`` inside, the caller's state restored after."""
    with torch.random.fork_rng(devices=[]):
        # The CPU generator only: torch.manual_seed also queues seeding of every lazy
        # accelerator backend, with a stack trace each, a tenth of an item's time here.
        torch.random.default_generator.manual_seed(seed)
        yield


def _item_seeds(seed: int, epoch: int, index: int, repeat: int = 0) -> tuple[np.random.Generator, int]:
    """(numpy generator for the pair indices, torch seed for the augmentation) of one pair.

    Repeat 0 is the one pair of an item without repeated sampling; repeats 1.. add draws.
    """
    key = [seed, epoch, index] if repeat == 0 else [seed, epoch, index, repeat]
    pair_sequence, augment_sequence = np.random.SeedSequence(key).spawn(2)
    return np.random.default_rng(pair_sequence), int(augment_sequence.generate_state(1, np.uint64)[0])


class _PairDatasetBase(EpochSeededDataset):
    """Shared epoch/seed/rank handling and the deterministic per-item recipe."""

    frame_counts: list[int]  # frames of each video, set by the subclass

    def __init__(self, input_size: int, max_gap: int, crop_scale: tuple[float, float], shared_crop: bool,
                 seed: int, rank: int, repeats: int = 1, color_jitter_p: float = 0.0,
                 grayscale_p: float = 0.0) -> None:
        if max_gap < 2:
            raise ValueError(f"max_gap must be >= 2, got {max_gap}")
        if repeats < 1:
            raise ValueError(f"repeats (pairs per video read) must be >= 1, got {repeats}")
        self.max_gap = max_gap
        self.repeats = repeats
        self.colours = dict(color_jitter_p=color_jitter_p, grayscale_p=grayscale_p)
        self.augmentation = PairAugmentation(input_size, crop_scale=crop_scale, shared_crop=shared_crop,
                                             **self.colours)
        self.seed = seed
        self.epoch = 0
        self.rank = rank

    def __len__(self) -> int:
        return len(self.frame_counts)

    def _load_frames(self, index: int, frames: list[int]) -> list[Image.Image]:
        """The RGB images of frames ``frames`` of video ``index``, in that order."""
        raise NotImplementedError

    def pair_indices(self, index: int, repeat: int = 0) -> tuple[int, int]:
        """Frame indices of pair ``repeat`` of item ``index`` in the current epoch (no decoding)."""
        rng, _ = _item_seeds(self.seed, self.epoch, index, repeat)
        return sample_frame_pair(self.frame_counts[index], self.max_gap, rng)

    def _item_pairs(self, index: int) -> tuple[list[tuple[int, int]], list[int], list[int]]:
        """(frame pairs, augmentation seeds, distinct frames) of item ``index`` in the current epoch."""
        seeds = [_item_seeds(self.seed, self.epoch, index, repeat) for repeat in range(self.repeats)]
        pairs = [sample_frame_pair(self.frame_counts[index], self.max_gap, rng) for rng, _ in seeds]
        return pairs, [torch_seed for _, torch_seed in seeds], sorted({frame for pair in pairs for frame in pair})

    def __getitem__(self, index: int) -> torch.Tensor:
        """[2, 3, S, S], the earlier frame first; with ``repeats`` k > 1, k pairs of the video [k, 2, 3, S, S].

        float32, or uint8 crops when the augmentation does not normalise.
        """
        pairs, seeds, wanted = self._item_pairs(index)
        images = dict(zip(wanted, self._load_frames(index, wanted)))  # one read of the video for all pairs
        views = []
        for (first, second), torch_seed in zip(pairs, seeds):
            with seeded_cpu_rng(torch_seed):
                views.append(self.augmentation(images[first], images[second]))
        return views[0] if self.repeats == 1 else torch.stack(views)


class FramePairDataset(_PairDatasetBase):
    """Pairs from extracted frames (manifest rows with status ok and the requested split).

    ``split=None`` takes every ok row.
    """

    def __init__(
        self,
        frames_root: str | Path,
        input_size: int,
        max_gap: int = 50,
        split: str | None = "train",
        crop_scale: tuple[float, float] = (0.2, 1.0),
        shared_crop: bool = False,
        seed: int = 0,
        rank: int = 0,
        repeats: int = 1,
        color_jitter_p: float = 0.0,
        grayscale_p: float = 0.0,
    ) -> None:
        super().__init__(input_size, max_gap, crop_scale, shared_crop, seed, rank, repeats, color_jitter_p,
                         grayscale_p)
        self.frames_root = Path(frames_root)
        manifest = read_manifest(self.frames_root)
        usable = manifest[(manifest["status"] == "ok") & (manifest["frame_count"] >= 2)]
        if split is not None:
            usable = usable[usable["split"] == split]
        if usable.empty:
            raise ValueError(f"{self.frames_root}: no usable videos with split={split!r} in the manifest")
        self.video_ids: list[str] = usable["video_id"].tolist()
        self.frame_counts: list[int] = [int(count) for count in usable["frame_count"]]

    def _load_frames(self, index: int, frames: list[int]) -> list[Image.Image]:
        video_id = self.video_ids[index]
        return [Image.open(frame_path(self.frames_root, video_id, frame)).convert("RGB") for frame in frames]


class PackedFramePairDataset(FramePairDataset):
    """The pairs of :class:`FramePairDataset` (same videos, same sampling, same pixels) read from the
    packed shards of the extraction folder (:mod:`dropmae.data.packed`), returned as uint8 crops
    for :func:`normalize_frames` on the device.
    """

    def __init__(self, frames_root: str | Path, input_size: int, max_gap: int = 50, split: str | None = "train",
                 crop_scale: tuple[float, float] = (0.2, 1.0), shared_crop: bool = False, seed: int = 0,
                 rank: int = 0, repeats: int = 1, decode_on_device: bool = False, color_jitter_p: float = 0.0,
                 grayscale_p: float = 0.0) -> None:
        super().__init__(frames_root, input_size, max_gap, split, crop_scale, shared_crop, seed, rank, repeats,
                         color_jitter_p, grayscale_p)
        self.augmentation = PairAugmentation(input_size, crop_scale=crop_scale, shared_crop=shared_crop,
                                             normalize=False, **self.colours)
        self.reader = PackedReader(PackedIndex.load(self.frames_root))
        self.decode_on_device = decode_on_device

    def _load_frames(self, index: int, frames: list[int]) -> list[Image.Image]:
        return [self.reader.read_image(self.video_ids[index], frame) for frame in frames]

    def __getitem__(self, index: int) -> torch.Tensor | EncodedPairs:
        """uint8 crops as :class:`FramePairDataset` gives them; with ``decode_on_device`` the JPEGs,
        crop boxes and flips instead, for :func:`dropmae.data.device_decode.decode_pairs`."""
        if not self.decode_on_device:
            return super().__getitem__(index)
        pairs, seeds, wanted = self._item_pairs(index)
        data = {frame: self.reader.read(self.video_ids[index], frame) for frame in wanted}
        headers = {frame: Image.open(io.BytesIO(data[frame])) for frame in wanted}  # sizes only, no decoding
        params, jpegs = [], []
        for (first, second), torch_seed in zip(pairs, seeds):
            with seeded_cpu_rng(torch_seed):
                params += self.augmentation.sample_params(headers[first], headers[second])
            jpegs += [torch.frombuffer(bytearray(data[frame]), dtype=torch.uint8) for frame in (first, second)]
        return EncodedPairs(jpegs=jpegs, crops=torch.tensor([box[:4] for box in params], dtype=torch.int64),
                            flips=torch.tensor([box[4] for box in params], dtype=torch.bool))


class VideoFramePairDataset(_PairDatasetBase):
    """Pairs decoded straight from video files with decord (no extraction step).

    Takes a list of VideoEntry or a source for ``index_videos``. Videos that cannot
    be opened or have fewer than 2 frames are skipped at construction with a warning.
    """

    def __init__(
        self,
        source: str | Path | list[VideoEntry],
        input_size: int,
        max_gap: int = 50,
        crop_scale: tuple[float, float] = (0.2, 1.0),
        shared_crop: bool = False,
        seed: int = 0,
        rank: int = 0,
        repeats: int = 1,
        color_jitter_p: float = 0.0,
        grayscale_p: float = 0.0,
    ) -> None:
        super().__init__(input_size, max_gap, crop_scale, shared_crop, seed, rank, repeats, color_jitter_p,
                         grayscale_p)
        entries = list(source) if isinstance(source, list) else index_videos(source)
        self.entries: list[VideoEntry] = []
        self.frame_counts: list[int] = []
        skipped = []
        for entry in entries:
            try:
                # Opening builds decord's frame index; the reader is not kept (the
                # dataset must stay picklable for DataLoader workers).
                frame_count = len(decord.VideoReader(str(entry.path), num_threads=1))
            except Exception as error:  # decord raises RuntimeError or DECORDError
                skipped.append(f"{entry.path} ({type(error).__name__})")
                continue
            if frame_count < 2:
                skipped.append(f"{entry.path} ({frame_count} frame)")
                continue
            self.entries.append(entry)
            self.frame_counts.append(frame_count)
        if skipped:
            warnings.warn(
                f"skipped {len(skipped)} of {len(entries)} videos that cannot be opened or have "
                f"fewer than 2 frames: {', '.join(skipped[:10])}{' ...' if len(skipped) > 10 else ''}",
                stacklevel=2,
            )
        if not self.entries:
            raise ValueError("no usable videos: every video was skipped")

    def _load_frames(self, index: int, frames: list[int]) -> list[Image.Image]:
        path = self.entries[index].path
        try:
            decoded = decord.VideoReader(str(path), num_threads=1).get_batch(frames).asnumpy()
        except Exception as error:
            raise RuntimeError(f"{path}: decoding frames {frames} failed: {error}") from error
        return [Image.fromarray(frame) for frame in decoded]


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed python, numpy's legacy and torch RNGs per worker.

    Seeds come from (dataset.seed, dataset.epoch, dataset.rank, worker_id), so workers
    never share a random state (the original code's workers repeated numpy's). The
    datasets here do not rely on these RNGs; this covers third-party randomness.
    """
    info = get_worker_info()
    dataset = info.dataset if info is not None else None
    if hasattr(dataset, "seed"):
        key = [dataset.seed, getattr(dataset, "epoch", 0), getattr(dataset, "rank", 0), worker_id]
    else:  # a wrapped dataset (e.g. Subset): fall back to torch's per-worker seed
        key = [info.seed if info is not None else 0, worker_id]
    state = np.random.SeedSequence(key).generate_state(2, np.uint32)
    random.seed(int(state[0]))
    np.random.seed(int(state[0]))  # the legacy global RNG takes 32-bit seeds
    torch.manual_seed(int(state[1]))


def whole_frame_pairs(frames_root: str | Path, input_size: int, max_gap: int, split: str | None = "val",
                      seed: int = 0) -> FramePairDataset:
    """Pairs of whole, unflipped frames for evaluation and figures.

    Flips are drawn per frame in training; one mirrored frame would break the correspondence
    between the two frames that between-frame attention and f_tem measure.
    """
    dataset = FramePairDataset(frames_root, input_size=input_size, max_gap=max_gap, split=split,
                               crop_scale=(1.0, 1.0), seed=seed)
    dataset.augmentation = PairAugmentation(input_size, crop_scale=(1.0, 1.0), hflip=False)
    return dataset
