"""`export_ply`: one image's Gaussians as the PLY file 3D Gaussian-splatting viewers open.

The layout is the reference 3D Gaussian splatting one (Kerbl et al. 2023): one ``vertex`` element,
binary little-endian, every property ``float``, in this order::

    x y z  nx ny nz  f_dc_0 f_dc_1 f_dc_2  f_rest_0 .. f_rest_44  opacity  scale_0 scale_1 scale_2
    rot_0 rot_1 rot_2 rot_3

- ``x y z``: the centres, in scene units (below).
- ``nx ny nz``: zeros; the reference writes them and viewers that read its records as a fixed
  struct (SIBR) expect them.
- ``f_dc_*``: the degree-0 spherical-harmonic coefficient of each colour channel,
  ``(rgb - 0.5) / C0`` with ``C0 = 0.28209479177387814``, which viewers invert as
  ``0.5 + C0 * f_dc``. ``f_rest_*``: the 45 higher-degree coefficients (degree 3), zeros: GMAE
  colours do not depend on the viewing direction.
- ``opacity``: the logit of the opacity, clamped to ``[eps, 1 - eps]`` first (``eps = 1e-6``)
  so that an opacity of exactly 0 or 1 stays finite; viewers apply a sigmoid.
- ``scale_*``: natural logs of the standard deviations, each clamped to at least ``1e-12``
  first; viewers apply ``exp``.
- ``rot_*``: the quaternion ``(w, x, y, z)`` as the model gave it; viewers normalise it.

Scene units of a GMAE (:meth:`splathead.Camera.gmae`): centres lie in ``(-1, 1)`` on each axis,
x to the right and y down across the image, z away from the camera; the camera sits at
``(0, 0, -8)`` looking along +z (OpenCV axes) and projects orthographically, so the image spans
``x, y`` in ``[-1, 1]``. A pinhole viewer placed there with a horizontal field of view of
``2 atan(1 / 8)`` (about 14.25 degrees) sees nearly the training view. Scales are in the same
units (a standard deviation ``s`` covers ``s * W / 2`` pixels). GMAE renders onto a white
background, so set a viewer's background to white to see what the model drew.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from numpy.lib.recfunctions import unstructured_to_structured

from splathead.gaussians import Gaussians
from splathead.typing import typecheck

__all__ = ["SH_C0", "export_ply"]

SH_C0 = 0.28209479177387814
"""The degree-0 real spherical harmonic, ``1 / (2 sqrt(pi))``: colour ``= 0.5 + SH_C0 * f_dc``."""

_OPACITY_EPS = 1e-6
_MIN_SCALE = 1e-12
_REST_COEFFICIENTS = 45  # 3 channels x 15 harmonics of degrees 1 to 3, as the reference writes


def _property_names() -> list[str]:
    return [
        "x", "y", "z", "nx", "ny", "nz",
        *(f"f_dc_{i}" for i in range(3)),
        *(f"f_rest_{i}" for i in range(_REST_COEFFICIENTS)),
        "opacity",
        *(f"scale_{i}" for i in range(3)),
        *(f"rot_{i}" for i in range(4)),
    ]


@typecheck
def export_ply(gaussians: Gaussians, path: str | os.PathLike, index: int = 0) -> None:
    """Write image ``index``'s Gaussians (``gaussians[index]``: ``n`` of them) to ``path``.

    ``gaussians`` must hold RGB colours in [0, 1] (``c = 3``) and pass
    :meth:`Gaussians.validate`; ``index`` may be negative, as in Python indexing. The values are
    converted as the module docstring describes and written as float32 through ``plyfile``
    (install ``splathead[ply]``). An existing file at ``path`` is replaced.
    """
    try:
        from plyfile import PlyData, PlyElement
    except ImportError as error:  # an optional extra
        raise ImportError("export_ply needs plyfile: pip install 'splathead[ply]'") from error
    if not -gaussians.batch_size <= index < gaussians.batch_size:
        raise IndexError(
            f"export_ply index must lie in [{-gaussians.batch_size}, {gaussians.batch_size}) "
            f"for a batch of {gaussians.batch_size}, got {index}"
        )
    if gaussians.num_channels != 3:
        raise ValueError(
            f"export_ply needs RGB Gaussians (colors [b n 3]), got "
            f"{gaussians.num_channels} colour channels"
        )
    image = gaussians[index].detach().to("cpu", torch.float32).validate()
    colors = image.colors[0]
    if (colors < 0).any() or (colors > 1).any():
        raise ValueError("export_ply needs colours in [0, 1], got values outside that range")
    columns = torch.cat(
        [
            image.means[0],
            torch.zeros_like(image.means[0]),
            (colors - 0.5) / SH_C0,
            colors.new_zeros(image.num_gaussians, _REST_COEFFICIENTS),
            torch.logit(image.opacities[0], eps=_OPACITY_EPS)[:, None],
            image.scales[0].clamp_min(_MIN_SCALE).log(),
            image.quats[0],
        ],
        dim=1,
    ).numpy()
    records = unstructured_to_structured(
        columns, np.dtype([(name, "<f4") for name in _property_names()])
    )
    PlyData([PlyElement.describe(records, "vertex")], byte_order="<").write(os.fspath(path))
