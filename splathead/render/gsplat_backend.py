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

from splathead.camera import CameraModel
from splathead.render.projection import EPS2D, zero_quats_to_identity
from splathead.typing import Float, Tensor, typecheck


def gsplat_available() -> bool:
    """Whether ``gsplat`` can be imported (without importing it)."""
    return importlib.util.find_spec("gsplat") is not None


@typecheck
def render(
    means: Float[Tensor, "b n 3"],
    quats: Float[Tensor, "b n 4"],
    scales: Float[Tensor, "b n 3"],
    colors: Float[Tensor, "b n c"],
    opacities: Float[Tensor, "b n"],
    background: Float[Tensor, "b c"],
    *,
    viewmat: Float[Tensor, "4 4"],
    intrinsics: Float[Tensor, "3 3"],
    width: int,
    height: int,
    model: CameraModel = "pinhole",
    near: float = 0.01,
    far: float = 1e10,
    render_depth: bool = False,
) -> tuple[Float[Tensor, "b c h w"], Float[Tensor, "b 1 h w"], Float[Tensor, "b 1 h w"] | None]:
    """Same contract as :func:`splathead.render.torch_backend.render`; float32 CUDA tensors only.

    Raises ``ImportError`` if gsplat is missing and ``ValueError``/``TypeError`` naming the tensor
    that is not a float32 CUDA tensor.
    """
    if not gsplat_available():
        raise ImportError(
            "the gsplat backend needs gsplat: pip install 'splathead[gsplat]' (gsplat==1.5.3), "
            "or use backend='torch'"
        )
    import gsplat

    tensors = dict(
        means=means, quats=quats, scales=scales, colors=colors, opacities=opacities,
        background=background, viewmat=viewmat, intrinsics=intrinsics,
    )
    for name, tensor in tensors.items():
        if tensor.device.type != "cuda":
            raise ValueError(
                f"the gsplat backend needs CUDA tensors, but {name} is on {tensor.device}"
            )
        if tensor.dtype != torch.float32:
            raise TypeError(f"the gsplat backend computes in float32, but {name} is {tensor.dtype}")

    b = means.shape[0]
    # gsplat normalises quaternions without a guard (NaN for zero); read zero as the identity.
    quats = zero_quats_to_identity(quats)
    with torch.autocast(device_type="cuda", enabled=False):
        rendered, alpha, _ = gsplat.rasterization(
            means, quats, scales, opacities, colors,
            viewmats=viewmat.expand(b, 1, 4, 4),
            Ks=intrinsics.expand(b, 1, 3, 3),
            width=width,
            height=height,
            near_plane=near,
            far_plane=far,
            eps2d=EPS2D,
            packed=False,
            rasterize_mode="classic",
            camera_model=model,
            backgrounds=background[:, None, :],
            render_mode="RGB+ED" if render_depth else "RGB",
        )
    rendered = rearrange(rendered, "b 1 h w f -> b f h w")
    alpha = rearrange(alpha, "b 1 h w 1 -> b 1 h w")
    c = colors.shape[-1]
    depth = rendered[:, c:] if render_depth else None
    return rendered[:, :c], alpha, depth
