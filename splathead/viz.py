"""PNG grids for looking at GMAE reconstructions, Gaussians, depth layers and edges.

Every grid has one row per image and one column per panel; panels are channels-first images in
[0, 1] (1 or 3 channels; other channel counts show their first three or their mean). Inputs that
were normalised for the encoder (ImageNet mean/std) must be brought back to [0, 1] by the caller.

- :func:`draw_gaussians`: each Gaussian as its projected covariance ellipse, filled with its colour.
- :func:`hide_patches`: the masked input an MAE sees (hidden patches filled with grey).
- :func:`save_reconstruction_grid`: input | masked input | render | Gaussians.
- :func:`save_layer_grid`: input | full render | each depth layer | cumulative renders | edges |
  figure-ground.
- :func:`save_grid`: any list of panels.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
from einops import rearrange, repeat
from PIL import Image, ImageDraw
from timm.layers import to_2tuple
from torchvision.transforms.functional import pil_to_tensor
from torchvision.utils import make_grid, save_image

from splathead.camera import Camera
from splathead.gaussians import Gaussians
from splathead.render.projection import project_gaussians
from splathead.typing import Bool, Float, Tensor, typecheck
from splathead.zeroshot import DepthLayers

__all__ = [
    "draw_gaussians",
    "hide_patches",
    "save_grid",
    "save_layer_grid",
    "save_reconstruction_grid",
]

_ELLIPSE_POINTS = 24


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
) -> None:
    """Save panels side by side, one row per image, as a PNG (torchvision ``make_grid``)."""
    if not panels:
        raise ValueError("save_grid needs at least one panel")
    panels = [_as_rgb(panel[:max_images]) for panel in panels]
    shapes = {(panel.shape[0], *panel.shape[2:]) for panel in panels}
    if len(shapes) != 1:
        raise ValueError(f"panels must share batch size and image size, got [b h w] = {shapes}")
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
) -> Float[Tensor, "b 3 h w"]:
    """Each Gaussian drawn as the ``sigma``-standard-deviation ellipse of its projected 2D
    covariance, filled with its colour (first three channels) at its opacity, far ones first.

    Drawn with PIL on the CPU, so it is for a handful of images, not for training loops.
    """
    cpu = gaussians.detach().to("cpu", torch.float32)
    projected = project_gaussians(cpu.means, cpu.quats, cpu.scales, cpu.opacities, camera)
    a, b, c = projected.conics.unbind(-1)
    covariance = torch.linalg.inv(torch.stack([a, b, b, c], dim=-1).reshape(*a.shape, 2, 2))
    # Any square root of the covariance maps the unit circle onto the 1-sigma ellipse.
    root = torch.linalg.cholesky(covariance)
    angles = torch.linspace(0, 2 * math.pi, _ELLIPSE_POINTS + 1)[:-1]
    circle = torch.stack([angles.cos(), angles.sin()])  # [2 p]
    outlines = projected.means2d[..., None] + sigma * root @ circle  # [b n 2 p]
    colors = _as_rgb(rearrange(gaussians.colors, "b n c -> b c n 1"))[..., 0]  # [b 3 n]
    visible = (projected.radii > 0).all(dim=-1)
    order = torch.argsort(projected.depths, dim=1, descending=True, stable=True)

    canvases = []
    shade = round(255 * min(max(background, 0.0), 1.0))
    opacities = cpu.opacities
    for image in range(gaussians.batch_size):
        canvas = Image.new("RGB", (camera.width, camera.height), (shade,) * 3)
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
) -> None:
    """PNG with rows input | masked input | render | Gaussians as ellipses, values in [0, 1]."""
    gaussians = gaussians[:max_images]
    ellipses = draw_gaussians(gaussians, camera)
    save_grid(path, [images, masked, renders, ellipses], max_images=max_images)


@typecheck
def save_layer_grid(
    path: str | os.PathLike,
    images: Float[Tensor, "b c h w"],
    layers: DepthLayers,
    *,
    edges: Float[Tensor, "b h w"] | Bool[Tensor, "b h w"] | None = None,
    figure: Bool[Tensor, "b h w"] | None = None,
    max_images: int = 4,
) -> None:
    """PNG with rows input | full render | each layer alone | each cumulative render, then the
    edge map and figure-ground mask when given (all must share the input's size)."""
    panels = [images, layers.cumulative[:, -1]]
    panels += list(layers.layers.unbind(1)) + list(layers.cumulative.unbind(1))
    for extra in (edges, figure):
        if extra is not None:
            panels.append(extra[:, None].float())
    save_grid(path, panels, max_images=max_images)
