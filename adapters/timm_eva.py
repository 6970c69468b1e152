"""`TimmEvaEncoder`: a timm `Eva` (EVA02, DINOv3, RoPE ViTs) as a `MaskedEncoder` over visible
patches."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import timm
import torch
from timm.models.eva import Eva
from torch import nn

from splathead.adapters.timm_patches import check_visible_input, timm_grid_size
from splathead.masking import gather_tokens
from splathead.typing import Float, Int, Tensor, typecheck

__all__ = ["TimmEvaEncoder"]

# Before timm 1.0.18, Eva's patch-drop path gathered the kept patches' rotary embeddings without
# a head axis, so they met the wrong tokens for batches of more than one image.
ROPE_KEEP_FIXED = (1, 0, 18)


def _timm_version() -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", timm.__version__)[:3])


class _KeepPatches(nn.Module):
    """timm's patch-drop hook keeping the given patches instead of random ones.

    ``Eva._pos_embed`` calls ``patch_drop(tokens) -> (tokens, keep_indices)`` after the absolute
    positions are added, then gathers the rotary embeddings of ``keep_indices`` itself
    (``apply_keep_indices_nlc``, per block for mixed RoPE), as in timm's own patch dropout.
    """

    def __init__(self, ids_keep: Tensor, num_prefix_tokens: int) -> None:
        super().__init__()
        self.ids_keep = ids_keep
        self.num_prefix_tokens = num_prefix_tokens

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        prefix = self.num_prefix_tokens
        patches = gather_tokens(tokens[:, prefix:], self.ids_keep)
        return torch.cat([tokens[:, :prefix], patches], dim=1), self.ids_keep


@contextmanager
def _patch_drop(eva: Eva, hook: nn.Module) -> Iterator[None]:
    """``eva.patch_drop = hook`` for the duration (timm builds ``patch_drop = None`` without
    patch dropout). Checked against timm 1.0.12 and 1.0.31, whose ``Eva._pos_embed`` calls the
    hook as described in :class:`_KeepPatches`."""
    eva.patch_drop = hook
    try:
        yield
    finally:
        eva.patch_drop = None


class TimmEvaEncoder(nn.Module):
    """MAE's encoder pass for a timm ``Eva``: only visible patches enter the blocks.

    ``Eva`` is timm's class for EVA02, DINOv3 (``vit_*_dinov3``, with or without ``qkvb``) and
    the RoPE ViTs (``vit_*_rope_*``, axial or mixed, with or without registers and absolute
    positions). Their rotary position embeddings belong to each patch, so the visible patches
    go through timm's own patch-drop path: ``forward_features`` with the patches ``ids_keep``
    kept, where timm gathers the rotary embeddings of exactly those patches. With every patch
    kept the output equals ``eva.forward_features(images)``.

    Wrapping holds a reference: the model's weights are neither copied nor re-initialised, and
    ``encoder.eva`` is the model passed in. ``dynamic_img_size`` models take any image size.

    Args:
        eva: a timm ``Eva`` without patch dropout (masking takes its place).
    """

    def __init__(self, eva: Eva) -> None:
        super().__init__()
        if not isinstance(eva, Eva):
            raise TypeError(f"eva must be a timm Eva, got {type(eva).__name__}")
        if eva.patch_drop is not None:
            # Patch dropout would drop further tokens at random and break ids_keep's indexing.
            raise ValueError(
                "eva uses patch dropout (patch_drop_rate > 0); masking replaces it: build the "
                "model with patch_drop_rate=0 or set eva.patch_drop = None"
            )
        if eva.rope is not None and _timm_version() < ROPE_KEEP_FIXED:
            raise RuntimeError(
                f"{type(eva).__name__} with rotary embeddings needs timm >= 1.0.18 to encode "
                f"visible patches (timm {timm.__version__} gathers their rotary embeddings "
                "wrongly for batches of more than one image): pip install 'timm>=1.0.18'"
            )
        self.eva = eva

    @property
    def embed_dim(self) -> int:
        return self.eva.embed_dim

    @property
    def patch_size(self) -> tuple[int, int]:
        return tuple(self.eva.patch_embed.patch_size)

    @property
    def num_prefix_tokens(self) -> int:
        """Class and register tokens in front of the patches; never masked."""
        return self.eva.num_prefix_tokens

    @property
    def in_chans(self) -> int:
        return self.eva.patch_embed.proj.in_channels

    @property
    def blocks(self) -> nn.ModuleList:
        """The model's transformer blocks, in order."""
        return self.eva.blocks

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid ``(gh, gw)`` for ``height x width`` images (``timm_grid_size``)."""
        return timm_grid_size(self.eva.patch_embed, self.eva.dynamic_img_size, height, width)

    @typecheck
    def forward(
        self, images: Float[Tensor, "b c h w"], ids_keep: Int[Tensor, "b k"] | None = None
    ) -> Float[Tensor, "b t d"]:
        """Encode the visible patches.

        Args:
            images: ``[b c h w]`` images, normalised as the model expects.
            ids_keep: ``[b k]`` visible patches, row-major grid indices in ``[0, gh*gw)``
                (``PatchMask.ids_keep``); ``None`` keeps every patch in grid order.

        Returns:
            ``[b prefix+k d]``: the prefix tokens, then the visible patches in ``ids_keep`` order.
        """
        check_visible_input(images, ids_keep, self.in_chans, self.grid_size(*images.shape[2:]))
        if ids_keep is None:
            return self.eva.forward_features(images)
        with _patch_drop(self.eva, _KeepPatches(ids_keep, self.num_prefix_tokens)):
            return self.eva.forward_features(images)
