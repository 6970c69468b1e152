"""Zero-shot depth layers, figure-ground masks and edges from predicted Gaussians.

A GMAE places Gaussians at different depths although it is trained on images only. Sorting an
image's Gaussians by camera depth and cutting the sorted list into ``L`` equal groups gives depth
layers (GMAE paper, section 6):

- Layers: each group rendered alone, and the cumulative renders of groups ``0..l``.
- Labels: a pixel takes the index of the last layer whose addition changed its cumulative render
  by more than a threshold; pixels no layer changes are labelled -1.
- Edges: label discontinuities between 4-neighbours. Fewer layers give coarser edges; the soft
  edge map is the fraction of several layer counts (default 4, 8, 16, 32) that see an edge.
- Figure-ground: the coverage (alpha) of the last layer group(s).

Order. ``order="back_to_front"`` (the default) puts the farthest Gaussians in layer 0, so the
cumulative renders paint background first and the nearest layer last, like a painter; in the
paper's figures the background and the large low-frequency Gaussians come first in depth order and
the object last, so with this default the figure is in the last layers. A model that learned the
opposite convention is read with ``order="front_to_back"``.

Every function takes the :class:`~splathead.render.SplatRenderer` (either backend) that draws the
Gaussians, and renders all the layer subsets of a call in one batched renderer call: the
Gaussians are repeated along the batch and those outside each subset get opacity 0
(:meth:`Gaussians.where`), which both backends cull before compositing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange, repeat

from splathead.gaussians import Gaussians
from splathead.render import SplatRenderer
from splathead.typing import Bool, Float, Int, Tensor, typecheck

__all__ = [
    "DepthLayers",
    "LayerOrder",
    "figure_ground",
    "label_edges",
    "layer_groups",
    "layer_labels",
    "render_layers",
    "soft_edges",
]

LayerOrder = Literal["back_to_front", "front_to_back"]

CHANGE_THRESHOLD = 0.05
"""Default colour change (max over channels, image values in [0, 1]) that makes a layer own a
pixel in :func:`layer_labels`; a starting point, not tuned."""
EDGE_LAYER_COUNTS = (4, 8, 16, 32)


class DepthLayers(NamedTuple):
    """Renders of ``l`` depth layers of ``b`` images (channels-first)."""

    layers: Float[Tensor, "b l c h w"]
    """Each layer's Gaussians rendered alone over the renderer's background."""
    layer_alpha: Float[Tensor, "b l 1 h w"]
    """Coverage of each layer alone."""
    cumulative: Float[Tensor, "b l c h w"]
    """Layers ``0..i`` rendered together; ``cumulative[:, -1]`` is the full render."""
    cumulative_alpha: Float[Tensor, "b l 1 h w"]
    empty: Float[Tensor, "b c h w"]
    """The render with no Gaussian: the background, where every cumulative sequence starts."""
    groups: Int[Tensor, "b n"]
    """The layer of each Gaussian, in [0, l)."""


def _check_num_layers(num_layers: int, gaussians: Gaussians) -> None:
    if not 1 <= num_layers <= gaussians.num_gaussians:
        raise ValueError(
            f"num_layers must be in [1, num_gaussians={gaussians.num_gaussians}], got {num_layers}"
        )


@typecheck
def layer_groups(
    gaussians: Gaussians,
    renderer: SplatRenderer,
    num_layers: int,
    *,
    order: LayerOrder = "back_to_front",
) -> Int[Tensor, "b n"]:
    """The depth layer of every Gaussian: its rank in ``order`` cut into ``num_layers`` groups.

    Groups are equal when ``num_layers`` divides ``n`` and differ by at most one Gaussian
    otherwise (rank ``r`` goes to group ``floor(r * num_layers / n)``). Depth is the camera z of
    the centre under ``renderer.camera``, ties broken by index (stable sort).
    """
    _check_num_layers(num_layers, gaussians)
    n = gaussians.num_gaussians
    sorted_ids = gaussians.depth_order(renderer.camera, front_to_back=order == "front_to_back")
    ranks = torch.empty_like(sorted_ids)
    positions = torch.arange(n, device=sorted_ids.device).expand_as(sorted_ids)
    ranks.scatter_(1, sorted_ids, positions)
    return ranks * num_layers // n


def _render_subsets(
    gaussians: Gaussians, renderer: SplatRenderer, keep: Bool[Tensor, "b m n"]
) -> tuple[Float[Tensor, "b m c h w"], Float[Tensor, "b m 1 h w"]]:
    """Render ``m`` subsets of each image's Gaussians in one renderer call."""
    m = keep.shape[1]
    repeated = gaussians.map(lambda field: repeat(field, "b ... -> (b m) ...", m=m))
    output = renderer(repeated.where(rearrange(keep, "b m n -> (b m) n")))
    return (
        rearrange(output.image, "(b m) c h w -> b m c h w", m=m),
        rearrange(output.alpha, "(b m) c h w -> b m c h w", m=m),
    )


def _prefix_masks(groups: Int[Tensor, "b n"], num_layers: int) -> Bool[Tensor, "b m n"]:
    """Masks of the cumulative subsets: nothing, layer 0, layers 0..1, ..., all layers."""
    upto = torch.arange(-1, num_layers, device=groups.device)
    return groups[:, None, :] <= upto[None, :, None]


@typecheck
def render_layers(
    gaussians: Gaussians,
    renderer: SplatRenderer,
    num_layers: int,
    *,
    order: LayerOrder = "back_to_front",
) -> DepthLayers:
    """Render each of ``num_layers`` depth layers alone and the cumulative prefix renders
    (``2 num_layers + 1`` images per input image, one renderer call)."""
    groups = layer_groups(gaussians, renderer, num_layers, order=order)
    alone = groups[:, None, :] == torch.arange(num_layers, device=groups.device)[None, :, None]
    prefixes = _prefix_masks(groups, num_layers)
    images, alphas = _render_subsets(gaussians, renderer, torch.cat([alone, prefixes], dim=1))
    return DepthLayers(
        layers=images[:, :num_layers],
        layer_alpha=alphas[:, :num_layers],
        cumulative=images[:, num_layers + 1 :],
        cumulative_alpha=alphas[:, num_layers + 1 :],
        empty=images[:, num_layers],
        groups=groups,
    )


@typecheck
def layer_labels(
    cumulative: Float[Tensor, "b l c h w"],
    empty: Float[Tensor, "b c h w"],
    *,
    threshold: float = CHANGE_THRESHOLD,
) -> Int[Tensor, "b h w"]:
    """Per pixel, the last layer whose addition changed the cumulative render by more than
    ``threshold`` (max over channels); -1 where no layer did.

    Args:
        cumulative: renders of layers ``0..i`` for each ``i`` (:attr:`DepthLayers.cumulative`).
        empty: the render before any layer (:attr:`DepthLayers.empty`).
    """
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    previous = torch.cat([empty[:, None], cumulative[:, :-1]], dim=1)
    changed = (cumulative - previous).abs().amax(dim=2) > threshold  # [b l h w]
    layer_ids = torch.arange(cumulative.shape[1], device=cumulative.device)[None, :, None, None]
    return torch.where(changed, layer_ids, -1).amax(dim=1)


@typecheck
def label_edges(labels: Int[Tensor, "b h w"]) -> Bool[Tensor, "b h w"]:
    """Pixels whose label differs from one of their 4-neighbours (both sides of a change, so
    edges are two pixels wide; the BSDS benchmark thins them)."""
    differs_x = labels[:, :, 1:] != labels[:, :, :-1]  # [b h w-1]
    differs_y = labels[:, 1:, :] != labels[:, :-1, :]  # [b h-1 w]
    edges = F.pad(differs_x, (0, 1)) | F.pad(differs_x, (1, 0))
    return edges | F.pad(differs_y, (0, 0, 0, 1)) | F.pad(differs_y, (0, 0, 1, 0))


@typecheck
def soft_edges(
    gaussians: Gaussians,
    renderer: SplatRenderer,
    *,
    layer_counts: Sequence[int] = EDGE_LAYER_COUNTS,
    order: LayerOrder = "back_to_front",
    threshold: float = CHANGE_THRESHOLD,
) -> Float[Tensor, "b h w"]:
    """Edge strength in [0, 1]: the fraction of ``layer_counts`` whose layer labels
    (:func:`layer_labels`) change at the pixel.

    All cumulative renders of all layer counts (``sum(layer_counts) + len(layer_counts)``
    images per input image) come from one renderer call.
    """
    if not layer_counts:
        raise ValueError("layer_counts must hold at least one layer count")
    masks = []
    for num_layers in layer_counts:
        groups = layer_groups(gaussians, renderer, num_layers, order=order)
        masks.append(_prefix_masks(groups, num_layers))
    images, _ = _render_subsets(gaussians, renderer, torch.cat(masks, dim=1))
    votes = []
    for renders in images.split([num_layers + 1 for num_layers in layer_counts], dim=1):
        labels = layer_labels(renders[:, 1:], renders[:, 0], threshold=threshold)
        votes.append(label_edges(labels))
    return torch.stack(votes).to(images.dtype).mean(dim=0)


@typecheck
def figure_ground(
    gaussians: Gaussians,
    renderer: SplatRenderer,
    *,
    num_layers: int = 4,
    num_front_layers: int = 1,
    alpha_threshold: float = 0.5,
    order: LayerOrder = "back_to_front",
) -> Bool[Tensor, "b h w"]:
    """Foreground mask: where the last ``num_front_layers`` of ``num_layers`` depth layers,
    rendered together alone, cover the pixel with alpha above ``alpha_threshold``.

    With the default ``order`` the last layers are the nearest Gaussians. The defaults (the
    front quarter, alpha 0.5) are a starting point, not tuned.
    """
    if not 1 <= num_front_layers <= num_layers:
        raise ValueError(
            f"num_front_layers must be in [1, num_layers={num_layers}], got {num_front_layers}"
        )
    if not 0 <= alpha_threshold < 1:
        raise ValueError(f"alpha_threshold must be in [0, 1), got {alpha_threshold}")
    groups = layer_groups(gaussians, renderer, num_layers, order=order)
    front = groups >= num_layers - num_front_layers
    _, alpha = _render_subsets(gaussians, renderer, front[:, None, :])
    return alpha[:, 0, 0] > alpha_threshold
