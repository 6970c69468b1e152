"""AdamW with timm's or MAE's weight-decay split; the per-step warmup + cosine learning rate
(MAE's) and the GMAE authors' per-epoch one."""

from __future__ import annotations

import math
from typing import Literal

import torch
from timm.optim import param_groups_weight_decay
from torch import nn

from splathead_recipes.config import Config
from splathead_recipes.settings import RunConfig


def param_groups(model: nn.Module, weight_decay: float, *,
                 split: Literal["timm", "mae"] = "timm") -> list[dict]:
    """Decayed weight matrices, then the undecayed rest: biases and 1-D parameters (norms), and
    with ``split="timm"`` also the names in ``model.no_weight_decay()`` (learned tokens and
    embeddings); ``"mae"`` decays those, as MAE's pretraining (timm's ``add_weight_decay``
    without a skip list) and the GMAE authors' do.
    """
    wanted = split == "timm" and hasattr(model, "no_weight_decay")
    skip = model.no_weight_decay() if wanted else ()
    groups = param_groups_weight_decay(model, weight_decay, no_weight_decay_list=skip)
    # timm lists the undecayed group first; checkpoints hold the optimiser state in the order
    # decayed, undecayed, so keep that order for them to load.
    return sorted(groups, key=lambda group: group["weight_decay"] == 0)


def build_optimizer(model: nn.Module, config: RunConfig, *, decay_groups: Literal["timm", "mae"],
                    fused: bool) -> torch.optim.AdamW:
    """AdamW with ``config``'s learning rate, betas and weight decay on :func:`param_groups`."""
    return torch.optim.AdamW(param_groups(model, config.weight_decay, split=decay_groups),
                             lr=config.learning_rate, betas=config.betas, fused=fused or None)


def learning_rate(step: int, *, config: RunConfig, steps_per_epoch: int) -> float:
    """Linear warmup from 0 over ``warmup_epochs``, then a cosine to ``min_lr``; per step.

    timm's ``CosineLRScheduler(warmup_prefix=True)`` computes the same curve with its factors in
    another order, so it differs in the last bits (up to 8e-12 relative over the paper's 500k
    steps), and it refuses a warmup as long as the run.
    """
    warmup = config.warmup_epochs * steps_per_epoch
    total = config.epochs * steps_per_epoch
    peak = config.learning_rate
    if step < warmup:
        return peak * step / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return config.min_lr + (peak - config.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def per_epoch_learning_rate(step: int, *, config: Config, steps_per_epoch: int) -> float:
    """The GMAE authors' schedule, constant within each epoch ``e = step // steps_per_epoch``:
    ``(e + 1) / warmup_epochs`` of the peak during the warmup (a fifth in the first of 5
    epochs), then ``min_lr + (peak - min_lr) (1 + cos(pi (e + 1 - warmup) / (epochs -
    warmup))) / 2``, which reaches ``min_lr`` in the last epoch."""
    epoch, warmup, peak = step // steps_per_epoch, config.warmup_epochs, config.learning_rate
    if epoch < warmup:
        return peak * (epoch + 1) / warmup
    progress = (epoch + 1 - warmup) / max(config.epochs - warmup, 1)
    return config.min_lr + (peak - config.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
