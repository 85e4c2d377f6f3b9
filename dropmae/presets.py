"""Named recipes of both downstream tasks, as data (as OSTrack's experiment files are).

A preset is a mapping of ``tracking.*`` or ``segmentation.*`` keys, named by what it sets.
params.yaml picks one with ``tracking.preset`` / ``segmentation.preset``; keys written beside it
override it (:func:`dropmae.config.apply_presets` merges them). The task code reads the merged
config and never these tables.

Tracking: the values of the OSTrack / DropTrack experiment files
(vitb_{256,384}_mae_ce_32x4[_got10k]_ep{100,300}, with DropTrack's lr 2.5e-4).

Segmentation: DropSeg is an STCN fork: the main recipe trains on DAVIS 2017 train and YouTube-VOS
2019 train (STCN samples them 5 : 1 by repeating DAVIS) at 384 px crops; the defaults of
``SegmentationConfig`` hold its optimisation values.
"""

from __future__ import annotations

# ---------------------------------------------------------------------------- tracking
# The full-data mixture of OSTrack / DropTrack, equal weights.
FULL_DATA_TRAIN = {
    "lasot": {"split": "train", "weight": 1.0},
    "got10k": {"split": "train", "weight": 1.0},  # the recipe's vot_train subset: set sequence_list to it
    "coco": {"split": "train2017", "weight": 1.0},
    "trackingnet": {"split": ",".join(f"TRAIN_{i}" for i in range(12)), "weight": 1.0},
}
GOT10K_ONLY_TRAIN = {"got10k": {"split": "train", "weight": 1.0}}

_SEARCH_256 = {"template_size": 128, "search_size": 256, "search_factor": 4.0, "center_jitter": 3.0, "scale_jitter": 0.25}
_SEARCH_384 = {"template_size": 192, "search_size": 384, "search_factor": 5.0, "center_jitter": 4.5, "scale_jitter": 0.5}
_GOT10K_EP100 = {"train": GOT10K_ONLY_TRAIN, "epochs": 100, "lr_drop_epoch": 80, "ce_start_epoch": 20, "ce_warm_epochs": 50}
_FULL_EP300 = {"train": FULL_DATA_TRAIN, "epochs": 300, "lr_drop_epoch": 240, "ce_start_epoch": 20, "ce_warm_epochs": 80}

TRACKING_PRESETS: dict[str, dict] = {
    "search256_got10k_ep100": {**_SEARCH_256, **_GOT10K_EP100},
    "search256_full_ep300": {**_SEARCH_256, **_FULL_EP300},
    "search384_got10k_ep100": {**_SEARCH_384, **_GOT10K_EP100},
    "search384_full_ep300": {**_SEARCH_384, **_FULL_EP300},
    # Laptop-sized: 32 px template and 64 px search crops for the micro demo encoder (patch 8),
    # 512 pairs per epoch. The backbone learns at the head's lr (x1.0; the recipe has x0.1): on the
    # demo benchmark with its photo sequences, x1.0 raised every tracker's val AO by 5-10 points and
    # kept the pretrained ones above random init (README, "Does pretraining pay off on the demo?");
    # x0 (frozen) fell to 24.7. No candidate
    # elimination: with one CE block over 64 search tokens it saves little, and when it started
    # (epoch 20) it stalled a DropMAE tracker's fine-tuning (loss flat at 2.4-2.5, AO 19.0 below
    # the first-frame box); the same checkpoint without CE reached AO 36.6. Search region 3x the
    # target's side (the recipe: 4x at 256 px, 5x at 384): a 64 px crop of 8 px patches is 8 tokens
    # across, so at 4x the target spans 2 tokens (the recipe's spans 4), at 3x 2.7. A random-init
    # tracker went from 46.7-52.4 / 23.3-25.1 AO (val / unseen, two seeds, 64 + 64 sequences) to
    # 54.1 / 32.2 (README, "Does pretraining pay off on the demo?").
    "demo_micro": {
        "template_size": 32, "search_size": 64, "search_factor": 3.0, "center_jitter": 3.0, "scale_jitter": 0.25,
        "max_frame_gap": 30, "epochs": 80, "samples_per_epoch": 512, "batch_size": 16, "lr": 1e-3,
        "backbone_lr_scale": 1.0, "lr_drop_epoch": 64, "ce_locations": [], "hue_rotation_probability": 0.0, "ce_start_epoch": 20, "ce_warm_epochs": 20,
        "head_channels": 64, "drop_path_rate": 0.0, "num_workers": 0, "log_every_steps": 8, "clip_margin": 2.0,
    },
}


# OSTrack's / DropTrack's experiment names for the same recipes (their ViT-B comes from the
# pretraining checkpoint here, whatever its size), so a user can write the names they know.
OSTRACK_EXPERIMENT_NAMES = {
    "vitb_256_mae_ce_32x4_got10k_ep100": "search256_got10k_ep100",
    "vitb_256_mae_ce_32x4_ep300": "search256_full_ep300",
    "vitb_384_mae_ce_32x4_got10k_ep100": "search384_got10k_ep100",
    "vitb_384_mae_ce_32x4_ep300": "search384_full_ep300",
}
TRACKING_PRESETS.update({alias: TRACKING_PRESETS[name] for alias, name in OSTRACK_EXPERIMENT_NAMES.items()})


# ------------------------------------------------------------------------ segmentation
SEGMENTATION_PRESETS: dict[str, dict] = {
    "davis_youtube": {
        "train": {"davis17": {"split": "train", "weight": 5.0}, "youtube": {"split": "train", "weight": 1.0}},
    },
    "davis_only": {"train": {"davis17": {"split": "train", "weight": 1.0}}},
    # Laptop-sized: the micro demo encoder (patch 8) on 64 px crops of the 128x96 demo frames,
    # frames segmented at their stored size.
    "demo_micro": {
        "image_size": 64, "max_frame_skip": 10, "crop_scale": [0.5, 1.0], "min_object_pixels": 16,
        "decoder_channels": 32, "drop_path_rate": 0.0, "epochs": 30, "samples_per_epoch": 512, "batch_size": 16,
        "lr": 1e-3, "weight_decay": 1e-4, "lr_drop_epoch": 24, "bootstrap_start_epoch": 5, "bootstrap_end_epoch": 15,
        "num_workers": 0, "log_every_steps": 8, "frame_short_side": None,
        "probe": {"frame_short_side": None, "neighbourhood": 4},
    },
}
