"""EWA projection against gsplat 1.5.3's own pure-torch implementation (runs on CPU)."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from splathead.camera import Camera
from splathead.render.projection import (
    ALPHA_THRESHOLD,
    covariance_3d,
    project_gaussians,
    quat_to_rotmat,
)

# gsplat ships with splathead[dev]; its pure-torch reference runs on CPU.
gsplat_reference = pytest.importorskip("gsplat.cuda._torch_impl")
_fully_fused_projection = gsplat_reference._fully_fused_projection
_quat_scale_to_covar_preci = gsplat_reference._quat_scale_to_covar_preci
_quat_to_rotmat = gsplat_reference._quat_to_rotmat

SEEDS = st.integers(0, 2**31 - 1)


def pinhole_camera(height: int, width: int) -> Camera:
    viewmat = torch.eye(4)
    viewmat[:3, :3] = quat_to_rotmat(torch.tensor([0.98, 0.1, -0.15, 0.05]))
    viewmat[2, 3] = 3.0
    return Camera(
        width=width, height=height, fx=0.9 * width, fy=1.1 * width, cx=0.45 * width,
        cy=0.55 * height, viewmat=viewmat, model="pinhole",
    )


def random_gaussians(seed: int, b: int, n: int, spread: float = 1.0):
    generator = torch.Generator().manual_seed(seed)
    means = (torch.rand(b, n, 3, generator=generator) * 2 - 1) * spread
    quats = torch.randn(b, n, 4, generator=generator)
    scales = torch.rand(b, n, 3, generator=generator) / 8
    opacities = torch.rand(b, n, generator=generator)
    return means, quats, scales, opacities


def project(camera: Camera, means, quats, scales, opacities=None):
    return project_gaussians(means, quats, scales, opacities, camera)


def gsplat_projection(camera: Camera, means, quats, scales):
    b = means.shape[0]
    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_preci=False)
    return _fully_fused_projection(
        means, covars, camera.viewmat.expand(b, 1, 4, 4), camera.intrinsics.expand(b, 1, 3, 3),
        camera.width, camera.height, near_plane=camera.near, far_plane=camera.far,
        camera_model=camera.model,
    )


@pytest.mark.parametrize("model", ["ortho", "pinhole"])
@given(seed=SEEDS)
def test_projection_matches_gsplat_torch_impl(model, seed):
    camera = Camera.gmae(24, 32) if model == "ortho" else pinhole_camera(24, 32)
    # Spread 2.5 puts some pinhole centres outside the frustum clamp and some ortho boxes off-image.
    means, quats, scales, _ = random_gaussians(seed, 2, 16, spread=2.5)
    ours = project(camera, means, quats, scales)
    radii, means2d, depths, conics, _ = gsplat_projection(camera, means, quats, scales)
    radii, means2d, depths, conics = radii[:, 0], means2d[:, 0], depths[:, 0], conics[:, 0]
    assert torch.equal(ours.radii, radii)
    visible = (radii > 0).all(-1)
    torch.testing.assert_close(ours.means2d[visible], means2d[visible])
    torch.testing.assert_close(ours.conics[visible], conics[visible], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ours.depths, depths)


@given(seed=SEEDS)
def test_quat_to_rotmat_matches_gsplat_and_is_a_rotation(seed):
    quats = torch.randn(32, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    rotation = quat_to_rotmat(quats)
    torch.testing.assert_close(rotation, _quat_to_rotmat(quats))
    torch.testing.assert_close(rotation @ rotation.mT, torch.eye(3, dtype=torch.float64).expand(32, 3, 3))
    torch.testing.assert_close(torch.linalg.det(rotation), torch.ones(32, dtype=torch.float64))


def test_zero_quaternion_is_identity_with_finite_gradient():
    quats = torch.zeros(2, 4, requires_grad=True)
    rotation = quat_to_rotmat(quats)
    assert torch.equal(rotation, torch.eye(3).expand(2, 3, 3))
    rotation.sum().backward()
    assert torch.isfinite(quats.grad).all()


def test_covariance_is_rotated_diagonal_of_squared_scales():
    quats = torch.tensor([[math.cos(math.pi / 8), 0.0, 0.0, math.sin(math.pi / 8)]])  # 45 deg about z
    scales = torch.tensor([[2.0, 1.0, 0.5]])
    diagonal = torch.diag(torch.tensor([4.0, 1.0, 0.25]))
    rotation = quat_to_rotmat(quats)[0]
    torch.testing.assert_close(covariance_3d(quats, scales)[0], rotation @ diagonal @ rotation.T)
    torch.testing.assert_close(covariance_3d(quats, scales)[0, 0, 1], torch.tensor(1.5))


def test_zero_scales_project_to_the_blur_alone():
    camera = Camera.gmae(16, 16)
    projected = project(camera, torch.zeros(1, 1, 3), torch.randn(1, 1, 4), torch.zeros(1, 1, 3))
    torch.testing.assert_close(projected.conics[0, 0], torch.tensor([1 / 0.3, 0.0, 1 / 0.3]))
    assert projected.radii[0, 0].tolist() == [math.ceil(3.33 * math.sqrt(0.3))] * 2


@given(seed=SEEDS)
def test_opacity_aware_box_holds_every_pixel_above_the_alpha_threshold(seed):
    camera = Camera.gmae(32, 32)
    means, quats, scales, opacities = random_gaussians(seed, 1, 8)
    means, quats, scales, opacities = (t.double() for t in (means, quats, scales, opacities))
    projected = project(camera, means, quats, scales, opacities)
    centres = torch.stack(
        torch.meshgrid(torch.arange(-64, 96) + 0.5, torch.arange(-64, 96) + 0.5, indexing="xy"), -1
    ).to(torch.float64)  # a grid far beyond the image: the box must hold the whole footprint
    for k in range(8):
        delta = projected.means2d[0, k] - centres
        a, b, c = projected.conics[0, k]
        sigma = 0.5 * (a * delta[..., 0] ** 2 + c * delta[..., 1] ** 2) + b * delta[..., 0] * delta[..., 1]
        drawn = opacities[0, k] * torch.exp(-sigma) >= ALPHA_THRESHOLD
        radius_x, radius_y = projected.radii[0, k].tolist()
        if radius_x == 0:  # culled: only for opacity < 1/255 here (all centres are in view)
            assert not drawn.any()
            continue
        assert (delta[drawn].abs() <= torch.tensor([radius_x, radius_y], dtype=torch.float64)).all()


def test_opacity_sets_the_box_extent_as_gsplat_1_5_does():
    camera = Camera.gmae(64, 64)
    opacities = torch.tensor([[1.0, 0.5, 1.5 / 255, 0.9 / 255]])
    means, quats = torch.zeros(1, 4, 3), torch.tensor([1.0, 0, 0, 0]).expand(1, 4, 4)
    scales = torch.full((1, 4, 3), 0.25)  # 8 px standard deviation
    projected = project(camera, means, quats, scales, opacities)
    sigma = math.sqrt(64 + 0.3)
    expected = [math.ceil(min(3.33, math.sqrt(2 * math.log(255 * o))) * sigma) for o in opacities[0, :3].tolist()]
    assert projected.radii[0, :3, 0].tolist() == expected
    assert projected.radii[0, 3].tolist() == [0, 0]  # opacity below 1/255: culled


@pytest.mark.parametrize("model", ["ortho", "pinhole"])
def test_gaussians_outside_the_depth_range_are_culled_with_finite_values(model):
    camera = Camera.gmae(16, 16) if model == "ortho" else pinhole_camera(16, 16)
    camera_z = torch.tensor([-5.0, -3.0, 0.0, 1e11])  # behind, exactly at the camera, beyond far
    means_cam = torch.stack([torch.zeros(4), torch.zeros(4), camera_z], -1)
    rotation, translation = camera.viewmat[:3, :3], camera.viewmat[:3, 3]
    means = ((means_cam - translation) @ rotation)[None].requires_grad_()
    projected = project(camera, means, torch.randn(1, 4, 4), torch.rand(1, 4, 3))
    assert (projected.radii == 0).all()
    (projected.means2d.sum() + projected.conics.sum()).backward()
    assert all(torch.isfinite(t).all() for t in (*projected[:3], means.grad))


def test_gaussians_whose_box_misses_the_image_are_culled():
    camera = Camera.gmae(16, 16)
    means = torch.tensor([[[-1.6, 0.0, 0.0], [0.0, 1.6, 0.0], [0.0, 0.0, 0.0]]])
    projected = project(camera, means, torch.randn(1, 3, 4), torch.full((1, 3, 3), 0.05))
    assert projected.radii[0, :, 0].tolist()[:2] == [0, 0]
    assert (projected.radii[0, 2] > 0).all()
