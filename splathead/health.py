"""Gaussian health: are the Gaussians inside the image, visible, and do they cover it?

Three shares in [0, 1], one value per image (average them over a batch, a validation set or
ranks), cheap next to a render:

- ``border``: share of centres within ``BORDER_MARGIN`` (2%) of the image's width or height
  from an edge, or beyond it. A run whose centres all sit on the border draws (nearly) nothing.
- ``invisible``: share of Gaussians with opacity below 1/255, which the renderer skips.
- ``coverage``: mean alpha of the render: 0 where only the background shows, 1 where the
  Gaussians cover the image.

:func:`collapse_warning` turns them into a message when the Gaussians have left the image or
turned invisible, a state that training does not leave again (``docs/pretraining.md``,
"A collapse in the first steps").
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from splathead.camera import Camera
from splathead.gaussians import Gaussians
from splathead.render.projection import ALPHA_THRESHOLD, centre_pixels
from splathead.typing import Float, Tensor, typecheck

__all__ = ["BORDER_MARGIN", "GaussianHealth", "collapse_warning", "gaussian_health"]

BORDER_MARGIN = 0.02
"""A centre this close to an edge (a fraction of the image's width or height) is on the border."""

COLLAPSE_BORDER = 0.95
COLLAPSE_INVISIBLE = 0.95
COLLAPSE_COVERAGE = 0.3
"""Collapse thresholds, from the runs of ``benchmarks/collapse_probe.py``
(``docs/pretraining.md``):
collapsed runs held 99.7-100% of their centres on the border, at 5-18% coverage, from their
first step on; healthy ones reached at most 86% on the border (a passing moment in warmup, back
under 20% within a few steps) and covered 85-98% of the image once trained."""


class GaussianHealth(NamedTuple):
    """Per-image shares in [0, 1] (see the module's docstring)."""

    border: Float[Tensor, "b"]
    invisible: Float[Tensor, "b"]
    coverage: Float[Tensor, "b"]


@typecheck
def gaussian_health(
    gaussians: Gaussians, alpha: Float[Tensor, "b 1 h w"], camera: Camera
) -> GaussianHealth:
    """Border, invisible and coverage shares of each image.

    Args:
        gaussians: the Gaussians of ``b`` images (no gradient is taken).
        alpha: ``[b 1 h w]`` the render's alpha (``RenderOutput.alpha``) of these Gaussians.
        camera: the camera they were rendered with (``GMAEDecoder.camera``).
    """
    if alpha.shape[0] != gaussians.batch_size or alpha.shape[-2:] != (camera.height, camera.width):
        raise ValueError(
            f"alpha is {list(alpha.shape)}, expected [{gaussians.batch_size} 1 {camera.height} "
            f"{camera.width}] (the Gaussians' batch and the camera's height and width)"
        )
    with torch.no_grad():
        pixels = centre_pixels(gaussians.means.float(), camera)
        size = pixels.new_tensor([camera.width, camera.height])
        inside = (pixels >= BORDER_MARGIN * size) & (pixels <= (1 - BORDER_MARGIN) * size)
        border = (~inside.all(dim=-1)).float().mean(dim=1)
        invisible = (gaussians.opacities < ALPHA_THRESHOLD).float().mean(dim=1)
        coverage = alpha.float().mean(dim=(1, 2, 3)).clamp(0, 1)
    return GaussianHealth(border=border, invisible=invisible, coverage=coverage)


def collapse_warning(*, border: float, invisible: float, coverage: float) -> str | None:
    """A message naming the figures and the likely cause when these shares (averaged over a
    batch or more) say the Gaussians have collapsed, else ``None``: the render covers under
    ``COLLAPSE_COVERAGE`` of the image while nearly all centres sit on the border or nearly all
    Gaussians are invisible. (Low coverage alone is no collapse: white images need none.)"""
    stranded = border > COLLAPSE_BORDER or invisible > COLLAPSE_INVISIBLE
    if not (stranded and coverage < COLLAPSE_COVERAGE):
        return None
    return (
        f"the Gaussians have collapsed: the render covers {coverage:.1%} of the image (collapse "
        f"below {COLLAPSE_COVERAGE:.0%}) with {border:.0%} of the centres on the image border "
        f"and {invisible:.0%} of the Gaussians invisible (collapse above {COLLAPSE_BORDER:.0%} "
        f"of either); saturated centres and opacities get almost no gradient, so "
        "training will not recover. Likely cause: too high a learning rate without warmup "
        "(Adam's first steps move every weight by the full learning rate); restart with warmup "
        "(the paper: 5 epochs) or a lower learning rate"
    )
