"""`SplatRenderer`: Gaussians in, channels-first images out, through a torch or gsplat backend."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
from torch import nn

from splathead.camera import Camera
from splathead.gaussians import Gaussians
from splathead.render import gsplat_backend, torch_backend
from splathead.typing import Float, Tensor, typecheck

logger = logging.getLogger("splathead")

BackendName = Literal["auto", "torch", "gsplat"]
_HALF_DTYPES = (torch.float16, torch.bfloat16)


class RenderOutput(NamedTuple):
    """What :class:`SplatRenderer` returns; all channels-first."""

    image: Float[Tensor, "b c h w"]
    """Composited features plus ``T_final * background``."""
    alpha: Float[Tensor, "b 1 h w"]
    """Coverage ``1 - T_final`` in [0, 1)."""
    depth: Float[Tensor, "b 1 h w"] | None
    """Expected camera z, ``sum_k alpha_k T_k z_k / alpha`` (0 where nothing is drawn), or
    ``None`` unless the renderer was built with ``render_depth=True``."""


class SplatRenderer(nn.Module):
    """Differentiable splatting of a batch of Gaussian sets with one fixed camera.

    Computes exactly gsplat 1.5's classic rasterization (see :mod:`splathead.render.torch_backend`
    for the maths): EWA projection with 0.3 px^2 blur, front-to-back compositing in camera z,
    pixel centres at ``(j + 0.5, i + 0.5)``.

    Args:
        camera: the camera every image is rendered with, e.g. ``Camera.gmae(224, 224)``.
        backend: "torch" (pure PyTorch, any device, the reference), "gsplat" (CUDA kernels,
            float32 CUDA tensors only) or "auto": gsplat when the renderer lives on a CUDA
            device and gsplat is importable, torch otherwise. The choice is ``self.backend``
            and is logged (logger "splathead") the first time it is used.
        background: default background colour: a float for every channel, a sequence of ``c``
            floats, or a tensor ``[c]``. White (1.0) by default, as in the GMAE paper.
        render_depth: also return gsplat's expected depth ("ED").
        check_inputs: check every call for non-finite values, negative scales and opacities
            outside [0, 1] (:meth:`Gaussians.validate`: a few reductions and one device sync;
            about 2-3 ms on one CPU thread for 256 images x 256 Gaussians, against seconds for
            the torch backend's render of them). Shape, device and dtype checks always run.

    Dtypes: float32 and (torch backend only) float64 are rendered as given; float16/bfloat16
    Gaussians are rendered in float32 with autocast off and the outputs stay float32, like
    autocast's own float32 ops (the image usually feeds an MSE loss).
    """

    viewmat: Tensor
    intrinsics: Tensor
    background: Tensor

    def __init__(
        self,
        camera: Camera,
        *,
        backend: BackendName = "auto",
        background: float | Sequence[float] | Tensor = 1.0,
        render_depth: bool = False,
        check_inputs: bool = True,
    ) -> None:
        super().__init__()
        if backend not in ("auto", "torch", "gsplat"):
            raise ValueError(f"backend must be 'auto', 'torch' or 'gsplat', got {backend!r}")
        if backend == "gsplat" and not gsplat_backend.gsplat_available():
            raise ImportError(
                "backend='gsplat' needs gsplat: pip install 'splathead[gsplat]' (gsplat==1.5.3)"
            )
        background = torch.as_tensor(background, dtype=torch.float32).detach().clone()
        if background.dim() > 1 or background.numel() == 0:
            raise ValueError(
                f"background must be a float or {{c}} values, got shape {tuple(background.shape)}"
            )
        if not torch.isfinite(background).all():
            raise ValueError(f"background holds NaN or Inf: {background.tolist()}")
        self.camera = camera
        self.requested_backend = backend
        self.render_depth = render_depth
        self.check_inputs = check_inputs
        # Non-persistent buffers: `.to(device)` moves them, checkpoints don't store them.
        self.register_buffer("viewmat", camera.viewmat.clone(), persistent=False)
        self.register_buffer("intrinsics", camera.intrinsics, persistent=False)
        self.register_buffer("background", background, persistent=False)
        self._logged_backend: str | None = None

    @property
    def backend(self) -> Literal["torch", "gsplat"]:
        """The backend that renders: "auto" resolves by the renderer's device."""
        if self.requested_backend != "auto":
            return self.requested_backend
        on_cuda = self.viewmat.device.type == "cuda"
        return "gsplat" if on_cuda and gsplat_backend.gsplat_available() else "torch"

    def extra_repr(self) -> str:
        camera = self.camera
        return (
            f"{camera.width}x{camera.height} {camera.model}, backend={self.requested_backend!r} "
            f"({self.backend}), render_depth={self.render_depth}"
        )

    @typecheck
    def forward(
        self, gaussians: Gaussians, background: Float[Tensor, "b c"] | None = None
    ) -> RenderOutput:
        """Render ``gaussians`` (``b`` images of ``n`` Gaussians with ``c`` channels).

        Args:
            gaussians: on the renderer's device.
            background: per-image background ``[b c]``, replacing the renderer's default.

        Returns:
            ``RenderOutput(image [b c h w], alpha [b 1 h w], depth [b 1 h w] | None)``.
        """
        backend = self.backend
        if self._logged_backend != backend:
            logger.info(
                "SplatRenderer: backend %r renders with %r", self.requested_backend, backend
            )
            self._logged_backend = backend
        if gaussians.device != self.viewmat.device:
            raise ValueError(
                f"Gaussians are on {gaussians.device} but the renderer is on "
                f"{self.viewmat.device}; move one of them with .to(device)"
            )
        background = self._background_for(gaussians, background)
        if backend == "gsplat" and gaussians.dtype == torch.float64:
            raise TypeError(
                "Gaussians are float64 but the gsplat backend computes in float32; cast them "
                "with gaussians.to(torch.float32) or use backend='torch'"
            )
        if self.check_inputs:
            gaussians.validate()
            if not torch.isfinite(background).all():
                raise ValueError("background holds NaN or Inf")

        dtype = torch.float32 if gaussians.dtype in _HALF_DTYPES else gaussians.dtype
        gaussians = gaussians.to(dtype)
        camera = self.camera
        render = torch_backend.render if backend == "torch" else gsplat_backend.render
        with torch.autocast(device_type=gaussians.device.type, enabled=False):
            image, alpha, depth = render(
                gaussians.means,
                gaussians.quats,
                gaussians.scales,
                gaussians.colors,
                gaussians.opacities,
                background.to(dtype),
                viewmat=self.viewmat.to(dtype),
                intrinsics=self.intrinsics.to(dtype),
                width=camera.width,
                height=camera.height,
                model=camera.model,
                near=camera.near,
                far=camera.far,
                render_depth=self.render_depth,
            )
        return RenderOutput(image=image, alpha=alpha, depth=depth)

    def _background_for(
        self, gaussians: Gaussians, background: Tensor | None
    ) -> Float[Tensor, "b c"]:
        """The call's background, checked against the Gaussians, as ``[b c]``."""
        b, c = gaussians.batch_size, gaussians.num_channels
        if background is None:
            default = self.background
            if default.dim() == 1 and default.shape[0] != c:
                raise ValueError(
                    f"the renderer's background has {default.shape[0]} channels but "
                    f"Gaussians.colors has {c}"
                )
            return default.expand(b, c)
        if background.shape != (b, c):
            raise ValueError(
                f"background must be [b c] = {(b, c)} to match Gaussians.colors, "
                f"got {tuple(background.shape)}"
            )
        if background.device != gaussians.device:
            raise ValueError(
                f"background is on {background.device} but Gaussians are on {gaussians.device}"
            )
        return background
