"""AdamW with MAE's weight-decay split and the per-step warmup + cosine learning rate."""

from __future__ import annotations

import math

import torch
from timm.optim import param_groups_weight_decay
from torch import nn

from splathead_recipes.config import Config
from splathead_recipes.settings import RunConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decayed weight matrices, then the undecayed rest (biases, norms, 1-D parameters and the
    names in ``model.no_weight_decay()``: learned tokens and embeddings), as timm splits them.
    """
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    groups = param_groups_weight_decay(model, weight_decay, no_weight_decay_list=skip)
    # timm lists the undecayed group first; checkpoints hold the optimiser state in the order
    # decayed, undecayed, so keep that order for them to load.
    return sorted(groups, key=lambda group: group["weight_decay"] == 0)


def build_optimizer(model: nn.Module, config: Config, *, fused: bool) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.learning_rate,
                             betas=config.betas, fused=fused or None)


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
