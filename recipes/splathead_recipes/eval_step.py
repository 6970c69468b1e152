"""Evaluation over a loader: metrics summed on every rank, then over ranks, then averaged.

The evaluation counterpart of :class:`~splathead_recipes.train_step.TrainStep`: a recipe says
what one batch contributes (:data:`Measure`), :func:`evaluate` runs it without gradients under
the training autocast and reduces with one all-reduce at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn

from splathead_recipes import distributed
from splathead_recipes.data import Batch

Measure = Callable[[nn.Module, Batch], dict[str, torch.Tensor]]
"""``measure(model, batch) -> {name: sum over the batch's images}`` (0-d tensors); the number of
images is counted by :func:`evaluate`, which returns each sum divided by it."""


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[Batch], measure: Measure, *,
             device: torch.device,
             autocast: AbstractContextManager | None = None) -> dict[str, float]:
    """Per-image means of ``measure``'s sums over all of ``batches`` on all ranks.

    Every rank must call it (it all-reduces once) with the same metric names. The model is put
    in eval mode for the pass and restored to its previous mode after it.
    """
    was_training = model.training
    model.eval()
    sums: dict[str, torch.Tensor] = {}
    count = torch.zeros((), device=device)
    try:
        for batch in batches:
            batch = batch.to(device)
            with autocast or nullcontext():
                measured = measure(model, batch)
            for name, value in measured.items():
                sums[name] = sums.get(name, 0) + value.detach().float()
            count += batch.images.shape[0]
    finally:
        model.train(was_training)
    names = sorted(sums)
    totals = distributed.all_reduce_sum(torch.stack([*(sums[name] for name in names), count]))
    *values, images = totals.tolist()
    if images == 0:
        raise ValueError("evaluate() got no batches on any rank")
    return {name: value / images for name, value in zip(names, values)}
