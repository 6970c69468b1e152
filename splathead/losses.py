"""Reconstruction losses: the GMAE paper's MSE over masked patches, and patch (un)folding.

The paper's loss is the mean squared error between the rendered image and the input in [0, 1]
RGB, averaged over the masked patches only (section 5 of the design notes): no per-patch
normalisation of the target.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from splathead.typing import Bool, Float, Tensor, typecheck

__all__ = ["image_mse", "masked_patch_mse", "patch_grid", "patchify", "unpatchify"]


def _pair(name: str, value: int | tuple[int, int]) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
        raise ValueError(f"{name} must be a positive int or a pair of them, got {value!r}")
    return pair


def patch_grid(
    height: int, width: int, patch_size: tuple[int, int], *, name: str = "images"
) -> tuple[int, int]:
    """Patch grid ``(gh, gw)`` of a ``height x width`` image; raises naming ``name`` unless the
    patch divides both sides."""
    patch_height, patch_width = patch_size
    if height % patch_height or width % patch_width:
        raise ValueError(
            f"{name} is {height}x{width} pixels (h x w), not divisible by the "
            f"{patch_height}x{patch_width} patch size"
        )
    return height // patch_height, width // patch_width


def _check_target(target: Tensor, mask: Tensor | None = None) -> None:
    """One device-to-host sync: target in [0, 1], and (if given) some patch hidden."""
    flags = [~((target >= 0) & (target <= 1)).all()]
    if mask is not None:
        flags.append(~mask.any())
    flags = torch.stack(flags).tolist()
    if flags[0]:
        raise ValueError(
            f"target must lie in [0, 1] (RGB, not ImageNet-normalised), got values in "
            f"[{target.min().item():.4g}, {target.max().item():.4g}] (or NaN)"
        )
    if mask is not None and flags[1]:
        raise ValueError("mask hides no patch, so the masked-patch loss is undefined (0 / 0)")


@typecheck
def patchify(
    images: Float[Tensor, "b c h w"], patch_size: int | tuple[int, int]
) -> Float[Tensor, "b l n"]:
    """Cut ``images [b c h w]`` into ``l = (h/ph)(w/pw)`` row-major patches ``[b l (ph pw c)]``.

    Each patch vector runs over (row, column, channel) within the patch, as MAE's ``patchify``.
    """
    patch_height, patch_width = _pair("patch_size", patch_size)
    patch_grid(*images.shape[-2:], (patch_height, patch_width))
    return rearrange(
        images, "b c (gh ph) (gw pw) -> b (gh gw) (ph pw c)", ph=patch_height, pw=patch_width
    )


@typecheck
def unpatchify(
    patches: Float[Tensor, "b l n"],
    patch_size: int | tuple[int, int],
    grid_size: int | tuple[int, int],
    channels: int = 3,
) -> Float[Tensor, "b c h w"]:
    """Inverse of :func:`patchify`: ``[b (gh gw) (ph pw c)] -> [b c (gh ph) (gw pw)]``."""
    patch_height, patch_width = _pair("patch_size", patch_size)
    grid_height, grid_width = _pair("grid_size", grid_size)
    num_patches, patch_dim = patches.shape[1:]
    if num_patches != grid_height * grid_width:
        raise ValueError(
            f"patches has {num_patches} patches, expected {grid_height}x{grid_width} (grid_size)"
        )
    if patch_dim != patch_height * patch_width * channels:
        raise ValueError(
            f"patches has patch vectors of length {patch_dim}, expected {patch_height}x"
            f"{patch_width}x{channels} = {patch_height * patch_width * channels} "
            "(patch_size x channels)"
        )
    return rearrange(
        patches,
        "b (gh gw) (ph pw c) -> b c (gh ph) (gw pw)",
        gh=grid_height,
        ph=patch_height,
        pw=patch_width,
    )


@typecheck
def masked_patch_mse(
    image: Float[Tensor, "b c h w"],
    target: Float[Tensor, "b c h w"],
    mask: Bool[Tensor, "b l"],
    patch_size: int | tuple[int, int],
    *,
    check_inputs: bool = True,
) -> Float[Tensor, ""]:
    """The GMAE loss: per-patch mean squared error, averaged over hidden patches only.

    Args:
        image: ``[b c h w]`` rendered reconstruction.
        target: ``[b c h w]`` input image in [0, 1].
        mask: ``[b l]`` True where a patch was hidden from the encoder (``PatchMask.mask``),
            row-major over the patch grid.
        patch_size: ``ph`` or ``(ph, pw)`` in pixels.
        check_inputs: raise ``ValueError`` if ``target`` leaves [0, 1] or ``mask`` hides no
            patch (one device-to-host sync); when False such input gives a meaningless loss or NaN.
    """
    patch_height, patch_width = _pair("patch_size", patch_size)
    grid_height, grid_width = patch_grid(*image.shape[-2:], (patch_height, patch_width), name="image")
    if mask.shape[1] != grid_height * grid_width:
        raise ValueError(
            f"mask covers {mask.shape[1]} patches but image has {grid_height}x{grid_width} "
            f"patches of {patch_height}x{patch_width} pixels"
        )
    if check_inputs:
        _check_target(target, mask)
    per_patch = patchify((image - target).square(), (patch_height, patch_width)).mean(dim=-1)
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
