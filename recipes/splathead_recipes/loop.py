"""The training loop every recipe shares: epochs, checkpoints, resume, signals, logging, hooks.

A recipe builds its model, optimiser, loader and learning-rate schedule, says what a micro-batch's
loss is, and calls :func:`fit`. What differs between pretraining, a linear probe and a fine-tune
is only those arguments; :func:`fit` gives all of them the same atomic checkpoints with bit-exact
resume, preemption handling, ``metrics.jsonl`` / TensorBoard records and step hooks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import random
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.contrib.logging import logging_redirect_tqdm

from splathead_recipes import checkpoint, distributed
from splathead_recipes.checkpoint import CheckpointError
from splathead_recipes.config import ConfigError
from splathead_recipes.data import ResumableSampler, stop_workers
from splathead_recipes.distributed import Runtime
from splathead_recipes.logs import MetricsLog, setup_logging
from splathead_recipes.train_step import Forward, StepResult, TrainStep

log = logging.getLogger("gmae")

StepHook = Callable[[int, StepResult], dict[str, float]]
"""``hook(step, result) -> metrics``, called on every rank after each optimiser step (``step``
counts the steps done). Rank 0 logs what it returns with that step's record; evaluation passes
and image dumps are hooks that act every N steps and return ``{}`` otherwise."""

Evaluation = Callable[[int], dict[str, Any]]
"""``evaluation(step) -> results``, called on every rank (it may be collective) every
``eval_interval`` steps and at the last step; rank 0 writes the results as one
``{"event": "eval", "step": step, ...}`` record of ``metrics.jsonl`` and to TensorBoard under
``eval/``. Values are numbers or lists of numbers."""


class Stateful(Protocol):
    """What :func:`fit` checkpoints beside the model and its optimiser (e.g. online probes with
    their own optimiser): anything with ``state_dict`` / ``load_state_dict``."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


class LoopSettings(Protocol):
    """The fields of a recipe's config (a dataclass) that :func:`fit` reads; see
    :class:`~splathead_recipes.config.Config` for their meaning."""

    output_dir: str
    resume: str | None
    seed: int
    epochs: int
    max_steps: int
    batch_size: int
    accum_steps: int
    clip_grad: float
    precision: str
    compile: bool
    checkpoint_every: int
    keep_checkpoints: int
    log_every: int


class NonFiniteError(RuntimeError):
    """A loss, gradient norm, parameter or optimiser state became NaN/Inf; the run stops before
    the optimiser step or the checkpoint that would use it."""


class StopSignal:
    """While active, remembers SIGTERM / SIGUSR1 (cluster preemption) until the step ends."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignal:
        self._previous = {signum: signal.signal(signum, self._handle) for signum in self.SIGNALS}
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: object) -> None:
        self.received = signum


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def compile_blocks(model: nn.Module) -> None:
    """Compile each transformer block in place; the renderer stays eager (custom kernels)."""
    from timm.models.vision_transformer import Block

    for module in model.modules():
        if isinstance(module, Block):
            module.compile()


def _settings_dict(settings: LoopSettings) -> dict[str, Any]:
    return dataclasses.asdict(settings)  # type: ignore[call-overload]


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
    """

    def __init__(self, settings: LoopSettings, runtime: Runtime, model: nn.Module,
                 step_fn: TrainStep, steps_per_epoch: int,
                 extras: Mapping[str, Stateful] = {}) -> None:
        self.settings = settings
        self.runtime = runtime
        self.model = model
        self.step_fn = step_fn
        self.extras = extras
        self.steps_per_epoch = steps_per_epoch
        self.directory = Path(settings.output_dir)

    def save(self, step: int, skipped_images: int) -> None:
        """Write the checkpoint of ``step``; :class:`NonFiniteError` instead if any rank's state
        holds a NaN or Inf (a checkpoint must be safe to resume from)."""
        if not self._finite_on_every_rank():
            raise NonFiniteError(
                f"non-finite parameters or optimiser state after step {step}; not checkpointed. "
                f"Last good checkpoint: {_newest(self.directory)}")
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.step_fn.optimizer.state_dict(),
            "scaler": self.step_fn.scaler.state_dict(),
            "step": step,
            "epoch": step // self.steps_per_epoch,
            "step_in_epoch": step % self.steps_per_epoch,
            "steps_per_epoch": self.steps_per_epoch,
            "skipped_images": skipped_images,
            "rng": self._gather_rng_states(),
            "config": _settings_dict(self.settings),
            "extras": {name: extra.state_dict() for name, extra in self.extras.items()},
        }
        if self.runtime.is_main:
            path = checkpoint.save_and_prune(state, self.directory, step=step,
                                             keep=self.settings.keep_checkpoints)
            log.debug("saved %s", path)
        distributed.barrier()

    def _finite_on_every_rank(self) -> bool:
        tensors = [*self.model.state_dict().values(),
                   *(value for state in self.step_fn.optimizer.state.values()
                     for value in state.values() if isinstance(value, torch.Tensor)),
                   *_tensors_in([extra.state_dict() for extra in self.extras.values()])]
        finite = torch.stack([tensor.isfinite().all() for tensor in tensors
                              if tensor.is_floating_point()]).all()
        bad_ranks = distributed.all_reduce_sum((~finite).float().to(self.runtime.device))
        return not bad_ranks.item()

    def _gather_rng_states(self) -> list[dict]:
        """Every rank's generators, in rank order (each rank masks its own images)."""
        state = checkpoint.rng_state()
        if not self.runtime.distributed:
            return [state]
        gathered: list[dict | None] = [None] * self.runtime.world_size
        dist.all_gather_object(gathered, state)
        return gathered

    def resume(self) -> tuple[int, int]:
        """``(step, skipped_images)`` to continue from: ``--resume``'s checkpoint, or (0, 0).

        Raises :class:`~splathead_recipes.checkpoint.CheckpointError` for a file that is not a
        checkpoint of this recipe or does not fit this run (or, for ``auto``, when none loads).
        """
        resume = self.settings.resume
        if resume is None:
            return 0, 0
        found = (checkpoint.load_newest(self.directory) if resume == "auto"
                 else (Path(resume), checkpoint.load(Path(resume))))
        if found is None:
            log.info("no checkpoint in %s; starting from scratch", self.directory)
            return 0, 0
        path, state = found
        checkpoint.require_keys(state, path, _STATE_KEYS, "this recipe")
        self._restore(path, state)
        log.info("resumed from %s at step %d (epoch %d)", path, state["step"],
                 state["step"] // self.steps_per_epoch)
        return state["step"], state["skipped_images"]

    def _restore(self, path: Path, state: dict[str, Any]) -> None:
        differences = _differences(state["config"], _settings_dict(self.settings))
        if state["steps_per_epoch"] != self.steps_per_epoch:
            raise CheckpointError(
                f"{path}: has {state['steps_per_epoch']} steps per epoch, this run "
                f"{self.steps_per_epoch}: dataset or --batch-size changed (settings that differ: "
                f"{differences})")
        try:
            self.model.load_state_dict(state["model"])
            self.step_fn.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as error:
            raise CheckpointError(
                f"{path}: written with other settings ({differences}); its state does not fit "
                f"this run's model: {str(error).strip().splitlines()[0]}") from None
        self.step_fn.scaler.load_state_dict(state["scaler"])
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
            checkpoint.set_rng_state(state["rng"][runtime.rank])
        else:
            log.warning("checkpoint written by %d ranks, resuming on %d: data order is kept, "
                        "masking noise is reseeded", len(state["rng"]), runtime.world_size)
            seed_everything(self.settings.seed + runtime.rank + state["step"])


def _tensors_in(value: Any) -> list[torch.Tensor]:
    """Every tensor inside nested dicts, lists and tuples (a ``state_dict``'s shape)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [tensor for item in value for tensor in _tensors_in(item)]
    return []


def _newest(directory: Path) -> Path | str:
    newest = checkpoint.list_checkpoints(directory)
    return newest[0] if newest else "none"


def prepare_output_dir(settings: LoopSettings) -> Path:
    """``output_dir``, created; :class:`ConfigError` if it holds another run's files.

    Collective: every rank calls it."""
    output_dir = Path(settings.output_dir)
    if problem := checkpoint.foreign_run_problem(output_dir, settings.resume):
        raise ConfigError(problem)
    distributed.barrier()  # every rank has looked before rank 0 writes there
    output_dir.mkdir(parents=True, exist_ok=True)
    return output_dir


def write_config(settings: LoopSettings, runtime: Runtime) -> None:
    """``config.json`` in the output folder: named at INFO, its text at DEBUG."""
    config_json = json.dumps(_settings_dict(settings), indent=2)
    path = Path(settings.output_dir) / "config.json"
    checkpoint.write_text_atomic(config_json + "\n", path)
    log.info("%s, world size %d; settings in %s", runtime.device, runtime.world_size, path)
    log.debug("config:\n%s", config_json)


def fit(settings: LoopSettings, runtime: Runtime, *, model: nn.Module,
        optimizer: torch.optim.Optimizer, forward: Forward, loader: DataLoader,
        sampler: ResumableSampler, schedule: Callable[[int], float],
        hooks: Sequence[StepHook] = (), evaluation: Evaluation | None = None,
        eval_interval: int = 0, extras: Mapping[str, Stateful] = {}) -> int:
    """Train ``model`` until ``settings.epochs`` (or ``max_steps``); returns the exit status 0.

    Args:
        settings: the recipe's config (:class:`LoopSettings`), saved in every checkpoint.
        model: the module to train and checkpoint, on ``runtime.device``, not yet DDP-wrapped
            (resume loads into it first; :func:`fit` wraps it under torchrun).
        optimizer: its optimiser.
        forward: the loss of one micro-batch (:data:`~splathead_recipes.train_step.Forward`).
        loader, sampler: this rank's micro-batches from :func:`~splathead_recipes.data.build_loader`.
        schedule: learning rate of each step.
        hooks: called after every step (:data:`StepHook`).
        evaluation: run every ``eval_interval`` steps (0: only at the last step) and at the
            last step, after the hooks and before that step's checkpoint (:data:`Evaluation`).
        extras: more state to checkpoint and restore, by name (:class:`Stateful`); a checkpoint
            without one of them resumes with a warning, the extra starting afresh.

    Raises:
        NonFiniteError: a loss, gradient or the state to checkpoint became NaN/Inf (no step
            was taken with it, nothing non-finite was saved).
        ConfigError: ``output_dir`` holds another run's files.
        CheckpointError: the checkpoint to resume from is unreadable or does not fit this run.

    Whatever ends it, the loader's workers, the metrics files, TensorBoard writer and progress
    bar are closed before it returns or raises.
    """
    output_dir = prepare_output_dir(settings)
    steps_per_epoch = sampler.steps_per_epoch
    total_steps = settings.epochs * steps_per_epoch
    last_step = min(total_steps, settings.max_steps) if settings.max_steps else total_steps
    # Masking draws from the global generator: a different stream per rank.
    seed_everything(settings.seed + runtime.rank)

    use_cuda = runtime.device.type == "cuda"
    step_fn = TrainStep(model, optimizer, forward=forward, accum_steps=settings.accum_steps,
                        clip_grad=settings.clip_grad, precision=settings.precision,
                        device=runtime.device)
    checkpointer = Checkpointer(settings, runtime, model, step_fn, steps_per_epoch, extras)
    step, skipped_total = checkpointer.resume()
    if runtime.is_main:
        write_config(settings, runtime)
    if settings.compile:
        compile_blocks(model)
    if runtime.distributed:
        step_fn.model = DistributedDataParallel(model, device_ids=[runtime.local_rank]
                                                if use_cuda else None)
    log.info("%.1fM parameters, %d steps per epoch, %d per-GPU x %d accum x %d ranks = batch %d",
             sum(p.numel() for p in model.parameters()) / 1e6, steps_per_epoch,
             loader.batch_size, settings.accum_steps, runtime.world_size, settings.batch_size)

    metrics = (MetricsLog(output_dir, start_step=step, total_steps=last_step,
                          images_per_step=settings.batch_size, steps_per_epoch=steps_per_epoch)
               if runtime.is_main else None)
    # Log lines go above the progress bar instead of through it.
    quiet_bar = logging_redirect_tqdm() if metrics is not None else contextlib.nullcontext()
    try:
        with StopSignal() as stop, quiet_bar:
            step_fn.model.train()
            while step < last_step:
                epoch = step // steps_per_epoch
                sampler.set_epoch(epoch)
                sampler.set_start_step(step - epoch * steps_per_epoch)
                batches = iter(loader)
                epoch_end = min((epoch + 1) * steps_per_epoch, last_step)
                while step < epoch_end:
                    lr = schedule(step)
                    step_fn.set_learning_rate(lr)
                    result = step_fn(batches, stop_requested=stop.received is not None)
                    if result.non_finite:
                        raise NonFiniteError(
                            f"non-finite loss or gradient at step {step} (epoch {epoch}); "
                            f"stopped before the optimiser step. Last good checkpoint: "
                            f"{_newest(output_dir)}")
                    step += 1
                    skipped_total += result.num_skipped
                    extra = {name: value for hook in hooks
                             for name, value in hook(step, result).items()}
                    if metrics is not None:
                        metrics.log_step(step, loss=result.loss, lr=lr,
                                         grad_norm=result.grad_norm, skipped_images=skipped_total,
                                         extra=extra,
                                         full=step % settings.log_every == 0 or step == last_step)
                    if evaluation is not None and (
                            step == last_step or (eval_interval and step % eval_interval == 0)):
                        results = evaluation(step)
                        if metrics is not None:
                            metrics.evaluation(step, results)
                    if result.num_skipped:
                        log.warning("step %d: %d unreadable images replaced (%d so far)", step,
                                    result.num_skipped, skipped_total)
                    if result.stop or step % settings.checkpoint_every == 0 or step == epoch_end:
                        checkpointer.save(step, skipped_total)
                    if result.stop:
                        log.info("signal received: checkpointed at step %d, exiting", step)
                        return finish(metrics, model, runtime, step)
        return finish(metrics, model, runtime, step)
    finally:  # on every path, errors included: nothing may keep the process alive
        if metrics is not None:
            metrics.close()
        stop_workers(loader)


def finish(metrics: MetricsLog | None, model: nn.Module, runtime: Runtime, step: int) -> int:
    """Record the end of the run with each rank's parameter checksum; returns 0."""
    # Replicas must hold identical weights; record each rank's checksum to show it.
    checksum = sum(p.detach().double().sum().item() for p in model.parameters())
    checksums = distributed.all_gather_floats(checksum, runtime.device)
    if metrics is not None:
        metrics.event("end", step, param_checksums=checksums)
        metrics.close()
        output_dir = metrics.path.parent
        images = output_dir / "images"
        log.info("step %d: checkpoints and config.json in %s/, metrics in %s, TensorBoard in "
                 "%s/%s", step, output_dir, metrics.path, output_dir / "tensorboard",
                 f", PNG grids in {images}/" if images.is_dir() else "")
    return 0


def run_recipe(config: Any, *, validate: Callable[..., None],
               train: Callable[[Any, Runtime], int]) -> int:
    """A recipe's ``main``: ``validate(config, world_size=, cuda_available=)``, then
    ``train(config, runtime)`` in torchrun's process group (``config.device``,
    ``config.backend``), torn down on every path.

    Returns the exit status: 0 done (or checkpointed on a signal), 1 failed in training (a
    non-finite value), 2 a setting or checkpoint that cannot work, found before any training
    step (in validation, or once data, model or checkpoint load).
    """
    try:
        validate(config, world_size=distributed.world_size_from_env(),
                 cuda_available=torch.cuda.is_available())
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    runtime = distributed.setup(config.device, config.backend)
    setup_logging(runtime.is_main)
    try:
        return train(config, runtime)
    except NonFiniteError as error:
        log.error("%s", error)
        return 1
    except (ConfigError, CheckpointError) as error:
        log.error("%s", error)
        return 2
    finally:
        distributed.teardown()
