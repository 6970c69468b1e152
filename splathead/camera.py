"""`Camera`: intrinsics, world-to-camera extrinsics and the projection model."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch

from splathead.typing import Float, Tensor, typecheck

CameraModel = Literal["ortho", "pinhole"]


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
        bottom = self.viewmat[3].detach().cpu()
        if not torch.equal(bottom, torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=bottom.dtype)):
            raise ValueError(f"Camera.viewmat last row must be [0, 0, 0, 1], got {bottom.tolist()}")
        # Keep a float32 CPU copy: the renderer moves it to the Gaussians' device per call.
        object.__setattr__(self, "viewmat", self.viewmat.detach().to("cpu", torch.float32))

    @classmethod
    def gmae(cls, height: int, width: int, *, distance: float = 8.0) -> Camera:
        """The GMAE paper's camera: scene x, y in (-1, 1) span the image.

        Orthographic with focal ``W/2, H/2`` and principal point at the image centre, placed at
        ``distance`` along -z (the authors' 90-degree field of view at distance 8 under gsplat 0.1,
        which landed centres orthographically). A scene-unit scale ``s`` covers ``s * W/2`` px.
        """
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
        )

    @property
    def intrinsics(self) -> Float[Tensor, "3 3"]:
        """``K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` (float32, CPU)."""
        return torch.tensor(
            [[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]]
        )
