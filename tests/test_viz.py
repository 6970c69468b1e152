"""PNG grids: sizes, panels and the Gaussian ellipse drawing."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from splathead.camera import Camera
from splathead.gaussians import Gaussians
from splathead.render import SplatRenderer
from splathead.viz import (
    draw_gaussians,
    hide_patches,
    save_grid,
    save_layer_grid,
    save_reconstruction_grid,
)
from splathead.zeroshot import figure_ground, render_layers, soft_edges

SIZE = 32
CAMERA = Camera.gmae(SIZE, SIZE)
PAD = 2
SHOWN = 128  # the grids enlarge 32 px panels 4x by default


def gaussians(b: int = 2, n: int = 8) -> Gaussians:
    generator = torch.Generator().manual_seed(0)
    return Gaussians(
        means=torch.rand(b, n, 3, generator=generator) * 2 - 1,
        scales=torch.rand(b, n, 3, generator=generator) * 0.2 + 0.02,
        quats=torch.randn(b, n, 4, generator=generator),
        colors=torch.rand(b, n, 3, generator=generator),
        opacities=torch.rand(b, n, generator=generator),
    )


def grid_size(rows: int, columns: int, panel: int = SHOWN) -> tuple[int, int]:
    """(width, height) of a torchvision grid of ``panel``-pixel panels."""
    return columns * (panel + PAD) + PAD, rows * (panel + PAD) + PAD


def test_reconstruction_grid_has_a_row_per_image_and_four_panels(tmp_path):
    images = torch.rand(3, 3, SIZE, SIZE)
    path = tmp_path / "grid.png"
    scene = gaussians(b=3)
    save_reconstruction_grid(path, images, images * 0.5, images, scene, CAMERA, max_images=2)
    assert Image.open(path).size == grid_size(rows=2, columns=4)


def test_layer_grid_shows_every_layer_and_cumulative_render(tmp_path):
    scene, renderer = gaussians(), SplatRenderer(CAMERA, backend="torch")
    layers = render_layers(scene, renderer, num_layers=3)
    path = tmp_path / "layers.png"
    save_layer_grid(
        path,
        torch.rand(2, 3, SIZE, SIZE),
        layers,
        edges=soft_edges(scene, renderer, layer_counts=(2,)),
        figure=figure_ground(scene, renderer, num_layers=2),
    )
    assert Image.open(path).size == grid_size(rows=2, columns=2 + 3 + 3 + 2)


@pytest.mark.parametrize(("min_panel_size", "factor"), [(0, 1), (64, 1), (65, 2), (128, 2)])
def test_an_opaque_gaussian_is_drawn_as_its_one_sigma_ellipse(min_panel_size, factor):
    camera = Camera.gmae(64, 64)
    scene = Gaussians(
        means=torch.tensor([[[0.1, -0.2, 0.0]]]),
        scales=torch.tensor([[[0.4, 0.2, 0.2]]]),
        quats=torch.tensor([[[1.0, 0.0, 0.0, 0.0]]]),  # axis-aligned
        colors=torch.tensor([[[1.0, 0.0, 0.0]]]),
        opacities=torch.tensor([[1.0]]),
    )
    drawing = draw_gaussians(scene, camera, min_panel_size=min_panel_size)[0]
    assert drawing.shape == (3, 64 * factor, 64 * factor)
    red = (drawing[0] > 0.9) & (drawing[1] < 0.1)
    # Standard deviations in camera pixels: focal 32 times the scale, plus the 0.3 px^2 blur;
    # the drawing is `factor` times larger.
    sx, sy = (factor * math.sqrt((32 * s) ** 2 + 0.3) for s in (0.4, 0.2))
    centres = torch.arange(64 * factor) + 0.5
    dx = centres[None, :] - factor * (32 + 32 * 0.1)
    dy = centres[:, None] - factor * (32 - 32 * 0.2)

    def inside(margin: float) -> torch.Tensor:
        return (dx / (sx + margin)) ** 2 + (dy / (sy + margin)) ** 2 <= 1

    assert red[inside(-1.0)].all()
    assert not red[~inside(1.0)].any()


def test_hide_patches_fills_exactly_the_hidden_patches():
    images = torch.rand(1, 3, 8, 8)
    mask = torch.tensor([[True, False, False, True]])
    hidden = hide_patches(images, mask, patch_size=4, fill=0.5)
    assert (hidden[..., :4, :4] == 0.5).all() and (hidden[..., 4:, 4:] == 0.5).all()
    assert torch.equal(hidden[..., :4, 4:], images[..., :4, 4:])
    assert torch.equal(hidden[..., 4:, :4], images[..., 4:, :4])


def test_hide_patches_takes_rectangular_patches_row_major():
    images = torch.rand(1, 3, 4, 12)
    mask = torch.tensor([[False, True, False, True, False, False]])  # grid 2 x 3 of 2 x 4 patches
    hidden = hide_patches(images, mask, patch_size=(2, 4), fill=0.5)
    expected = images.clone()
    expected[..., :2, 4:8], expected[..., 2:, :4] = 0.5, 0.5
    assert torch.equal(hidden, expected)


def test_hide_patches_rejects_a_mask_that_does_not_tile_the_image():
    with pytest.raises(ValueError, match="does not tile"):
        hide_patches(torch.rand(1, 3, 8, 8), torch.zeros(1, 3, dtype=torch.bool), patch_size=4)


def test_grid_is_a_valid_rgb_png(tmp_path):
    path = tmp_path / "grid.png"
    images = torch.rand(1, 1, SIZE, SIZE)  # grey panels are shown as RGB
    save_reconstruction_grid(path, images, images, images, gaussians(b=1), CAMERA)
    pixels = np.asarray(Image.open(path))
    assert pixels.ndim == 3 and pixels.shape[2] == 3


def test_grid_enlarges_every_model_pixel_to_a_square_of_one_colour(tmp_path):
    images = torch.rand(1, 3, 8, 12)
    path = tmp_path / "grid.png"
    save_grid(path, [images], padding=0, min_panel_size=20)  # shorter side 8 -> 24: factor 3
    pixels = torch.from_numpy(np.asarray(Image.open(path)).copy()).permute(2, 0, 1)
    expected = (images[0] * 255).round().to(torch.uint8)
    assert pixels.shape == (3, 24, 36)
    assert torch.equal(pixels, expected.repeat_interleave(3, 1).repeat_interleave(3, 2))


def test_grid_keeps_panels_at_their_size_with_min_panel_size_zero(tmp_path):
    path = tmp_path / "grid.png"
    save_reconstruction_grid(path, *[torch.rand(2, 3, SIZE, SIZE)] * 3, gaussians(), CAMERA,
                             min_panel_size=0)
    assert Image.open(path).size == grid_size(rows=2, columns=4, panel=SIZE)


def test_grid_refuses_panels_that_do_not_enlarge_by_a_whole_factor(tmp_path):
    with pytest.raises(ValueError, match=r"\[\(20, 20\)\] do not enlarge by a whole factor"):
        save_grid(tmp_path / "grid.png", [torch.rand(1, 3, 32, 32), torch.rand(1, 3, 20, 20)],
                  min_panel_size=0)
    assert not (tmp_path / "grid.png").exists()
