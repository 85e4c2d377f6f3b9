"""Atomic checkpoints and the random-number state an exact resume needs."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

LAST_CHECKPOINT = "checkpoint-last.pth"


def epoch_checkpoint_name(epoch: int) -> str:
    return f"checkpoint-{epoch:04d}.pth"


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(temp_name)
        with open(temp_name, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def atomic_torch_save(state: dict[str, Any], path: str | Path) -> None:
    """torch.save through a temporary file. Saved to an open handle, not to the temporary name:
    torch names the zip's records after a file name, so the same state gave different bytes
    (and checkpoint hashes) on every save."""
    def write(temp: str) -> None:
        with open(temp, "wb") as handle:
            torch.save(state, handle)

    _atomic_write(Path(path), write)


def atomic_copy(source: str | Path, destination: str | Path) -> None:
    _atomic_write(Path(destination), lambda temp: shutil.copyfile(source, temp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    # Checkpoints hold plain data only (tensors, numbers, strings, lists, dicts).
    return torch.load(path, map_location="cpu", weights_only=True)


def capture_rng_state() -> dict[str, Any]:
    """Every generator the training step draws from, as plain Python data (lists of ints),
    so it can be gathered across ranks and stored in a weights-only checkpoint."""
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    state = {
        "python": [python_state[0], list(python_state[1]), python_state[2]],
        "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])
