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
import os
import signal
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.contrib.logging import logging_redirect_tqdm

from splathead.gaussians import InvalidGaussiansError

from splathead_recipes import checkpoint, distributed
from splathead_recipes.checkpoint import (
    Checkpointer, CheckpointError, NonFiniteError, Stateful, WriteError, newest_name,
    seed_everything)
from splathead_recipes.cli import ConfigError
from splathead_recipes.data import ResumableSampler, stop_workers
from splathead_recipes.distributed import Runtime
from splathead_recipes.logs import MetricsLog, setup_logging
from splathead_recipes.run_lock import FolderLock, FolderUnusableError
from splathead_recipes.settings import RunConfig
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


def compile_blocks(model: nn.Module) -> None:
    """Compile each transformer block in place; the renderer stays eager (custom kernels)."""
    from timm.models.vision_transformer import Block

    for module in model.modules():
        if isinstance(module, Block):
            module.compile()


def prepare_output_dir(settings: RunConfig) -> Path:
    """``output_dir``, created; :class:`ConfigError` if it holds another run's files.

    Collective: every rank calls it."""
    output_dir = Path(settings.output_dir)
    if problem := checkpoint.foreign_run_problem(output_dir, settings.resume):
        raise ConfigError(problem)
    distributed.barrier()  # every rank has looked before rank 0 writes there
    output_dir.mkdir(parents=True, exist_ok=True)
    return output_dir


def write_config(settings: RunConfig, runtime: Runtime) -> None:
    """``config.json`` in the output folder: named at INFO, its text at DEBUG."""
    config_json = json.dumps(dataclasses.asdict(settings), indent=2)
    path = Path(settings.output_dir) / "config.json"
    checkpoint.write_text_atomic(config_json + "\n", path)
    log.info("%s, world size %d; settings in %s", runtime.device, runtime.world_size, path)
    log.debug("config:\n%s", config_json)


def fit(settings: RunConfig, runtime: Runtime, *, model: nn.Module,
        optimizer: torch.optim.Optimizer, forward: Forward, loader: DataLoader,
        sampler: ResumableSampler, schedule: Callable[[int], float],
        hooks: Sequence[StepHook] = (), evaluation: Evaluation | None = None,
        eval_interval: int = 0, extras: Mapping[str, Stateful] = {}) -> int:
    """Train ``model`` until ``settings.epochs`` (or ``max_steps``); returns the exit status 0.

    Args:
        settings: the recipe's config (a :class:`~splathead_recipes.settings.RunConfig`),
            saved in every checkpoint.
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
    step_fn = TrainStep(model, optimizer, forward=forward, accum_steps=settings.accum_steps,
                        clip_grad=settings.clip_grad, precision=settings.precision,
                        device=runtime.device)
    checkpointer = Checkpointer(output_dir, config=dataclasses.asdict(settings),
                                keep=settings.keep_checkpoints, runtime=runtime, model=model,
                                optimizer=optimizer, scaler=step_fn.scaler,
                                steps_per_epoch=steps_per_epoch, extras=extras)

    # Resume.
    step, skipped_total = checkpointer.resume(settings.resume, seed=settings.seed)
    _prepare(settings, runtime, step_fn, steps_per_epoch=steps_per_epoch,
             per_gpu_batch=loader.batch_size)
    metrics = (MetricsLog(output_dir, start_step=step, total_steps=last_step,
                          images_per_step=settings.batch_size, steps_per_epoch=steps_per_epoch)
               if runtime.is_main else None)
    # Log lines go above the progress bar instead of through it.
    quiet_bar = logging_redirect_tqdm() if metrics is not None else contextlib.nullcontext()
    try:
        with StopSignal() as stop, quiet_bar:
            step_fn.model.train()
            for epoch_end, batches in _epochs(loader, sampler, step, last_step):
                while step < epoch_end:
                    # Step.
                    lr = schedule(step)
                    result = _optimizer_step(step_fn, batches, lr, step=step, stop=stop,
                                             output_dir=output_dir,
                                             steps_per_epoch=steps_per_epoch)
                    step += 1
                    skipped_total += result.num_skipped
                    extra = {name: value for hook in hooks
                             for name, value in hook(step, result).items()}
                    if metrics is not None:
                        metrics.log_step(step, loss=result.loss, lr=lr,
                                         grad_norm=result.grad_norm, skipped_images=skipped_total,
                                         extra=extra,
                                         full=step % settings.log_every == 0 or step == last_step)
                    # Evaluate.
                    if evaluation is not None and (
                            step == last_step or (eval_interval and step % eval_interval == 0)):
                        _evaluate(evaluation, metrics, step)
                    if result.num_skipped:
                        log.warning("step %d: %d unreadable images replaced (%d so far)", step,
                                    result.num_skipped, skipped_total)
                    # Checkpoint.
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


def _prepare(settings: RunConfig, runtime: Runtime, step_fn: TrainStep, *,
             steps_per_epoch: int, per_gpu_batch: int) -> None:
    """After resuming: ``config.json`` written (rank 0), the blocks compiled if asked, the
    model DDP-wrapped under torchrun, the run's size logged."""
    model = step_fn.model
    if runtime.is_main:
        write_config(settings, runtime)
    if settings.compile:
        compile_blocks(model)
    if runtime.distributed:
        step_fn.model = DistributedDataParallel(
            model, device_ids=[runtime.local_rank] if runtime.device.type == "cuda" else None)
    log.info("%.1fM parameters, %d steps per epoch, %d per-GPU x %d accum x %d ranks = batch %d",
             sum(p.numel() for p in model.parameters()) / 1e6, steps_per_epoch,
             per_gpu_batch, settings.accum_steps, runtime.world_size, settings.batch_size)


def _optimizer_step(step_fn: TrainStep, batches: Iterator, lr: float, *, step: int,
                    stop: StopSignal, output_dir: Path, steps_per_epoch: int) -> StepResult:
    """Step ``step`` at learning rate ``lr``; :class:`NonFiniteError` (naming the last good
    checkpoint) instead of an optimiser step on a non-finite loss or gradient, or when the
    model's weights give invalid Gaussians (the weights the earlier steps left, so the last good
    checkpoint is one from before ``step``)."""
    step_fn.set_learning_rate(lr)
    try:
        result = step_fn(batches, stop_requested=stop.received is not None)
    except InvalidGaussiansError as error:
        raise NonFiniteError(
            f"non-finite model at step {step} (epoch {step // steps_per_epoch}): its weights "
            f"give {error}, so they diverged in the steps before (learning rate {lr:.3g} now: "
            f"too high, or too short a warmup?). Last good checkpoint: "
            f"{newest_name(output_dir, before=step)}") from None
    if result.non_finite:
        raise NonFiniteError(
            f"non-finite loss or gradient at step {step} (epoch {step // steps_per_epoch}); "
            f"stopped before the optimiser step. Last good checkpoint: "
            f"{newest_name(output_dir)}")
    return result


def _evaluate(evaluation: Evaluation, metrics: MetricsLog | None, step: int) -> None:
    """Run ``evaluation`` (every rank), rank 0 records its results."""
    results = evaluation(step)
    if metrics is not None:
        metrics.evaluation(step, results)


def _epochs(loader: DataLoader, sampler: ResumableSampler, step: int,
            last_step: int) -> Iterator[tuple[int, Iterator]]:
    """``(epoch_end, batches)`` of each epoch from the one holding ``step`` on: the sampler set
    to that epoch and to the step inside it, ``epoch_end`` its last step (or ``last_step``)."""
    steps_per_epoch = sampler.steps_per_epoch
    while step < last_step:
        epoch = step // steps_per_epoch
        sampler.set_epoch(epoch)
        sampler.set_start_step(step - epoch * steps_per_epoch)
        epoch_end = min((epoch + 1) * steps_per_epoch, last_step)
        yield epoch_end, iter(loader)
        step = epoch_end


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
    ``config.backend``), torn down on every path. Global rank 0 holds ``--output-dir``'s
    lock (:class:`~splathead_recipes.run_lock.FolderLock`) from validation to the end.

    Returns the exit status: 0 done (or checkpointed on a signal), 1 failed in training (a
    non-finite value, a file that could not be written), 2 a setting or checkpoint that cannot
    work, found before any training step (in validation, or once data, model or checkpoint
    load).
    """
    try:
        validate(config, world_size=distributed.world_size_from_env(),
                 cuda_available=torch.cuda.is_available())
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    lock = None
    if os.environ.get("RANK", "0") == "0":  # one lock per job, held by global rank 0
        try:
            lock = FolderLock(Path(config.output_dir))
        except FolderUnusableError as error:  # taken since validation, or not writable after all
            print(f"error: {error}", file=sys.stderr)
            return 2
    runtime = distributed.setup(config.device, config.backend)
    setup_logging(runtime.is_main)
    try:
        return train(config, runtime)
    except (NonFiniteError, WriteError) as error:
        log.error("%s", error)
        return 1
    except (ConfigError, CheckpointError) as error:
        log.error("%s", error)
        return 2
    finally:
        distributed.teardown()
        if lock is not None:
            lock.release()
