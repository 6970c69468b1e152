"""`Gaussians` and `Camera`: construction checks, validation, indexing and depth order."""

import pytest
import torch
from jaxtyping import TypeCheckError

from splathead.camera import Camera
from splathead.gaussians import Gaussians


def gaussians(b: int = 2, n: int = 4, c: int = 3) -> Gaussians:
    generator = torch.Generator().manual_seed(0)
    return Gaussians(
        means=torch.rand(b, n, 3, generator=generator) * 2 - 1,
        scales=torch.rand(b, n, 3, generator=generator),
        quats=torch.randn(b, n, 4, generator=generator),
        colors=torch.rand(b, n, c, generator=generator),
        opacities=torch.rand(b, n, generator=generator),
    )


def test_sizes_are_read_from_the_fields():
    scene = gaussians(b=2, n=4, c=5)
    assert (scene.batch_size, scene.num_gaussians, scene.num_channels) == (2, 4, 5)
    assert scene.device == torch.device("cpu") and scene.dtype == torch.float32


def test_wrong_trailing_size_is_rejected_naming_the_field():
    scene = gaussians()
    with pytest.raises(TypeCheckError, match="quats"):
        scene.replace(quats=scene.quats[..., :3])


def test_fields_must_share_a_dtype():
    scene = gaussians()
    with pytest.raises(TypeError, match="Gaussians.colors has dtype torch.float64"):
        scene.replace(colors=scene.colors.double())


def test_fields_must_share_a_device():
    scene = gaussians()
    with pytest.raises(ValueError, match="Gaussians.scales is on meta"):
        scene.replace(scales=scene.scales.to("meta"))


def test_validate_returns_self_for_valid_values():
    scene = gaussians()
    assert scene.validate() is scene


def test_validate_names_every_failing_field():
    scene = gaussians()
    means = scene.means.clone()
    means[0, 0, 0] = float("inf")
    broken = scene.replace(means=means, opacities=scene.opacities + 2)
    with pytest.raises(ValueError, match=r"means holds NaN or Inf; opacities lie outside \[0, 1\]"):
        broken.validate()


def test_validate_accepts_zero_scales_and_boundary_opacities():
    scene = gaussians()
    edge = scene.replace(scales=torch.zeros_like(scene.scales), opacities=torch.ones_like(scene.opacities))
    edge.replace(opacities=torch.zeros_like(scene.opacities)).validate()
    edge.validate()


def test_gather_picks_per_image_subsets():
    scene = gaussians(n=4)
    indices = torch.tensor([[3, 0], [1, 1]])
    subset = scene.gather(indices)
    assert subset.num_gaussians == 2
    for name in ("means", "scales", "quats", "colors", "opacities"):
        field = getattr(scene, name)
        expected = torch.stack([field[0, [3, 0]], field[1, [1, 1]]])
        assert torch.equal(getattr(subset, name), expected), name


def test_gather_rejects_a_wrong_batch_size():
    with pytest.raises(ValueError, match="indices has batch size 3, expected 2"):
        gaussians().gather(torch.zeros(3, 1, dtype=torch.long))


def test_where_zeroes_the_opacity_of_dropped_gaussians_only():
    scene = gaussians()
    keep = torch.tensor([[True, False, True, False], [False, False, True, True]])
    kept = scene.where(keep)
    assert torch.equal(kept.opacities, scene.opacities * keep)
    assert torch.equal(kept.means, scene.means) and torch.equal(kept.colors, scene.colors)


def test_indexing_keeps_the_batch_dimension():
    scene = gaussians(b=3)
    assert scene[1].batch_size == 1 and torch.equal(scene[1].means[0], scene.means[1])
    assert scene[-1].batch_size == 1 and torch.equal(scene[-1].means[0], scene.means[2])
    assert scene[1:].batch_size == 2


def test_to_and_detach_apply_to_every_field():
    scene = gaussians().map(lambda t: t.requires_grad_())
    moved = scene.detach().to(torch.float64)
    assert moved.dtype == torch.float64
    assert not any(getattr(moved, name).requires_grad for name in ("means", "colors", "opacities"))


def test_camera_depths_apply_the_view_matrix():
    camera = Camera.gmae(8, 8, distance=5.0)
    scene = gaussians()
    torch.testing.assert_close(scene.camera_depths(camera), scene.means[..., 2] + 5.0)


def test_depth_order_is_stable_front_to_back_and_reversible():
    means = torch.tensor([[[0.0, 0.0, 0.5], [0.0, 0.0, -0.5], [0.0, 0.0, 0.5], [0.0, 0.0, 0.0]]])
    scene = gaussians(b=1).replace(means=means)
    camera = Camera.gmae(8, 8)
    assert scene.depth_order(camera).tolist() == [[1, 3, 0, 2]]
    assert scene.depth_order(camera, front_to_back=False).tolist() == [[0, 2, 3, 1]]


def test_gmae_camera_maps_the_unit_square_onto_the_image():
    camera = Camera.gmae(224, 160)
    assert (camera.width, camera.height, camera.model) == (160, 224, "ortho")
    assert (camera.fx, camera.fy, camera.cx, camera.cy) == (80, 112, 80, 112)
    assert camera.viewmat[2, 3] == 8.0
    corner = camera.intrinsics[:2, :2] @ torch.tensor([-1.0, 1.0]) + camera.intrinsics[:2, 2]
    assert corner.tolist() == [0.0, 224.0]


def test_camera_keeps_a_float32_cpu_copy_of_the_viewmat():
    viewmat = torch.eye(4, dtype=torch.float64)
    camera = Camera(width=4, height=4, fx=1.0, fy=1.0, cx=2.0, cy=2.0, viewmat=viewmat)
    assert camera.viewmat.dtype == torch.float32
    viewmat[0, 3] = 1.0
    assert camera.viewmat[0, 3] == 0.0


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(width=0), "size must be positive"),
        (dict(fy=-1.0), "focal lengths must be positive"),
        (dict(near=0.0), "0 < near < far"),
        (dict(near=2.0, far=1.0), "0 < near < far"),
        (dict(viewmat=torch.ones(4, 4)), "last row must be"),
    ],
)
def test_bad_camera_is_rejected_at_construction(overrides, message):
    arguments = {**dict(width=8, height=8, fx=8.0, fy=8.0, cx=4.0, cy=4.0), **overrides}
    with pytest.raises(ValueError, match=message):
        Camera(**arguments)


@pytest.mark.parametrize("field", ["fx", "fy", "cx", "cy", "near"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_intrinsic_is_rejected_naming_the_field(field, bad):
    arguments = {**dict(width=8, height=8, fx=8.0, fy=8.0, cx=4.0, cy=4.0), field: bad}
    with pytest.raises(ValueError, match=rf"Camera\.{field} must be finite, got {bad}"):
        Camera(**arguments)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("entry", [(0, 0), (1, 2), (2, 3)])
def test_non_finite_viewmat_entry_is_rejected_naming_the_entry(bad, entry):
    viewmat = torch.eye(4)
    viewmat[entry] = bad
    with pytest.raises(ValueError, match=rf"Camera\.viewmat must be finite, got {bad} at \[{entry[0]}, {entry[1]}\]"):
        Camera(width=8, height=8, fx=8.0, fy=8.0, cx=4.0, cy=4.0, viewmat=viewmat)


def test_far_plane_may_be_infinite():
    assert Camera(width=8, height=8, fx=8.0, fy=8.0, cx=4.0, cy=4.0, far=float("inf")).far == float("inf")
