"""Hugging Face DINOv2 (with or without registers) as a `MaskedEncoder` (needs the ``hf`` extra)."""

from __future__ import annotations

import torch
from torch import nn

from splathead.masking import gather_tokens
from splathead.patches import patch_grid
from splathead.typing import Float, Int, Tensor, typecheck


class HFDinov2Encoder(nn.Module):
    """Runs a Hugging Face DINOv2 encoder (with or without registers) on the visible patches only.

    Hidden patches are dropped, as MAE does, rather than replaced by DINOv2's mask token (its
    ``bool_masked_pos``). The model's own embeddings (cls, registers, positions resampled for the
    image size by the model's ``interpolate_pos_encoding``), blocks and final norm are used as they
    are; nothing is re-initialised. With ``ids_keep=None`` the output equals the model's
    ``last_hidden_state``.

    Args:
        model: a ``Dinov2Model`` or ``Dinov2WithRegistersModel``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        from transformers import Dinov2Model, Dinov2WithRegistersModel

        if not isinstance(model, (Dinov2Model, Dinov2WithRegistersModel)):
            raise TypeError(
                "HFDinov2Encoder expects a Dinov2Model or Dinov2WithRegistersModel, "
                f"got {type(model).__name__}"
            )
        self.model = model
        self.embed_dim: int = model.config.hidden_size
        self.patch_size: tuple[int, int] = tuple(model.embeddings.patch_embeddings.patch_size)
        # cls, then the registers (never masked)
        self.num_prefix_tokens: int = 1 + getattr(model.config, "num_register_tokens", 0)

    @property
    def blocks(self) -> nn.ModuleList:
        """The transformer layers, in order."""
        return self.model.encoder.layer

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid ``(gh, gw)`` for ``height x width`` images (each divisible by the patch)."""
        return patch_grid(height, width, self.patch_size)

    @typecheck
    def forward(
        self, images: Float[Tensor, "b c h w"], ids_keep: Int[Tensor, "b k"] | None = None
    ) -> Float[Tensor, "b t d"]:
        """``[b prefix+k d]``: cls, registers, then the kept patches in ``ids_keep`` order."""
        self.grid_size(*images.shape[-2:])
        hidden = self.model.embeddings(images)
        if ids_keep is not None:
            prefix = hidden[:, : self.num_prefix_tokens]
            patches = gather_tokens(hidden[:, self.num_prefix_tokens :], ids_keep)
            hidden = torch.cat([prefix, patches], dim=1)
        hidden = self.model.encoder(hidden).last_hidden_state
        return self.model.layernorm(hidden)
