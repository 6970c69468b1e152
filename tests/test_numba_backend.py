"""The numba backend's own parts: its compiled projection is project_gaussians (values and
gradients), and its parallel loops give the serial loops' render. The render itself is held to
the definition by the parity suite (test_render_backends.py)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from splathead.camera import Camera
from splathead.gaussians import Gaussians
from splathead.render import numba_available
from splathead.render.projection import project_gaussians, quat_to_rotmat

pytestmark = pytest.mark.skipif(not numba_available(), reason="numba not installed")


def pinhole_camera() -> Camera:
    viewmat = torch.eye(4)
    viewmat[:3, :3] = quat_to_rotmat(torch.tensor([0.98, 0.1, -0.15, 0.05]))
    viewmat[2, 3] = 3.0
    return Camera(width=20, height=14, fx=17.0, fy=19.0, cx=9.0, cy=7.5, viewmat=viewmat)


CAMERAS = {
    "pinhole": pinhole_camera,
    "ortho": lambda: Camera.gmae(14, 20),
    "authors' footprint": lambda: Camera.gmae(14, 20, footprint="authors"),
}


def random_gaussians(seed: int, b: int = 2, n: int = 24) -> Gaussians:
    """float64 Gaussians, some off-image or behind the camera, one zero quaternion, one with
    huge (capped) scales."""
    generator = torch.Generator().manual_seed(seed)
    quats = torch.randn(b, n, 4, generator=generator, dtype=torch.float64)
    quats[0, 0] = 0.0
    scales = torch.rand(b, n, 3, generator=generator, dtype=torch.float64) / 4
    scales[0, 1] = 1e20  # every axis capped
    return Gaussians(
        means=torch.randn(b, n, 3, generator=generator, dtype=torch.float64) * 1.5,
        scales=scales,
        quats=quats,
        colors=torch.rand(b, n, 3, generator=generator, dtype=torch.float64),
        opacities=torch.rand(b, n, generator=generator, dtype=torch.float64),
    )


@pytest.mark.parametrize("camera", CAMERAS.values(), ids=CAMERAS.keys())
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_compiled_projection_is_project_gaussians_with_its_gradients(camera, seed):
    from splathead.render.numba_backend import _CompiledProjection

    camera, gaussians = camera(), random_gaussians(seed)
    fields = ("means", "quats", "scales")
    ours = [getattr(gaussians, f).clone().requires_grad_() for f in fields]
    theirs = [getattr(gaussians, f).clone().requires_grad_() for f in fields]
    got = _CompiledProjection.apply(*ours, gaussians.opacities, camera)
    want = project_gaussians(*theirs, gaussians.opacities, camera)
    assert torch.equal(got[3], want.radii)
    generator = torch.Generator().manual_seed(seed)
    weights = [torch.randn(t.shape, generator=generator, dtype=t.dtype) for t in want[:3]]
    for outputs, leaves in ((got[:3], ours), (want[:3], theirs)):
        sum((w * t).sum() for w, t in zip(weights, outputs)).backward()
    for got_field, want_field in zip(got[:3], want[:3]):
        torch.testing.assert_close(got_field, want_field, rtol=1e-8, atol=1e-9)
    for name, mine, reference in zip(fields, ours, theirs):
        torch.testing.assert_close(mine.grad, reference.grad, rtol=1e-8, atol=1e-9, msg=name)
    assert not ours[2].grad[0, 1].any()  # the capped scales get no gradient


def test_parallel_loops_render_what_the_serial_loops_render(monkeypatch):
    from splathead.render import NumbaBackend, numba_backend

    gaussians = random_gaussians(0, b=3, n=40).map(lambda t: t.float().requires_grad_())
    camera, background = Camera.gmae(40, 40), torch.ones(3, 3)
    results = []
    threads = torch.get_num_threads()
    for pairs in (2**62, 0):  # serial, then parallel
        monkeypatch.setattr(numba_backend, "PARALLEL_PAIRS", pairs)
        torch.set_num_threads(2)
        try:
            output = NumbaBackend().render(gaussians, camera, background, render_depth=True)
            leaves = (gaussians.means, gaussians.opacities, gaussians.colors)
            grads = torch.autograd.grad((output.image.square().sum() + output.depth.sum()), leaves)
        finally:
            torch.set_num_threads(threads)
        results.append((*output, *grads))
    for serial, parallel in zip(*results):
        assert torch.equal(serial, parallel)
