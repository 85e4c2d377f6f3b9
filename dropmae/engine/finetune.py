"""What every downstream fine-tuning (DropTrack, DropSeg) does around its task: data first,
a seeded model, the shared training loop; and loading the fine-tuned model back."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dropmae.config import Config, config_from_dict
from dropmae.engine.checkpoint import load_checkpoint
from dropmae.engine.distributed import init_distributed
from dropmae.engine.loop import (
    LoopSettings,
    TrainingOutcome,
    TrainingTask,
    resolve_device,
    run_training,
)
from dropmae.seeding import derive_seed


def loop_settings_of(section: Any) -> LoopSettings:
    """LoopSettings from a config section with the loop's keys (tracking, segmentation)."""
    return LoopSettings(epochs=section.epochs, batch_size=section.batch_size, num_workers=section.num_workers,
                        seed=section.seed, precision=section.precision,
                        checkpoint_every_steps=section.checkpoint_every_steps,
                        log_every_steps=section.log_every_steps, grad_clip_norm=section.grad_clip_norm or None)


def finetune_downstream(
    section: Any,
    read_data: Callable[[], Any],
    build_model: Callable[[], tuple[torch.nn.Module, Any]],
    build_task: Callable[[torch.nn.Module, Any], TrainingTask],
    output_dir: str | Path,
    *,
    name: str,
    device: str | torch.device | None,
    stop_after_steps: int | None,
    progress: bool,
) -> TrainingOutcome:
    """Read the data (a bad benchmark stops the run before the model is built), seed and build the
    model (printing its load report), make the task from (model, data) and run the loop."""
    context = init_distributed()
    device = resolve_device(device)
    if device.type == "cuda":
        device = torch.device("cuda", context.local_rank)
    data = read_data()
    torch.manual_seed(derive_seed(section.seed, context.rank))
    model, report = build_model()
    if report is not None and context.is_main:
        print(f"{name}: {report.summary()}")
    task = build_task(model.to(device), data)
    return run_training(task, loop_settings_of(section), output_dir, context, device,
                        stop_after_steps=stop_after_steps, progress=progress)


def load_finetuned(
    path: str | Path,
    build: Callable[[Config, str, int], torch.nn.Module],
    device: str | torch.device = "cpu",
) -> tuple[torch.nn.Module, Config]:
    """A fine-tuned model in eval mode, and the config it was trained with, from its checkpoint
    (checkpoint-last.pth or the stage's model.pth). ``build(config, encoder, patch_size)`` makes the
    task's empty model; the encoder's size is the checkpoint's ``architecture`` (it may come from the
    pretraining checkpoint, not model.*)."""
    state = load_checkpoint(path)
    config = config_from_dict(state["config"])
    architecture = state["architecture"]
    model = build(config, architecture["encoder"], architecture["patch_size"])
    model.load_state_dict(state["model"])
    return model.to(device).eval(), config
