"""The contract every renderer backend fulfils: :class:`RenderBackend` returning :class:`RenderOutput`."""

from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable

from splathead.camera import Camera
from splathead.gaussians import Gaussians
from splathead.typing import Float, Tensor


class RenderOutput(NamedTuple):
    """What a backend and :class:`~splathead.render.SplatRenderer` return; all channels-first."""

    image: Float[Tensor, "b c h w"]
    """Composited features plus ``T_final * background``."""
    alpha: Float[Tensor, "b 1 h w"]
    """Coverage ``1 - T_final`` in [0, 1)."""
    depth: Float[Tensor, "b 1 h w"] | None
    """Expected camera z, ``sum_k alpha_k T_k z_k / alpha`` (0 where nothing is drawn), or
    ``None`` unless depth was asked for."""


@runtime_checkable
class RenderBackend(Protocol):
    """A splatting implementation :class:`~splathead.render.SplatRenderer` can call.

    It computes gsplat 1.5's classic rasterization (:mod:`splathead.render.reference` is the
    definition in code) and keeps its outputs in the autograd graph. The renderer hands it
    Gaussians already checked (shapes, one device, values unless ``check_inputs=False``) and in
    float32 or float64 (half precision is cast to float32, autocast is off), and a background
    ``[b c]`` on their device and of their dtype. The camera's tensors live on the CPU in
    float32; move them with ``.to(gaussians.means)``. It is never called with ``b = 0`` or
    ``n = 0``, and when nothing is drawn (its alpha outside the graph) the renderer connects the
    outputs to every input itself, with zero gradient. docs/renderer.md says how to add one and
    which tests it must pass.

    Attributes:
        name: what ``SplatRenderer.backend`` reports, e.g. "torch".
    """

    name: str

    def render(
        self,
        gaussians: Gaussians,
        camera: Camera,
        background: Float[Tensor, "b c"],
        *,
        render_depth: bool,
    ) -> RenderOutput:
        """Render ``b`` images ``[b c h w]`` of the camera's size; ``depth`` only if asked."""
        ...
