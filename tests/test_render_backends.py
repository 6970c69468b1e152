"""The parity suite every render backend passes: the definition's values and gradients, and its
invariants. To run a new backend through it, add a `Case` to `CASES` (docs/renderer.md)."""

from dataclasses import dataclass
from typing import Callable

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from gsplat_stand_ins import GsplatCallOnCPU
from render_scenes import SEEDS, make_camera, random_gaussians, scene_from, scenes

from splathead.camera import Camera
from splathead.gaussians import Gaussians
from splathead.render import (
    GsplatBackend,
    NumbaBackend,
    ReferenceBackend,
    RenderBackend,
    RenderOutput,
    SplatRenderer,
    TorchBackend,
    gsplat_available,
    numba_available,
    render_reference,
)
from splathead.render.projection import ALPHA_THRESHOLD, quat_to_rotmat

FIELDS = ("means", "scales", "quats", "colors", "opacities")


class DenseDefinition:
    """A backend written here, outside the library: the reference definition behind the
    protocol, as a user's own backend would be."""

    name = "dense definition"

    def render(self, gaussians, camera, background, *, render_depth):
        return render_reference(gaussians, camera, background, render_depth=render_depth)


def assert_images_match(got: torch.Tensor, want: torch.Tensor) -> None:
    """float32 against the float64 definition: relative error <= 1e-5, allowing rare pixels
    where an alpha threshold flips (|diff| <= 5e-3 on at most 0.1% of them)."""
    difference = (got.double() - want).abs()
    flipped = difference > 1e-5 * want.abs().clamp(min=1.0)
    assert flipped.double().mean() <= 1e-3, f"{flipped.double().mean():.2e} of pixels differ"
    assert difference.max() <= 5e-3, f"max abs difference {difference.max():.2e}"


def assert_gradients_match(got: torch.Tensor, want: torch.Tensor) -> None:
    """float32 gradients against float64 ones: relative error of the norm <= 1e-3."""
    error = (got.double() - want).norm() / want.norm().clamp(min=1e-12)
    assert error <= 1e-3, f"relative error {error:.2e}"


@dataclass(frozen=True)
class Case:
    """A backend with the device and dtype it renders on and how close it must come."""

    make: Callable[[], RenderBackend]
    device: str = "cpu"
    dtype: torch.dtype = torch.float64
    assert_close: Callable = torch.testing.assert_close
    assert_gradients_close: Callable = torch.testing.assert_close

    def render(self, gaussians: Gaussians, camera: Camera, background: torch.Tensor) -> RenderOutput:
        """Render float64 CPU inputs on the case's device and dtype; outputs come back as float64
        CPU tensors."""
        output = self.make().render(
            gaussians.to(self.device, self.dtype), camera,
            background.to(self.device, self.dtype), render_depth=True,
        )
        return RenderOutput(*(t.to("cpu", torch.float64) for t in output))

    def assert_outputs_close(self, got: RenderOutput, want: RenderOutput) -> None:
        """Image, alpha and depth within the case's tolerance. Below float64 the depth is
        compared times alpha: dividing by alpha = 1 - T_final magnifies the rounding of T_final
        by 1 / alpha (a float32 pixel at alpha 0.004 carries a 1e-5 relative depth error)."""
        self.assert_close(got.image, want.image)
        self.assert_close(got.alpha, want.alpha)
        if self.dtype == torch.float64:
            self.assert_close(got.depth, want.depth)
        else:
            self.assert_close(got.depth * got.alpha, want.depth * want.alpha)


float32 = dict(
    dtype=torch.float32, assert_close=assert_images_match,
    assert_gradients_close=assert_gradients_match,
)
needs_numba = pytest.mark.skipif(not numba_available(), reason="numba not installed")
CASES = {
    "reference": Case(ReferenceBackend),
    "dense definition (written here)": Case(DenseDefinition),
    "torch, 16 px tiles": Case(TorchBackend),
    "torch, 4 px tiles": Case(lambda: TorchBackend(tile_size=4)),
    # The project's gsplat call on gsplat's own pure-torch projection and tile lists (CPU):
    # checks its arguments in every CI run; the real kernels are the next case, on CUDA.
    "gsplat call, pure-torch stand-ins": pytest.param(
        Case(GsplatCallOnCPU),
        marks=pytest.mark.skipif(not gsplat_available(), reason="gsplat not installed"),
    ),
    "numba, 4 px tiles": pytest.param(Case(lambda: NumbaBackend(tile_size=4)), marks=needs_numba),
    "numba, float32": pytest.param(Case(NumbaBackend, **float32), marks=needs_numba),
    "gsplat": pytest.param(
        Case(GsplatBackend, device="cuda", **float32),
        marks=[
            pytest.mark.cuda,
            pytest.mark.skipif(not gsplat_available(), reason="gsplat not installed"),
        ],
    ),
}
BACKENDS = pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
NOT_THE_REFERENCE = pytest.mark.parametrize(
    "case", [case for name, case in CASES.items() if name != "reference"],
    ids=[name for name in CASES if name != "reference"],
)


@NOT_THE_REFERENCE
@given(spec=scenes)
def test_backend_renders_the_reference_definition(case, spec):
    gaussians, camera, background = scene_from(spec)
    got = case.render(gaussians, camera, background)
    want = render_reference(gaussians, camera, background, render_depth=True)
    case.assert_outputs_close(got, want)


@NOT_THE_REFERENCE
@pytest.mark.parametrize("model", ["ortho", "pinhole"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_backend_gradients_equal_the_reference_definition_where_pixels_stop(case, model, seed):
    camera = make_camera(model, 6, 7)
    gaussians = random_gaussians(seed, 2, 12, 2, max_scale=1.0)
    # Large Gaussians with opacities near 1: many pixels stop (transmittance 1e-4) and some
    # alphas hit the 0.999 clamp.
    gaussians = gaussians.replace(opacities=0.9 + 0.1 * gaussians.opacities)
    background = torch.tensor([[0.2, 0.7], [1.0, 0.0]], dtype=torch.float64)
    weights = torch.randn(2, 4, 6, 7, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

    def gradients(render) -> list[torch.Tensor]:
        leaves = gaussians.map(lambda t: t.clone().requires_grad_())
        output = render(leaves)
        (torch.cat([output.image, output.alpha, output.depth], 1) * weights).sum().backward()
        return [getattr(leaves, name).grad for name in FIELDS]

    expected = gradients(lambda scene: render_reference(scene, camera, background, render_depth=True))
    got = gradients(lambda scene: case.render(scene, camera, background))
    for got_field, expected_field in zip(got, expected):
        case.assert_gradients_close(got_field, expected_field)


@BACKENDS
@given(spec=scenes)
def test_zero_opacity_gives_the_background_exactly(case, spec):
    gaussians, camera, background = scene_from(spec)
    gaussians = gaussians.replace(opacities=torch.zeros_like(gaussians.opacities))
    image, alpha, _ = case.render(gaussians, camera, background)
    background = background.to(case.dtype).double()
    assert torch.equal(image, background[:, :, None, None].expand_as(image))
    assert torch.equal(alpha, torch.zeros_like(alpha))


@BACKENDS
@given(spec=scenes)
def test_image_is_a_convex_combination_of_colours_and_background(case, spec):
    gaussians, camera, background = scene_from(spec)
    image, _, _ = case.render(gaussians, camera, background)
    values = torch.cat([gaussians.colors, background[:, None, :]], dim=1)  # [b n+1 c]
    low, high = values.amin(dim=1)[..., None, None], values.amax(dim=1)[..., None, None]
    slack = 1e-12 if case.dtype == torch.float64 else 1e-6
    assert (image >= low - slack).all() and (image <= high + slack).all()


@BACKENDS
@given(spec=scenes)
def test_alpha_is_the_weight_left_for_the_background(case, spec):
    gaussians, camera, background = scene_from(spec)
    image_black, alpha, _ = case.render(gaussians, camera, torch.zeros_like(background))
    image_white, _, _ = case.render(gaussians, camera, torch.ones_like(background))
    assert (alpha >= 0).all() and (alpha < 1 - 1e-4).all()  # a pixel stops before T <= 1e-4
    case.assert_close(image_white - image_black, (1 - alpha).expand_as(image_white))


@BACKENDS
@given(spec=scenes, permutation_seed=SEEDS)
def test_permuting_gaussians_with_distinct_depths_changes_nothing(case, spec, permutation_seed):
    gaussians, camera, background = scene_from(spec)
    n = gaussians.num_gaussians
    distinct_z = torch.linspace(-0.9, 0.9, n, dtype=torch.float64)[torch.randperm(n)]
    gaussians = gaussians.replace(means=torch.cat([gaussians.means[..., :2], distinct_z.expand(spec["b"], n)[..., None]], -1))
    permutation = torch.randperm(n, generator=torch.Generator().manual_seed(permutation_seed))
    permuted = gaussians.gather(permutation.expand(spec["b"], n))
    case.assert_outputs_close(case.render(permuted, camera, background), case.render(gaussians, camera, background))


@BACKENDS
@given(spec=scenes, shift_x=st.integers(-3, 3), shift_y=st.integers(-3, 3))
def test_moving_gaussians_by_whole_pixels_shifts_the_ortho_image(case, spec, shift_x, shift_y):
    gaussians, camera, background = scene_from(spec, model="ortho")
    h, w = camera.height, camera.width
    offset = torch.tensor([shift_x / camera.fx, shift_y / camera.fy, 0.0], dtype=torch.float64)
    moved = gaussians.replace(means=gaussians.means + offset)
    image, _, _ = case.render(gaussians, camera, background)
    image_moved, _, _ = case.render(moved, camera, background)
    rows, cols = slice(max(0, -shift_y), h - max(0, shift_y)), slice(max(0, -shift_x), w - max(0, shift_x))
    rows_moved = slice(rows.start + shift_y, rows.stop + shift_y)
    cols_moved = slice(cols.start + shift_x, cols.stop + shift_x)
    case.assert_close(image_moved[..., rows_moved, cols_moved], image[..., rows, cols])


@BACKENDS
@given(spec=scenes)
def test_mirroring_x_mirrors_the_image(case, spec):
    gaussians, camera, background = scene_from(spec)
    flip = torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    # Reflecting the scene in the plane x = 0 maps rotation R to F R F: quaternion (w, x, -y, -z).
    mirrored = gaussians.replace(
        means=gaussians.means * flip,
        quats=gaussians.quats * torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=torch.float64),
    )
    rotation, rotation_mirrored = quat_to_rotmat(gaussians.quats), quat_to_rotmat(mirrored.quats)
    torch.testing.assert_close(rotation_mirrored, flip[:, None] * rotation * flip)
    original = case.render(gaussians, camera, background)
    case.assert_outputs_close(case.render(mirrored, camera, background), RenderOutput(*(t.flip(-1) for t in original)))


@BACKENDS
@given(spec=scenes, other_seed=SEEDS)
def test_an_opaque_large_gaussian_in_front_hides_what_lies_behind(case, spec, other_seed):
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

    image, _, _ = case.render(with_wall(gaussians), camera, background)
    image_other, _, _ = case.render(with_wall(behind), camera, background)
    # The wall's alpha is 0.999: what lies behind shows through by at most 0.001.
    slack = 1e-12 if case.dtype == torch.float64 else 1e-6
    assert (image - 0.5).abs().max() <= 1e-3 + slack
    assert (image - image_other).abs().max() <= 1e-3 + slack


@BACKENDS
@given(spec=scenes, weight=st.floats(-2, 2), other_seed=SEEDS)
def test_image_is_linear_in_colours_on_a_black_background(case, spec, weight, other_seed):
    gaussians, camera, background = scene_from(spec)
    black = torch.zeros_like(background)
    other_colors = torch.rand(gaussians.colors.shape, generator=torch.Generator().manual_seed(other_seed), dtype=torch.float64)
    combined = gaussians.replace(colors=gaussians.colors + weight * other_colors)
    image, _, _ = case.render(gaussians, camera, black)
    image_other, _, _ = case.render(gaussians.replace(colors=other_colors), camera, black)
    image_combined, _, _ = case.render(combined, camera, black)
    case.assert_close(image_combined, image + weight * image_other)


@BACKENDS
@given(spec=scenes)
def test_expected_depth_lies_between_the_nearest_and_farthest_centre(case, spec):
    gaussians, camera, background = scene_from(spec, n=max(spec["n"], 1))
    _, alpha, depth = case.render(gaussians, camera, background)
    z = gaussians.camera_depths(camera)
    drawn = alpha > 0
    low, high = z.amin(1)[:, None, None, None], z.amax(1)[:, None, None, None]
    # The depth is divided by alpha = 1 - T_final, whose rounding is relative to 1, not alpha.
    precision = torch.finfo(case.dtype).eps * 8
    slack = precision * high.abs().clamp(min=1) / alpha.clamp(min=ALPHA_THRESHOLD)
    assert ((depth >= low - slack) | ~drawn).all() and ((depth <= high + slack) | ~drawn).all()
    assert (depth[~drawn] == 0).all()


@BACKENDS
@pytest.mark.parametrize("model", ["ortho", "pinhole"])
@pytest.mark.parametrize("seed", [0, 1])
def test_gradients_of_all_five_fields_pass_gradcheck(case, model, seed):
    if case.dtype != torch.float64:
        pytest.skip("gradcheck needs float64")
    camera = make_camera(model, 7, 9)
    gaussians = random_gaussians(seed, 2, 3, 2, max_scale=0.25)
    # Opacities below 0.9 keep alpha off its 0.999 clamp and transmittance off 1e-4; this scene's
    # alphas stay off 1/255 by far more than gradcheck's step.
    gaussians = gaussians.replace(opacities=0.2 + 0.7 * gaussians.opacities)
    fields = [getattr(gaussians, name).clone().requires_grad_() for name in FIELDS]
    background = torch.tensor([[0.2, 0.7], [1.0, 0.0]], dtype=torch.float64)

    def render(*fields):
        return tuple(case.render(Gaussians(*fields), camera, background))

    assert torch.autograd.gradcheck(render, fields, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


def test_a_backend_written_outside_the_library_renders_through_splat_renderer():
    camera = Camera.gmae(12, 10)
    gaussians = random_gaussians(3, 2, 5, 3)
    settings = dict(background=(0.1, 0.2, 0.3), render_depth=True)
    renderer = SplatRenderer(camera, backend=DenseDefinition(), **settings).double()
    assert renderer.backend == "dense definition"
    output = renderer(gaussians)
    expected = SplatRenderer(camera, backend="torch", **settings).double()(gaussians)
    for got, want in zip(output, expected):
        torch.testing.assert_close(got, want)
    assert output.image.shape == (2, 3, 12, 10) and output.alpha.shape == output.depth.shape == (2, 1, 12, 10)
