"""Random scenes and cameras shared by the renderer tests."""

import torch
from hypothesis import strategies as st

from splathead.camera import Camera
from splathead.gaussians import Gaussians

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
    """``(gaussians, camera, background)`` in float64 on the CPU."""
    spec = {**spec, **overrides}
    camera = make_camera(spec["model"], spec["height"], spec["width"])
    gaussians = random_gaussians(spec["seed"], spec["b"], spec["n"], spec["c"])
    generator = torch.Generator().manual_seed(spec["seed"] + 1)
    background = torch.rand(spec["b"], spec["c"], generator=generator, dtype=torch.float64)
    return gaussians, camera, background
