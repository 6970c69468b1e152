"""`Camera`: intrinsics, world-to-camera extrinsics and the projection model."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch

from splathead.typing import Float, Tensor, typecheck

CameraModel = Literal["ortho", "pinhole"]
Footprint = Literal["ortho", "authors"]


def _identity() -> Tensor:
    return torch.eye(4)


@typecheck
@dataclass(frozen=True)
class Camera:
    """A camera in OpenCV convention: +z forward, +y down, +x right; pixels (col, row).

    Attributes:
        width: image width in pixels.
        height: image height in pixels.
        fx: horizontal focal length in pixels.
        fy: vertical focal length in pixels.
        cx: principal point's column in pixels. Pixel centres lie at (j + 0.5, i + 0.5).
        cy: principal point's row in pixels.
        viewmat: ``[4 4]`` world-to-camera transform (rigid; last row ``0 0 0 1``).
        model: ``"pinhole"`` projects ``(fx x/z + cx, fy y/z + cy)``; ``"ortho"`` projects
            ``(fx x + cx, fy y + cy)`` and uses depth only to order the compositing.
        near: Gaussians whose camera-space z is below this are culled.
        far: Gaussians whose camera-space z is above this are culled; may be ``inf``.
        footprint_depth: ``"ortho"`` cameras only. ``None``: footprints are the orthographic
            projection's, whatever the depth. A depth ``d``: footprints are sized as a pinhole
            of focal ``(fx d, fy d)`` sizes them at the centre's camera-space depth ``z`` (its
            EWA Jacobian, shear term included, with ``x/z`` and ``y/z`` clamped to
            ``1.3 W / (2 fx)`` and ``1.3 H / (2 fy)`` as gsplat 0.1.0 clamps them), while the
            centres stay orthographic: on the axis a Gaussian at ``z = d`` has the orthographic
            footprint and one at ``z`` is ``d / z`` times as wide. The GMAE authors' renderer
            (:meth:`gmae` with ``footprint="authors"``).

    Every number must be finite (``far`` excepted): a NaN or infinite intrinsic or ``viewmat``
    entry is an error naming the field.
    """

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    viewmat: Float[Tensor, "4 4"] = field(default_factory=_identity)
    model: CameraModel = "pinhole"
    near: float = 0.01
    far: float = 1e10
    footprint_depth: float | None = None

    def __post_init__(self) -> None:
        for name in ("fx", "fy", "cx", "cy", "near"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"Camera.{name} must be finite, got {getattr(self, name)}")
        non_finite = (~torch.isfinite(self.viewmat.detach().cpu())).nonzero().tolist()
        if non_finite:
            row, col = non_finite[0]
            raise ValueError(
                f"Camera.viewmat must be finite, got {self.viewmat[row, col].item()} at "
                f"[{row}, {col}] ({len(non_finite)} non-finite entries)"
            )
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"Camera size must be positive, got {self.width}x{self.height}")
        if self.fx <= 0 or self.fy <= 0:
            raise ValueError(f"Camera focal lengths must be positive, got fx={self.fx}, fy={self.fy}")
        if not 0 < self.near < self.far:
            raise ValueError(f"Camera needs 0 < near < far, got near={self.near}, far={self.far}")
        if self.footprint_depth is not None:
            if not (math.isfinite(self.footprint_depth) and self.footprint_depth > 0):
                raise ValueError(
                    f"Camera.footprint_depth must be finite and positive, got {self.footprint_depth}"
                )
            if self.model != "ortho":
                raise ValueError(
                    f"Camera.footprint_depth needs model='ortho' (its centres are orthographic), "
                    f"got model={self.model!r}"
                )
        bottom = self.viewmat[3].detach().cpu()
        if not torch.equal(bottom, torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=bottom.dtype)):
            raise ValueError(f"Camera.viewmat last row must be [0, 0, 0, 1], got {bottom.tolist()}")
        # Keep a float32 CPU copy: the renderer moves it to the Gaussians' device per call.
        object.__setattr__(self, "viewmat", self.viewmat.detach().to("cpu", torch.float32))

    @classmethod
    def gmae(
        cls, height: int, width: int, *, distance: float = 8.0, footprint: Footprint = "ortho"
    ) -> Camera:
        """The GMAE paper's camera: scene x, y in (-1, 1) span the image.

        Orthographic with focal ``W/2, H/2`` and principal point at the image centre, placed at
        ``distance`` along -z (the authors' 90-degree field of view at distance 8 under gsplat 0.1,
        which landed centres orthographically). A scene-unit scale ``s`` covers ``s * W/2`` px.

        ``footprint="authors"`` sizes footprints as the authors' renderer did
        (``footprint_depth=distance``): a Gaussian at scene depth ``z`` is ``distance /
        (distance + z)`` times as wide as under the default camera, which it equals at ``z = 0``
        on the axis, with the pinhole's shear off the axis. Only the torch backend renders it.
        """
        if footprint not in ("ortho", "authors"):
            raise ValueError(f"footprint must be 'ortho' or 'authors', got {footprint!r}")
        viewmat = torch.eye(4)
        viewmat[2, 3] = distance
        return cls(
            width=width,
            height=height,
            fx=width / 2,
            fy=height / 2,
            cx=width / 2,
            cy=height / 2,
            viewmat=viewmat,
            model="ortho",
            footprint_depth=distance if footprint == "authors" else None,
        )

    @property
    def intrinsics(self) -> Float[Tensor, "3 3"]:
        """``K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` (float32, CPU)."""
        return torch.tensor(
            [[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]]
        )
