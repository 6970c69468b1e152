"""Checkpoints that lose nothing: atomic writes, the newest K kept, corrupt files skipped.

A checkpoint holds everything a run needs to continue bit for bit: model, optimiser, grad scaler,
the global step (which fixes the epoch, the position inside it and the learning rate), every
random generator and the config. It contains tensors and plain Python values only, so it loads
with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import logging
import os
import pickle
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


def write_text_atomic(text: str, path: Path) -> None:
    """Replace ``path``'s contents by ``text`` so that a crash leaves the old or the new file."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    _fsync_directory(path.parent)


def step_of(path: Path) -> int:
    return int(_NAME.fullmatch(path.name).group(1))


def save_and_prune(state: dict[str, Any], directory: Path, *, step: int, keep: int) -> Path:
    """Save the checkpoint for ``step`` and delete all but the newest ``keep`` up to ``step``.

    Checkpoints of later steps (a run resumed from an older file) are not this run's to delete.
    """
    path = checkpoint_path(directory, step)
    save_atomic(state, path)
    for old in [path for path in list_checkpoints(directory) if step_of(path) <= step][keep:]:
        old.unlink(missing_ok=True)
    return path


_RUN_FILES = ("metrics.jsonl", "config.json", "tensorboard")


def foreign_run_problem(directory: Path, resume: str | None) -> str | None:
    """Why a run with ``--resume resume`` must not write to ``directory``, or None if it may.

    A folder holding a run's checkpoints, metrics, config or TensorBoard events belongs to that
    run: only resuming it (``auto``, or one of its own checkpoints) may write there.
    """
    if not directory.is_dir() or resume == "auto":
        return None
    if resume is not None and Path(resume).resolve().parent == directory.resolve():
        return None
    found = [path.name for path in list_checkpoints(directory)[:3]]
    found += [name for name in _RUN_FILES if (directory / name).exists()]
    if not found:
        return None
    how = "without --resume" if resume is None else f"with --resume {resume} (another folder)"
    return (f"--output-dir {directory} holds another run's files ({', '.join(found)}) and this "
            f"run was started {how}; nothing there was changed. Continue that run with "
            f"--resume auto, or choose another --output-dir.")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and what is wrong."""


def load(path: Path) -> dict[str, Any]:
    """A checkpoint's state; :class:`CheckpointError` for a file that is not a readable one."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # what weights_only refuses: code, not tensors
        raise CheckpointError(f"{path}: refused to load, it holds more than tensors and plain "
                              f"values ({str(error).splitlines()[0]})") from None
    except Exception as error:  # torch.load raises many types for a damaged file
        reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        empty = " (the file is empty)" if path.stat().st_size == 0 else ""
        raise CheckpointError(f"{path}: not a readable checkpoint{empty}, "
                              f"{reason.splitlines()[0]}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a checkpoint")
    return state


def require_keys(state: dict[str, Any], path: Path, keys: set[str], recipe: str) -> None:
    """Raise :class:`CheckpointError` unless ``state`` has every one of ``keys``."""
    if missing := sorted(keys - state.keys()):
        looks_like = (" It looks like a bare state dict; pretraining checkpoints hold it "
                      "under 'model'." if all(isinstance(v, torch.Tensor) for v in state.values())
                      else "")
        raise CheckpointError(f"{path}: not a checkpoint of {recipe}: it lacks {missing} "
                              f"(it holds {sorted(state)[:8]}).{looks_like}")


def load_newest(directory: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads; unreadable (truncated, corrupt) ones are skipped.

    None when ``directory`` holds no checkpoint; :class:`CheckpointError`, listing each file and
    why, when it holds some and none of them loads.
    """
    failures = []
    for path in list_checkpoints(directory):
        try:
            return path, load(path)
        except CheckpointError as error:
            log.warning("skipping unreadable checkpoint %s", error)
            failures.append(str(error))
    if failures:
        raise CheckpointError(
            f"--resume auto: none of the {len(failures)} checkpoints in {directory} loads:\n  "
            + "\n  ".join(failures) + "\nMove them away to start over in this folder, or "
            "choose another --output-dir.")
    return None
