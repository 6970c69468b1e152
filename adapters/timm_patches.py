"""What timm's ViT-like models share: the patch grid of their ``PatchEmbed`` and the input
checks of an adapter over visible patches."""

from __future__ import annotations

from timm.layers import PatchEmbed
from torch import Tensor

from splathead.patches import patch_grid

__all__ = ["check_visible_input", "timm_grid_size"]


def timm_grid_size(
    patch_embed: PatchEmbed, dynamic_img_size: bool, height: int, width: int
) -> tuple[int, int]:
    """Patch grid ``(gh, gw)`` that ``patch_embed`` makes of ``height x width`` images.

    Static-size models accept only the size they were built for (timm's ``img_size``);
    ``dynamic_img_size`` models accept any size, padded up to whole patches when built with
    ``dynamic_img_pad``.
    """
    if not dynamic_img_size:
        if (height, width) != tuple(patch_embed.img_size):
            built_height, built_width = patch_embed.img_size
            raise ValueError(
                f"images are {height}x{width} pixels but this timm model was built for "
                f"{built_height}x{built_width} (img_size); build it with img_size="
                f"({height}, {width}) or dynamic_img_size=True"
            )
        return tuple(patch_embed.grid_size)
    if not patch_embed.dynamic_img_pad:
        return patch_grid(height, width, tuple(patch_embed.patch_size))
    return tuple(patch_embed.dynamic_feat_size((height, width)))


def check_visible_input(
    images: Tensor, ids_keep: Tensor | None, in_chans: int, grid_size: tuple[int, int]
) -> None:
    """Raise ``ValueError`` if ``images`` lacks the model's ``in_chans`` channels or ``ids_keep``
    keeps more patches than the grid holds."""
    if images.shape[1] != in_chans:
        raise ValueError(f"images has {images.shape[1]} channels, the model expects {in_chans}")
    num_patches = grid_size[0] * grid_size[1]
    if ids_keep is not None and ids_keep.shape[1] > num_patches:
        raise ValueError(f"ids_keep keeps {ids_keep.shape[1]} patches of only {num_patches}")
