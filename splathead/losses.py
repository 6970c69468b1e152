"""Reconstruction losses: the GMAE paper's MSE over masked patches, and over the whole image.

The paper's loss is the mean squared error between the rendered image and the input in [0, 1]
RGB, averaged over the masked patches only (section 5 of the design notes): no per-patch
normalisation of the target. MAE's normalised-pixel target (``norm_pix_loss``) is an option.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from splathead.checks import host_scalars
from splathead.patches import as_pair, patch_grid, patchify
from splathead.typing import Bool, Float, Real, Tensor, typecheck

__all__ = ["image_mse", "masked_patch_mse"]


def _check_target(target: Tensor, mask: Tensor | None = None) -> None:
    """One device-to-host sync: target in [0, 1], and (if given) a mask of 0s and 1s (or bool)
    hiding some patch."""
    checks = {"outside": ~((target >= 0) & (target <= 1)).all()}
    if mask is not None:
        checks["nothing hidden"] = ~(mask != 0).any()
        if mask.dtype != torch.bool:
            checks["not 0/1"] = ~((mask == 0) | (mask == 1)).all()
    failed = host_scalars(checks)
    if failed["outside"]:
        raise ValueError(
            f"target must lie in [0, 1] (RGB, not ImageNet-normalised), got values in "
            f"[{target.min().item():.4g}, {target.max().item():.4g}] (or NaN)"
        )
    if failed.get("not 0/1"):
        raise ValueError(
            f"mask must be bool or hold only 0 (visible) and 1 (hidden), as MAE's float mask "
            f"does; got {mask.dtype} values in [{mask.min().item():.4g}, "
            f"{mask.max().item():.4g}] (or NaN)"
        )
    if failed.get("nothing hidden"):
        raise ValueError("mask hides no patch, so the masked-patch loss is undefined (0 / 0)")


@typecheck
def masked_patch_mse(
    image: Float[Tensor, "b c h w"],
    target: Float[Tensor, "b c h w"],
    mask: Bool[Tensor, "b l"] | Real[Tensor, "b l"],
    patch_size: int | tuple[int, int],
    *,
    norm_pix: bool = False,
    check_inputs: bool = True,
) -> Float[Tensor, ""]:
    """The GMAE loss: per-patch mean squared error, averaged over hidden patches only.

    Args:
        image: ``[b c h w]`` rendered reconstruction.
        target: ``[b c h w]`` input image in [0, 1].
        mask: ``[b l]`` True where a patch was hidden from the encoder (``PatchMask.mask``),
            row-major over the patch grid; or any real dtype holding 1 where hidden and 0
            where visible (MAE's ``mask`` as its ``random_masking`` returns it).
        patch_size: ``ph`` or ``(ph, pw)`` in pixels.
        norm_pix: MAE's ``norm_pix_loss``: normalise each patch of ``image`` and ``target`` by
            the target patch's mean and unbiased variance over its pixels and channels,
            ``(x - mean) / sqrt(var + 1e-6)``, before the squared error (the GMAE paper trained
            without it).
        check_inputs: raise ``ValueError`` if ``target`` leaves [0, 1] or ``mask`` hides no
            patch, or a real ``mask`` holds other values than 0 and 1 (one device-to-host sync);
            when False such input gives a meaningless loss or NaN.
    """
    patch_height, patch_width = as_pair("patch_size", patch_size)
    grid_height, grid_width = patch_grid(*image.shape[-2:], (patch_height, patch_width), name="image")
    if mask.shape[1] != grid_height * grid_width:
        raise ValueError(
            f"mask covers {mask.shape[1]} patches but image has {grid_height}x{grid_width} "
            f"patches of {patch_height}x{patch_width} pixels"
        )
    if check_inputs:
        _check_target(target, mask)
    patch_shape = (patch_height, patch_width)
    image_patches, target_patches = patchify(image, patch_shape), patchify(target, patch_shape)
    if norm_pix:
        mean = target_patches.mean(dim=-1, keepdim=True)
        std = (target_patches.var(dim=-1, keepdim=True) + 1e-6).sqrt()
        image_patches, target_patches = (image_patches - mean) / std, (target_patches - mean) / std
    per_patch = (image_patches - target_patches).square().mean(dim=-1)
    weights = mask.to(per_patch.dtype)
    return (per_patch * weights).sum() / weights.sum()


@typecheck
def image_mse(
    image: Float[Tensor, "b c h w"], target: Float[Tensor, "b c h w"], *, check_inputs: bool = True
) -> Float[Tensor, ""]:
    """Mean squared error over every pixel (the paper's "all patches" ablation).

    ``target`` must lie in [0, 1]; ``check_inputs`` checks it as in :func:`masked_patch_mse`.
    """
    if check_inputs:
        _check_target(target)
    return F.mse_loss(image, target)
