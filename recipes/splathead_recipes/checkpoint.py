"""Checkpoints that lose nothing: atomic writes, the newest K kept, corrupt files skipped.

A checkpoint holds everything a run needs to continue bit for bit: model, optimiser, grad scaler,
the global step (which fixes the epoch, the position inside it and the learning rate), every
random generator and the config. It contains tensors and plain Python values only, so it loads
with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import logging
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger("gmae")

_NAME = re.compile(r"checkpoint-(\d{8})\.pt")


def checkpoint_path(directory: Path, step: int) -> Path:
    return directory / f"checkpoint-{step:08d}.pt"


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoint files in ``directory``, newest (highest step) first."""
    if not directory.is_dir():
        return []
    found = [path for path in directory.iterdir() if _NAME.fullmatch(path.name)]
    return sorted(found, key=lambda path: int(_NAME.fullmatch(path.name).group(1)), reverse=True)


def rng_state() -> dict[str, Any]:
    """Every generator the training loop draws from, as tensors and plain values."""
    version, mt_state, gauss = random.getstate()
    name, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": [version, list(mt_state), gauss],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` so that ``path`` is either the old file or the complete new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    _fsync_directory(path.parent)


def save_and_prune(state: dict[str, Any], directory: Path, *, step: int, keep: int) -> Path:
    """Save the checkpoint for ``step`` and delete all but the newest ``keep``."""
    path = checkpoint_path(directory, step)
    save_atomic(state, path)
    for old in list_checkpoints(directory)[keep:]:
        old.unlink(missing_ok=True)
    return path


def load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def load_newest(directory: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads; unreadable (truncated, corrupt) ones are skipped."""
    for path in list_checkpoints(directory):
        try:
            return path, load(path)
        except Exception as error:  # torch.load raises many types for a damaged file
            log.warning("skipping unreadable checkpoint %s (%s: %s)", path,
                        type(error).__name__, error)
    return None
