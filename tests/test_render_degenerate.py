"""Scenes where nothing is drawn still render into the autograd graph, with zero gradients.

A training step must never die on ``loss.backward()`` (or leave a DDP all-reduce) because no
Gaussian reached a pixel; and a collapse (every opacity below 1/255) is logged once.
"""

import logging

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from splathead.camera import Camera
from splathead.gaussians import Gaussians
from splathead.render import ReferenceBackend, SplatRenderer, numba_available
from splathead.render.projection import ALPHA_THRESHOLD

FIELDS = ("means", "scales", "quats", "colors", "opacities")
# The guarantee lives in SplatRenderer, so it holds for any backend: the built-in ones and the
# dense definition behind the RenderBackend protocol, as a user's own backend would be.
BACKENDS = [
    "torch", "reference", pytest.param("gsplat", marks=pytest.mark.cuda),
    pytest.param("numba", marks=pytest.mark.skipif(not numba_available(), reason="no numba")),
]
DEGENERATE = (
    "no gaussians", "all below 1/255", "all off-screen", "all behind the near plane",
    "all beyond the far plane",
)


def make_camera(model: str, size: int = 16) -> Camera:
    if model == "ortho":
        return Camera.gmae(size, size)
    viewmat = torch.eye(4)
    viewmat[2, 3] = 3.0
    return Camera(width=size, height=size, fx=float(size), fy=float(size), cx=size / 2, cy=size / 2, viewmat=viewmat)


def degenerate_scene(kind: str, camera: Camera, b: int, n: int, seed: int) -> Gaussians:
    """``b`` images of ``n`` Gaussians (none for "no gaussians") of which none reaches a pixel."""
    generator = torch.Generator().manual_seed(seed)
    n = 0 if kind == "no gaussians" else n
    means = torch.rand(b, n, 3, generator=generator) * 2 - 1
    opacities = torch.rand(b, n, generator=generator)
    if kind == "all below 1/255":
        opacities = opacities * 0.99 * ALPHA_THRESHOLD
    elif kind == "all off-screen":
        means = means + torch.tensor([5.0, 0.0, 0.0])  # small Gaussians well right of the image
    elif kind == "all behind the near plane":
        camera_z = torch.rand(b, n, generator=generator) * -10 + camera.near / 2
        means[..., 2] = camera_z - camera.viewmat[2, 3]
    elif kind == "all beyond the far plane":
        means[..., 2] = means[..., 2] + 2 * camera.far
    return Gaussians(
        means=means,
        scales=torch.rand(b, n, 3, generator=generator) / 10,
        quats=torch.randn(b, n, 4, generator=generator),
        colors=torch.rand(b, n, 3, generator=generator),
        opacities=opacities,
    )


def device_of(backend: str) -> str:
    return "cuda" if backend == "gsplat" else "cpu"


def renderer_for(backend: str, camera: Camera, **settings) -> SplatRenderer:
    chosen = ReferenceBackend() if backend == "reference" else backend
    return SplatRenderer(camera, backend=chosen, **settings).to(device_of(backend))


@pytest.mark.parametrize("backend", BACKENDS)
@given(
    kind=st.sampled_from(DEGENERATE),
    model=st.sampled_from(["ortho", "pinhole"]),
    b=st.integers(1, 3),
    n=st.integers(1, 6),
    render_depth=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_nothing_drawn_keeps_every_output_in_the_graph_with_zero_gradients(
    backend, kind, model, b, n, render_depth, seed
):
    camera = make_camera(model)
    scene = degenerate_scene(kind, camera, b, n, seed).to(device_of(backend))
    scene = scene.map(lambda t: t.clone().requires_grad_())
    output = renderer_for(backend, camera, render_depth=render_depth)(scene)
    outputs = [t for t in output if t is not None]
    assert all(t.grad_fn is not None for t in outputs)
    assert torch.equal(output.image, torch.ones_like(output.image))  # the white background
    assert torch.equal(output.alpha, torch.zeros_like(output.alpha))
    sum(t.sum() for t in outputs).backward()
    for name in FIELDS:
        gradient = getattr(scene, name).grad
        assert gradient is not None, name
        assert torch.equal(gradient, torch.zeros_like(gradient)), name


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("render_depth", [False, True])
def test_a_batch_of_no_images_renders_empty_outputs_in_the_graph(backend, render_depth):
    camera = make_camera("ortho", 8)
    scene = degenerate_scene("all off-screen", camera, 0, 4, 0).to(device_of(backend))
    scene = scene.map(lambda t: t.clone().requires_grad_())
    output = renderer_for(backend, camera, render_depth=render_depth)(scene)
    assert output.image.shape == (0, 3, 8, 8) and output.alpha.shape == (0, 1, 8, 8)
    assert (output.depth is None) != render_depth
    if render_depth:
        assert output.depth.shape == (0, 1, 8, 8)
    output.image.sum().backward()
    assert scene.means.grad.shape == (0, 4, 3)


def test_nothing_drawn_without_grad_renders_the_background():
    camera = make_camera("ortho", 8)
    scene = degenerate_scene("all below 1/255", camera, 2, 3, 0)
    with torch.no_grad():
        output = SplatRenderer(camera, backend="torch", background=0.25)(scene)
    assert output.image.grad_fn is None
    assert torch.equal(output.image, torch.full_like(output.image, 0.25))


def test_per_image_background_keeps_its_gradient_when_nothing_is_drawn():
    camera = make_camera("ortho", 8)
    scene = degenerate_scene("all off-screen", camera, 2, 3, 0).map(lambda t: t.clone().requires_grad_())
    background = torch.rand(2, 3, requires_grad=True)
    SplatRenderer(camera, backend="torch")(scene, background).image.sum().backward()
    torch.testing.assert_close(background.grad, torch.full((2, 3), 64.0))
    assert torch.equal(scene.means.grad, torch.zeros_like(scene.means))


def collapse_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "splathead"]


def test_collapse_below_the_alpha_threshold_is_warned_once(caplog):
    camera = make_camera("ortho", 8)
    renderer = SplatRenderer(camera, backend="torch")
    with caplog.at_level(logging.WARNING, logger="splathead"):
        for seed in range(3):
            renderer(degenerate_scene("all below 1/255", camera, 2, 3, seed))
    assert len(collapse_warnings(caplog)) == 1
    assert "every Gaussian of the batch has opacity below 1/255" in collapse_warnings(caplog)[0]


@pytest.mark.parametrize("kind", ["no gaussians", "all off-screen", "all behind the near plane"])
def test_scenes_that_are_not_a_collapse_are_not_warned(caplog, kind):
    camera = make_camera("ortho", 8)
    with caplog.at_level(logging.WARNING, logger="splathead"):
        SplatRenderer(camera, backend="torch")(degenerate_scene(kind, camera, 2, 3, 0))
    assert collapse_warnings(caplog) == []


def test_a_collapsed_gmae_still_gives_every_parameter_a_gradient():
    from splathead import gmae_vit_tiny

    torch.manual_seed(0)
    model = gmae_vit_tiny(
        img_size=32, embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=32, decoder_depth=1,
        num_queries=8, backend="torch",
    )
    # Every opacity below 1/255, as an optimiser without warmup can drive them within steps.
    model.decoder.head.register_forward_hook(
        lambda module, args, gaussians: gaussians.replace(opacities=gaussians.opacities * 1e-3)
    )
    loss = model(torch.randn(2, 3, 32, 32)).loss
    loss.backward()  # a DDP all-reduce would need a gradient for every parameter
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
