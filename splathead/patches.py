"""Patch grids: image size to patch grid, and images to row-major patch vectors and back.

Serves the decoder (its grid), every encoder adapter (``grid_size``), the losses and the metrics.
"""

from __future__ import annotations

from einops import rearrange
from timm.layers import to_2tuple

from splathead.typing import Float, Tensor, typecheck

__all__ = ["as_pair", "patch_grid", "patchify", "unpatchify"]


def as_pair(name: str, value: int | tuple[int, int]) -> tuple[int, int]:
    """``(h, w)`` from one positive int or a pair of them (timm's ``to_2tuple``); raises naming
    ``name`` otherwise."""
    pair = tuple(to_2tuple(value))
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


@typecheck
def patchify(
    images: Float[Tensor, "b c h w"], patch_size: int | tuple[int, int]
) -> Float[Tensor, "b l n"]:
    """Cut ``images [b c h w]`` into ``l = (h/ph)(w/pw)`` row-major patches ``[b l (ph pw c)]``.

    Each patch vector runs over (row, column, channel) within the patch, as MAE's ``patchify``.
    """
    patch_height, patch_width = as_pair("patch_size", patch_size)
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
    patch_height, patch_width = as_pair("patch_size", patch_size)
    grid_height, grid_width = as_pair("grid_size", grid_size)
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
