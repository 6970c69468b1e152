"""Reconstruction quality: PSNR over the hidden patches, PSNR and SSIM over the whole image.

One implementation for the demo, the recipes and user code. Images are RGB in [0, 1] (renders
and de-normalised inputs, not ImageNet-normalised tensors); every function returns one value
per image, so callers can average over a batch, a validation set or several ranks.

PSNR and SSIM are torchmetrics' functional metrics (batched, on the images' device); SSIM is
Wang et al.'s: Gaussian window 11 px, sigma 1.5, K1 0.01, K2 0.03, the values papers report.
Needs the ``demo`` or ``eval`` extra (torchmetrics); ``import splathead`` does not load it.
"""

from __future__ import annotations

import torch
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

from splathead.checks import host_scalars
from splathead.patches import patch_grid, patchify
from splathead.typing import Bool, Float, Tensor, typecheck

__all__ = ["masked_psnr", "psnr", "ssim"]


def _check_unit_range(**images: Tensor) -> None:
    """Raise naming the argument whose values leave [0, 1] (one device-to-host sync)."""
    outside = host_scalars({name: ~((image >= 0) & (image <= 1)).all() for name, image in images.items()})
    for name, image in images.items():
        if outside[name]:
            raise ValueError(
                f"{name} must be RGB in [0, 1] (de-normalise ImageNet-normalised images first), "
                f"got values in [{image.min().item():.4g}, {image.max().item():.4g}] (or NaN)"
            )


@typecheck
def psnr(image: Float[Tensor, "b c h w"], target: Float[Tensor, "b c h w"]) -> Float[Tensor, "b"]:
    """Peak signal-to-noise ratio in dB of each image, ``10 log10(1 / MSE)``; inf if identical."""
    _check_unit_range(image=image, target=target)
    return peak_signal_noise_ratio(
        image.float(), target.float(), data_range=1.0, dim=(1, 2, 3), reduction="none"
    )


@typecheck
def masked_psnr(
    image: Float[Tensor, "b c h w"],
    target: Float[Tensor, "b c h w"],
    mask: Bool[Tensor, "b l"],
    patch_size: tuple[int, int],
) -> Float[Tensor, "b"]:
    """PSNR in dB of each image over its hidden patches only: the region the GMAE loss scores.

    Args:
        image: ``[b c h w]`` reconstruction in [0, 1].
        target: ``[b c h w]`` input in [0, 1].
        mask: ``[b l]`` True where a patch was hidden (``PatchMask.mask``), row-major; every
            image needs at least one hidden patch.
        patch_size: ``(ph, pw)`` in pixels.
    """
    grid_height, grid_width = patch_grid(*image.shape[-2:], patch_size, name="image")
    if mask.shape != (image.shape[0], grid_height * grid_width):
        raise ValueError(
            f"mask must be [{image.shape[0]} {grid_height * grid_width}] (images x patches of "
            f"{patch_size[0]}x{patch_size[1]} px), got {list(mask.shape)}"
        )
    hidden = mask.sum(dim=1)
    if not bool((hidden > 0).all()):
        raise ValueError("mask hides no patch of some image, so its masked PSNR is undefined")
    _check_unit_range(image=image, target=target)
    image_patches = patchify(image.float(), patch_size)
    target_patches = patchify(target.float(), patch_size)
    # Images may hide different numbers of patches, so each is scored on its own selection.
    return torch.stack([
        peak_signal_noise_ratio(image_patches[i][mask[i]], target_patches[i][mask[i]],
                                data_range=1.0)
        for i in range(image.shape[0])
    ])


@typecheck
def ssim(image: Float[Tensor, "b c h w"], target: Float[Tensor, "b c h w"]) -> Float[Tensor, "b"]:
    """Structural similarity of each image (1 when identical), averaged over channels and
    pixels. Images need at least 11 x 11 pixels (the window).

    Computed in float64: in float32 the local variances lose about 2e-4 of SSIM to rounding.
    """
    if min(image.shape[-2:]) < 11:
        raise ValueError(f"SSIM's window is 11 x 11 pixels; image is {list(image.shape[-2:])}")
    _check_unit_range(image=image, target=target)
    return structural_similarity_index_measure(
        image.double(), target.double(), data_range=1.0, reduction="none"
    ).to(image.dtype)
