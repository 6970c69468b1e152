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

Order. Nothing in the loss fixes which end of the depth order is the background: one model puts
its background Gaussians far, another near. ``order="auto"`` (the default) reads it from the
Gaussians with :func:`choose_order`: the background end is the one whose layer alone covers the
most of the image with the least structure. ``"back_to_front"`` puts the farthest Gaussians in
layer 0 (painted first, the nearest layer last); ``"front_to_back"`` the nearest. Functions given
``"auto"`` decide from the Gaussians they are given (all images of the call together); to fix one
order per model, call :func:`choose_order` once on some unlabelled images and pass its order.

Several masks. A GMAE reconstructs an image from the quarter of its patches it sees in training;
:func:`masked_reconstructions` renders ``K`` masked reconstructions whose masks together show every
patch (:func:`splathead.masking.covering_masks`), and edges / figure-ground of several
reconstructions are averaged (soft edges) or voted (figure-ground).

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

from splathead.decoder import DecoderOutput
from splathead.gaussians import Gaussians
from splathead.masking import covering_masks
from splathead.render import SplatRenderer
from splathead.typing import Bool, Float, Int, Tensor, typecheck

__all__ = [
    "DepthLayers",
    "LayerOrder",
    "OrderChoice",
    "choose_order",
    "figure_ground",
    "label_edges",
    "layer_groups",
    "layer_labels",
    "masked_reconstructions",
    "render_layers",
    "soft_edges",
]

LayerOrder = Literal["auto", "back_to_front", "front_to_back"]
FixedOrder = Literal["back_to_front", "front_to_back"]

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


class OrderChoice(NamedTuple):
    """What :func:`choose_order` decided and why."""

    order: FixedOrder
    far_score: float
    """Background score of the farthest layer (coverage minus structure, mean over images)."""
    near_score: float
    """The same for the nearest layer."""


@typecheck
def choose_order(
    gaussians: Gaussians, renderer: SplatRenderer, *, num_layers: int = 4
) -> OrderChoice:
    """Which end of the depth order is the background, from unlabelled images' Gaussians.

    Rule: cut each image's Gaussians into ``num_layers`` depth layers and render the farthest and
    the nearest layer alone. Each end scores ``coverage - structure``: the fraction of pixels it
    covers (alpha > 0.5) minus the fraction of pixels where its render changes by more than
    :data:`CHANGE_THRESHOLD` (max over channels) to a 4-neighbour; both are fractions of the
    image, averaged over the images. A background covers much and is flat; objects cover less and
    bring their outlines. The end with the higher score is the background and is put first
    (``"back_to_front"`` when it is the far end, ``"front_to_back"`` when it is the near end;
    ties go to ``"back_to_front"``).
    """
    if num_layers < 2:
        raise ValueError(f"num_layers must be >= 2 (a far and a near layer), got {num_layers}")
    _check_num_layers(num_layers, gaussians)
    groups = layer_groups(gaussians, renderer, num_layers, order="back_to_front")
    ends = torch.stack([groups == 0, groups == num_layers - 1], dim=1)  # [b 2 n]: far, near
    images, alphas = _render_subsets(gaussians, renderer, ends)
    coverage = (alphas[:, :, 0] > 0.5).float().mean(dim=(-2, -1))  # [b 2]
    structure = _colour_edges(images).float().mean(dim=(-2, -1))
    far_score, near_score = (coverage - structure).mean(dim=0).tolist()
    order: FixedOrder = "front_to_back" if near_score > far_score else "back_to_front"
    return OrderChoice(order=order, far_score=far_score, near_score=near_score)


def _colour_edges(images: Float[Tensor, "b m c h w"]) -> Bool[Tensor, "b m h w"]:
    """Pixels whose colour differs from a 4-neighbour's by more than :data:`CHANGE_THRESHOLD`."""
    step_x = (images[..., :, 1:] - images[..., :, :-1]).abs().amax(dim=2) > CHANGE_THRESHOLD
    step_y = (images[..., 1:, :] - images[..., :-1, :]).abs().amax(dim=2) > CHANGE_THRESHOLD
    edges = F.pad(step_x, (0, 1)) | F.pad(step_x, (1, 0))
    return edges | F.pad(step_y, (0, 0, 0, 1)) | F.pad(step_y, (0, 0, 1, 0))


def _fixed_order(order: LayerOrder, gaussians: Gaussians, renderer: SplatRenderer) -> FixedOrder:
    """``order``, with ``"auto"`` decided by :func:`choose_order` (at most 4 layers; one Gaussian
    has no order to choose)."""
    if order != "auto":
        return order
    if gaussians.num_gaussians < 2:
        return "back_to_front"
    return choose_order(gaussians, renderer, num_layers=min(4, gaussians.num_gaussians)).order


@typecheck
def layer_groups(
    gaussians: Gaussians,
    renderer: SplatRenderer,
    num_layers: int,
    *,
    order: LayerOrder = "auto",
) -> Int[Tensor, "b n"]:
    """The depth layer of every Gaussian: its rank in ``order`` cut into ``num_layers`` groups.

    Groups are equal when ``num_layers`` divides ``n`` and differ by at most one Gaussian
    otherwise (rank ``r`` goes to group ``floor(r * num_layers / n)``). Depth is the camera z of
    the centre under ``renderer.camera``, ties broken by index (stable sort); ``"auto"``
    decides with :func:`choose_order`.
    """
    _check_num_layers(num_layers, gaussians)
    order = _fixed_order(order, gaussians, renderer)
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
    order: LayerOrder = "auto",
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
    order: LayerOrder = "auto",
    threshold: float = CHANGE_THRESHOLD,
) -> Float[Tensor, "b h w"]:
    """Edge strength in [0, 1]: the fraction of ``layer_counts`` whose layer labels
    (:func:`layer_labels`) change at the pixel.

    All cumulative renders of all layer counts (``sum(layer_counts) + len(layer_counts)``
    images per input image) come from one renderer call.
    """
    if not layer_counts:
        raise ValueError("layer_counts must hold at least one layer count")
    order = _fixed_order(order, gaussians, renderer)
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
    order: LayerOrder = "auto",
) -> Bool[Tensor, "b h w"]:
    """Foreground mask: where the last ``num_front_layers`` of ``num_layers`` depth layers,
    rendered together alone, cover the pixel with alpha above ``alpha_threshold``.

    The last layers are those painted last in ``order`` (the front). The defaults (the front
    quarter, alpha 0.5) are a starting point, not tuned.
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


@torch.no_grad()
def masked_reconstructions(
    model: torch.nn.Module,
    images: Float[Tensor, "b c h w"],
    *,
    mask_ratio: float | None = None,
    num_masks: int = 1,
    seed: int = 0,
) -> list[DecoderOutput]:
    """``num_masks`` reconstructions of normalised ``images`` by a :class:`~splathead.GMAE`.

    At ``mask_ratio`` (the model's training ratio when ``None``) the masks come from
    :func:`~splathead.masking.covering_masks` seeded with ``seed``: together they show every
    patch when ``num_masks * visible >= patches`` (4 masks at ratio 0.75). ``mask_ratio=0`` shows
    every patch once, whatever ``num_masks``.
    """
    ratio = model.mask_ratio if mask_ratio is None else mask_ratio
    if ratio == 0:
        return [model.reconstruct(images, 0.0)]
    masks = covering_masks(ratio, images.shape[0], model.num_patches, num_masks,
                           device=images.device, generator=torch.Generator().manual_seed(seed))
    return [model.reconstruct(images, mask=mask) for mask in masks]
