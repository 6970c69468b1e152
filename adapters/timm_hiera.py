"""`TimmHieraEncoder`: a timm `Hiera` as a `MaskedEncoder` whose patches are its mask units."""

from __future__ import annotations

import math

import torch
from timm.models.hiera import Hiera
from torch import nn

from splathead.adapters.timm_patches import check_visible_input
from splathead.masking import gather_tokens
from splathead.typing import Float, Int, Tensor, typecheck

__all__ = ["TimmHieraEncoder"]


class TimmHieraEncoder(nn.Module):
    """MAE's encoder pass for a timm ``Hiera``, masked by mask units as Hiera was pretrained.

    Hiera masks whole mask units (``mask_unit_size`` tokens of ``patch_stride`` pixels: 8 x 8
    tokens of 4 px, so 32 px, in every released model), and after its ``q_pool`` poolings each
    visible unit is one token of the last stage. To a GMAE the mask units are the patches:
    ``patch_size`` is a unit in pixels, the grid is ``mask_spatial_shape`` (7 x 7 at 224 px),
    there are no prefix tokens, and ``embed_dim`` is the last stage's width. The tokens are
    ``hiera.forward_features(images, mask=keep)`` with ``keep`` True at the units ``ids_keep``,
    put in ``ids_keep`` order (Hiera returns them in grid order); with every unit kept,
    ``forward_features(images)``.

    Wrapping holds a reference: ``encoder.hiera`` is the model passed in, weights untouched.

    Args:
        hiera: a 2D timm ``Hiera`` without patch dropout whose last stage has one token per
            mask unit (``prod(mask_unit_size) == prod(q_stride) ** q_pool``).
    """

    def __init__(self, hiera: Hiera) -> None:
        super().__init__()
        if not isinstance(hiera, Hiera):
            raise TypeError(f"hiera must be a timm Hiera, got {type(hiera).__name__}")
        if len(hiera.mask_spatial_shape) != 2:
            raise ValueError(
                f"hiera has a {len(hiera.mask_spatial_shape)}D mask-unit grid "
                f"{hiera.mask_spatial_shape}; only image (2D) Hiera models are supported"
            )
        tokens_per_unit = hiera.mu_size // math.prod(hiera.q_stride) ** hiera.q_pool
        if tokens_per_unit != 1:
            raise ValueError(
                f"hiera's last stage has {tokens_per_unit} tokens per mask unit (mask_unit_size "
                f"{tuple(hiera.mask_unit_size)}, q_stride {tuple(hiera.q_stride)}, q_pool "
                f"{hiera.q_pool}); the adapter needs one token per unit"
            )
        if hiera.patch_drop_rate > 0:
            # Patch dropout would mask further units at random (and timm refuses it with a mask).
            raise ValueError(
                "hiera uses patch dropout (patch_drop_rate > 0); masking replaces it: build the "
                "model with patch_drop_rate=0 or set hiera.patch_drop_rate = 0"
            )
        self.hiera = hiera

    @property
    def embed_dim(self) -> int:
        return self.hiera.num_features

    @property
    def patch_size(self) -> tuple[int, int]:
        """A mask unit in pixels: ``mask_unit_size * patch_stride``."""
        unit, stride = self.hiera.mask_unit_size, self.hiera.patch_stride
        return (unit[0] * stride[0], unit[1] * stride[1])

    @property
    def num_prefix_tokens(self) -> int:
        return 0

    @property
    def in_chans(self) -> int:
        return self.hiera.patch_embed.proj.in_channels

    @property
    def blocks(self) -> nn.ModuleList:
        """Hiera's blocks, in order, over all four stages (widths and token counts change at
        each stage)."""
        return self.hiera.blocks

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """The mask-unit grid ``mask_spatial_shape``; only the size Hiera was built for."""
        stride = self.hiera.patch_stride
        built = tuple(n * s for n, s in zip(self.hiera.tokens_spatial_shape, stride))
        if (height, width) != built:
            raise ValueError(
                f"images are {height}x{width} pixels but this Hiera was built for "
                f"{built[0]}x{built[1]} (img_size); build it with img_size=({height}, {width})"
            )
        return tuple(self.hiera.mask_spatial_shape)

    @typecheck
    def forward(
        self, images: Float[Tensor, "b c h w"], ids_keep: Int[Tensor, "b k"] | None = None
    ) -> Float[Tensor, "b t d"]:
        """Encode the visible mask units.

        Args:
            images: ``[b c h w]`` images, normalised as the model expects.
            ids_keep: ``[b k]`` visible mask units, distinct row-major indices into the grid
                ``mask_spatial_shape`` (``PatchMask.ids_keep``); ``None`` keeps every unit.

        Returns:
            ``[b k d]``: one last-stage token per visible unit, in ``ids_keep`` order.
        """
        grid_height, grid_width = self.grid_size(*images.shape[2:])
        check_visible_input(images, ids_keep, self.in_chans, (grid_height, grid_width))
        if ids_keep is None:
            return self.hiera.forward_features(images)
        keep = torch.zeros(
            ids_keep.shape[0], grid_height * grid_width, dtype=torch.bool, device=images.device
        )
        keep.scatter_(1, ids_keep, True)
        tokens = self.hiera.forward_features(images, mask=keep)  # units in grid order
        rank_in_grid_order = torch.argsort(torch.argsort(ids_keep, dim=1), dim=1)
        return gather_tokens(tokens, rank_in_grid_order)
