"""The gsplat backend: one batched ``gsplat.rasterization`` call (CUDA only, float32).

Checked against gsplat 1.5.3. All images of a batch go through a single call with means
``[b n 3]`` and the camera expanded to ``[b 1 4 4]`` / ``[b 1 3 3]``, ``packed=False`` (1.5.3's
packed mode mixes gradients across images and mishandles ``backgrounds``) and
``rasterize_mode="classic"``. gsplat pads any channel count internally, so any ``c >= 1`` works.
gsplat compiles its CUDA sources on first use (about a minute, cached in
``~/.cache/torch_extensions``).
"""

from __future__ import annotations

import importlib.util

import torch
from einops import rearrange

from splathead.camera import Camera
from splathead.gaussians import Gaussians
from splathead.render.backend import RenderOutput
from splathead.render.projection import EPS2D, cap_scales, normalize_quats
from splathead.typing import Float, Tensor, typecheck

__all__ = ["GsplatBackend", "check_gsplat_camera", "gsplat_available", "rasterize_with_gsplat"]


def gsplat_available() -> bool:
    """Whether ``gsplat`` can be imported (without importing it)."""
    return importlib.util.find_spec("gsplat") is not None


def check_gsplat_camera(camera: Camera) -> None:
    """Raise ``ValueError`` for a camera gsplat cannot render exactly: the GMAE authors'
    footprint (``Camera.footprint_depth``), which gsplat 1.5's orthographic model does not have."""
    if camera.footprint_depth is not None:
        raise ValueError(
            f"the gsplat backend cannot render Camera.footprint_depth={camera.footprint_depth} "
            "(the GMAE authors' footprint, Camera.gmae(..., footprint='authors')): gsplat's "
            "orthographic camera sizes footprints independently of depth; use backend='torch'"
        )


class GsplatBackend:
    """The "gsplat" :class:`~splathead.render.RenderBackend`: float32 CUDA tensors only.

    Raises ``ImportError`` when built without gsplat installed.
    """

    name = "gsplat"

    def __init__(self) -> None:
        if not gsplat_available():
            raise ImportError(
                "the gsplat backend needs gsplat: pip install 'splathead[gsplat]' "
                "(gsplat==1.5.3), or use backend='torch'"
            )

    @typecheck
    def render(
        self,
        gaussians: Gaussians,
        camera: Camera,
        background: Float[Tensor, "b c"],
        *,
        render_depth: bool,
    ) -> RenderOutput:
        """Same contract as the torch backend; raises ``TypeError`` unless the Gaussians are
        float32 and ``ValueError`` unless they are on CUDA (the background is on their device
        and of their dtype, as the renderer passes it) and for a camera with the authors'
        footprint (:func:`check_gsplat_camera`)."""
        check_gsplat_camera(camera)
        if gaussians.dtype != torch.float32:
            raise TypeError(
                f"Gaussians are {str(gaussians.dtype).removeprefix('torch.')} but the gsplat "
                "backend computes in float32; cast them with gaussians.to(torch.float32) or use "
                "backend='torch'"
            )
        if gaussians.device.type != "cuda":
            raise ValueError(
                f"the gsplat backend needs CUDA tensors, but means is on {gaussians.device}"
            )
        return rasterize_with_gsplat(gaussians, camera, background, render_depth=render_depth)


@typecheck
def rasterize_with_gsplat(
    gaussians: Gaussians,
    camera: Camera,
    background: Float[Tensor, "b c"],
    *,
    render_depth: bool,
) -> RenderOutput:
    """The ``gsplat.rasterization`` call behind :class:`GsplatBackend`, without its device and
    dtype checks: the CPU suite drives it with gsplat's CUDA entry points replaced by pure-torch
    stand-ins (``tests/test_gsplat_call.py``), so the arguments are checked without a GPU."""
    import gsplat

    b, c = gaussians.batch_size, gaussians.num_channels
    # gsplat normalises quaternions unguarded (NaN for zero, overflow or underflow for
    # extreme norms) and squares scales unguarded (inf for huge ones): hand it the torch
    # backend's robust quaternions and capped scales, so both backends draw the same thing.
    means, quats = gaussians.means, gaussians.quats
    scales = cap_scales(means, quats, gaussians.scales, camera)
    quats = normalize_quats(quats)
    with torch.autocast(device_type="cuda", enabled=False):
        rendered, alpha, _ = gsplat.rasterization(
            means, quats, scales, gaussians.opacities, gaussians.colors,
            viewmats=camera.viewmat.to(gaussians.means).expand(b, 1, 4, 4),
            Ks=camera.intrinsics.to(gaussians.means).expand(b, 1, 3, 3),
            width=camera.width,
            height=camera.height,
            near_plane=camera.near,
            far_plane=camera.far,
            eps2d=EPS2D,
            packed=False,
            rasterize_mode="classic",
            camera_model=camera.model,
            backgrounds=background[:, None, :],
            render_mode="RGB+ED" if render_depth else "RGB",
        )
    rendered = rearrange(rendered, "b 1 h w f -> b f h w")
    alpha = rearrange(alpha, "b 1 h w 1 -> b 1 h w")
    depth = rendered[:, c:] if render_depth else None
    return RenderOutput(image=rendered[:, :c], alpha=alpha, depth=depth)
