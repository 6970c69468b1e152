"""The encoder protocols: what `GMAE` needs of an image encoder (`MaskedEncoder`) and `VideoGMAE`
of a video encoder (`MaskedVideoEncoder`); `splathead.adapters` implements them for timm and
Hugging Face backbones."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import nn

from splathead.typing import Float, Int, Tensor


@runtime_checkable
class MaskedEncoder(Protocol):
    """A ViT encoder that runs on the visible patches only, as MAE's encoder does.

    Attributes:
        embed_dim: width ``d`` of the output tokens.
        patch_size: ``(ph, pw)`` in pixels.
        num_prefix_tokens: tokens before the patches (cls, registers); never masked.
        blocks: the transformer blocks, in order (``len``, indexing, iteration), e.g. for
            :class:`splathead.probes.BlockFeatures` or layer-wise learning rates.
    """

    embed_dim: int
    patch_size: tuple[int, int]
    num_prefix_tokens: int
    blocks: nn.Sequential | nn.ModuleList

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid ``(gh, gw)`` for an image of ``height x width`` pixels."""
        ...

    def __call__(
        self, images: Float[Tensor, "b c h w"], ids_keep: Int[Tensor, "b k"] | None = None
    ) -> Float[Tensor, "b t d"]:
        """Tokens ``[b prefix+k d]``, prefix first; ``ids_keep`` indexes patches in row-major
        grid order (``None`` keeps every patch)."""
        ...


@runtime_checkable
class MaskedVideoEncoder(Protocol):
    """A video ViT on tubelets (VideoMAE, MAE-ST) that runs on the visible tubelets only.

    A tubelet covers ``tubelet_size`` consecutive frames and one ``(ph, pw)`` patch; tubelets are
    indexed time slowest, then rows, then columns (VideoMAE's and MAE-ST's order).

    Attributes:
        embed_dim: width ``d`` of the output tokens.
        patch_size: ``(ph, pw)`` in pixels.
        tubelet_size: frames per tubelet.
        num_prefix_tokens: tokens before the tubelets (0 for VideoMAE); never masked.
        blocks: the transformer blocks, in order, as :class:`MaskedEncoder`'s.
    """

    embed_dim: int
    patch_size: tuple[int, int]
    tubelet_size: int
    num_prefix_tokens: int
    blocks: nn.Sequential | nn.ModuleList

    def grid_size(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """Tubelet grid ``(gt, gh, gw)`` for ``num_frames`` frames of ``height x width`` pixels."""
        ...

    def __call__(
        self, videos: Float[Tensor, "b t c h w"], ids_keep: Int[Tensor, "b k"] | None = None
    ) -> Float[Tensor, "b n d"]:
        """Tokens ``[b prefix+k d]``, prefix first; ``ids_keep`` indexes tubelets in grid order
        (``None`` keeps every tubelet)."""
        ...
