"""Fixed sine-cosine position embeddings in MAE's channel layout (2D) and MAE-ST's (3D)."""

from __future__ import annotations

import torch
from einops import repeat

from splathead.typing import Float, Tensor, typecheck


def _sincos_1d(positions: Tensor, dim: int, temperature: float) -> Tensor:
    """``[n dim]`` float64: ``[sin(p w_i) | cos(p w_i)]`` with ``w_i = temperature ** (-i / (dim/2))``,
    MAE's ``get_1d_sincos_pos_embed_from_grid``."""
    num_freqs = dim // 2
    freqs = temperature ** -(torch.arange(num_freqs, dtype=torch.float64) / num_freqs)
    angles = positions.to(torch.float64)[:, None] * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=1)


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
    rows, cols = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    table = torch.cat(
        [
            _sincos_1d(cols.flatten(), embed_dim // 2, temperature),
            _sincos_1d(rows.flatten(), embed_dim // 2, temperature),
        ],
        dim=1,
    )
    prefix = table.new_zeros(num_prefix_tokens, embed_dim)
    return torch.cat([prefix, table]).float()


@typecheck
def sincos_pos_embed_3d(
    embed_dim: int, grid_size: tuple[int, int, int], *, temperature: float = 10000.0
) -> Float[Tensor, "l d"]:
    """MAE-ST's fixed 3D sin-cos table for a ``(gt, gh, gw)`` tubelet grid, float32 ``[l d]``.

    Rows follow the tubelets time slowest, then rows, then columns. The first ``d / 4`` channels
    encode the time slot (1D sin-cos), the other ``3 d / 4`` the patch as
    :func:`sincos_pos_embed_2d` does, as in MAE-ST's ``get_3d_sincos_pos_embed`` (which the
    Video-GMAE decoder uses). ``d`` must be a multiple of 16.
    """
    if embed_dim % 16 != 0 or embed_dim <= 0:
        raise ValueError(f"embed_dim must be a positive multiple of 16, got {embed_dim}")
    grid_t, grid_h, grid_w = grid_size
    if grid_t < 1:
        raise ValueError(f"grid_size must be positive, got {grid_size}")
    spatial = sincos_pos_embed_2d(embed_dim // 4 * 3, (grid_h, grid_w), temperature=temperature)
    temporal = _sincos_1d(torch.arange(grid_t), embed_dim // 4, temperature).float()
    return torch.cat(
        [
            repeat(temporal, "gt d -> (gt l) d", l=grid_h * grid_w),
            repeat(spatial, "l d -> (gt l) d", gt=grid_t),
        ],
        dim=1,
    )
