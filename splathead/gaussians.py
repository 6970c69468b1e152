"""`Gaussians`: a batch of 3D Gaussian sets, one set of ``n`` Gaussians per image."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
import torch

from splathead.camera import Camera
from splathead.checks import host_scalars
from splathead.indexing import batched_gather
from splathead.typing import Bool, Float, Int, Tensor, typecheck

_FIELDS = ("means", "scales", "quats", "colors", "opacities")


class InvalidGaussiansError(ValueError):
    """:meth:`Gaussians.validate` found a non-finite or out-of-range value."""


@typecheck
@dataclass(frozen=True)
class Gaussians:
    """Batch-first tensors describing ``n`` Gaussians for each of ``b`` images.

    Attributes:
        means: ``[b n 3]`` centres in world (scene) coordinates.
        scales: ``[b n 3]`` standard deviations along the Gaussian's own axes, >= 0, scene units.
        quats: ``[b n 4]`` rotations as quaternions (w, x, y, z); need not be normalised.
        colors: ``[b n c]`` colours or feature channels, ``c >= 1``.
        opacities: ``[b n]`` peak opacities in [0, 1].

    Shapes are checked when the object is built (``b`` and ``n`` must agree across fields) and all
    fields must share one device and dtype. Value ranges (finite, ``scales >= 0``, opacities in
    [0, 1]) are checked by :meth:`validate`, which the renderer calls unless told not to.
    """

    means: Float[Tensor, "b n 3"]
    scales: Float[Tensor, "b n 3"]
    quats: Float[Tensor, "b n 4"]
    colors: Float[Tensor, "b n c"]
    opacities: Float[Tensor, "b n"]

    def __post_init__(self) -> None:
        for name in _FIELDS[1:]:
            field = getattr(self, name)
            if field.device != self.means.device:
                raise ValueError(
                    f"Gaussians.{name} is on {field.device} but means is on {self.means.device}; "
                    "all fields must be on one device"
                )
            if field.dtype != self.means.dtype:
                raise TypeError(
                    f"Gaussians.{name} has dtype {field.dtype} but means has {self.means.dtype}; "
                    "all fields must share one dtype"
                )

    @property
    def batch_size(self) -> int:
        return self.means.shape[0]

    @property
    def num_gaussians(self) -> int:
        return self.means.shape[1]

    @property
    def num_channels(self) -> int:
        return self.colors.shape[2]

    @property
    def device(self) -> torch.device:
        return self.means.device

    @property
    def dtype(self) -> torch.dtype:
        return self.means.dtype

    def validate(self) -> Gaussians:
        """Raise :class:`InvalidGaussiansError` (a ``ValueError``) naming every field with a
        non-finite or out-of-range value.

        Costs one small reduction per field and a single device-to-host sync. Returns ``self``.
        """
        problems = {
            f"{name} holds NaN or Inf": ~torch.isfinite(getattr(self, name)).all()
            for name in _FIELDS
        }
        problems["scales has negative values (expected >= 0)"] = (self.scales < 0).any()
        problems["opacities lie outside [0, 1]"] = (
            (self.opacities < 0) | (self.opacities > 1)
        ).any()
        failed = [message for message, flag in host_scalars(problems).items() if flag]
        if failed:
            raise InvalidGaussiansError("invalid Gaussians: " + "; ".join(failed))
        return self

    def replace(self, **fields: Tensor) -> Gaussians:
        """A copy with some fields replaced (shapes are checked again)."""
        return dataclasses.replace(self, **fields)

    def map(self, fn) -> Gaussians:
        """Apply ``fn`` to every field tensor, e.g. ``g.map(torch.Tensor.detach)``."""
        return Gaussians(**{name: fn(getattr(self, name)) for name in _FIELDS})

    def to(self, *args, **kwargs) -> Gaussians:
        """Like ``Tensor.to``, applied to every field."""
        return self.map(lambda field: field.to(*args, **kwargs))

    def detach(self) -> Gaussians:
        return self.map(torch.Tensor.detach)

    def __getitem__(self, index: int | slice | Tensor) -> Gaussians:
        """Select images of the batch (an int keeps the batch dimension)."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return self.map(lambda field: field[index])

    @typecheck
    def gather(self, indices: Int[Tensor, "b k"]) -> Gaussians:
        """Per-image subset: ``result[i, j] = self[i, indices[i, j]]``; ``k`` may differ from ``n``."""
        if indices.shape[0] != self.batch_size:
            raise ValueError(
                f"indices has batch size {indices.shape[0]}, expected {self.batch_size}"
            )
        return self.map(lambda field: batched_gather(field, indices))

    @typecheck
    def where(self, keep: Bool[Tensor, "b n"]) -> Gaussians:
        """Same Gaussians with the opacity of those not kept set to 0 (shapes unchanged)."""
        return self.replace(opacities=self.opacities * keep.to(self.dtype))

    @typecheck
    def camera_depths(self, camera: Camera) -> Float[Tensor, "b n"]:
        """Camera-space z of each centre (larger is farther from the camera)."""
        viewmat = camera.viewmat.to(device=self.device, dtype=self.dtype)
        return self.means @ viewmat[2, :3] + viewmat[2, 3]

    @typecheck
    def depth_order(self, camera: Camera, *, front_to_back: bool = True) -> Int[Tensor, "b n"]:
        """Indices that sort each image's Gaussians by camera depth (stable)."""
        return torch.argsort(
            self.camera_depths(camera), dim=1, descending=not front_to_back, stable=True
        )
