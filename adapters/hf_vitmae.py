"""Hugging Face ``ViTMAEModel`` as a `MaskedEncoder` (needs the ``hf`` extra: transformers)."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from splathead.masking import gather_tokens
from splathead.patches import patch_grid
from splathead.typing import Float, Int, Tensor, typecheck


def _blocks(vit: nn.Module) -> nn.ModuleList:
    """The transformer blocks: transformers 5 keeps them in ``layers``, 4.x in ``encoder.layer``."""
    return vit.layers if hasattr(vit, "layers") else vit.encoder.layer


class HFViTMAEEncoder(nn.Module):
    """Runs a Hugging Face ViTMAE encoder on the visible patches only.

    The model's own patch embedding, fixed positions, cls token, blocks and final norm are used as
    they are (nothing is re-initialised), so ``encoder(images, mask.ids_keep)`` equals
    ``ViTMAEModel(images, noise=noise).last_hidden_state`` when ``mask`` comes from the same noise.

    Args:
        model: a ``ViTMAEModel``, or a ``ViTMAEForPreTraining`` whose encoder (``.vit``) is used;
            its pixel decoder is not part of this module.
        interpolate_pos_encoding: resample the positions for images of another size than
            ``config.image_size``, as HF's ``interpolate_pos_encoding=True`` does; without it such
            images are rejected.
    """

    num_prefix_tokens: int = 1

    def __init__(self, model: nn.Module, *, interpolate_pos_encoding: bool = False) -> None:
        super().__init__()
        from transformers import ViTMAEForPreTraining, ViTMAEModel

        if isinstance(model, ViTMAEForPreTraining):
            model = model.vit
        if not isinstance(model, ViTMAEModel):
            raise TypeError(
                "HFViTMAEEncoder expects a ViTMAEModel or ViTMAEForPreTraining, "
                f"got {type(model).__name__}"
            )
        self.model = model
        self.interpolate_pos_encoding = interpolate_pos_encoding
        self.embed_dim: int = model.config.hidden_size
        self.patch_size: tuple[int, int] = tuple(model.embeddings.patch_embeddings.patch_size)

    @property
    def blocks(self) -> nn.ModuleList:
        """The transformer layers, in order."""
        return _blocks(self.model)

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid ``(gh, gw)`` for ``height x width`` images.

        Without ``interpolate_pos_encoding`` only the model's ``config.image_size`` is accepted;
        with it any size divisible by the patch size.
        """
        # the patch embedding holds the size in transformers 4.x and 5 alike
        built_for = tuple(self.model.embeddings.patch_embeddings.image_size)
        if not self.interpolate_pos_encoding and (height, width) != built_for:
            raise ValueError(
                f"images are {height}x{width} but the model was built for {built_for[0]}x"
                f"{built_for[1]}; pass interpolate_pos_encoding=True to resample the positions"
            )
        return patch_grid(height, width, self.patch_size)

    @typecheck
    def forward(
        self, images: Float[Tensor, "b c h w"], ids_keep: Int[Tensor, "b k"] | None = None
    ) -> Float[Tensor, "b t d"]:
        """``[b 1+k d]``: cls then the kept patches in ``ids_keep`` order (all when ``None``)."""
        height, width = images.shape[-2:]
        self.grid_size(height, width)
        embeddings = self.model.embeddings
        # The projection rather than the module's forward: 4.x's forward rejects other image sizes
        # unless passed interpolate_pos_encoding, a keyword that 5.x no longer takes.
        patches = rearrange(
            embeddings.patch_embeddings.projection(images), "b d gh gw -> b (gh gw) d"
        )
        if self.interpolate_pos_encoding:
            # called with the patch tokens only, exactly as ViTMAEEmbeddings.forward calls it
            positions = embeddings.interpolate_pos_encoding(patches, height, width)
        else:
            positions = embeddings.position_embeddings
        patches = patches + positions[:, 1:]
        if ids_keep is not None:
            patches = gather_tokens(patches, ids_keep)
        cls_token = (embeddings.cls_token + positions[:, :1]).expand(patches.shape[0], -1, -1)
        hidden = torch.cat([cls_token, patches], dim=1)
        for block in self.blocks:
            hidden = block(hidden)
            # transformers 4.x blocks return a tuple, 5.x a tensor
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        return self.model.layernorm(hidden)
