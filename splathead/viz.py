"""PNG grids for looking at GMAE reconstructions, Gaussians, depth layers and edges.

Every grid has one row per image and one column per panel; panels are channels-first images in
[0, 1] (1 or 3 channels; other channel counts show their first three or their mean). Inputs that
were normalised for the encoder (ImageNet mean/std) must be brought back to [0, 1] by the caller.
Grids are drawn at a size a person can look at: small panels are enlarged by a whole factor
(nearest neighbour, so every model pixel stays a visible square) until their shorter side is at
least ``min_panel_size`` pixels (128 by default), and Gaussians are drawn at that size.

- :func:`draw_gaussians`: each Gaussian as its projected covariance ellipse, filled with its colour.
- :func:`hide_patches`: the masked input an MAE sees (hidden patches filled with grey).
- :func:`save_reconstruction_grid`: input | masked input | render | Gaussians.
- :func:`save_layer_grid`: input | full render | each depth layer | cumulative renders | edges |
  figure-ground.
- :func:`save_video_strip`: per video, rows input | masked input | render | Gaussians, one
  column per frame.
- :func:`save_grid`: any list of panels.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from PIL import Image, ImageDraw
from timm.layers import to_2tuple
from torchvision.transforms.functional import pil_to_tensor
from torchvision.utils import make_grid, save_image

from splathead.camera import Camera
from splathead.gaussians import Gaussians
from splathead.render.projection import project_gaussians
from splathead.typing import Bool, Float, Tensor, typecheck
from splathead.video_gaussians import VideoGaussians
from splathead.zeroshot import DepthLayers

__all__ = [
    "MIN_PANEL_SIZE",
    "draw_gaussians",
    "hide_patches",
    "save_grid",
    "save_layer_grid",
    "save_reconstruction_grid",
    "save_video_strip",
]

_ELLIPSE_POINTS = 24
MIN_PANEL_SIZE = 128
"""Default shorter side, in pixels, to which the grids enlarge small panels."""


def _whole_factor(height: int, width: int, min_panel_size: int) -> int:
    """The smallest whole factor that brings the shorter side to ``min_panel_size`` (at least 1)."""
    if min_panel_size < 0:
        raise ValueError(f"min_panel_size must be >= 0, got {min_panel_size}")
    return max(1, math.ceil(min_panel_size / min(height, width)))


def _as_rgb(panel: Tensor) -> Tensor:
    """``[b c h w]`` -> ``[b 3 h w]`` in [0, 1]: grey repeated, >3 channels cut to three."""
    panel = panel.detach().float().cpu().clamp(0, 1)
    if panel.shape[1] == 1:
        return panel.expand(-1, 3, -1, -1)
    if panel.shape[1] == 2:
        return repeat(panel.mean(dim=1), "b h w -> b 3 h w")
    return panel[:, :3]


@typecheck
def save_grid(
    path: str | os.PathLike,
    panels: Sequence[Float[Tensor, "_b _c _h _w"]],
    *,
    max_images: int | None = None,
    padding: int = 2,
    min_panel_size: int = MIN_PANEL_SIZE,
) -> None:
    """Save panels side by side, one row per image, as a PNG (torchvision ``make_grid``).

    Panels may differ in size by whole factors (e.g. Gaussians drawn larger than the images):
    every panel is enlarged (nearest neighbour) to the largest one, and all of them by the
    smallest whole factor that makes their shorter side at least ``min_panel_size`` pixels
    (``0``: no enlargement beyond the largest panel).
    """
    if not panels:
        raise ValueError("save_grid needs at least one panel")
    panels = [_as_rgb(panel[:max_images]) for panel in panels]
    batch_sizes = {panel.shape[0] for panel in panels}
    if len(batch_sizes) != 1:
        raise ValueError(f"panels must share their batch size, got {sorted(batch_sizes)}")
    height, width = max(panel.shape[2:] for panel in panels)
    factor = _whole_factor(height, width, min_panel_size)
    size = (height * factor, width * factor)
    uneven = {tuple(panel.shape[2:]) for panel in panels
              if size[0] % panel.shape[2] or size[1] % panel.shape[3]
              or size[0] // panel.shape[2] != size[1] // panel.shape[3]}
    if uneven:
        raise ValueError(f"panels of [h w] {sorted(uneven)} do not enlarge by a whole factor to "
                         f"the grid's {list(size)}")
    panels = [F.interpolate(panel, size=size, mode="nearest") for panel in panels]
    columns = torch.stack(panels, dim=1)  # [b k 3 h w]
    tiles = rearrange(columns, "b k c h w -> (b k) c h w")
    grid = make_grid(tiles, nrow=len(panels), padding=padding, pad_value=1.0)
    save_image(grid, path)


@typecheck
def draw_gaussians(
    gaussians: Gaussians,
    camera: Camera,
    *,
    sigma: float = 1.0,
    background: float = 1.0,
    min_panel_size: int = 0,
) -> Float[Tensor, "b 3 H W"]:
    """Each Gaussian drawn as the ``sigma``-standard-deviation ellipse of its projected 2D
    covariance, filled with its colour (first three channels) at its opacity, far ones first.

    The drawing is the camera's size (``H, W = camera.height, camera.width``) times the smallest
    whole factor that makes its shorter side at least ``min_panel_size`` pixels (``0``: the
    camera's size), with the ellipses drawn at that size. Drawn with PIL on the CPU, so it is
    for a handful of images, not for training loops.
    """
    factor = _whole_factor(camera.height, camera.width, min_panel_size)
    cpu = gaussians.detach().to("cpu", torch.float32)
    projected = project_gaussians(cpu.means, cpu.quats, cpu.scales, cpu.opacities, camera)
    a, b, c = projected.conics.unbind(-1)
    covariance = torch.linalg.inv(torch.stack([a, b, b, c], dim=-1).reshape(*a.shape, 2, 2))
    # Any square root of the covariance maps the unit circle onto the 1-sigma ellipse.
    root = torch.linalg.cholesky(covariance)
    angles = torch.linspace(0, 2 * math.pi, _ELLIPSE_POINTS + 1)[:-1]
    circle = torch.stack([angles.cos(), angles.sin()])  # [2 p]
    outlines = factor * (projected.means2d[..., None] + sigma * root @ circle)  # [b n 2 p]
    colors = _as_rgb(rearrange(gaussians.colors, "b n c -> b c n 1"))[..., 0]  # [b 3 n]
    visible = (projected.radii > 0).all(dim=-1)
    order = torch.argsort(projected.depths, dim=1, descending=True, stable=True)

    canvases = []
    shade = round(255 * min(max(background, 0.0), 1.0))
    opacities = cpu.opacities
    for image in range(gaussians.batch_size):
        canvas = Image.new("RGB", (camera.width * factor, camera.height * factor), (shade,) * 3)
        draw = ImageDraw.Draw(canvas, "RGBA")
        for index in order[image].tolist():
            if not visible[image, index]:
                continue
            rgb = tuple(round(255 * v) for v in colors[image, :, index].tolist())
            points = [tuple(p) for p in outlines[image, index].T.tolist()]
            draw.polygon(points, fill=(*rgb, round(255 * float(opacities[image, index]))))
        canvases.append(pil_to_tensor(canvas).float() / 255)
    return torch.stack(canvases)


@typecheck
def hide_patches(
    images: Float[Tensor, "b c h w"],
    mask: Bool[Tensor, "b l"],
    patch_size: int | tuple[int, int],
    *,
    fill: float = 0.5,
) -> Float[Tensor, "b c h w"]:
    """``images`` with the patches where ``mask`` is True (MAE: hidden) set to ``fill``.

    ``patch_size`` is ``(height, width)`` in pixels, or one int for square patches; ``mask``
    lists the patches row-major, ``(h / patch height) * (w / patch width)`` of them.
    """
    b, _, h, w = images.shape
    patch_h, patch_w = to_2tuple(patch_size)
    grid_h, grid_w = h // patch_h, w // patch_w
    if h % patch_h or w % patch_w or mask.shape[1] != grid_h * grid_w:
        raise ValueError(
            f"mask of {mask.shape[1]} patches does not tile {h}x{w} images with patch_size "
            f"{(patch_h, patch_w)}"
        )
    pixels = repeat(mask, "b (gh gw) -> b 1 (gh ph) (gw pw)", gh=grid_h, ph=patch_h, pw=patch_w)
    return torch.where(pixels, torch.full_like(images, fill), images)


@typecheck
def save_reconstruction_grid(
    path: str | os.PathLike,
    images: Float[Tensor, "b c h w"],
    masked: Float[Tensor, "b c h w"],
    renders: Float[Tensor, "b c h w"],
    gaussians: Gaussians,
    camera: Camera,
    *,
    max_images: int = 8,
    min_panel_size: int = MIN_PANEL_SIZE,
) -> None:
    """PNG with rows input | masked input | render | Gaussians as ellipses, values in [0, 1];
    panels enlarged to at least ``min_panel_size`` pixels (:func:`save_grid`), the ellipses
    drawn at that size."""
    gaussians = gaussians[:max_images]
    ellipses = draw_gaussians(gaussians, camera, min_panel_size=min_panel_size)
    save_grid(path, [images, masked, renders, ellipses], max_images=max_images,
              min_panel_size=min_panel_size)


@typecheck
def save_layer_grid(
    path: str | os.PathLike,
    images: Float[Tensor, "b c h w"],
    layers: DepthLayers,
    *,
    edges: Float[Tensor, "b h w"] | Bool[Tensor, "b h w"] | None = None,
    figure: Bool[Tensor, "b h w"] | None = None,
    max_images: int = 4,
    min_panel_size: int = MIN_PANEL_SIZE,
) -> None:
    """PNG with rows input | full render | each layer alone | each cumulative render, then the
    edge map and figure-ground mask when given (all must share the input's size); panels
    enlarged to at least ``min_panel_size`` pixels (:func:`save_grid`)."""
    panels = [images, layers.cumulative[:, -1]]
    panels += list(layers.layers.unbind(1)) + list(layers.cumulative.unbind(1))
    for extra in (edges, figure):
        if extra is not None:
            panels.append(extra[:, None].float())
    save_grid(path, panels, max_images=max_images, min_panel_size=min_panel_size)


@typecheck
def save_video_strip(
    path: str | os.PathLike,
    videos: Float[Tensor, "b t c h w"],
    masked: Float[Tensor, "b t c h w"],
    renders: Float[Tensor, "b t c h w"],
    gaussians: VideoGaussians,
    camera: Camera,
    *,
    max_videos: int = 2,
    min_panel_size: int = MIN_PANEL_SIZE,
) -> None:
    """PNG with four rows per video (input | masked input | render | Gaussians as ellipses) and
    one column per frame, values in [0, 1]; panels enlarged to at least ``min_panel_size``
    pixels (:func:`save_grid`), the ellipses drawn at that size."""
    count = min(max_videos, videos.shape[0])
    ellipses = draw_gaussians(gaussians[:count].flatten(), camera, min_panel_size=min_panel_size)
    images = [
        F.interpolate(_as_rgb(rearrange(panel[:count], "b t c h w -> (b t) c h w")),
                      size=ellipses.shape[-2:], mode="nearest")
        for panel in (videos, masked, renders)
    ]
    rows = torch.stack([*images, ellipses], dim=1)  # [(b t) 4 3 H W]
    frames = rearrange(rows, "(b t) k c h w -> t (b k) c h w", b=count)
    save_grid(path, list(frames), min_panel_size=min_panel_size)
