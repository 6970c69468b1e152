"""The pure-PyTorch splatting backend: the renderer's specification in code.

It computes exactly what ``gsplat.rasterization(..., packed=False, rasterize_mode="classic")``
computes, on any device, differentiably (autograd, with the compositing's backward pass written
out in :class:`_Composite`).

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
Each group also has a fixed cost (Python, one kernel launch per operation), which dominates
small scenes; so neighbouring groups are merged whenever the padding this adds costs less than
the group it saves, with a group's fixed cost priced as ``group_cost`` (pixel, Gaussian) pairs.

Memory. Groups are cut into chunks of at most ``max_chunk_elements`` (pixel, Gaussian) pairs.
When the whole render holds more pairs than that, each chunk runs under
:func:`torch.utils.checkpoint.checkpoint`: the backward pass recomputes a chunk instead of
keeping its intermediates, so peak memory is a few chunks whatever the batch size. Below it, the
intermediates of one chunk's worth of pairs are simply kept (recomputing them would cost a
second forward pass for no memory that matters).
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint

from splathead.camera import CameraModel
from splathead.render.projection import ALPHA_THRESHOLD, ProjectedGaussians, project_gaussians
from splathead.typing import Float, Int, Tensor, typecheck

MAX_ALPHA = 0.999
"""Per-Gaussian alpha is clamped to this, so transmittance never reaches exactly 0."""
MIN_TRANSMITTANCE = 1e-4
"""A pixel stops before the Gaussian that would bring its transmittance to this or below."""
TILE_SIZE = 16
MAX_CHUNK_ELEMENTS = 1 << 22
"""Upper bound on (pixel, Gaussian) pairs evaluated at once (~16 MiB per float32 temporary)."""
GROUP_COST = 1 << 15
"""The fixed cost of compositing one more group of tiles, in (pixel, Gaussian) pairs: about
what one group's Python and kernel launches take on a CPU, forward and backward."""
MAX_SIGMA = 80.0
"""``sigma`` is clamped to this before ``exp(-sigma)``: it keeps the result a normal float32
(below about ``exp(-87)`` CPUs take a slow path for denormals), and ``o exp(-80)`` is far
below ``1/255`` for any opacity ``o <= 1``, so such pairs are skipped exactly as before."""


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
    opacity 0. Differentiable in ``means2d``, ``conics``, ``opacities`` and ``features``
    (once: the backward pass is written out, see :class:`_Composite`).
    """
    return _Composite.apply(pixels_x, pixels_y, means2d, conics, opacities, features)


class _Composite(torch.autograd.Function):
    """:func:`composite` with its gradient written out: far fewer full-size operations than
    autograd would record, and the backward pass dominates small renders on a CPU.

    With ``g_k = dL/dw_k`` for the weights ``w_k = alpha_k T_k`` (``g = G f_k`` from the
    gradient ``G`` of the summed features) and ``g_T`` the gradient of ``T_final``, only the
    drawn Gaussians (skip and stop rules passed, ``alpha_k`` not clamped at 0.999) get::

        dL/dalpha_k = g_k T_k - (sum_{j > k} g_j w_j + g_T T_final) / (1 - alpha_k)

    since every later ``T_j`` and ``T_final`` hold the factor ``1 - alpha_k``. From
    ``alpha_k = o_k exp(-sigma_k)``: ``dL/do_k = dL/dalpha_k exp(-sigma_k)`` and
    ``dL/dsigma_k = -dL/dalpha_k alpha_k``, and ``sigma``'s derivatives in ``d = m_k - p``
    and ``(a, b, c)`` are summed over the pixels, one grid axis at a time where they separate.
    """

    @staticmethod
    def forward(ctx, pixels_x, pixels_y, means2d, conics, opacities, features):
        # The grid is separable: the quadratic form's x and y parts are computed per column
        # and row, and negated (exactly) so that no full-size negation is needed.
        dx = (means2d[:, None, :, 0] - pixels_x[:, :, None])[:, None]  # [m 1 u k]
        dy = (means2d[:, None, :, 1] - pixels_y[:, :, None])[:, :, None]  # [m v 1 k]
        a, b, c = conics[:, None, None].unbind(-1)  # [m 1 1 k] each
        neg_sigma = torch.addcmul(-0.5 * a * dx * dx - 0.5 * c * dy * dy, -b * dx, dy)
        gaussian = torch.exp(torch.clamp(neg_sigma, min=-MAX_SIGMA))  # [m v u k]
        peak = opacities[:, None, None] * gaussian
        drawn = (neg_sigma <= 0) & (peak >= ALPHA_THRESHOLD)  # skip rule; 0.999 > 1/255
        alpha = torch.where(drawn, torch.clamp(peak, max=MAX_ALPHA), 0.0)
        transmittance_after = torch.cumprod(1 - alpha, dim=-1)
        # Transmittance only falls, so "not yet stopped" is a prefix of each pixel's list, and
        # for that prefix the transmittance in front equals that of the unstopped list.
        kept = transmittance_after > MIN_TRANSMITTANCE
        alpha = torch.where(kept, alpha, 0.0)
        # transmittance[..., i]: in front of Gaussian i, and after the last one at i = k.
        transmittance = torch.cat([torch.ones_like(alpha[..., :1]), transmittance_after], dim=-1)
        weights = rearrange(alpha * transmittance[..., :-1], "m v u k -> m (v u) k")
        summed = rearrange(weights @ features, "m (v u) f -> m v u f", v=pixels_y.shape[1])
        final = torch.gather(transmittance, -1, kept.sum(dim=-1, keepdim=True)).squeeze(-1)
        if any(ctx.needs_input_grad):
            # Where alpha is clamped at 0.999 it does not depend on o or sigma.
            drawn &= kept & (peak <= MAX_ALPHA)
            ctx.save_for_backward(
                dx, dy, conics, features, gaussian, drawn, alpha, transmittance, final
            )
        return summed, final

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_summed, grad_final):
        dx, dy, conics, features, gaussian, drawn, alpha, transmittance, final = ctx.saved_tensors
        grad_summed = rearrange(grad_summed, "m v u f -> m (v u) f")
        weights = alpha * transmittance[..., :-1]
        grad_features = rearrange(weights, "m v u k -> m k (v u)") @ grad_summed
        grad_weights = (grad_summed @ features.transpose(1, 2)).view_as(weights)
        # behind[..., k] = sum_{j > k} g_j w_j + g_T T_final, a suffix sum.
        behind = torch.cat([grad_weights * weights, (grad_final * final)[..., None]], dim=-1)
        behind = behind.flip(-1).cumsum(-1).flip(-1)[..., 1:]
        grad_alpha = grad_weights * transmittance[..., :-1] - behind / (1 - alpha)
        grad_alpha = torch.where(drawn, grad_alpha, 0.0)
        grad_opacities = (grad_alpha * gaussian).sum(dim=(1, 2))
        grad_neg_sigma = grad_alpha * alpha  # dL/d(-sigma) [m v u k]
        per_column = grad_neg_sigma.sum(dim=1)  # [m u k]
        per_row = grad_neg_sigma.sum(dim=2)  # [m v k]
        cross = (grad_neg_sigma * dy).sum(dim=1)  # [m u k]
        dx, dy = dx[:, 0, :, :], dy[:, :, 0, :]  # [m u k], [m v k]
        sum_dx, sum_dy = (per_column * dx).sum(dim=1), (per_row * dy).sum(dim=1)  # [m k]
        a, b, c = conics.unbind(-1)
        grad_means2d = -torch.stack([a * sum_dx + b * sum_dy, c * sum_dy + b * sum_dx], dim=-1)
        grad_conics = -torch.stack(
            [0.5 * (per_column * dx * dx).sum(dim=1), (cross * dx).sum(dim=1),
             0.5 * (per_row * dy * dy).sum(dim=1)],
            dim=-1,
        )
        return None, None, grad_means2d, grad_conics, grad_opacities, grad_features


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


def _merged_lengths(
    lengths: list[int], num_tiles: list[int], pixels_per_tile: int, group_cost: int
) -> list[int]:
    """The padded length each group of tiles gets when neighbouring groups may be merged.

    ``lengths`` are the groups' list lengths in ascending order and ``num_tiles`` their sizes.
    A run of groups merged into one is padded to its longest list; the split minimising
    ``sum(group_cost + pixels_per_tile * length * tiles)`` over the merged groups is found by
    dynamic programming over the (at most ~2 log2 n) groups.
    """
    best = [0]  # best[j]: cost of the first j groups
    start_of_last = []  # the first group of the merged group that ends at j
    for j in range(len(lengths)):
        options = [
            best[i] + group_cost + pixels_per_tile * lengths[j] * sum(num_tiles[i : j + 1])
            for i in range(j + 1)
        ]
        best.append(min(options))
        start_of_last.append(options.index(best[-1]))
    merged, end = [0] * len(lengths), len(lengths)
    while end > 0:
        start = start_of_last[end - 1]
        merged[start:end] = [lengths[end - 1]] * (end - start)
        end = start
    return merged


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
    model: CameraModel = "pinhole",
    near: float = 0.01,
    far: float = 1e10,
    render_depth: bool = False,
    tile_size: int = TILE_SIZE,
    max_chunk_elements: int = MAX_CHUNK_ELEMENTS,
    group_cost: int = GROUP_COST,
) -> tuple[Float[Tensor, "b c h w"], Float[Tensor, "b 1 h w"], Float[Tensor, "b 1 h w"] | None]:
    """Render ``b`` images of ``n`` Gaussians each (see the module docstring for the maths).

    All tensors share one device and dtype (float32 or float64). Returns channels-first
    ``(image, alpha, depth)``; ``depth`` is ``None`` unless ``render_depth``. ``tile_size``,
    ``max_chunk_elements`` and ``group_cost`` only trade speed for memory (module docstring);
    the result does not depend on them.
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
    pixels_per_tile = tile_size * tile_size
    drawn = counts > 0
    lengths, group_of_tile, tiles_per_length = torch.unique(
        _padded_lengths(counts[drawn]), return_inverse=True, return_counts=True
    )
    merged = _merged_lengths(
        lengths.tolist(), tiles_per_length.tolist(), pixels_per_tile, group_cost
    )
    length_of_tile = torch.zeros_like(counts)  # the padded list length each tile composites
    length_of_tile[drawn] = counts.new_tensor(merged)[group_of_tile]

    # Tiles no Gaussian touches keep the "empty" row: nothing added, transmittance 1.
    empty = means.new_zeros(1, pixels_per_tile, num_features + 1)
    empty[..., -1] = 1.0
    parts, row_of_tile = [empty], torch.zeros(b * num_tiles, dtype=torch.long, device=means.device)
    num_rows = 1
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in table)
    total_pairs = pixels_per_tile * int(length_of_tile.sum())
    checkpointed = needs_grad and total_pairs > max_chunk_elements
    for length in sorted(set(merged)):
        group = torch.nonzero(length_of_tile == length).squeeze(1)
        per_chunk = max(1, max_chunk_elements // (length * pixels_per_tile))
        for chunk in group.split(per_chunk):
            args = (chunk % num_tiles, flat_lists[chunk, :length], *table, tiles_x, tile_size)
            if checkpointed:
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
