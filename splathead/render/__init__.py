"""Differentiable splatting: `SplatRenderer` over pluggable backends.

- :class:`RenderBackend`, :class:`RenderOutput`: the contract a backend fulfils
- :class:`TorchBackend` ("torch"), :class:`NumbaBackend` ("numba", compiled CPU loops),
  :class:`GsplatBackend` ("gsplat"), :class:`ReferenceBackend`
  (the definition in code, :func:`render_reference`)
- :func:`project_gaussians`: EWA projection shared by the torch and reference backends (the numba
  backend compiles the same maths)
"""

from splathead.render.backend import RenderBackend, RenderOutput
from splathead.render.gsplat_backend import GsplatBackend, gsplat_available
from splathead.render.numba_backend import NumbaBackend, numba_available
from splathead.render.projection import ProjectedGaussians, project_gaussians
from splathead.render.reference import ReferenceBackend, render_reference
from splathead.render.renderer import BackendName, SplatRenderer
from splathead.render.torch_backend import TorchBackend

__all__ = [
    "BackendName",
    "GsplatBackend",
    "NumbaBackend",
    "ProjectedGaussians",
    "ReferenceBackend",
    "RenderBackend",
    "RenderOutput",
    "SplatRenderer",
    "TorchBackend",
    "gsplat_available",
    "numba_available",
    "project_gaussians",
    "render_reference",
]
