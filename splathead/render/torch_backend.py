"""The pure-PyTorch splatting backend: the renderer's specification in code.

It computes exactly what ``gsplat.rasterization(..., packed=False, rasterize_mode="classic")``
computes, on any device, differentiably through autograd.

Compositing. After projection (:mod:`splathead.render.projection`) each image's Gaussians are
sorted front to back by camera z (stable, so ties keep their index order). For the pixel centre
``p = (j + 0.5, i + 0.5)`` and Gaussian ``k`` with screen centre ``m_k``, conic ``(a, b, c)``,
opacity ``o_k`` and features ``f_k``::

    d       = m_k - p
    sigma_k = 0.5 (a d_x^2 + c d_y^2) + b d_x d_y
    alpha_k = min(0.999, o_k exp(-sigma_k)),   set to 0 if sigma_k < 0 or alpha_k < 1/255
    T_k     = prod_{l < k} (1 - alpha_l)                      (transmittance in front of k)

The pixel stops *before* the first Gaussian with ``T_k (1 - alpha_k) <= 1e-4``: neither it nor
anything behind it is added. With ``alpha_k`` zeroed from there on::

    image = sum_k alpha_k T_k f_k + T_final background,     alpha = 1 - T_final,
    T_final = prod_k (1 - alpha_k),
    depth = sum_k alpha_k T_k z_k / max(alpha, 1e-10)      (gsplat's "ED" expected depth)

Cost. A Gaussian reaches only pixels inside its bounding box (gsplat's radii; the box holds every
pixel where ``alpha >= 1/255``), so instead of every Gaussian at every pixel the image is cut
into ``tile_size``-square tiles and each tile composites only the Gaussians whose box touches it,
in depth order. Tiles are grouped by how many Gaussians they hold and each group is padded to
its largest list (padding has opacity 0), so the work follows the covered area, not ``n h w``.

Memory. Groups are cut into chunks of at most ``max_chunk_elements`` (pixel, Gaussian) pairs,
each under :func:`torch.utils.checkpoint.checkpoint`: the backward pass recomputes a chunk instead
of keeping its intermediates, so peak memory is a few chunks whatever the batch size.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from einops import rearrange
from torch.utils.checkpoint import checkpoint

from splathead.render.projection import ALPHA_THRESHOLD, ProjectedGaussians, project_gaussians
from splathead.typing import Float, Int, Tensor, typecheck

MAX_ALPHA = 0.999
"""Per-Gaussian alpha is clamped to this, so transmittance never reaches exactly 0."""
MIN_TRANSMITTANCE = 1e-4
"""A pixel stops before the Gaussian that would bring its transmittance to this or below."""
TILE_SIZE = 16
MAX_CHUNK_ELEMENTS = 1 << 22
"""Upper bound on (pixel, Gaussian) pairs evaluated at once (~16 MiB per float32 temporary)."""


@typecheck
def composite(
    pixels_x: Float[Tensor, "m u"],
    pixels_y: Float[Tensor, "m v"],
    means2d: Float[Tensor, "m k 2"],
    conics: Float[Tensor, "m k 3"],
    opacities: Float[Tensor, "m k"],
    features: Float[Tensor, "m k f"],
) -> tuple[Float[Tensor, "m v u f"], Float[Tensor, "m v u"]]:
    """Front-to-back compositing of ``k`` depth-sorted Gaussians over a ``v x u`` pixel grid
    (column centres ``pixels_x``, row centres ``pixels_y``), ``m`` times.

    Returns ``sum_k alpha_k T_k f_k`` (no background) and the final transmittance ``T_final``
    per pixel, with the skip and stop rules of the module docstring. Padding entries should have
    opacity 0.
    """
    # The grid is separable: the quadratic form's x and y parts are computed per column and row.
    dx = (means2d[:, None, :, 0] - pixels_x[:, :, None])[:, None]  # [m 1 u k]
    dy = (means2d[:, None, :, 1] - pixels_y[:, :, None])[:, :, None]  # [m v 1 k]
    a, b, c = conics[:, None, None].unbind(-1)  # [m 1 1 k] each
    sigma = torch.addcmul(0.5 * a * dx * dx + 0.5 * c * dy * dy, b * dx, dy)  # [m v u k]
    alpha = torch.clamp(opacities[:, None, None] * torch.exp(-sigma), max=MAX_ALPHA)
    alpha = torch.where((sigma >= 0) & (alpha >= ALPHA_THRESHOLD), alpha, 0.0)
    transmittance_after = torch.cumprod(1 - alpha, dim=-1)
    # Transmittance only falls, so "not yet stopped" is a prefix of each pixel's list.
    alpha = torch.where(transmittance_after > MIN_TRANSMITTANCE, alpha, 0.0)
    # For the kept prefix, the transmittance in front equals that of the unstopped list.
    transmittance_before = torch.cat(
        [torch.ones_like(alpha[..., :1]), transmittance_after[..., :-1]], dim=-1
    )
    weights = rearrange(alpha * transmittance_before, "m v u k -> m (v u) k")
    summed = rearrange(weights @ features, "m (v u) f -> m v u f", v=pixels_y.shape[1])
    return summed, torch.prod(1 - alpha, dim=-1)


def _composite_tiles(
    tile_ids: Int[Tensor, " m"],
    gaussian_ids: Int[Tensor, "m k"],
    means2d: Float[Tensor, "g 2"],
    conics: Float[Tensor, "g 3"],
    opacities: Float[Tensor, " g"],
    features: Float[Tensor, "g f"],
    tiles_x: int,
    tile_size: int,
) -> Float[Tensor, "m p f_plus_1"]:
    """Composite ``m`` tiles, each from its list of flat Gaussian ids; returns features and
    ``T_final`` concatenated (one tensor, so a checkpointed call has a single output)."""
    offsets = torch.arange(tile_size, device=tile_ids.device, dtype=means2d.dtype) + 0.5
    origin_x = (tile_ids % tiles_x).to(means2d.dtype)[:, None] * tile_size
    origin_y = (tile_ids // tiles_x).to(means2d.dtype)[:, None] * tile_size
    summed, transmittance = composite(
        origin_x + offsets, origin_y + offsets, means2d[gaussian_ids], conics[gaussian_ids],
        opacities[gaussian_ids], features[gaussian_ids],
    )
    return rearrange(torch.cat([summed, transmittance[..., None]], dim=-1), "m v u f -> m (v u) f")


def _padded_lengths(counts: Int[Tensor, " t"]) -> Int[Tensor, " t"]:
    """Round list lengths up to 1, 2, 3, 4, 6, 8, 12, 16, 24, ... (padding wastes < 50%)."""
    power = torch.pow(2.0, torch.floor(torch.log2(counts.clamp(min=1).double())))
    three_halves = (power * 1.5).ceil()
    padded = torch.where(counts <= three_halves, three_halves, 2 * power)
    return torch.where(counts <= power, power, padded).long()


@torch.no_grad()
def _bin_into_tiles(
    projected: ProjectedGaussians,
    order: Int[Tensor, "b n"],
    tiles_x: int,
    tiles_y: int,
    tile_size: int,
) -> tuple[Int[Tensor, "b t n"], Int[Tensor, "b t"]]:
    """For every (image, tile), the depth ranks of the Gaussians whose box touches the tile,
    first in ascending rank and then padded with ``n``; and how many there are.

    Tile ranges follow gsplat's intersection rule,
    ``floor((m - r) / s) <= tile < ceil((m + r) / s)`` per axis.
    """
    n = order.shape[1]
    means2d = torch.gather(projected.means2d.detach(), 1, order[..., None].expand(-1, -1, 2))
    radii = torch.gather(projected.radii, 1, order[..., None].expand(-1, -1, 2)).to(means2d.dtype)
    tile_counts = torch.tensor([tiles_x, tiles_y], device=means2d.device)
    first = torch.floor((means2d - radii) / tile_size).long().clamp(min=0)
    first = torch.minimum(first, tile_counts)
    last = torch.ceil((means2d + radii) / tile_size).long().clamp(min=0)
    last = torch.minimum(last, tile_counts)
    visible = (radii > 0).all(dim=-1)
    tile_x = torch.arange(tiles_x, device=means2d.device)[:, None]  # [tx 1] against [b 1 n]
    tile_y = torch.arange(tiles_y, device=means2d.device)[:, None]
    touches_x = (first[:, None, :, 0] <= tile_x) & (tile_x < last[:, None, :, 0])  # [b tx n]
    touches_y = (first[:, None, :, 1] <= tile_y) & (tile_y < last[:, None, :, 1])  # [b ty n]
    touches = touches_y[:, :, None, :] & touches_x[:, None, :, :] & visible[:, None, None, :]
    touches = rearrange(touches, "b ty tx n -> b (ty tx) n")
    ranks = torch.arange(n, device=means2d.device)
    lists = torch.where(touches, ranks, n).sort(dim=-1).values
    return lists, touches.sum(dim=-1)


@typecheck
def render(
    means: Float[Tensor, "b n 3"],
    quats: Float[Tensor, "b n 4"],
    scales: Float[Tensor, "b n 3"],
    colors: Float[Tensor, "b n c"],
    opacities: Float[Tensor, "b n"],
    background: Float[Tensor, "b c"],
    *,
    viewmat: Float[Tensor, "4 4"],
    intrinsics: Float[Tensor, "3 3"],
    width: int,
    height: int,
    model: Literal["ortho", "pinhole"] = "pinhole",
    near: float = 0.01,
    far: float = 1e10,
    render_depth: bool = False,
    tile_size: int = TILE_SIZE,
    max_chunk_elements: int = MAX_CHUNK_ELEMENTS,
) -> tuple[Float[Tensor, "b c h w"], Float[Tensor, "b 1 h w"], Float[Tensor, "b 1 h w"] | None]:
    """Render ``b`` images of ``n`` Gaussians each (see the module docstring for the maths).

    All tensors share one device and dtype (float32 or float64). Returns channels-first
    ``(image, alpha, depth)``; ``depth`` is ``None`` unless ``render_depth``.
    """
    b, n, c = colors.shape
    projected = project_gaussians(
        means, quats, scales, opacities, viewmat=viewmat, intrinsics=intrinsics, width=width,
        height=height, model=model, near=near, far=far,
    )
    features = colors
    if render_depth:
        features = torch.cat([colors, projected.depths[..., None]], dim=-1)
    num_features = features.shape[-1]

    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    num_tiles = tiles_x * tiles_y
    order = torch.argsort(projected.depths.detach(), dim=1, stable=True)
    lists, counts = _bin_into_tiles(projected, order, tiles_x, tiles_y, tile_size)

    # Depth-sorted Gaussians of all images in one flat table; row b * n holds the padding
    # (opacity 0, so it never contributes).
    def flat_sorted(field: Tensor, pad: float) -> Tensor:
        index = order.view(b, n, *[1] * (field.dim() - 2)).expand_as(field)
        sorted_field = torch.gather(field, 1, index)
        padding = torch.full((1, *field.shape[2:]), pad, dtype=field.dtype, device=field.device)
        return torch.cat([sorted_field.flatten(0, 1), padding])

    table = (
        flat_sorted(projected.means2d, 0.0),
        flat_sorted(projected.conics, 1.0),
        flat_sorted(opacities, 0.0),
        flat_sorted(features, 0.0),
    )
    image_of_tile = torch.arange(b, device=means.device).repeat_interleave(num_tiles)
    flat_lists = torch.where(lists < n, lists + image_of_tile.view(b, num_tiles, 1) * n, b * n)
    flat_lists, counts = flat_lists.flatten(0, 1), counts.flatten()
    lengths = _padded_lengths(counts)

    # Tiles no Gaussian touches keep the "empty" row: nothing added, transmittance 1.
    empty = means.new_zeros(1, tile_size * tile_size, num_features + 1)
    empty[..., -1] = 1.0
    parts, row_of_tile = [empty], torch.zeros(b * num_tiles, dtype=torch.long, device=means.device)
    num_rows = 1
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in table)
    for length in torch.unique(lengths[counts > 0]).tolist():
        group = torch.nonzero((lengths == length) & (counts > 0)).squeeze(1)
        per_chunk = max(1, max_chunk_elements // (length * tile_size * tile_size))
        for chunk in group.split(per_chunk):
            args = (chunk % num_tiles, flat_lists[chunk, :length], *table, tiles_x, tile_size)
            if needs_grad:
                parts.append(checkpoint(_composite_tiles, *args, use_reentrant=False))
            else:
                parts.append(_composite_tiles(*args))
        row_of_tile[group] = torch.arange(num_rows, num_rows + len(group), device=means.device)
        num_rows += len(group)
    per_tile = torch.cat(parts)[row_of_tile]  # [(b t) p f+1]

    per_pixel = rearrange(
        per_tile, "(b ty tx) (py px) f -> b f (ty py) (tx px)", b=b, ty=tiles_y, py=tile_size
    )[..., :height, :width]
    summed, transmittance = per_pixel[:, :num_features], per_pixel[:, num_features:]
    alpha = 1 - transmittance
    image = summed[:, :c] + transmittance * background[:, :, None, None]
    depth = summed[:, c:] / alpha.clamp(min=1e-10) if render_depth else None
    return image, alpha, depth
