"""Named DropSeg recipes (``segmentation.preset``); keys written beside the preset override it.

DropSeg is an STCN fork: the main recipe trains on DAVIS 2017 train and YouTube-VOS 2019 train
(STCN samples them 5 : 1 by repeating DAVIS) at 384 px crops; the defaults of
``SegmentationConfig`` hold its optimisation values.
"""

from __future__ import annotations

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
