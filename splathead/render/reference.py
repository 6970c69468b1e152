"""The renderer's definition in code: every Gaussian at every pixel, plain autograd.

This is gsplat 1.5's classic rasterization (``packed=False``, ``rasterize_mode="classic"``),
written for reading rather than speed: the other backends must compute the same function (the
parity tests in ``tests/test_render_backends.py`` hold them to it). It needs ``b h w n``
temporaries, so it suits small scenes: tests, teaching, checking a new backend.

After projection (:mod:`splathead.render.projection`) each image's Gaussians are sorted front to
back by camera z (stable, so ties keep their index order). For the pixel centre
``p = (j + 0.5, i + 0.5)`` and Gaussian ``k`` with screen centre ``m_k``, conic ``(a, b, c)``,
opacity ``o_k`` and features ``f_k``::

    d       = m_k - p
    sigma_k = 0.5 (a d_x^2 + c d_y^2) + b d_x d_y
    alpha_k = min(0.999, o_k exp(-sigma_k)),   set to 0 if sigma_k < 0 or alpha_k < 1/255
    T_k     = prod_{l < k} (1 - alpha_l)                      (transmittance in front of k)

The pixel stops *before* the first Gaussian with ``T_k (1 - alpha_k) <= 1e-4``: neither it nor
anything behind it is added. With ``alpha_k`` zeroed from there on::

    image = sum_k alpha_k T_k f_k + T_final background,     alpha = 1 - T_final,
    T_final = prod_k (1 - alpha_k),
    depth = sum_k alpha_k T_k z_k / max(alpha, 1e-10)      (gsplat's "ED" expected depth)

Culled Gaussians (``radii == 0``) are skipped everywhere.
"""

from __future__ import annotations

import torch
from einops import einsum

from splathead.camera import Camera
from splathead.gaussians import Gaussians
from splathead.indexing import batched_gather
from splathead.render.backend import RenderOutput
from splathead.render.projection import ALPHA_THRESHOLD, project_gaussians
from splathead.typing import Float, Tensor, typecheck

__all__ = ["MAX_ALPHA", "MIN_TRANSMITTANCE", "ReferenceBackend", "render_reference"]

MAX_ALPHA = 0.999
"""Per-Gaussian alpha is clamped to this, so transmittance never reaches exactly 0."""
MIN_TRANSMITTANCE = 1e-4
"""A pixel stops before the Gaussian that would bring its transmittance to this or below."""


@typecheck
def render_reference(
    gaussians: Gaussians,
    camera: Camera,
    background: Float[Tensor, "b c"],
    *,
    render_depth: bool = False,
) -> RenderOutput:
    """Render ``gaussians`` with ``camera`` by the definition in the module docstring."""
    projected = project_gaussians(
        gaussians.means, gaussians.quats, gaussians.scales, gaussians.opacities, camera
    )
    order = torch.argsort(projected.depths.detach(), dim=1, stable=True)  # front to back
    means2d, conics, depths, radii, opacities, colors = (
        batched_gather(field, order)
        for field in (
            projected.means2d, projected.conics, projected.depths, projected.radii,
            gaussians.opacities, gaussians.colors,
        )
    )
    like = dict(device=means2d.device, dtype=means2d.dtype)
    pixels_x = torch.arange(camera.width, **like) + 0.5
    pixels_y = torch.arange(camera.height, **like) + 0.5
    d_x = means2d[:, None, None, :, 0] - pixels_x[:, None]  # [b 1 w n]
    d_y = means2d[:, None, None, :, 1] - pixels_y[:, None, None]  # [b h 1 n]
    a, b, c = conics[:, None, None].unbind(-1)  # [b 1 1 n] each
    sigma = 0.5 * (a * d_x**2 + c * d_y**2) + b * d_x * d_y  # [b h w n]

    # exp of a clamped sigma: skipped pairs (sigma < 0) must not make inf, nor NaN gradients.
    alpha = torch.clamp(opacities[:, None, None] * torch.exp(-sigma.clamp(min=0)), max=MAX_ALPHA)
    visible = (radii > 0).all(dim=-1)[:, None, None]
    drawn = visible & (sigma >= 0) & (alpha >= ALPHA_THRESHOLD)
    alpha = torch.where(drawn, alpha, 0.0)
    in_front = torch.cumprod(torch.cat([torch.ones_like(alpha[..., :1]), 1 - alpha], -1), -1)
    stops = in_front[..., :-1] * (1 - alpha) <= MIN_TRANSMITTANCE
    stopped = torch.cumsum(stops, dim=-1) > 0  # the stopping Gaussian and all behind it
    alpha = torch.where(stopped, 0.0, alpha)
    weights = alpha * in_front[..., :-1]  # T_k is unchanged in front of the stop
    transmittance = torch.prod(1 - alpha, dim=-1)[:, None]  # [b 1 h w]

    image = einsum(weights, colors, "b h w n, b n c -> b c h w")
    image = image + transmittance * background[:, :, None, None]
    coverage = 1 - transmittance
    depth = None
    if render_depth:
        depth = einsum(weights, depths, "b h w n, b n -> b h w")[:, None]
        depth = depth / coverage.clamp(min=1e-10)
    return RenderOutput(image=image, alpha=coverage, depth=depth)


class ReferenceBackend:
    """:func:`render_reference` as a :class:`~splathead.render.RenderBackend` ("reference"):
    any device and float dtype, memory ``b h w n``; for small scenes."""

    name = "reference"

    def render(
        self,
        gaussians: Gaussians,
        camera: Camera,
        background: Float[Tensor, "b c"],
        *,
        render_depth: bool,
    ) -> RenderOutput:
        return render_reference(gaussians, camera, background, render_depth=render_depth)
