"""Atomic checkpoints and the random-number state an exact resume needs."""

from __future__ import annotations

import errno
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dropmae.files import apply_umask

LAST_CHECKPOINT = "checkpoint-last.pth"


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be read back (truncated, overwritten, not a checkpoint)."""


class DiskFullError(OSError):
    """The file system ran out of space while a file was written; the earlier file is intact."""


def epoch_checkpoint_name(epoch: int) -> str:
    return f"checkpoint-{epoch:04d}.pth"


def _temporary_prefix(path: Path) -> str:
    return f".{path.name}."


TEMPORARY_SUFFIX = ".tmp"


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files a killed writer left in ``folder`` (kill -9 during a save);
    call it only while holding the folder (no other writer)."""
    stale = sorted(Path(folder).glob(f".checkpoint-*.pth.*{TEMPORARY_SUFFIX}"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=_temporary_prefix(path), suffix=TEMPORARY_SUFFIX, dir=path.parent)
    os.close(fd)
    apply_umask(temp_name)  # mkstemp makes it 0600; a run folder may be shared by a team
    try:
        write(temp_name)
        with open(temp_name, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException as error:
        Path(temp_name).unlink(missing_ok=True)
        full = error if _is_disk_full(error) else getattr(error, "disk_error", None)
        if full is not None:
            raise DiskFullError(errno.ENOSPC, f"no space left on the device while writing {path} "
                                "(the previous file there is intact); free some space and rerun") from error
        raise


class _WriteErrorRecorder:
    """A file object for torch.save that keeps the OSError of a failed write: torch's zip writer
    reports it only as 'unexpected pos', which hides a full disk."""

    def __init__(self, handle) -> None:
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.handle.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self.handle.flush()


def atomic_torch_save(state: dict[str, Any], path: str | Path) -> None:
    """torch.save through a temporary file. Saved to an open handle, not to the temporary name:
    torch names the zip's records after a file name, so the same state gave different bytes
    (and checkpoint hashes) on every save."""
    def write(temp: str) -> None:
        with open(temp, "wb") as handle:
            recorder = _WriteErrorRecorder(handle)
            try:
                torch.save(state, recorder)
            except RuntimeError as error:
                if recorder.error is not None and _is_disk_full(recorder.error):
                    error.disk_error = recorder.error
                raise

    _atomic_write(Path(path), write)


def atomic_copy(source: str | Path, destination: str | Path) -> None:
    _atomic_write(Path(destination), lambda temp: shutil.copyfile(source, temp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        # Checkpoints hold plain data only (tensors, numbers, strings, lists, dicts).
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises RuntimeError, UnpicklingError, EOFError, ... by cause
        first_line = (str(error).strip().splitlines() or [""])[0]
        # torch's own text for a refused pickle advises weights_only=False, which would run any
        # code a tampered file holds; it is left out.
        detail = type(error).__name__ if "weights_only" in str(error) else f"{type(error).__name__}: {first_line[:160]}"
        raise CheckpointError(f"checkpoint {path} is unreadable (truncated or not a checkpoint; {detail}). Move it "
                              "aside (or delete it) to start over, or copy an earlier checkpoint-NNNN.pth of the "
                              "run over it to resume from there") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a checkpoint; move it aside")
    return state


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
