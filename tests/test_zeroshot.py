"""Zero-shot layers, figure-ground and edges on synthetic scenes with known answers."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from splathead.camera import Camera
from splathead.gaussians import Gaussians
from splathead.render import SplatRenderer
from splathead.zeroshot import (
    choose_order,
    figure_ground,
    label_edges,
    layer_groups,
    layer_labels,
    masked_reconstructions,
    render_layers,
    soft_edges,
)

SIZE = 32
CAMERA = Camera.gmae(SIZE, SIZE)


def renderer(backend: str = "torch") -> SplatRenderer:
    return SplatRenderer(CAMERA, backend=backend)


def isotropic(centres, scales, depths, colors, opacities) -> Gaussians:
    """One image of isotropic Gaussians; ``centres`` in scene units (x, y in (-1, 1))."""
    n = len(centres)
    means = torch.tensor([[x, y, z] for (x, y), z in zip(centres, depths)])
    return Gaussians(
        means=means[None],
        scales=torch.tensor(scales)[None, :, None].expand(1, n, 3).contiguous(),
        quats=torch.tensor([[1.0, 0.0, 0.0, 0.0]]).expand(1, n, 4).contiguous(),
        colors=torch.tensor(colors)[None],
        opacities=torch.tensor(opacities)[None],
    )


def random_gaussians(seed: int, n: int, *, max_opacity: float = 1.0) -> Gaussians:
    generator = torch.Generator().manual_seed(seed)

    def uniform(*shape):
        return torch.rand(*shape, generator=generator)

    return Gaussians(
        means=uniform(2, n, 3) * 2 - 1,
        scales=uniform(2, n, 3) * 0.2 + 0.02,
        quats=torch.randn(2, n, 4, generator=generator),
        colors=uniform(2, n, 3),
        opacities=uniform(2, n) * max_opacity,
    )


def pixel_distance(centre) -> torch.Tensor:
    """``[h w]`` distance of each pixel centre from a scene point, in pixels."""
    coords = torch.arange(SIZE, dtype=torch.float32) + 0.5
    px = CAMERA.fx * centre[0] + CAMERA.cx
    py = CAMERA.fy * centre[1] + CAMERA.cy
    return torch.hypot(coords[None, :] - px, coords[:, None] - py)


def footprint(centre, scale, opacity, level) -> torch.Tensor:
    """Where an isotropic Gaussian's alpha exceeds ``level``: the projection maths written out
    (ortho camera, variance ``(f s)^2`` plus gsplat's 0.3 px^2 blur)."""
    variance = (CAMERA.fx * scale) ** 2 + 0.3
    alpha = opacity * torch.exp(-0.5 * pixel_distance(centre) ** 2 / variance)
    alpha = alpha.clamp(max=0.999)
    return alpha > level


# Two opaque Gaussians: a large one far away (z = 0.5) and a smaller one near (z = -0.5),
# overlapping, so the near one hides part of the far one.
TWO_DEPTHS = isotropic(
    centres=[(-0.2, 0.0), (0.25, 0.1)],
    scales=[0.3, 0.15],
    depths=[0.5, -0.5],
    colors=[[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]],
    opacities=[1.0, 1.0],
)


def test_figure_ground_is_the_front_gaussians_footprint():
    mask = figure_ground(TWO_DEPTHS, renderer(), num_layers=2, order="back_to_front")
    expected = footprint((0.25, 0.1), 0.15, 1.0, level=0.5)
    assert torch.equal(mask[0], expected)


def test_front_to_back_order_puts_the_far_gaussian_last():
    mask = figure_ground(TWO_DEPTHS, renderer(), num_layers=2, order="front_to_back")
    expected = footprint((-0.2, 0.0), 0.3, 1.0, level=0.5)
    assert torch.equal(mask[0], expected)


def test_edges_of_an_opaque_disc_lie_on_its_rim():
    # A black opaque Gaussian on white: with threshold 0.5 the layer owns the pixels where its
    # alpha exceeds 0.5, a disc of radius sqrt(2 ln 2 * variance).
    scale = 0.2
    disc = isotropic([(0.05, -0.1)], [scale], [0.0], [[0.0, 0.0, 0.0]], [1.0])
    layers = render_layers(disc, renderer(), num_layers=1)
    edges = label_edges(layer_labels(layers.cumulative, layers.empty, threshold=0.5))[0]
    radius = math.sqrt(2 * math.log(2) * ((CAMERA.fx * scale) ** 2 + 0.3))
    off_rim = (pixel_distance((0.05, -0.1)) - radius).abs()
    assert edges.any()
    assert (off_rim[edges] < 1.0).all()
    assert edges[off_rim < 0.3].all()


@given(seed=st.integers(0, 2**16), num_layers=st.integers(1, 6))
def test_last_cumulative_render_is_the_full_render(seed, num_layers):
    gaussians = random_gaussians(seed, n=6)
    layers = render_layers(gaussians, renderer(), num_layers)
    full = renderer()(gaussians).image
    torch.testing.assert_close(layers.cumulative[:, -1], full, rtol=0, atol=0)


@given(seed=st.integers(0, 2**16), num_layers=st.integers(1, 6))
def test_layers_composited_over_each_other_give_the_full_render(seed, num_layers):
    # Opacity <= 0.6 over 6 Gaussians keeps transmittance above gsplat's 1e-4 stop, where
    # compositing separately rendered depth slices is exact.
    gaussians = random_gaussians(seed, n=6, max_opacity=0.6)
    layers = render_layers(gaussians, renderer(), num_layers, order="back_to_front")
    background = layers.empty
    composite = background
    for image, alpha in zip(layers.layers.unbind(1), layers.layer_alpha.unbind(1)):
        premultiplied = image - (1 - alpha) * background  # back to front: each layer goes over
        composite = premultiplied + (1 - alpha) * composite
    torch.testing.assert_close(composite, renderer()(gaussians).image, rtol=0, atol=1e-5)


@given(seed=st.integers(0, 2**16), num_layers=st.integers(1, 12))
def test_layer_groups_are_equal_sized_depth_slices(seed, num_layers):
    gaussians = random_gaussians(seed, n=12)
    groups = layer_groups(gaussians, renderer(), num_layers, order="back_to_front")
    depths = gaussians.camera_depths(CAMERA)
    for image in range(gaussians.batch_size):
        sizes = torch.bincount(groups[image], minlength=num_layers)
        assert sizes.max() - sizes.min() <= 1
        for layer in range(num_layers - 1):
            farther = depths[image][groups[image] == layer]
            nearer = depths[image][groups[image] == layer + 1]
            assert farther.min() >= nearer.max()


def test_label_edges_mark_both_sides_of_a_label_change():
    labels = torch.zeros(1, 4, 6, dtype=torch.long)
    labels[:, :, 3:] = 2
    edges = label_edges(labels)
    expected = torch.zeros(1, 4, 6, dtype=torch.bool)
    expected[:, :, 2:4] = True
    assert torch.equal(edges, expected)


def test_no_layer_changes_a_pixel_above_an_impossible_threshold():
    layers = render_layers(random_gaussians(0, n=6), renderer(), num_layers=3)
    labels = layer_labels(layers.cumulative, layers.empty, threshold=1.0)
    assert (labels == -1).all()
    assert not label_edges(labels).any()


def test_soft_edges_are_fractions_of_layer_counts():
    counts = (1, 2, 4)
    edges = soft_edges(random_gaussians(1, n=8), renderer(), layer_counts=counts)
    assert edges.shape == (2, SIZE, SIZE)
    votes = edges * len(counts)
    torch.testing.assert_close(votes, votes.round())
    assert edges.min() >= 0 and edges.max() <= 1 and edges.max() > 0


def test_more_layers_than_gaussians_is_rejected():
    with pytest.raises(ValueError, match="num_layers must be in"):
        render_layers(random_gaussians(0, n=4), renderer(), num_layers=5)


@pytest.mark.cuda
def test_backends_agree_on_figure_ground_and_edges():
    gaussians = random_gaussians(3, n=16).to("cuda")
    torch_renderer, gsplat_renderer = renderer("torch").cuda(), renderer("gsplat").cuda()
    assert torch.equal(
        figure_ground(gaussians, torch_renderer, order="back_to_front"),
        figure_ground(gaussians, gsplat_renderer, order="back_to_front"),
    )
    torch_edges = soft_edges(gaussians, torch_renderer, layer_counts=(2, 4), order="back_to_front")
    gsplat_edges = soft_edges(gaussians, gsplat_renderer, layer_counts=(2, 4),
                              order="back_to_front")
    assert (torch_edges != gsplat_edges).float().mean() < 0.01


def leaves_scene(background_depth: float) -> Gaussians:
    """A flat grey background of 4 large Gaussians at ``background_depth`` and 12 small
    coloured objects at the opposite depth: with 4 layers, one end layer is the background."""
    background = [(-0.5, -0.5), (0.5, -0.5), (-0.5, 0.5), (0.5, 0.5)]
    objects = [(-0.6 + 0.4 * (i % 4), -0.6 + 0.6 * (i // 4)) for i in range(12)]
    colours = [[1.0, 0.0, 0.0], [0.0, 0.8, 0.0], [0.0, 0.0, 1.0]]
    return isotropic(
        centres=background + objects,
        scales=[0.8] * 4 + [0.06] * 12,
        depths=[background_depth + 0.01 * i for i in range(4)] + [-background_depth] * 12,
        colors=[[0.5, 0.5, 0.5]] * 4 + [colours[i % 3] for i in range(12)],
        opacities=[1.0] * 16,
    )


@pytest.mark.parametrize(("background_depth", "expected"),
                         [(0.8, "back_to_front"), (-0.8, "front_to_back")])
def test_auto_order_puts_the_background_first_whichever_end_it_is(background_depth, expected):
    scene = leaves_scene(background_depth)
    choice = choose_order(scene, renderer())
    assert choice.order == expected
    background_score, object_score = choice.far_score, choice.near_score
    if expected == "front_to_back":
        background_score, object_score = object_score, background_score
    assert background_score > 0.5 > object_score
    # With the order chosen, the front layer is the objects, not the background.
    objects_alpha = renderer()(scene.where(torch.arange(16)[None] >= 4)).alpha[0, 0]
    figure = figure_ground(scene, renderer(), num_layers=4, num_front_layers=3)[0]
    assert torch.equal(figure, objects_alpha > 0.5)


def test_choose_order_needs_two_layers():
    with pytest.raises(ValueError, match="num_layers must be >= 2"):
        choose_order(leaves_scene(0.8), renderer(), num_layers=1)


def test_masked_reconstructions_use_covering_masks_and_ratio_zero_once():
    from splathead import gmae_vit_tiny

    torch.manual_seed(0)
    model = gmae_vit_tiny(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                          decoder_embed_dim=32, decoder_depth=1, num_queries=16,
                          backend="torch").eval()
    images = torch.rand(2, 3, 32, 32)
    outputs = masked_reconstructions(model, images, num_masks=4, seed=1)
    assert len(outputs) == 4
    assert len(masked_reconstructions(model, images, mask_ratio=0.0, num_masks=4)) == 1
    again = masked_reconstructions(model, images, num_masks=4, seed=1)
    for first, second in zip(outputs, again):
        torch.testing.assert_close(first.image, second.image)
    assert not torch.allclose(outputs[0].image, outputs[1].image)
