"""The torch backend against gsplat's CUDA kernels (needs CUDA and gsplat; skipped otherwise)."""


import pytest
import torch

from splathead.camera import Camera
from splathead.gaussians import Gaussians
from splathead.head import shoemake_quaternion
from splathead.render import SplatRenderer, numba_available

pytestmark = pytest.mark.cuda
FIELDS = ("means", "scales", "quats", "colors", "opacities")


def gmae_scene(seed: int, b: int, n: int, c: int = 3) -> Gaussians:
    """The GMAE head's ranges (the paper's activations), float32 on CUDA."""
    generator = torch.Generator().manual_seed(seed)

    def sigmoid(*shape: int) -> torch.Tensor:
        return torch.sigmoid(torch.randn(*shape, generator=generator))

    quats = shoemake_quaternion(torch.randn(b, n, 3, generator=generator))
    return Gaussians(
        means=2 * (sigmoid(b, n, 3) - 0.5), scales=sigmoid(b, n, 3) / 8, quats=quats,
        colors=sigmoid(b, n, c), opacities=sigmoid(b, n),
    ).to("cuda")


def pinhole_camera(size: int) -> Camera:
    viewmat = torch.eye(4)
    viewmat[2, 3] = 3.0
    return Camera(width=size, height=size, fx=float(size), fy=float(size), cx=size / 2, cy=size / 2, viewmat=viewmat)


def renderers(camera: Camera, **settings) -> tuple[SplatRenderer, SplatRenderer]:
    return (
        SplatRenderer(camera, backend="torch", **settings).cuda(),
        SplatRenderer(camera, backend="gsplat", **settings).cuda(),
    )


def assert_images_match(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """Relative error <= 1e-5, allowing rare pixels where an alpha threshold flips
    (|diff| <= 5e-3 on at most 0.1% of them)."""
    difference = (ours - theirs).abs()
    flipped = difference > 1e-5 * theirs.abs().clamp(min=1.0)
    assert flipped.float().mean() <= 1e-3, f"{flipped.float().mean():.2e} of pixels differ"
    assert difference.max() <= 5e-3, f"max abs difference {difference.max():.2e}"


@pytest.mark.parametrize("model", ["ortho", "pinhole"])
@pytest.mark.parametrize("c", [3, 1, 5, 40])
@pytest.mark.parametrize("seed", [0, 1])
def test_torch_backend_matches_gsplat(model, c, seed):
    size = 64 if c == 40 else 96
    camera = Camera.gmae(size, size) if model == "ortho" else pinhole_camera(size)
    scene = gmae_scene(seed, 4, 128, c)
    background = torch.rand(4, c, generator=torch.Generator().manual_seed(seed)).cuda()
    ours, theirs = (renderer(scene, background) for renderer in renderers(camera, render_depth=True))
    assert_images_match(ours.image, theirs.image)
    assert_images_match(ours.alpha, theirs.alpha)
    assert_images_match(ours.depth, theirs.depth)


@pytest.mark.parametrize("seed", [0, 1])
def test_torch_backend_gradients_match_gsplat(seed):
    camera = Camera.gmae(64, 64)
    scene = gmae_scene(seed, 4, 64)
    weights = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(seed)).cuda()
    gradients = []
    for renderer in renderers(camera):
        leaves = scene.map(lambda t: t.clone().requires_grad_())
        (renderer(leaves).image * weights).sum().backward()
        gradients.append({name: getattr(leaves, name).grad for name in FIELDS})
    ours, theirs = gradients
    for name in FIELDS:
        error = (ours[name] - theirs[name]).norm() / theirs[name].norm()
        assert error <= 1e-3, f"{name}: relative error {error:.2e}"


def test_gsplat_backend_gives_finite_values_for_zero_quaternions():
    scene = gmae_scene(0, 2, 16)
    scene = scene.replace(quats=torch.zeros_like(scene.quats))
    ours, theirs = (renderer(scene) for renderer in renderers(Camera.gmae(32, 32)))
    assert torch.isfinite(theirs.image).all()
    assert_images_match(ours.image, theirs.image)


@pytest.mark.parametrize("norm", [1e-20, 1e-13, 1e20, 1e30])
def test_gsplat_backend_gives_quaternions_of_any_norm_their_rotation(norm):
    scene = gmae_scene(0, 2, 16)
    unit = scene.replace(quats=scene.quats / scene.quats.norm(dim=-1, keepdim=True))
    _, renderer = renderers(Camera.gmae(32, 32))
    scaled = renderer(unit.replace(quats=unit.quats * norm)).image
    assert_images_match(scaled, renderer(unit).image)


@pytest.mark.parametrize("model", ["ortho", "pinhole"])
@pytest.mark.parametrize("std", [1e8, 1e20])
def test_gsplat_backend_covers_the_image_with_a_huge_gaussian_and_finite_gradients(model, std):
    camera = Camera.gmae(32, 32) if model == "ortho" else pinhole_camera(32)
    scene = gmae_scene(0, 1, 1)
    scene = scene.replace(scales=torch.full_like(scene.scales, std))
    outputs = []
    for renderer in renderers(camera, background=0.0):
        leaves = scene.map(lambda t: t.clone().requires_grad_())
        output = renderer(leaves)
        (output.image * torch.linspace(0, 1, 32, device="cuda")).sum().backward()
        assert all(torch.isfinite(getattr(leaves, name).grad).all() for name in FIELDS)
        outputs.append(output)
    ours, theirs = outputs
    torch.testing.assert_close(theirs.alpha, scene.opacities.view(1, 1, 1, 1).expand_as(theirs.alpha))
    assert_images_match(ours.image, theirs.image)


def test_gsplat_backend_renders_half_precision_in_float32():
    scene = gmae_scene(0, 2, 16)
    _, renderer = renderers(Camera.gmae(32, 32))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        output = renderer(scene.to(torch.bfloat16))
    assert output.image.dtype == torch.float32


def test_auto_picks_gsplat_on_cuda():
    renderer = SplatRenderer(Camera.gmae(16, 16))
    assert renderer.backend == ("numba" if numba_available() else "torch")
    assert renderer.cuda().backend == "gsplat"
