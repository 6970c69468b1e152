"""`GaussianHead`: decoder tokens to 3D Gaussians with the GMAE paper's activations."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from splathead.checks import require_positive_finite, require_positive_int
from splathead.gaussians import Gaussians
from splathead.typing import Float, Tensor, typecheck

Rotation = Literal["shoemake", "quaternion"]
HeadInit = Literal["xavier", "torch"]


@typecheck
def full_precision_linear(
    tokens: Float[Tensor, "*batch d"], weight: Float[Tensor, "o d"]
) -> Float[Tensor, "*batch o"]:
    """``tokens @ weight.T`` outside autocast, in at least float32 (float64 stays float64).

    For the Gaussian heads: bf16's 8-bit mantissa alone would move centres by up to ~0.1 px at
    224 px and quantise small scales and opacities; the projection is small next to the decoder.
    """
    dtype = torch.promote_types(tokens.dtype, torch.float32)
    with torch.autocast(device_type=tokens.device.type, enabled=False):
        return F.linear(tokens.to(dtype), weight.to(dtype))


@typecheck
def shoemake_quaternion(uvw: Float[Tensor, "*batch 3"]) -> Float[Tensor, "*batch 4"]:
    """Unit quaternions (w, x, y, z) from raw logits through Shoemake's map.

    With ``(u, v, w) = sigmoid(uvw)`` the result is
    ``[sqrt(1-u) sin 2pi v, sqrt(1-u) cos 2pi v, sqrt(u) sin 2pi w, sqrt(u) cos 2pi w]``, a unit
    quaternion for every input (uniformly distributed rotations for uniform ``u, v, w``). The
    square roots are taken as ``exp(logsigmoid / 2)``, which is exact and keeps the gradient
    finite where ``sigmoid`` saturates to 0 or 1.
    """
    logit_u, logit_v, logit_w = uvw.unbind(-1)
    sqrt_1mu = torch.exp(0.5 * F.logsigmoid(-logit_u))
    sqrt_u = torch.exp(0.5 * F.logsigmoid(logit_u))
    angle_v = 2 * math.pi * torch.sigmoid(logit_v)
    angle_w = 2 * math.pi * torch.sigmoid(logit_w)
    return torch.stack(
        [
            sqrt_1mu * torch.sin(angle_v),
            sqrt_1mu * torch.cos(angle_v),
            sqrt_u * torch.sin(angle_w),
            sqrt_u * torch.cos(angle_w),
        ],
        dim=-1,
    )


class GaussianHead(nn.Module):
    """One bias-free Linear from tokens to Gaussian parameters, then bounded activations.

    Each token gives ``gaussians_per_token`` (``m``) Gaussians, so ``[b n d]`` tokens give
    ``n m`` Gaussians, the ``m`` of token ``i`` at ``i m, ..., i m + m - 1``. The Linear has
    ``m (11 + num_channels)`` outputs, Gaussian by Gaussian; the ``11 + num_channels`` of one
    Gaussian (14 for RGB, the paper's layout, with ``m = 1``) are
    ``3 centre | 3 scale | 4 rotation | num_channels colour | 1 opacity``, activated as

    - centre ``center_range * 2 (sigmoid - 0.5)``: in ``(-center_range, center_range)`` on each
      axis; with :meth:`Camera.gmae` and the default 1.0, x and y in (-1, 1) span the image.
    - scale ``max_scale * sigmoid``: standard deviations in ``(0, max_scale)`` scene units. The
      default 1/8 is the paper's ``c = 1`` under the GMAE camera (distance 8): up to
      ``W/16`` px, i.e. 14 px at 224 px.
    - rotation ``"shoemake"`` (paper): the first 3 rotation outputs through
      :func:`shoemake_quaternion`, the 4th unused; ``"quaternion"``: all 4 normalised.
    - colour and opacity ``sigmoid``: in (0, 1).

    The open intervals close at saturation in floating point (``sigmoid(100.) == 1.``).

    The projection and the activations run in at least float32, also under autocast or for
    bf16 tokens, so the Gaussians are float32 (float64 for float64 tokens); the small
    projection costs nothing next to the decoder. With ``init="xavier"`` the weight starts
    xavier-uniform, as every Linear of MAE's decoder (its pixel predictor included) does; with
    ``m > 1`` each Gaussian's ``11 + num_channels`` rows are drawn as the ``m = 1`` head's are.
    ``init="torch"`` keeps ``nn.Linear``'s own init (uniform within ``1 / sqrt(in_dim)``, the
    same for any ``m``), as the GMAE authors' head has it (built after MAE's initialisation).

    Args:
        in_dim: width ``d`` of the input tokens.
        num_channels: colour (or feature) channels per Gaussian.
        max_scale: upper bound of the scales, scene units.
        center_range: half-width of the centre box, scene units.
        rotation: ``"shoemake"`` or ``"quaternion"``.
        gaussians_per_token: Gaussians ``m`` per token (the paper: 1).
        init: ``"xavier"`` or ``"torch"`` (PyTorch's default Linear init, the authors').
    """

    def __init__(
        self,
        in_dim: int,
        *,
        num_channels: int = 3,
        max_scale: float = 1 / 8,
        center_range: float = 1.0,
        rotation: Rotation = "shoemake",
        gaussians_per_token: int = 1,
        init: HeadInit = "xavier",
    ) -> None:
        super().__init__()
        require_positive_int("GaussianHead", in_dim=in_dim, num_channels=num_channels,
                             gaussians_per_token=gaussians_per_token)
        require_positive_finite("GaussianHead", max_scale=max_scale, center_range=center_range)
        if rotation not in ("shoemake", "quaternion"):
            raise ValueError(f"rotation must be 'shoemake' or 'quaternion', got {rotation!r}")
        if init not in ("xavier", "torch"):
            raise ValueError(f"init must be 'xavier' or 'torch', got {init!r}")
        self.in_dim = in_dim
        self.num_channels = num_channels
        self.max_scale = max_scale
        self.center_range = center_range
        self.rotation = rotation
        self.gaussians_per_token = gaussians_per_token
        self.proj = nn.Linear(in_dim, gaussians_per_token * (11 + num_channels), bias=False)
        if init == "xavier":
            with torch.no_grad():
                for rows in self.proj.weight.split(11 + num_channels):
                    nn.init.xavier_uniform_(rows)

    @typecheck
    def forward(self, tokens: Float[Tensor, "b n d"]) -> Gaussians:
        """``n * gaussians_per_token`` Gaussians per image from ``[b n d]`` tokens."""
        return self.activate(self.project(tokens))

    @typecheck
    def project(self, tokens: Float[Tensor, "b n d"]) -> Float[Tensor, "b g p"]:
        """The Linear's raw outputs ``[b (n m) 11+c]``, Gaussian by Gaussian (before activation)."""
        if tokens.shape[-1] != self.in_dim:
            raise ValueError(
                f"GaussianHead expected tokens of width {self.in_dim}, got shape "
                f"{tuple(tokens.shape)}"
            )
        raw = full_precision_linear(tokens, self.proj.weight)
        return rearrange(raw, "b n (m p) -> b (n m) p", m=self.gaussians_per_token)

    @typecheck
    def color_logits(self, raw: Float[Tensor, "b g p"]) -> Float[Tensor, "b g c"]:
        """The colour channels of :meth:`project`'s output, before their sigmoid."""
        return raw[..., 10 : 10 + self.num_channels]

    @typecheck
    def activate(self, raw: Float[Tensor, "b g p"]) -> Gaussians:
        """Gaussians from :meth:`project`'s raw outputs through the activations above."""
        center, scale, rotation, color, opacity = raw.split(
            [3, 3, 4, self.num_channels, 1], dim=-1
        )
        if self.rotation == "shoemake":
            quats = shoemake_quaternion(rotation[..., :3])
        else:
            quats = F.normalize(rotation, dim=-1)
        return Gaussians(
            # tanh(x / 2) == 2 (sigmoid(x) - 0.5), with better precision near 0.
            means=self.center_range * torch.tanh(0.5 * center),
            scales=self.max_scale * torch.sigmoid(scale),
            quats=quats,
            colors=torch.sigmoid(color),
            opacities=torch.sigmoid(opacity).squeeze(-1),
        )

    def extra_repr(self) -> str:
        return (
            f"in_dim={self.in_dim}, num_channels={self.num_channels}, max_scale={self.max_scale}, "
            f"center_range={self.center_range}, rotation={self.rotation!r}, "
            f"gaussians_per_token={self.gaussians_per_token}"
        )
