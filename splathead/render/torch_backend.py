"""The pure-PyTorch backend: the definition of :mod:`splathead.render.reference`, tiled.

It computes exactly what ``gsplat.rasterization(..., packed=False, rasterize_mode="classic")``
computes, on any device and in float32 or float64, differentiably. One render:

1. project (:mod:`splathead.render.projection`) and sort each image's Gaussians front to back;
2. plan the work (:mod:`splathead.render.tiles`): which tiles composite which Gaussians, in
   chunks of similar list length;
3. composite each chunk (:func:`splathead.render.composite.composite`, backward written out);
4. assemble the tiles into images and add the background.

Memory. When the plan holds more than ``max_chunk_elements`` (pixel, Gaussian) pairs and
gradients are needed, each chunk runs under :func:`torch.utils.checkpoint.checkpoint`: the
backward pass recomputes a chunk instead of keeping its intermediates, so peak memory is a few
chunks whatever the batch size. Below it, the intermediates of one chunk's worth of pairs are
simply kept (recomputing them would cost a second forward pass for no memory that matters).
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch.utils.checkpoint import checkpoint

from splathead.camera import Camera
from splathead.gaussians import Gaussians
from splathead.indexing import batched_gather
from splathead.render.backend import RenderOutput
from splathead.render.composite import composite
from splathead.render.projection import project_gaussians
from splathead.render.tiles import (
    GROUP_COST,
    MAX_CHUNK_ELEMENTS,
    TILE_SIZE,
    TileChunk,
    TilePlan,
    plan_tiles,
)
from splathead.typing import Float, Tensor, typecheck

__all__ = ["TorchBackend"]


class TorchBackend:
    """The "torch" :class:`~splathead.render.RenderBackend`: any device, float32 and float64.

    ``tile_size``, ``max_chunk_elements`` and ``group_cost`` only trade speed for memory
    (:mod:`splathead.render.tiles`); the result does not depend on them.
    """

    name = "torch"

    def __init__(
        self,
        *,
        tile_size: int = TILE_SIZE,
        max_chunk_elements: int = MAX_CHUNK_ELEMENTS,
        group_cost: int = GROUP_COST,
    ) -> None:
        self.tile_size = tile_size
        self.max_chunk_elements = max_chunk_elements
        self.group_cost = group_cost

    @typecheck
    def render(
        self,
        gaussians: Gaussians,
        camera: Camera,
        background: Float[Tensor, "b c"],
        *,
        render_depth: bool,
    ) -> RenderOutput:
        """Render ``b`` images of ``n`` Gaussians each (:mod:`splathead.render.reference`)."""
        b, n, c = gaussians.colors.shape
        projected = project_gaussians(
            gaussians.means, gaussians.quats, gaussians.scales, gaussians.opacities, camera
        )
        features = gaussians.colors
        if render_depth:
            features = torch.cat([features, projected.depths[..., None]], dim=-1)
        order = torch.argsort(projected.depths.detach(), dim=1, stable=True)
        plan = plan_tiles(
            batched_gather(projected.means2d.detach(), order),
            batched_gather(projected.radii, order),
            width=camera.width, height=camera.height, tile_size=self.tile_size,
            max_chunk_elements=self.max_chunk_elements, group_cost=self.group_cost,
        )
        # Depth-sorted Gaussians of all images in one flat table; row b * n is the padding
        # (opacity 0, so it never contributes).
        table = (
            _flat_with_padding(batched_gather(projected.means2d, order), 0.0),
            _flat_with_padding(batched_gather(projected.conics, order), 1.0),
            _flat_with_padding(batched_gather(gaussians.opacities, order), 0.0),
            _flat_with_padding(batched_gather(features, order), 0.0),
        )
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in table)
        checkpointed = needs_grad and plan.num_pairs > self.max_chunk_elements
        per_tile = _composite_plan(plan, table, checkpointed=checkpointed)  # [(b t) p f+1]
        per_pixel = rearrange(
            per_tile, "(b ty tx) (py px) f -> b f (ty py) (tx px)",
            b=b, ty=plan.tiles_y, py=plan.tile_size,
        )[..., : camera.height, : camera.width]
        summed, transmittance = per_pixel[:, :-1], per_pixel[:, -1:]
        alpha = 1 - transmittance
        image = summed[:, :c] + transmittance * background[:, :, None, None]
        depth = summed[:, c:] / alpha.clamp(min=1e-10) if render_depth else None
        return RenderOutput(image=image, alpha=alpha, depth=depth)


def _flat_with_padding(field: Tensor, pad: float) -> Tensor:
    """``[b n *f] -> [(b n)+1 *f]``: every image's rows, then one padding row of ``pad``."""
    padding = torch.full((1, *field.shape[2:]), pad, dtype=field.dtype, device=field.device)
    return torch.cat([field.flatten(0, 1), padding])


def _composite_plan(
    plan: TilePlan, table: tuple[Tensor, Tensor, Tensor, Tensor], *, checkpointed: bool
) -> Float[Tensor, "bt p f_plus_1"]:
    """Every tile's summed features and ``T_final``, chunk by chunk as ``plan`` says, each
    chunk under activation checkpointing if ``checkpointed``."""
    features = table[-1]
    # Tiles no Gaussian touches keep the "empty" row: nothing added, transmittance 1.
    empty = features.new_zeros(1, plan.pixels_per_tile, features.shape[-1] + 1)
    empty[..., -1] = 1.0
    parts = [empty]
    for chunk in plan.chunks:
        args = (chunk, plan, *table)
        if checkpointed:
            parts.append(checkpoint(_composite_chunk, *args, use_reentrant=False))
        else:
            parts.append(_composite_chunk(*args))
    return torch.cat(parts)[plan.row_of_tile]


def _composite_chunk(
    chunk: TileChunk,
    plan: TilePlan,
    means2d: Float[Tensor, "g 2"],
    conics: Float[Tensor, "g 3"],
    opacities: Float[Tensor, " g"],
    features: Float[Tensor, "g f"],
) -> Float[Tensor, "m p f_plus_1"]:
    """Composite the tiles of ``chunk``; returns features and ``T_final`` concatenated (one
    tensor, so a checkpointed call has a single output)."""
    tile_ids = chunk.tiles % plan.tiles_per_image
    ids = plan.lists[chunk.tiles, : chunk.length]
    offsets = torch.arange(plan.tile_size, device=tile_ids.device, dtype=means2d.dtype) + 0.5
    origin_x = (tile_ids % plan.tiles_x).to(means2d.dtype)[:, None] * plan.tile_size
    origin_y = (tile_ids // plan.tiles_x).to(means2d.dtype)[:, None] * plan.tile_size
    summed, transmittance = composite(
        origin_x + offsets, origin_y + offsets, means2d[ids], conics[ids], opacities[ids],
        features[ids],
    )
    return rearrange(torch.cat([summed, transmittance[..., None]], dim=-1), "m v u f -> m (v u) f")
