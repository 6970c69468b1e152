"""AdamW with MAE's weight-decay split and the per-step warmup + cosine learning rate."""

from __future__ import annotations

import math

import torch
from torch import nn

from pretrain.config import Config

# Learned tokens and embeddings (cls, registers, positions, GMAE's queries) are not decayed.
_TOKEN_SUFFIXES = ("token", "_embed")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed weight matrices; biases, norms, 1-D parameters and tokens undecayed.

    A model may name more undecayed parameters through ``no_weight_decay()`` (timm's protocol).
    """
    extra = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        if parameter.ndim <= 1 or leaf.endswith(_TOKEN_SUFFIXES) or name in extra:
            no_decay.append(parameter)
        else:
            decay.append(parameter)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, config: Config, *, fused: bool) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.learning_rate,
                             betas=config.betas, fused=fused or None)


def learning_rate(step: int, *, config: Config, steps_per_epoch: int) -> float:
    """Linear warmup from 0 over ``warmup_epochs``, then a cosine to ``min_lr``; per step."""
    warmup = config.warmup_epochs * steps_per_epoch
    total = config.epochs * steps_per_epoch
    peak = config.learning_rate
    if step < warmup:
        return peak * step / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return config.min_lr + (peak - config.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
