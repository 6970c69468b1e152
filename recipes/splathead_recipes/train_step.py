"""One optimiser step, the same for every recipe: pretraining, linear probe, fine-tune.

A recipe says what a micro-batch's loss is (:data:`Forward`); :class:`TrainStep` does the rest:
gradient accumulation with one DDP gradient all-reduce per step, autocast and the fp16 grad
scaler, gradient clipping, and one all-reduce of the step's loss and flags, so that every rank
takes the same decision (step, stop on a signal, stop on a non-finite loss) from the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from splathead_recipes import distributed
from splathead_recipes.data import Batch

Forward = Callable[[nn.Module, Batch], tuple[torch.Tensor, Any]]
"""``forward(model, batch) -> (loss, output)`` for one micro-batch on the device; ``model`` is
the DDP-wrapped module under torchrun. ``output`` is handed on to the step hooks."""

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class StepResult:
    """What one optimiser step did, the same on every rank (except ``batch`` and ``output``)."""

    loss: float  # mean over micro-batches and ranks
    grad_norm: float  # before clipping
    num_skipped: int  # unreadable images replaced, summed over micro-batches and ranks
    non_finite: bool  # some rank saw a NaN/Inf loss (or gradient); the optimiser did not step
    stop: bool  # some rank was asked to stop (SIGTERM / SIGUSR1)
    batch: Batch  # this rank's last micro-batch, on the device
    output: Any  # ``forward``'s output for it


class TrainStep:
    """Forward and backward over ``accum_steps`` micro-batches, unscale, clip, sync, step.

    Args:
        model: the module to train, DDP-wrapped when distributed.
        optimizer: its optimiser; each group's ``lr`` is set per step (times its ``lr_scale``,
            timm's convention for layer-wise decay, when it has one).
        forward: the loss of one micro-batch (:data:`Forward`).
        accum_steps: micro-batches per optimiser step.
        clip_grad: gradient-norm clip, 0 for none (the norm is still measured and logged).
        precision: "bf16" / "fp16" autocast, or "fp32" for none; fp16 scales the loss.
        device: where the micro-batches go.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, forward: Forward,
                 accum_steps: int, clip_grad: float, precision: str,
                 device: torch.device) -> None:
        self.model = model
        self.optimizer = optimizer
        self.forward = forward
        self.accum_steps = accum_steps
        self.clip_grad = clip_grad
        self.device = device
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.autocast = (torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])
                         if precision in AUTOCAST_DTYPES else nullcontext())
        self.parameters = [p for p in model.parameters() if p.requires_grad]

    def set_learning_rate(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)

    def __call__(self, batches: Iterator[Batch], *, stop_requested: bool) -> StepResult:
        """One optimiser step over the next ``accum_steps`` micro-batches of ``batches``."""
        loss_sum = torch.zeros((), device=self.device)
        skipped = 0
        for micro_step in range(self.accum_steps):
            batch = next(batches).to(self.device)
            # DDP all-reduces gradients once per optimiser step, on the last micro-batch.
            skip_sync = (isinstance(self.model, nn.parallel.DistributedDataParallel)
                         and micro_step < self.accum_steps - 1)
            with self.model.no_sync() if skip_sync else nullcontext():
                with self.autocast:
                    loss, output = self.forward(self.model, batch)
                self.scaler.scale(loss / self.accum_steps).backward()
            loss_sum += loss.detach().float()
            skipped += batch.num_skipped
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters, self.clip_grad or math.inf)
        loss = loss_sum / self.accum_steps
        # fp16's scaler skips steps with Inf gradients by design; only the loss counts there.
        bad = ~torch.isfinite(loss) if self.scaler.is_enabled() else ~(
            torch.isfinite(loss) & torch.isfinite(grad_norm))
        # One all-reduce (and one host sync) per step: loss, skipped files, NaN, stop.
        flags = torch.tensor([skipped, stop_requested], dtype=torch.float32, device=self.device)
        stats = torch.cat([loss[None], flags[:1], bad.float()[None], flags[1:]])
        loss_total, skipped_total, bad_ranks, stop_ranks = (
            distributed.all_reduce_sum(stats).tolist())
        if not bad_ranks:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return StepResult(loss=loss_total / distributed.world_size(),
                          grad_norm=float(grad_norm), num_skipped=int(skipped_total),
                          non_finite=bool(bad_ranks), stop=bool(stop_ranks), batch=batch,
                          output=output)
