"""The torch backend's speed and memory settings never change its result."""

import torch
from hypothesis import given
from hypothesis import strategies as st
from render_scenes import scene_from, scenes

from splathead.camera import Camera
from splathead.gaussians import Gaussians
from splathead.render import TorchBackend

FIELDS = ("means", "scales", "quats", "colors", "opacities")


def render_and_gradients(
    gaussians: Gaussians, camera: Camera, background: torch.Tensor, **settings
) -> list[torch.Tensor]:
    """Image, alpha, depth and the gradients of a fixed random loss, from the torch backend."""
    leaves = gaussians.map(lambda t: t.clone().requires_grad_())
    outputs = TorchBackend(tile_size=4, **settings).render(leaves, camera, background, render_depth=True)
    generator = torch.Generator().manual_seed(0)
    loss = sum(torch.randn(out.shape, generator=generator, dtype=out.dtype).mul(out).sum() for out in outputs)
    if loss.requires_grad:  # not when no Gaussian is drawn
        loss.backward()
    gradients = (getattr(leaves, name).grad for name in FIELDS)
    return [*outputs, *(torch.zeros(()) if grad is None else grad for grad in gradients)]


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
