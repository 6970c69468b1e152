"""MAE's initialisation: for any module (:func:`init_like_mae`) and for a timm ViT trained from
scratch (:func:`init_vit_like_mae`)."""

from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from splathead.pos_embed import sincos_pos_embed_2d

__all__ = ["init_like_mae", "init_vit_like_mae"]


def init_like_mae(module: nn.Module) -> None:
    """MAE's init for one module (use with ``apply``): xavier-uniform Linear weights, zero
    biases, LayerNorm weight 1 and bias 0."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def init_vit_like_mae(vit: VisionTransformer) -> VisionTransformer:
    """Initialise a timm ViT for pretraining as MAE does, in place; returns ``vit``.

    Fixed 2D sin-cos positions (MAE layout, zero rows for prefix tokens, ``requires_grad``
    False), xavier-uniform Linear and patch-projection weights, zero biases, cls token normal
    with std 0.02.
    """
    grid_size = tuple(vit.patch_embed.grid_size)
    num_position_prefix = vit.pos_embed.shape[1] - grid_size[0] * grid_size[1]
    table = sincos_pos_embed_2d(vit.embed_dim, grid_size, num_prefix_tokens=num_position_prefix)
    with torch.no_grad():
        vit.pos_embed.copy_(table[None])
    vit.pos_embed.requires_grad_(False)
    vit.apply(init_like_mae)
    nn.init.xavier_uniform_(vit.patch_embed.proj.weight.view(vit.embed_dim, -1))
    if vit.cls_token is not None:
        nn.init.normal_(vit.cls_token, std=0.02)
    return vit
