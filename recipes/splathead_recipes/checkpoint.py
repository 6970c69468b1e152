"""Checkpoints that lose nothing: atomic writes, the newest K kept, corrupt files skipped.

A checkpoint holds everything a run needs to continue bit for bit: model, optimiser, grad scaler,
the global step (which fixes the epoch, the position inside it and the learning rate), every
random generator and the config. It contains tensors and plain Python values only, so it loads
with ``torch.load(..., weights_only=True)``. :class:`Checkpointer` writes and restores a
training run's; the functions below it handle the files.
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import re
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from splathead_recipes import distributed
from splathead_recipes.distributed import Runtime

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


class WriteError(RuntimeError):
    """A file that could not be written (a full disk, most often); the message names the file
    and the free space left where it was going. What was there before is unchanged."""


@contextmanager
def _replaced_atomically(path: Path, mode: str) -> Iterator[IO]:
    """A handle on a temporary file beside ``path`` that replaces ``path`` once complete.

    On any failure the temporary file is removed and ``path`` stays as it was; the error comes
    back as :class:`WriteError` naming ``path`` and the free space (``torch.save`` on a full
    disk raises a ``RuntimeError`` that names neither).
    """
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with open(temporary, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except Exception as error:
        temporary.unlink(missing_ok=True)
        free = shutil.disk_usage(path.parent).free
        raise WriteError(f"could not write {path}: {error}; {free / 2**20:.1f} MiB free on its "
                         f"filesystem (the previous file, if any, is unchanged)") from error
    _fsync_directory(path.parent)


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` so that ``path`` is either the old file or the complete new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _replaced_atomically(path, "wb") as handle:
        torch.save(state, handle)


def write_text_atomic(text: str, path: Path) -> None:
    """Replace ``path``'s contents by ``text`` so that a crash leaves the old or the new file."""
    with _replaced_atomically(path, "w") as handle:
        handle.write(text)


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


class Stateful(Protocol):
    """What :func:`fit` checkpoints beside the model and its optimiser (e.g. online probes with
    their own optimiser): anything with ``state_dict`` / ``load_state_dict``."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


class NonFiniteError(RuntimeError):
    """A loss, gradient norm, parameter or optimiser state became NaN/Inf; the run stops before
    the optimiser step or the checkpoint that would use it."""


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


_STATE_KEYS = {"model", "optimizer", "scaler", "step", "steps_per_epoch", "skipped_images", "rng",
               "config"}


def _differences(saved: dict[str, Any], current: dict[str, Any]) -> str:
    names = sorted(name for name in saved.keys() | current.keys()
                   if saved.get(name) != current.get(name) and name != "resume")
    return ", ".join(f"{name}: {saved.get(name)!r} there, {current.get(name)!r} here"
                     for name in names) or "none"


class Checkpointer:
    """Saves and restores everything a run needs to continue bit for bit.

    Saving is collective (every rank's generators are gathered), so every rank calls
    :meth:`save`; rank 0 writes.

    Args:
        directory: the run's folder (``--output-dir``).
        config: the run's settings as plain values, saved in every checkpoint and compared
            with a checkpoint's on resume.
        keep: how many of the newest checkpoints to keep.
        model, optimizer, scaler: what trains, saved and restored.
        steps_per_epoch: the loader's; a checkpoint with another count does not resume.
        extras: more state to save and restore, by name (:class:`Stateful`).
    """

    def __init__(self, directory: Path, *, config: dict[str, Any], keep: int, runtime: Runtime,
                 model: nn.Module, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, steps_per_epoch: int,
                 extras: Mapping[str, Stateful] = {}) -> None:
        self.directory = directory
        self.config = config
        self.keep = keep
        self.runtime = runtime
        self.model = model
        self.optimizer = optimizer
        self.scaler = scaler
        self.extras = extras
        self.steps_per_epoch = steps_per_epoch

    def save(self, step: int, skipped_images: int) -> None:
        """Write the checkpoint of ``step``; :class:`NonFiniteError` instead if any rank's state
        holds a NaN or Inf (a checkpoint must be safe to resume from)."""
        if not self._finite_on_every_rank():
            raise NonFiniteError(
                f"non-finite parameters or optimiser state after step {step}; not checkpointed. "
                f"Last good checkpoint: {newest_name(self.directory)}")
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": step,
            "epoch": step // self.steps_per_epoch,
            "step_in_epoch": step % self.steps_per_epoch,
            "steps_per_epoch": self.steps_per_epoch,
            "skipped_images": skipped_images,
            "rng": self._gather_rng_states(),
            "config": self.config,
            "extras": {name: extra.state_dict() for name, extra in self.extras.items()},
        }
        if self.runtime.is_main:
            path = save_and_prune(state, self.directory, step=step,
                                             keep=self.keep)
            log.debug("saved %s", path)
        distributed.barrier()

    def _finite_on_every_rank(self) -> bool:
        tensors = [*self.model.state_dict().values(),
                   *(value for state in self.optimizer.state.values()
                     for value in state.values() if isinstance(value, torch.Tensor)),
                   *_tensors_in([extra.state_dict() for extra in self.extras.values()])]
        finite = torch.stack([tensor.isfinite().all() for tensor in tensors
                              if tensor.is_floating_point()]).all()
        bad_ranks = distributed.all_reduce_sum((~finite).float().to(self.runtime.device))
        return not bad_ranks.item()

    def _gather_rng_states(self) -> list[dict]:
        """Every rank's generators, in rank order (each rank masks its own images)."""
        state = rng_state()
        if not self.runtime.distributed:
            return [state]
        gathered: list[dict | None] = [None] * self.runtime.world_size
        dist.all_gather_object(gathered, state)
        return gathered

    def resume(self, resume: str | None, *, seed: int) -> tuple[int, int]:
        """``(step, skipped_images)`` to continue from: ``resume``'s checkpoint (``--resume``:
        None, "auto" or a file), or (0, 0). ``seed`` reseeds the generators where the world
        size changed.

        Raises :class:`~splathead_recipes.checkpoint.CheckpointError` for a file that is not a
        checkpoint of this recipe or does not fit this run (or, for ``auto``, when none loads).
        """
        if resume is None:
            return 0, 0
        found = (load_newest(self.directory) if resume == "auto"
                 else (Path(resume), load(Path(resume))))
        if found is None:
            log.info("no checkpoint in %s; starting from scratch", self.directory)
            return 0, 0
        path, state = found
        require_keys(state, path, _STATE_KEYS, "this recipe")
        self._restore(path, state, seed)
        log.info("resumed from %s at step %d (epoch %d)", path, state["step"],
                 state["step"] // self.steps_per_epoch)
        return state["step"], state["skipped_images"]

    def _restore(self, path: Path, state: dict[str, Any], seed: int) -> None:
        differences = _differences(state["config"], self.config)
        if state["steps_per_epoch"] != self.steps_per_epoch:
            raise CheckpointError(
                f"{path}: has {state['steps_per_epoch']} steps per epoch, this run "
                f"{self.steps_per_epoch}: dataset or --batch-size changed (settings that differ: "
                f"{differences})")
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as error:
            raise CheckpointError(
                f"{path}: written with other settings ({differences}); its state does not fit "
                f"this run's model: {str(error).strip().splitlines()[0]}") from None
        self.scaler.load_state_dict(state["scaler"])
        saved_extras = state.get("extras", {})
        for name, extra in self.extras.items():
            if name not in saved_extras:
                log.warning("%s: holds no %s state; they start afresh", path, name)
                continue
            try:
                extra.load_state_dict(saved_extras[name])
            except (RuntimeError, ValueError, KeyError) as error:
                raise CheckpointError(
                    f"{path}: its {name} state does not fit this run (settings that differ: "
                    f"{differences}): {str(error).strip().splitlines()[0]}") from None
        runtime = self.runtime
        if len(state["rng"]) == runtime.world_size:
            set_rng_state(state["rng"][runtime.rank])
        else:
            log.warning("checkpoint written by %d ranks, resuming on %d: data order is kept, "
                        "masking noise is reseeded", len(state["rng"]), runtime.world_size)
            seed_everything(seed + runtime.rank + state["step"])


def _tensors_in(value: Any) -> list[torch.Tensor]:
    """Every tensor inside nested dicts, lists and tuples (a ``state_dict``'s shape)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [tensor for item in value for tensor in _tensors_in(item)]
    return []


def newest_name(directory: Path, *, before: int | None = None) -> Path | str:
    """The newest checkpoint in ``directory`` (of a step below ``before`` if given), or "none"."""
    newest = [path for path in list_checkpoints(directory)
              if before is None or step_of(path) < before]
    return newest[0] if newest else "none"
