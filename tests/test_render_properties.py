"""The torch backend as a specification: invariants, a literal reference and gradients."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from splathead.camera import Camera
from splathead.gaussians import Gaussians
from splathead.render import RenderOutput, SplatRenderer
from splathead.render import torch_backend
from splathead.render.projection import project_gaussians, quat_to_rotmat

SEEDS = st.integers(0, 2**31 - 1)


def pinhole_camera(height: int, width: int) -> Camera:
    viewmat = torch.eye(4)
    viewmat[2, 3] = 3.0
    return Camera(
        width=width, height=height, fx=float(width), fy=float(width), cx=width / 2,
        cy=height / 2, viewmat=viewmat, model="pinhole",
    )


def make_camera(model: str, height: int, width: int) -> Camera:
    return Camera.gmae(height, width) if model == "ortho" else pinhole_camera(height, width)


def random_gaussians(
    seed: int, b: int, n: int, c: int = 3, *, max_scale: float = 0.3, dtype=torch.float64
) -> Gaussians:
    generator = torch.Generator().manual_seed(seed)

    def uniform(*shape, low=0.0, high=1.0):
        return low + (high - low) * torch.rand(*shape, generator=generator, dtype=dtype)

    return Gaussians(
        means=uniform(b, n, 3, low=-1.0),
        scales=uniform(b, n, 3, high=max_scale),
        quats=torch.randn(b, n, 4, generator=generator, dtype=dtype),
        colors=uniform(b, n, c),
        opacities=uniform(b, n),
    )


def render_tiles(
    gaussians: Gaussians, camera: Camera, background: torch.Tensor, *, tile_size: int = 16
) -> RenderOutput:
    """The torch backend with an explicit tile size (small tiles exercise the binning)."""
    dtype = gaussians.dtype
    return RenderOutput(
        *torch_backend.render(
            gaussians.means, gaussians.quats, gaussians.scales, gaussians.colors,
            gaussians.opacities, background.to(dtype), viewmat=camera.viewmat.to(dtype),
            intrinsics=camera.intrinsics.to(dtype), width=camera.width, height=camera.height,
            model=camera.model, render_depth=True, tile_size=tile_size,
        )
    )


def reference_render(gaussians: Gaussians, camera: Camera, background: torch.Tensor):
    """gsplat's classic rasterization (docs/renderer.md), one pixel and one Gaussian at a time; returns image, alpha, depth."""
    projected = project_gaussians(
        gaussians.means, gaussians.quats, gaussians.scales, gaussians.opacities,
        viewmat=camera.viewmat.to(gaussians.dtype), intrinsics=camera.intrinsics.to(gaussians.dtype),
        width=camera.width, height=camera.height, model=camera.model,
    )
    b, n, c = gaussians.colors.shape
    image = torch.zeros(b, c, camera.height, camera.width, dtype=torch.float64)
    alpha_out = torch.zeros(b, 1, camera.height, camera.width, dtype=torch.float64)
    depth_out = torch.zeros(b, 1, camera.height, camera.width, dtype=torch.float64)
    for image_id in range(b):
        means2d = projected.means2d[image_id].tolist()
        conics = projected.conics[image_id].tolist()
        depths = projected.depths[image_id].tolist()
        visible = (projected.radii[image_id] > 0).all(-1).tolist()
        opacities = gaussians.opacities[image_id].tolist()
        colors = gaussians.colors[image_id].tolist()
        front_to_back = sorted(range(n), key=lambda k: depths[k])  # Python's sort is stable
        for i in range(camera.height):
            for j in range(camera.width):
                transmittance, color, depth = 1.0, [0.0] * c, 0.0
                for k in front_to_back:
                    if not visible[k]:
                        continue
                    dx, dy = means2d[k][0] - (j + 0.5), means2d[k][1] - (i + 0.5)
                    a, b_, c_ = conics[k]
                    sigma = 0.5 * (a * dx * dx + c_ * dy * dy) + b_ * dx * dy
                    alpha = min(0.999, opacities[k] * math.exp(-sigma))
                    if sigma < 0 or alpha < 1 / 255:
                        continue
                    if transmittance * (1 - alpha) <= 1e-4:
                        break
                    color = [total + alpha * transmittance * value for total, value in zip(color, colors[k])]
                    depth += alpha * transmittance * depths[k]
                    transmittance *= 1 - alpha
                for channel in range(c):
                    image[image_id, channel, i, j] = color[channel] + transmittance * background[image_id, channel]
                alpha_out[image_id, 0, i, j] = 1 - transmittance
                depth_out[image_id, 0, i, j] = depth / max(1 - transmittance, 1e-10)
    return image, alpha_out, depth_out


scenes = st.fixed_dictionaries(
    dict(
        seed=SEEDS,
        b=st.integers(1, 2),
        n=st.integers(0, 6),
        c=st.integers(1, 4),
        height=st.integers(5, 14),
        width=st.integers(5, 14),
        model=st.sampled_from(["ortho", "pinhole"]),
    )
)


def scene_from(spec, **overrides):
    spec = {**spec, **overrides}
    camera = make_camera(spec["model"], spec["height"], spec["width"])
    gaussians = random_gaussians(spec["seed"], spec["b"], spec["n"], spec["c"])
    background = torch.rand(spec["b"], spec["c"], generator=torch.Generator().manual_seed(spec["seed"] + 1), dtype=torch.float64)
    return gaussians, camera, background


@given(spec=scenes, tile_size=st.sampled_from([4, 16]))
def test_tiled_rendering_equals_the_per_pixel_definition(spec, tile_size):
    gaussians, camera, background = scene_from(spec)
    image, alpha, depth = render_tiles(gaussians, camera, background, tile_size=tile_size)
    expected_image, expected_alpha, expected_depth = reference_render(gaussians, camera, background)
    torch.testing.assert_close(image, expected_image)
    torch.testing.assert_close(alpha, expected_alpha)
    torch.testing.assert_close(depth, expected_depth)


@given(spec=scenes)
def test_zero_opacity_gives_the_background_exactly(spec):
    gaussians, camera, background = scene_from(spec)
    gaussians = gaussians.replace(opacities=torch.zeros_like(gaussians.opacities))
    image, alpha, _ = render_tiles(gaussians, camera, background)
    assert torch.equal(image, background[:, :, None, None].expand_as(image))
    assert torch.equal(alpha, torch.zeros_like(alpha))


@given(spec=scenes)
def test_image_is_a_convex_combination_of_colours_and_background(spec):
    gaussians, camera, background = scene_from(spec)
    image, _, _ = render_tiles(gaussians, camera, background)
    values = torch.cat([gaussians.colors, background[:, None, :]], dim=1)  # [b n+1 c]
    low, high = values.amin(dim=1)[..., None, None], values.amax(dim=1)[..., None, None]
    assert (image >= low - 1e-12).all() and (image <= high + 1e-12).all()


@given(spec=scenes)
def test_alpha_is_the_weight_left_for_the_background(spec):
    gaussians, camera, background = scene_from(spec)
    image_black, alpha, _ = render_tiles(gaussians, camera, torch.zeros_like(background))
    image_white, _, _ = render_tiles(gaussians, camera, torch.ones_like(background))
    assert (alpha >= 0).all() and (alpha < 1 - 1e-4).all()  # a pixel stops before T <= 1e-4
    torch.testing.assert_close(image_white - image_black, (1 - alpha).expand_as(image_white))


@given(spec=scenes, permutation_seed=SEEDS)
def test_permuting_gaussians_with_distinct_depths_changes_nothing(spec, permutation_seed):
    gaussians, camera, background = scene_from(spec)
    n = gaussians.num_gaussians
    distinct_z = torch.linspace(-0.9, 0.9, n, dtype=torch.float64)[torch.randperm(n)]
    gaussians = gaussians.replace(means=torch.cat([gaussians.means[..., :2], distinct_z.expand(spec["b"], n)[..., None]], -1))
    permutation = torch.randperm(n, generator=torch.Generator().manual_seed(permutation_seed))
    permuted = gaussians.gather(permutation.expand(spec["b"], n))
    for original, shuffled in zip(render_tiles(gaussians, camera, background), render_tiles(permuted, camera, background)):
        torch.testing.assert_close(shuffled, original, rtol=1e-12, atol=1e-12)


@given(spec=scenes, shift_x=st.integers(-3, 3), shift_y=st.integers(-3, 3))
def test_moving_gaussians_by_whole_pixels_shifts_the_ortho_image(spec, shift_x, shift_y):
    gaussians, camera, background = scene_from(spec, model="ortho")
    h, w = camera.height, camera.width
    offset = torch.tensor([shift_x / camera.fx, shift_y / camera.fy, 0.0], dtype=torch.float64)
    moved = gaussians.replace(means=gaussians.means + offset)
    image, _, _ = render_tiles(gaussians, camera, background)
    image_moved, _, _ = render_tiles(moved, camera, background)
    rows, cols = slice(max(0, -shift_y), h - max(0, shift_y)), slice(max(0, -shift_x), w - max(0, shift_x))
    rows_moved = slice(rows.start + shift_y, rows.stop + shift_y)
    cols_moved = slice(cols.start + shift_x, cols.stop + shift_x)
    torch.testing.assert_close(image_moved[..., rows_moved, cols_moved], image[..., rows, cols])


@given(spec=scenes)
def test_mirroring_x_mirrors_the_image(spec):
    gaussians, camera, background = scene_from(spec)
    flip = torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    # Reflecting the scene in the plane x = 0 maps rotation R to F R F: quaternion (w, x, -y, -z).
    mirrored = gaussians.replace(
        means=gaussians.means * flip,
        quats=gaussians.quats * torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=torch.float64),
    )
    rotation, rotation_mirrored = quat_to_rotmat(gaussians.quats), quat_to_rotmat(mirrored.quats)
    torch.testing.assert_close(rotation_mirrored, flip[:, None] * rotation * flip)
    for original, reflected in zip(render_tiles(gaussians, camera, background), render_tiles(mirrored, camera, background)):
        torch.testing.assert_close(reflected, original.flip(-1))


@given(spec=scenes, other_seed=SEEDS)
def test_an_opaque_large_gaussian_in_front_hides_what_lies_behind(spec, other_seed):
    gaussians, camera, background = scene_from(spec, n=max(spec["n"], 1))
    behind = random_gaussians(other_seed, spec["b"], gaussians.num_gaussians, spec["c"])
    wall = dict(
        means=torch.tensor([0.0, 0.0, -1.5]), scales=torch.tensor([50.0, 50.0, 0.01]),
        quats=torch.tensor([1.0, 0.0, 0.0, 0.0]), colors=torch.full((spec["c"],), 0.5),
        opacities=torch.tensor(1.0),
    )

    def with_wall(scene: Gaussians) -> Gaussians:
        return Gaussians(**{
            name: torch.cat([wall[name].to(torch.float64).expand(spec["b"], 1, *wall[name].shape), getattr(scene, name)], 1)
            for name in wall
        })

    image, _, _ = render_tiles(with_wall(gaussians), camera, background)
    image_other, _, _ = render_tiles(with_wall(behind), camera, background)
    # The wall's alpha is 0.999: what lies behind shows through by at most 0.001.
    assert (image - 0.5).abs().max() <= 1e-3 + 1e-12
    assert (image - image_other).abs().max() <= 1e-3 + 1e-12


@given(spec=scenes, weight=st.floats(-2, 2), other_seed=SEEDS)
def test_image_is_linear_in_colours_on_a_black_background(spec, weight, other_seed):
    gaussians, camera, background = scene_from(spec)
    black = torch.zeros_like(background)
    other_colors = torch.rand(gaussians.colors.shape, generator=torch.Generator().manual_seed(other_seed), dtype=torch.float64)
    combined = gaussians.replace(colors=gaussians.colors + weight * other_colors)
    image, _, _ = render_tiles(gaussians, camera, black)
    image_other, _, _ = render_tiles(gaussians.replace(colors=other_colors), camera, black)
    image_combined, _, _ = render_tiles(combined, camera, black)
    torch.testing.assert_close(image_combined, image + weight * image_other)


@given(spec=scenes)
def test_expected_depth_lies_between_the_nearest_and_farthest_centre(spec):
    gaussians, camera, background = scene_from(spec, n=max(spec["n"], 1))
    _, alpha, depth = render_tiles(gaussians, camera, background)
    z = gaussians.camera_depths(camera)
    drawn = alpha > 0
    low, high = z.amin(1)[:, None, None, None], z.amax(1)[:, None, None, None]
    assert ((depth >= low - 1e-9) | ~drawn).all() and ((depth <= high + 1e-9) | ~drawn).all()
    assert (depth[~drawn] == 0).all()


@pytest.mark.parametrize("model", ["ortho", "pinhole"])
@pytest.mark.parametrize("seed", [0, 1])
def test_gradients_of_all_five_fields_pass_gradcheck(model, seed):
    camera = make_camera(model, 7, 9)
    gaussians = random_gaussians(seed, 2, 3, 2, max_scale=0.25)
    # Opacities below 0.9 keep alpha off its 0.999 clamp and transmittance off 1e-4; this scene's
    # alphas stay off 1/255 by far more than gradcheck's step.
    gaussians = gaussians.replace(opacities=0.2 + 0.7 * gaussians.opacities)
    fields = [t.clone().requires_grad_() for t in (gaussians.means, gaussians.scales, gaussians.quats, gaussians.colors, gaussians.opacities)]
    background = torch.tensor([[0.2, 0.7], [1.0, 0.0]], dtype=torch.float64)

    def render(means, scales, quats, colors, opacities):
        output = render_tiles(Gaussians(means, scales, quats, colors, opacities), camera, background, tile_size=4)
        return output.image, output.alpha, output.depth

    assert torch.autograd.gradcheck(render, fields, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


def test_renderer_draws_the_gmae_scene_as_the_torch_backend():
    camera = Camera.gmae(12, 10)
    gaussians = random_gaussians(3, 2, 5, 3, dtype=torch.float32)
    output = SplatRenderer(camera, backend="torch", background=(0.1, 0.2, 0.3), render_depth=True)(gaussians)
    expected = render_tiles(gaussians, camera, torch.tensor([[0.1, 0.2, 0.3]]).expand(2, 3))
    for got, want in zip(output, expected):
        torch.testing.assert_close(got, want)
    assert output.image.shape == (2, 3, 12, 10) and output.alpha.shape == output.depth.shape == (2, 1, 12, 10)


def differentiable_reference_render(gaussians: Gaussians, camera: Camera, background: torch.Tensor):
    """The per-pixel definition of ``reference_render`` in torch scalars, so autograd gives its
    gradient (the same piecewise function: the skip and stop rules branch on values)."""
    projected = project_gaussians(
        gaussians.means, gaussians.quats, gaussians.scales, gaussians.opacities,
        viewmat=camera.viewmat.to(gaussians.dtype), intrinsics=camera.intrinsics.to(gaussians.dtype),
        width=camera.width, height=camera.height, model=camera.model,
    )
    b, n, c = gaussians.colors.shape
    images, alphas = [], []
    for image_id in range(b):
        front_to_back = torch.argsort(projected.depths[image_id], stable=True).tolist()
        visible = (projected.radii[image_id] > 0).all(-1).tolist()
        pixels, pixel_alphas = [], []
        for i in range(camera.height):
            for j in range(camera.width):
                transmittance, color = torch.ones((), dtype=gaussians.dtype), torch.zeros(c, dtype=gaussians.dtype)
                for k in front_to_back:
                    if not visible[k]:
                        continue
                    dx, dy = projected.means2d[image_id, k] - torch.tensor([j + 0.5, i + 0.5], dtype=gaussians.dtype)
                    a, b_, c_ = projected.conics[image_id, k]
                    sigma = 0.5 * (a * dx * dx + c_ * dy * dy) + b_ * dx * dy
                    alpha = torch.clamp(gaussians.opacities[image_id, k] * torch.exp(-sigma), max=0.999)
                    if sigma < 0 or alpha < 1 / 255:
                        continue
                    if transmittance * (1 - alpha) <= 1e-4:
                        break
                    color = color + alpha * transmittance * gaussians.colors[image_id, k]
                    transmittance = transmittance * (1 - alpha)
                pixels.append(color + transmittance * background[image_id])
                pixel_alphas.append(1 - transmittance)
        images.append(torch.stack(pixels).T.reshape(c, camera.height, camera.width))
        alphas.append(torch.stack(pixel_alphas).reshape(1, camera.height, camera.width))
    return torch.stack(images), torch.stack(alphas)


@pytest.mark.parametrize("model", ["ortho", "pinhole"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradients_equal_autograd_of_the_per_pixel_definition_where_pixels_stop(model, seed):
    camera = make_camera(model, 6, 7)
    gaussians = random_gaussians(seed, 2, 12, 2, max_scale=1.0)
    # Large Gaussians with opacities near 1: many pixels stop (transmittance 1e-4) and some
    # alphas hit the 0.999 clamp.
    gaussians = gaussians.replace(opacities=0.9 + 0.1 * gaussians.opacities)
    background = torch.tensor([[0.2, 0.7], [1.0, 0.0]], dtype=torch.float64)
    weights = torch.randn(2, 3, 6, 7, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

    def gradients(render) -> list[torch.Tensor]:
        fields = [t.clone().requires_grad_() for t in (gaussians.means, gaussians.scales, gaussians.quats, gaussians.colors, gaussians.opacities)]
        image, alpha = render(Gaussians(*fields))
        (torch.cat([image, alpha], 1) * weights).sum().backward()
        return [field.grad for field in fields]

    expected = gradients(lambda scene: differentiable_reference_render(scene, camera, background))
    got = gradients(lambda scene: render_tiles(scene, camera, background, tile_size=4)[:2])
    for got_field, expected_field in zip(got, expected):
        torch.testing.assert_close(got_field, expected_field)


def render_and_gradients(gaussians: Gaussians, camera: Camera, background: torch.Tensor, **options):
    """Image, alpha, depth and the gradients of a fixed random loss, from the torch backend."""
    dtype = gaussians.dtype
    fields = [t.clone().requires_grad_() for t in (gaussians.means, gaussians.quats, gaussians.scales, gaussians.colors, gaussians.opacities)]
    outputs = torch_backend.render(
        *fields, background.to(dtype), viewmat=camera.viewmat.to(dtype),
        intrinsics=camera.intrinsics.to(dtype), width=camera.width, height=camera.height,
        model=camera.model, render_depth=True, tile_size=4, **options,
    )
    generator = torch.Generator().manual_seed(0)
    loss = sum(torch.randn(out.shape, generator=generator, dtype=dtype).mul(out).sum() for out in outputs)
    if loss.requires_grad:  # not when no Gaussian is drawn
        loss.backward()
    return [*outputs, *(torch.zeros_like(field) if field.grad is None else field.grad for field in fields)]


@given(spec=scenes, max_chunk_elements=st.sampled_from([1, 64, 500]))
def test_chunked_checkpointed_rendering_equals_a_single_pass(spec, max_chunk_elements):
    gaussians, camera, background = scene_from(spec)
    single = render_and_gradients(gaussians, camera, background, max_chunk_elements=2**30)
    chunked = render_and_gradients(gaussians, camera, background, max_chunk_elements=max_chunk_elements)
    for got, want in zip(chunked, single):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@given(spec=scenes)
def test_merging_tile_groups_changes_nothing(spec):
    gaussians, camera, background = scene_from(spec)
    separate = render_and_gradients(gaussians, camera, background, group_cost=0)
    merged = render_and_gradients(gaussians, camera, background, group_cost=2**30)
    for got, want in zip(merged, separate):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
