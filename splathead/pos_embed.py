"""Fixed 2D sine-cosine position embeddings in MAE's channel layout."""

from __future__ import annotations

import torch
from einops import rearrange

from splathead.typing import Float, Tensor, typecheck


@typecheck
def sincos_pos_embed_2d(
    embed_dim: int,
    grid_size: tuple[int, int],
    *,
    num_prefix_tokens: int = 0,
    temperature: float = 10000.0,
) -> Float[Tensor, "t d"]:
    """MAE's fixed 2D sin-cos position table for a ``(gh, gw)`` patch grid, float32 ``[t d]``.

    Rows follow the patches in row-major order after ``num_prefix_tokens`` zero rows (cls,
    registers: MAE gives its cls token a zero position). Channels, with ``f = d / 4``
    frequencies ``temperature ** (-i / f)``: ``[sin(col), cos(col), sin(row), cos(row)]``, each
    ``f`` wide; the column (width) coordinate comes first, as in MAE's
    ``get_2d_sincos_pos_embed``. (timm's ``build_sincos2d_pos_embed`` orders channels
    ``[sin, sin, cos, cos]`` instead, so it is not a drop-in for MAE checkpoints.)
    """
    if embed_dim % 4 != 0 or embed_dim <= 0:
        raise ValueError(f"embed_dim must be a positive multiple of 4, got {embed_dim}")
    grid_h, grid_w = grid_size
    if grid_h < 1 or grid_w < 1:
        raise ValueError(f"grid_size must be positive, got {grid_size}")
    if num_prefix_tokens < 0:
        raise ValueError(f"num_prefix_tokens must be >= 0, got {num_prefix_tokens}")
    num_freqs = embed_dim // 4
    freqs = temperature ** -(torch.arange(num_freqs, dtype=torch.float64) / num_freqs)
    rows, cols = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float64),
        torch.arange(grid_w, dtype=torch.float64),
        indexing="ij",
    )
    coords = rearrange(torch.stack([cols, rows]), "coord gh gw -> (gh gw) coord 1")
    angles = coords * freqs  # [l 2 f]
    table = rearrange(
        torch.stack([angles.sin(), angles.cos()], dim=2), "l coord trig f -> l (coord trig f)"
    )
    prefix = table.new_zeros(num_prefix_tokens, embed_dim)
    return torch.cat([prefix, table]).float()
