"""Front-to-back compositing over a pixel grid with its backward pass written out.

:func:`composite` evaluates the compositing rule of :mod:`splathead.render.reference` for many
small problems at once (one per tile, ``m`` of them), each a grid of pixels and a list of
depth-sorted Gaussians. Its gradient is written out in :class:`_Composite`: far fewer full-size
operations than autograd would record, and the backward pass dominates small renders on a CPU.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch.autograd.function import once_differentiable

from splathead.render.projection import ALPHA_THRESHOLD
from splathead.render.reference import MAX_ALPHA, MIN_TRANSMITTANCE
from splathead.typing import Float, Tensor, typecheck

MAX_SIGMA = 80.0
"""``sigma`` is clamped to this before ``exp(-sigma)``: it keeps the result a normal float32
(below about ``exp(-87)`` CPUs take a slow path for denormals), and ``o exp(-80)`` is far
below ``1/255`` for any opacity ``o <= 1``, so such pairs are skipped exactly as before."""


@typecheck
def composite(
    pixels_x: Float[Tensor, "m u"],
    pixels_y: Float[Tensor, "m v"],
    means2d: Float[Tensor, "m k 2"],
    conics: Float[Tensor, "m k 3"],
    opacities: Float[Tensor, "m k"],
    features: Float[Tensor, "m k f"],
) -> tuple[Float[Tensor, "m v u f"], Float[Tensor, "m v u"]]:
    """Front-to-back compositing of ``k`` depth-sorted Gaussians over a ``v x u`` pixel grid
    (column centres ``pixels_x``, row centres ``pixels_y``), ``m`` times.

    Returns ``sum_k alpha_k T_k f_k`` (no background) and the final transmittance ``T_final``
    per pixel, with the skip and stop rules of :mod:`splathead.render.reference`. Padding entries should have
    opacity 0. Differentiable in ``means2d``, ``conics``, ``opacities`` and ``features``
    (once: the backward pass is written out, see :class:`_Composite`).
    """
    return _Composite.apply(pixels_x, pixels_y, means2d, conics, opacities, features)


class _Composite(torch.autograd.Function):
    """:func:`composite` with its gradient written out: far fewer full-size operations than
    autograd would record, and the backward pass dominates small renders on a CPU.

    With ``g_k = dL/dw_k`` for the weights ``w_k = alpha_k T_k`` (``g = G f_k`` from the
    gradient ``G`` of the summed features) and ``g_T`` the gradient of ``T_final``, only the
    drawn Gaussians (skip and stop rules passed, ``alpha_k`` not clamped at 0.999) get::

        dL/dalpha_k = g_k T_k - (sum_{j > k} g_j w_j + g_T T_final) / (1 - alpha_k)

    since every later ``T_j`` and ``T_final`` hold the factor ``1 - alpha_k``. From
    ``alpha_k = o_k exp(-sigma_k)``: ``dL/do_k = dL/dalpha_k exp(-sigma_k)`` and
    ``dL/dsigma_k = -dL/dalpha_k alpha_k``, and ``sigma``'s derivatives in ``d = m_k - p``
    and ``(a, b, c)`` are summed over the pixels, one grid axis at a time where they separate.
    """

    @staticmethod
    def forward(ctx, pixels_x, pixels_y, means2d, conics, opacities, features):
        # The grid is separable: the quadratic form's x and y parts are computed per column
        # and row, and negated (exactly) so that no full-size negation is needed.
        dx = (means2d[:, None, :, 0] - pixels_x[:, :, None])[:, None]  # [m 1 u k]
        dy = (means2d[:, None, :, 1] - pixels_y[:, :, None])[:, :, None]  # [m v 1 k]
        a, b, c = conics[:, None, None].unbind(-1)  # [m 1 1 k] each
        neg_sigma = torch.addcmul(-0.5 * a * dx * dx - 0.5 * c * dy * dy, -b * dx, dy)
        gaussian = torch.exp(torch.clamp(neg_sigma, min=-MAX_SIGMA))  # [m v u k]
        peak = opacities[:, None, None] * gaussian
        drawn = (neg_sigma <= 0) & (peak >= ALPHA_THRESHOLD)  # skip rule; 0.999 > 1/255
        alpha = torch.where(drawn, torch.clamp(peak, max=MAX_ALPHA), 0.0)
        transmittance_after = torch.cumprod(1 - alpha, dim=-1)
        # Transmittance only falls, so "not yet stopped" is a prefix of each pixel's list, and
        # for that prefix the transmittance in front equals that of the unstopped list.
        kept = transmittance_after > MIN_TRANSMITTANCE
        alpha = torch.where(kept, alpha, 0.0)
        # transmittance[..., i]: in front of Gaussian i, and after the last one at i = k.
        transmittance = torch.cat([torch.ones_like(alpha[..., :1]), transmittance_after], dim=-1)
        weights = rearrange(alpha * transmittance[..., :-1], "m v u k -> m (v u) k")
        summed = rearrange(weights @ features, "m (v u) f -> m v u f", v=pixels_y.shape[1])
        final = torch.gather(transmittance, -1, kept.sum(dim=-1, keepdim=True)).squeeze(-1)
        if any(ctx.needs_input_grad):
            # Where alpha is clamped at 0.999 it does not depend on o or sigma.
            drawn &= kept & (peak <= MAX_ALPHA)
            ctx.save_for_backward(
                dx, dy, conics, features, gaussian, drawn, alpha, transmittance, final
            )
        return summed, final

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_summed, grad_final):
        dx, dy, conics, features, gaussian, drawn, alpha, transmittance, final = ctx.saved_tensors
        grad_summed = rearrange(grad_summed, "m v u f -> m (v u) f")
        weights = alpha * transmittance[..., :-1]
        grad_features = rearrange(weights, "m v u k -> m k (v u)") @ grad_summed
        grad_weights = (grad_summed @ features.transpose(1, 2)).view_as(weights)
        # behind[..., k] = sum_{j > k} g_j w_j + g_T T_final, a suffix sum.
        behind = torch.cat([grad_weights * weights, (grad_final * final)[..., None]], dim=-1)
        behind = behind.flip(-1).cumsum(-1).flip(-1)[..., 1:]
        grad_alpha = grad_weights * transmittance[..., :-1] - behind / (1 - alpha)
        grad_alpha = torch.where(drawn, grad_alpha, 0.0)
        grad_opacities = (grad_alpha * gaussian).sum(dim=(1, 2))
        grad_neg_sigma = grad_alpha * alpha  # dL/d(-sigma) [m v u k]
        per_column = grad_neg_sigma.sum(dim=1)  # [m u k]
        per_row = grad_neg_sigma.sum(dim=2)  # [m v k]
        cross = (grad_neg_sigma * dy).sum(dim=1)  # [m u k]
        dx, dy = dx[:, 0, :, :], dy[:, :, 0, :]  # [m u k], [m v k]
        sum_dx, sum_dy = (per_column * dx).sum(dim=1), (per_row * dy).sum(dim=1)  # [m k]
        a, b, c = conics.unbind(-1)
        grad_means2d = -torch.stack([a * sum_dx + b * sum_dy, c * sum_dy + b * sum_dx], dim=-1)
        grad_conics = -torch.stack(
            [0.5 * (per_column * dx * dx).sum(dim=1), (cross * dx).sum(dim=1),
             0.5 * (per_row * dy * dy).sum(dim=1)],
            dim=-1,
        )
        return None, None, grad_means2d, grad_conics, grad_opacities, grad_features
