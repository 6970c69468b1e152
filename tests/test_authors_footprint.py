"""The GMAE authors' footprint (`Camera.gmae(..., footprint="authors")`): orthographic centres,
footprints sized as gsplat 0.1.0 sized them at depth 8 + z."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from splathead import gmae_vit_tiny
from splathead.camera import Camera
from splathead.gaussians import Gaussians
from splathead.render import (
    GsplatBackend, SplatRenderer, gsplat_available, numba_available, project_gaussians)
from splathead.render.projection import covariance_3d

SIZE = 32
UNIT = st.floats(-0.95, 0.95)
SCALE = st.floats(0.01, 0.2)


def covariances_2d(camera: Camera, means, quats, scales) -> torch.Tensor:
    """``[n 2 2]`` projected covariances without the blur (the inverse of the conics)."""
    projected = project_gaussians(means[None], quats[None], scales[None], None, camera, eps2d=0.0)
    a, b, c = projected.conics[0].unbind(-1)
    return torch.linalg.inv(torch.stack([a, b, b, c], -1).reshape(-1, 2, 2))


def z_rotation(angle: float) -> torch.Tensor:
    return torch.tensor([math.cos(angle / 2), 0.0, 0.0, math.sin(angle / 2)], dtype=torch.float64)


def unit_quaternion(values: list[float]) -> torch.Tensor:
    quat = torch.tensor(values, dtype=torch.float64)
    return quat / quat.norm()


QUATS = st.lists(st.floats(-1, 1), min_size=4, max_size=4).filter(
    lambda q: sum(v * v for v in q) > 0.01)


@settings(max_examples=30, deadline=None)
@given(x=UNIT, y=UNIT, angle=st.floats(0, 2 * math.pi), sx=SCALE, sy=SCALE)
def test_flat_gaussians_at_depth_zero_look_as_under_the_default_camera(x, y, angle, sx, sy):
    """No extent along z: the shear column meets nothing, and at z = 0 the two agree anywhere."""
    means = torch.tensor([[x, y, 0.0]], dtype=torch.float64)
    quats, scales = z_rotation(angle)[None], torch.tensor([[sx, sy, 0.0]], dtype=torch.float64)
    authors = covariances_2d(Camera.gmae(SIZE, SIZE, footprint="authors"), means, quats, scales)
    default = covariances_2d(Camera.gmae(SIZE, SIZE), means, quats, scales)
    torch.testing.assert_close(authors, default, rtol=1e-9, atol=1e-9)


@settings(max_examples=30, deadline=None)
@given(z=UNIT, quat=QUATS, scales=st.lists(SCALE, min_size=3, max_size=3),
       size=st.sampled_from([(32, 32), (24, 40)]))
def test_on_the_axis_the_footprint_is_the_default_times_8_over_8_plus_z(z, quat, scales, size):
    means = torch.tensor([[0.0, 0.0, z]], dtype=torch.float64)
    quats, scales = unit_quaternion(quat)[None], torch.tensor([scales], dtype=torch.float64)
    authors = covariances_2d(Camera.gmae(*size, footprint="authors"), means, quats, scales)
    default = covariances_2d(Camera.gmae(*size), means, quats, scales)
    torch.testing.assert_close(authors, default * (8 / (8 + z)) ** 2, rtol=1e-9, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(x=UNIT, y=UNIT, z=UNIT, quat=QUATS, scales=st.lists(SCALE, min_size=3, max_size=3))
def test_footprint_is_gsplat_0_1_0_s_with_the_authors_camera_and_scales(x, y, z, quat, scales):
    """gsplat 0.1.0's ``project_cov3d_ewa`` as the authors called it: focal W/2 (90 degrees),
    view matrix translation z = 8, their scales ours times 8 (their c = 1 is our 1/8); shear
    term from the unclamped ``x/z`` (|x/z| <= 1/7 here, far inside its 1.3 limit)."""
    means = torch.tensor([[x, y, z]], dtype=torch.float64)
    quats, scales = unit_quaternion(quat)[None], torch.tensor([scales], dtype=torch.float64)
    focal, depth = SIZE / 2, 8.0 + z
    jacobian = torch.tensor([[focal / depth, 0.0, -focal * x / depth**2],
                             [0.0, focal / depth, -focal * y / depth**2]], dtype=torch.float64)
    theirs = jacobian @ covariance_3d(quats[0], 8 * scales[0]) @ jacobian.T
    ours = covariances_2d(Camera.gmae(SIZE, SIZE, footprint="authors"), means, quats, scales)
    torch.testing.assert_close(ours[0], theirs, rtol=1e-9, atol=1e-12)


def one_gaussian(z: float) -> Gaussians:
    return Gaussians(
        means=torch.tensor([[[0.3, -0.2, z]]], dtype=torch.float64, requires_grad=True),
        scales=torch.tensor([[[0.1, 0.06, 0.08]]], dtype=torch.float64, requires_grad=True),
        quats=unit_quaternion([0.9, 0.2, -0.3, 0.1])[None, None].requires_grad_(True),
        colors=torch.tensor([[[0.2, 0.7, 0.4]]], dtype=torch.float64, requires_grad=True),
        opacities=torch.tensor([[0.8]], dtype=torch.float64, requires_grad=True),
    )


def test_depth_gets_a_gradient_through_the_footprint_only_under_the_authors_camera():
    grads = {}
    for footprint in ("ortho", "authors"):
        scene = one_gaussian(0.4)
        renderer = SplatRenderer(Camera.gmae(16, 16, footprint=footprint), backend="torch")
        renderer(scene).image.square().sum().backward()
        grads[footprint] = scene.means.grad[0, 0, 2].item()
    assert grads["ortho"] == 0.0
    assert abs(grads["authors"]) > 1e-3


def test_render_gradients_pass_gradcheck():
    renderer = SplatRenderer(Camera.gmae(8, 8, footprint="authors"), backend="torch")
    scene = one_gaussian(-0.5)

    def image(means, scales, quats):
        return renderer(scene.replace(means=means, scales=scales, quats=quats)).image

    assert torch.autograd.gradcheck(image, (scene.means, scene.scales, scene.quats))


def test_camera_refuses_the_footprint_on_a_pinhole_and_unknown_footprints():
    with pytest.raises(ValueError, match="footprint_depth needs model='ortho'"):
        Camera(width=8, height=8, fx=8.0, fy=8.0, cx=4.0, cy=4.0, footprint_depth=8.0)
    with pytest.raises(ValueError, match="footprint_depth must be finite and positive"):
        Camera(width=8, height=8, fx=8.0, fy=8.0, cx=4.0, cy=4.0, model="ortho",
               footprint_depth=0.0)
    with pytest.raises(ValueError, match="footprint must be 'ortho' or 'authors'"):
        Camera.gmae(8, 8, footprint="perspective")


@pytest.mark.skipif(not gsplat_available(), reason="needs gsplat installed")
def test_gsplat_backend_refuses_the_authors_footprint_by_name():
    camera = Camera.gmae(8, 8, footprint="authors")
    scene = one_gaussian(0.0).detach().to(torch.float32)
    with pytest.raises(ValueError, match="cannot render Camera.footprint_depth"):
        GsplatBackend().render(scene, camera, torch.ones(1, 3), render_depth=False)
    with pytest.raises(ValueError, match="footprint='authors'"):
        SplatRenderer(camera, backend="gsplat")
    assert SplatRenderer(camera, backend="auto").backend == ("numba" if numba_available() else "torch")


def test_the_model_renders_with_the_authors_footprint_when_asked():
    model = gmae_vit_tiny(img_size=16, patch_size=4, num_queries=4, backend="torch",
                          footprint="authors")
    assert model.decoder.camera.footprint_depth == 8.0
    assert gmae_vit_tiny(img_size=16, patch_size=4, num_queries=4).decoder.camera.footprint_depth is None
