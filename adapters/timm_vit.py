"""`TimmViTEncoder`: a timm `VisionTransformer` as a `MaskedEncoder` over visible patches."""

from __future__ import annotations

import torch
from timm.models import checkpoint_seq
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from splathead.adapters.timm_patches import check_visible_input, timm_grid_size
from splathead.masking import gather_tokens
from splathead.typing import Float, Int, Tensor, typecheck

__all__ = ["TimmViTEncoder"]


def _embed_with_positions(vit: VisionTransformer, images: Tensor) -> Tensor:
    """``[b prefix+l d]``: prefix tokens (cls, registers) and patch tokens with positions added.

    The one place that calls a private timm helper. ``VisionTransformer._pos_embed`` handles
    class/register tokens, ``no_embed_class`` and the position resampling of
    ``dynamic_img_size`` models exactly as ``forward_features`` does. Checked against timm 1.0.12
    (the declared floor, ``make test-floor``) and 1.0.31.
    """
    return vit._pos_embed(vit.patch_embed(images))


class TimmViTEncoder(nn.Module):
    """MAE's encoder pass for a timm ``VisionTransformer``: only visible patches enter the blocks.

    ``patch_embed`` -> positions -> keep the prefix tokens and the patches ``ids_keep`` ->
    ``norm_pre`` -> ``blocks`` -> ``norm``. Positions are added before patches are dropped, as
    in MAE, so each visible token keeps its place in the grid. With every patch kept the output
    equals ``vit.forward_features(images)``.

    Wrapping holds a reference: the ViT's weights are neither copied nor re-initialised, and
    ``encoder.vit`` is the model passed in. Works for MAE, DeiT (``no_embed_class``), DINO and
    DINOv2 (registers, layer scale) ViTs and for ``dynamic_img_size`` models at any size.

    Args:
        vit: a timm ``VisionTransformer`` without patch dropout (masking takes its place).
    """

    def __init__(self, vit: VisionTransformer) -> None:
        super().__init__()
        if not isinstance(vit, VisionTransformer):
            raise TypeError(
                f"vit must be a timm VisionTransformer, got {type(vit).__name__}"
            )
        if not isinstance(vit.patch_drop, nn.Identity):
            # Patch dropout would drop further tokens at random and break ids_keep's indexing.
            raise ValueError(
                "vit uses patch dropout (patch_drop_rate > 0); masking replaces it: build the "
                "model with patch_drop_rate=0 or set vit.patch_drop = torch.nn.Identity()"
            )
        self.vit = vit

    @property
    def embed_dim(self) -> int:
        return self.vit.embed_dim

    @property
    def patch_size(self) -> tuple[int, int]:
        return tuple(self.vit.patch_embed.patch_size)

    @property
    def num_prefix_tokens(self) -> int:
        """Class and register tokens in front of the patches; never masked."""
        return self.vit.num_prefix_tokens

    @property
    def in_chans(self) -> int:
        return self.vit.patch_embed.proj.in_channels

    @property
    def blocks(self) -> nn.Sequential:
        """The ViT's transformer blocks, in order."""
        return self.vit.blocks

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid ``(gh, gw)`` for ``height x width`` images (``timm_grid_size``)."""
        return timm_grid_size(self.vit.patch_embed, self.vit.dynamic_img_size, height, width)

    @typecheck
    def forward(
        self, images: Float[Tensor, "b c h w"], ids_keep: Int[Tensor, "b k"] | None = None
    ) -> Float[Tensor, "b t d"]:
        """Encode the visible patches.

        Args:
            images: ``[b c h w]`` images, normalised as the ViT expects.
            ids_keep: ``[b k]`` visible patches, row-major grid indices in ``[0, gh*gw)``
                (``PatchMask.ids_keep``); ``None`` keeps every patch in grid order.

        Returns:
            ``[b prefix+k d]``: the prefix tokens, then the visible patches in ``ids_keep`` order.
        """
        check_visible_input(images, ids_keep, self.in_chans, self.grid_size(*images.shape[2:]))
        tokens = _embed_with_positions(self.vit, images)
        if ids_keep is not None:
            prefix = self.num_prefix_tokens
            tokens = torch.cat(
                [tokens[:, :prefix], gather_tokens(tokens[:, prefix:], ids_keep)], dim=1
            )
        tokens = self.vit.norm_pre(tokens)
        if self.vit.grad_checkpointing:
            tokens = checkpoint_seq(self.vit.blocks, tokens)
        else:
            tokens = self.vit.blocks(tokens)
        return self.vit.norm(tokens)
