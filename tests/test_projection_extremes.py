"""Projection at the edges of float32: quaternions of any norm, huge scales, half precision."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from splathead.camera import Camera
from splathead.gaussians import Gaussians
from splathead.render import SplatRenderer
from splathead.render.projection import MAX_RADIUS, project_gaussians, quat_to_rotmat

UNIT_QUATS = st.lists(st.floats(-1, 1), min_size=4, max_size=4).filter(
    lambda q: sum(v * v for v in q) > 0.01
)
# Every finite float32 magnitude a quaternion can have, subnormals included.
LOG10_NORMS = st.floats(-44.0, 38.0)


def pinhole_camera(size: int) -> Camera:
    viewmat = torch.eye(4)
    viewmat[2, 3] = 3.0
    return Camera(width=size, height=size, fx=float(size), fy=float(size), cx=size / 2, cy=size / 2, viewmat=viewmat)


def make_camera(model: str, size: int = 16) -> Camera:
    return Camera.gmae(size, size) if model == "ortho" else pinhole_camera(size)


def one_gaussian(quats=(0.9, 0.3, -0.2, 0.1), scales=(0.3, 0.05, 0.1), dtype=torch.float32) -> Gaussians:
    return Gaussians(
        means=torch.tensor([[[0.1, -0.2, 0.0]]], dtype=dtype),
        scales=torch.tensor([[scales]], dtype=dtype),
        quats=torch.tensor([[quats]], dtype=dtype),
        colors=torch.tensor([[[0.2, 0.5, 0.9]]], dtype=dtype),
        opacities=torch.tensor([[0.9]], dtype=dtype),
    )


def project(camera: Camera, gaussians: Gaussians):
    return project_gaussians(
        gaussians.means, gaussians.quats, gaussians.scales, gaussians.opacities, camera
    )


@given(direction=UNIT_QUATS, log10_norm=LOG10_NORMS)
def test_every_finite_nonzero_quaternion_gives_its_rotation(direction, log10_norm):
    stored = torch.tensor(direction) * 10.0**log10_norm  # float32, as the renderer sees it
    if not stored.any():
        return  # underflowed to the zero quaternion, which is the identity by definition
    unit = (stored.double() / stored.double().norm()).float()
    torch.testing.assert_close(quat_to_rotmat(stored), quat_to_rotmat(unit), atol=1e-6, rtol=0)


@given(direction=UNIT_QUATS, log10_norm=st.floats(-30.0, 30.0))
def test_quaternion_gradients_are_finite_at_any_representable_scale(direction, log10_norm):
    quats = (torch.tensor(direction) * 10.0**log10_norm).requires_grad_()
    (quat_to_rotmat(quats) * torch.arange(9.0).view(3, 3)).sum().backward()
    assert torch.isfinite(quats.grad).all()


@pytest.mark.parametrize("norm", [1e-20, 1e-13, 1e20, 1e30])
def test_quaternion_norm_does_not_change_the_render(norm):
    renderer = SplatRenderer(Camera.gmae(16, 16), backend="torch")
    unit = one_gaussian()
    unit = unit.replace(quats=unit.quats / unit.quats.norm())
    scaled = unit.replace(quats=unit.quats * norm)
    torch.testing.assert_close(renderer(scaled).image, renderer(unit).image, atol=1e-6, rtol=0)


def test_only_the_exact_zero_quaternion_is_the_identity():
    tiny = torch.tensor([0.0, 1e-45, 0.0, 0.0])  # the smallest subnormal: a 180-degree turn about x
    torch.testing.assert_close(quat_to_rotmat(tiny), torch.diag(torch.tensor([1.0, -1.0, -1.0])))
    assert torch.equal(quat_to_rotmat(torch.zeros(4)), torch.eye(3))


@pytest.mark.parametrize("model", ["ortho", "pinhole"])
@pytest.mark.parametrize("std", [1e8, 1e20, 3e38])
def test_huge_gaussian_covers_the_image_with_finite_gradients(model, std):
    scene = one_gaussian(scales=(std, std, std)).map(lambda t: t.clone().requires_grad_())
    output = SplatRenderer(make_camera(model), backend="torch", background=0.0)(scene)
    # Flat over the image: alpha is the opacity at every pixel, the colour the Gaussian's.
    torch.testing.assert_close(output.alpha, torch.full_like(output.alpha, 0.9))
    torch.testing.assert_close(output.image, 0.9 * scene.colors.detach().view(1, 3, 1, 1).expand_as(output.image))
    (output.image * torch.linspace(0, 1, 16)).sum().backward()
    for name in ("means", "scales", "quats", "colors", "opacities"):
        assert torch.isfinite(getattr(scene, name).grad).all(), name


@pytest.mark.parametrize("model", ["ortho", "pinhole"])
@pytest.mark.parametrize("centre", [(0.1, -0.2, 0.0), (3.0, 0.0, 0.0)], ids=["inside", "off-image"])
def test_capping_huge_scales_does_not_change_the_render(model, centre):
    renderer = SplatRenderer(make_camera(model), backend="torch", background=1.0)
    # A disc: two axes 1e4 scene units (far beyond the image, flat over it), one thin axis.
    disc = one_gaussian(scales=(1e4, 1e4, 0.05))
    disc = disc.replace(means=torch.tensor([[centre]]))
    expected = renderer(disc.to(torch.float64)).image.float()
    huge = disc.replace(scales=torch.tensor([[[1e20, 1e20, 0.05]]]))
    torch.testing.assert_close(renderer(huge).image, expected, atol=1e-6, rtol=0)


def test_radii_of_huge_gaussians_fit_int32():
    projected = project(Camera.gmae(16, 16), one_gaussian(scales=(1e20, 1e20, 1e20)))
    assert projected.radii.dtype == torch.int32
    assert (projected.radii > 0).all() and (projected.radii <= MAX_RADIUS).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_gaussians_project_in_float32(dtype):
    # GMAE camera at 224 px and scales up to 1/4: the 2D determinant exceeds float16's range.
    generator = torch.Generator().manual_seed(0)
    quats = torch.randn(1, 64, 4, generator=generator)
    quats = 1e-3 * quats / quats.norm(dim=-1, keepdim=True)
    scene = Gaussians(
        means=torch.rand(1, 64, 3, generator=generator) * 2 - 1,
        scales=torch.rand(1, 64, 3, generator=generator) / 4 + 0.01,
        quats=quats,
        colors=torch.rand(1, 64, 3, generator=generator),
        opacities=torch.full((1, 64), 0.5),
    ).to(dtype)
    camera = Camera.gmae(224, 224)

    def conic_gradient(gaussians: Gaussians):
        gaussians = gaussians.map(lambda t: t.clone().requires_grad_())
        projected = project(camera, gaussians)
        projected.conics.sum().backward()
        return projected, gaussians.quats.grad

    half, half_gradient = conic_gradient(scene)
    single, single_gradient = conic_gradient(scene.to(torch.float32))
    assert half.conics.dtype == half.means2d.dtype == torch.float32
    assert torch.isfinite(half_gradient).all()
    assert torch.equal(half.radii, single.radii)
    torch.testing.assert_close(half.conics, single.conics)
    torch.testing.assert_close(half_gradient, single_gradient.to(dtype))


def test_huge_axis_along_the_line_of_sight_leaves_an_ortho_footprint_unchanged():
    renderer = SplatRenderer(Camera.gmae(16, 16), backend="torch")
    small = one_gaussian(quats=(1.0, 0.0, 0.0, 0.0), scales=(0.2, 0.1, 0.1))
    needle = small.replace(scales=torch.tensor([[[0.2, 0.1, 1e20]]]))
    torch.testing.assert_close(renderer(needle).image, renderer(small).image)
