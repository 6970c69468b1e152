"""Tile planning for the torch backend: which tiles composite which Gaussians, in which batches.

The image is cut into ``tile_size``-square tiles and each tile composites only the Gaussians
whose bounding box touches it, in depth order (gsplat's radii; the box holds every pixel where
``alpha >= 1/255``), so the work follows the covered area instead of ``n h w``. Tiles are
grouped by how many Gaussians they hold and each group is padded to its longest list (padding
has opacity 0), rounded up to 1, 2, 3, 4, 6, 8, 12, ... so that there are few groups. Each group
also has a fixed cost (Python, one kernel launch per operation), which dominates small scenes;
so neighbouring groups are merged whenever the padding this adds costs less than the group it
saves, with a group's fixed cost priced as ``group_cost`` (pixel, Gaussian) pairs. Groups are
cut into chunks of at most ``max_chunk_elements`` pairs, the unit the compositing runs (and,
for large renders, checkpoints) at once.

Nothing here is differentiable or depends on values other than the boxes: the plan only decides
the order of work, never the result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from einops import rearrange

from splathead.typing import Float, Int, Tensor

TILE_SIZE = 16
MAX_CHUNK_ELEMENTS = 1 << 22
"""Upper bound on (pixel, Gaussian) pairs evaluated at once (~16 MiB per float32 temporary)."""
GROUP_COST = 1 << 15
"""The fixed cost of compositing one more group of tiles, in (pixel, Gaussian) pairs: about
what one group's Python and kernel launches take on a CPU, forward and backward."""


@dataclass(frozen=True)
class TileChunk:
    """Tiles composited together: each reads the first ``length`` entries of its list."""

    tiles: Int[Tensor, " m"]
    """Flat tile indices ``image * tiles_per_image + tile``."""
    length: int


@dataclass(frozen=True)
class TilePlan:
    """The work of one render: ``b`` images of ``tiles_y x tiles_x`` tiles."""

    tile_size: int
    tiles_x: int
    tiles_y: int
    lists: Int[Tensor, "bt l"]
    """Per flat tile, the flat ids ``image * n + depth rank`` of the Gaussians touching it in
    depth order, then the padding id ``b * n``."""
    chunks: list[TileChunk]
    """Every tile touched by some Gaussian, exactly once, grouped by padded list length."""
    row_of_tile: Int[Tensor, " bt"]
    """Where each tile's result lies in ``[empty tile, *chunk results]`` (0: untouched)."""
    num_pairs: int
    """(pixel, Gaussian) pairs the chunks evaluate, padding included."""

    @property
    def tiles_per_image(self) -> int:
        return self.tiles_x * self.tiles_y

    @property
    def pixels_per_tile(self) -> int:
        return self.tile_size * self.tile_size


@torch.no_grad()
def plan_tiles(
    means2d: Float[Tensor, "b n 2"],
    radii: Int[Tensor, "b n 2"],
    *,
    width: int,
    height: int,
    tile_size: int = TILE_SIZE,
    max_chunk_elements: int = MAX_CHUNK_ELEMENTS,
    group_cost: int = GROUP_COST,
) -> TilePlan:
    """Plan the compositing of depth-sorted screen-space Gaussians (``radii`` 0: culled)."""
    b, n = means2d.shape[:2]
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    tiles_per_image = tiles_x * tiles_y
    pixels_per_tile = tile_size * tile_size
    ranks, counts = _bin_into_tiles(means2d, radii, tiles_x, tiles_y, tile_size)
    image_of_tile = torch.arange(b, device=means2d.device).repeat_interleave(tiles_per_image)
    lists = torch.where(ranks < n, ranks + image_of_tile.view(b, tiles_per_image, 1) * n, b * n)
    lists, counts = lists.flatten(0, 1), counts.flatten()

    drawn = counts > 0
    lengths, group_of_tile, tiles_per_length = torch.unique(
        _padded_lengths(counts[drawn]), return_inverse=True, return_counts=True
    )
    merged = _merged_lengths(
        lengths.tolist(), tiles_per_length.tolist(), pixels_per_tile, group_cost
    )
    length_of_tile = torch.zeros_like(counts)  # the padded list length each tile composites
    length_of_tile[drawn] = counts.new_tensor(merged)[group_of_tile]

    chunks, row_of_tile = [], torch.zeros_like(counts)
    num_rows = 1  # row 0: the untouched tile
    for length in sorted(set(merged)):
        group = torch.nonzero(length_of_tile == length).squeeze(1)
        per_chunk = max(1, max_chunk_elements // (length * pixels_per_tile))
        chunks += [TileChunk(tiles, length) for tiles in group.split(per_chunk)]
        row_of_tile[group] = torch.arange(num_rows, num_rows + len(group), device=group.device)
        num_rows += len(group)
    return TilePlan(
        tile_size=tile_size, tiles_x=tiles_x, tiles_y=tiles_y, lists=lists, chunks=chunks,
        row_of_tile=row_of_tile, num_pairs=pixels_per_tile * int(length_of_tile.sum()),
    )


def _bin_into_tiles(
    means2d: Float[Tensor, "b n 2"],
    radii: Int[Tensor, "b n 2"],
    tiles_x: int,
    tiles_y: int,
    tile_size: int,
) -> tuple[Int[Tensor, "b t n"], Int[Tensor, "b t"]]:
    """For every (image, tile), the depth ranks of the Gaussians whose box touches the tile,
    first in ascending rank and then padded with ``n``; and how many there are.

    Tile ranges follow gsplat's intersection rule,
    ``floor((m - r) / s) <= tile < ceil((m + r) / s)`` per axis.
    """
    n = means2d.shape[1]
    radii = radii.to(means2d.dtype)
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
