"""`SplatRenderer`: Gaussians in, channels-first images out, through a pluggable backend."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from splathead.camera import Camera
from splathead.gaussians import Gaussians
from splathead.render.backend import RenderBackend, RenderOutput
from splathead.render.gsplat_backend import GsplatBackend, check_gsplat_camera, gsplat_available
from splathead.render.numba_backend import NumbaBackend, numba_available
from splathead.render.projection import ALPHA_THRESHOLD
from splathead.render.torch_backend import TorchBackend
from splathead.typing import Float, Tensor, typecheck

logger = logging.getLogger("splathead")

BackendName = Literal["auto", "torch", "numba", "gsplat"]
_BUILT_IN = {"torch": TorchBackend, "numba": NumbaBackend, "gsplat": GsplatBackend}
_HALF_DTYPES = (torch.float16, torch.bfloat16)


def _in_graph_of(
    output: RenderOutput, gaussians: Gaussians, background: Tensor
) -> RenderOutput:
    """``output`` connected to every input that requires grad, with gradient zero.

    When no Gaussian reaches a pixel a backend's outputs need not depend on the Gaussians, and
    ``loss.backward()`` would fail ("does not require grad") or, under DDP, leave parameters
    without a gradient. Adding an empty sum of each such input (exactly 0, even for NaN or Inf
    inputs) puts them in the graph; only this rare path pays for it.
    """
    inputs = [getattr(gaussians, field.name) for field in dataclasses.fields(gaussians)]
    needing_grad = [tensor for tensor in [*inputs, background] if tensor.requires_grad]
    if not needing_grad or not torch.is_grad_enabled():
        return output
    zero = sum(tensor.flatten()[:0].sum() for tensor in needing_grad)
    return RenderOutput(*(None if tensor is None else tensor + zero for tensor in output))


class SplatRenderer(nn.Module):
    """Differentiable splatting of a batch of Gaussian sets with one fixed camera.

    Computes exactly gsplat 1.5's classic rasterization (:mod:`splathead.render.reference` is
    the definition in code): EWA projection with 0.3 px^2 blur, front-to-back compositing in
    camera z, pixel centres at ``(j + 0.5, i + 0.5)``.

    Args:
        camera: the camera every image is rendered with, e.g. ``Camera.gmae(224, 224)``.
        backend: "torch" (pure PyTorch, any device), "numba" (compiled CPU loops, CPU tensors
            only; ``pip install "splathead[cpu]"``), "gsplat" (CUDA kernels, float32 CUDA
            tensors only; not for the authors' footprint, ``Camera.footprint_depth``), "auto":
            gsplat when the renderer lives on a CUDA device, gsplat is importable and can render
            the camera; numba on the CPU when numba is importable; torch otherwise (the same
            pixels, slower); or any object implementing
            :class:`~splathead.render.RenderBackend`. The backend's name is ``self.backend``
            and is logged (logger "splathead") the first time it is used.
        background: default background colour: a float for every channel, a sequence of ``c``
            floats, or a tensor ``[c]``. White (1.0) by default, as in the GMAE paper.
        render_depth: also return gsplat's expected depth ("ED").
        check_inputs: check every call for non-finite values, negative scales and opacities
            outside [0, 1] (:meth:`Gaussians.validate`: a few reductions and one device sync;
            about 2-3 ms on one CPU thread for 256 images x 256 Gaussians, against seconds for
            the torch backend's render of them). Shape, device and dtype checks always run.

    Dtypes: float32 and (torch and numba backends) float64 are rendered as given; float16/bfloat16
    Gaussians are rendered in float32 with autocast off and the outputs stay float32, like
    autocast's own float32 ops (the image usually feeds an MSE loss).
    """

    background: Tensor

    def __init__(
        self,
        camera: Camera,
        *,
        backend: BackendName | RenderBackend = "auto",
        background: float | Sequence[float] | Tensor = 1.0,
        render_depth: bool = False,
        check_inputs: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(backend, str):
            if backend not in ("auto", *_BUILT_IN):
                raise ValueError(
                    "backend must be 'auto', 'torch', 'numba', 'gsplat' or a RenderBackend, got "
                    f"{backend!r}"
                )
        elif not isinstance(backend, RenderBackend):
            raise TypeError(
                "backend must be 'auto', 'torch', 'numba', 'gsplat' or a RenderBackend (a `name` and "
                f"`render(gaussians, camera, background, *, render_depth)`), got "
                f"{type(backend).__name__}"
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
        # Non-persistent: `.to(device)` moves it (and so the renderer), checkpoints don't store it.
        self.register_buffer("background", background, persistent=False)
        # Built-in backends by name; "gsplat" and "numba" are built now so that a missing
        # library fails here.
        self._built_in: dict[str, RenderBackend] = {}
        if backend == "gsplat":
            check_gsplat_camera(camera)
        if backend in ("gsplat", "numba"):
            self._built_in[backend] = _BUILT_IN[backend]()
        self._logged_backend: str | None = None
        self._warned_collapse = False

    @property
    def backend(self) -> str:
        """The name of the backend that renders: "auto" resolves by the renderer's device."""
        requested = self.requested_backend
        if not isinstance(requested, str):
            return requested.name
        if requested != "auto":
            return requested
        if self.background.device.type == "cuda":
            gsplat_renders = self.camera.footprint_depth is None and gsplat_available()
            return "gsplat" if gsplat_renders else "torch"
        on_cpu = self.background.device.type == "cpu"
        return "numba" if on_cpu and numba_available() else "torch"

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
        backend = self._resolve_backend()
        if gaussians.device != self.background.device:
            raise ValueError(
                f"Gaussians are on {gaussians.device} but the renderer is on "
                f"{self.background.device}; move one of them with .to(device)"
            )
        background = self._background_for(gaussians, background)
        if self.check_inputs:
            gaussians.validate()
            if not torch.isfinite(background).all():
                raise ValueError("background holds NaN or Inf")

        if self.check_inputs:
            self._warn_if_collapsed(gaussians)

        dtype = torch.float32 if gaussians.dtype in _HALF_DTYPES else gaussians.dtype
        if gaussians.batch_size == 0 or gaussians.num_gaussians == 0:
            output = self._nothing_to_draw(background.to(dtype))
            return _in_graph_of(output, gaussians, background)
        with torch.autocast(device_type=gaussians.device.type, enabled=False):
            output = backend.render(
                gaussians.to(dtype), self.camera, background.to(dtype),
                render_depth=self.render_depth,
            )
        self._check_output(output, gaussians, backend.name)
        if output.alpha.requires_grad or not torch.is_grad_enabled():
            return output  # something was drawn: the backend's graph reaches every input
        if not self.check_inputs:
            self._warn_if_collapsed(gaussians)
        return _in_graph_of(output, gaussians, background)

    def _warn_if_collapsed(self, gaussians: Gaussians) -> None:
        """Warn once (logger "splathead") when every opacity of the batch is below 1/255.

        One reduction and device sync per call until it has warned: made with the input checks
        (which sync anyway), or else only when nothing was drawn.
        """
        if self._warned_collapse or gaussians.opacities.numel() == 0:
            return
        if bool((gaussians.opacities < ALPHA_THRESHOLD).all()):
            logger.warning(
                "SplatRenderer: every Gaussian of the batch has opacity below 1/255, so nothing "
                "is drawn and the render gives them no gradient: the model has collapsed (too "
                "high a learning rate, or no warmup?)"
            )
            self._warned_collapse = True

    def _nothing_to_draw(self, background: Float[Tensor, "b c"]) -> RenderOutput:
        """The render of no Gaussians (``b = 0`` or ``n = 0``): the background, alpha 0; no
        backend is called (gsplat's kernels are not made for empty inputs)."""
        camera = self.camera
        b, c = background.shape
        image = background[:, :, None, None].expand(b, c, camera.height, camera.width)
        alpha = background.new_zeros(b, 1, camera.height, camera.width)
        depth = alpha.clone() if self.render_depth else None
        return RenderOutput(image=image.contiguous(), alpha=alpha, depth=depth)

    def _resolve_backend(self) -> RenderBackend:
        """The backend object for this call; logs the choice when it changes."""
        name = self.backend
        if self._logged_backend != name:
            # On a CPU "auto" says why it did not pick the compiled backend.
            on_cpu = self.background.device.type == "cpu"
            why = " (numba not importable: pip install \"splathead[cpu]\")"
            fallback = self.requested_backend == "auto" and on_cpu and name == "torch"
            logger.info(
                "SplatRenderer: backend %r renders with %r%s", self.requested_backend, name,
                why if fallback else "",
            )
            self._logged_backend = name
        if not isinstance(self.requested_backend, str):
            return self.requested_backend
        if name not in self._built_in:
            self._built_in[name] = _BUILT_IN[name]()
        return self._built_in[name]

    def _check_output(self, output: RenderOutput, gaussians: Gaussians, name: str) -> None:
        """Raise naming the backend if it returned other shapes than the contract's."""
        b, c = gaussians.batch_size, gaussians.num_channels
        h, w = self.camera.height, self.camera.width
        expected = {"image": (b, c, h, w), "alpha": (b, 1, h, w)}
        if self.render_depth:
            expected["depth"] = (b, 1, h, w)
        for field, shape in expected.items():
            got = getattr(output, field, None)
            if not isinstance(got, Tensor) or got.shape != shape:
                got = tuple(got.shape) if isinstance(got, Tensor) else type(got).__name__
                raise ValueError(f"backend {name!r} returned {field} {got}, expected {shape}")

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
