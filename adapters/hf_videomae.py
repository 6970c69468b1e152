"""Hugging Face ``VideoMAEModel`` as a `MaskedVideoEncoder` (needs the ``hf`` extra: transformers)."""

from __future__ import annotations

from torch import nn

from splathead.masking import gather_tokens
from splathead.patches import patch_grid
from splathead.typing import Float, Int, Tensor, typecheck


class HFVideoMAEEncoder(nn.Module):
    """Runs a Hugging Face VideoMAE encoder on the visible tubelets only.

    The model's own tubelet embedding (a Conv3d over ``tubelet_size`` frames and one patch),
    fixed sin-cos positions, blocks and final norm (absent when ``config.use_mean_pooling``) are
    used as they are; nothing is re-initialised. VideoMAE has no cls token. For a boolean mask
    ``hidden [b l]``, ``encoder(videos, PatchMask.from_bool_mask(hidden).ids_keep)`` equals
    ``VideoMAEModel(videos, bool_masked_pos=hidden).last_hidden_state`` (both keep the visible
    tubelets in grid order); other ``ids_keep`` orders permute the tokens alike.

    Args:
        model: a ``VideoMAEModel``, or a ``VideoMAEForPreTraining`` whose encoder
            (``.videomae``) is used; its pixel decoder is not part of this module.

    Videos must have ``config.num_frames`` frames of ``config.image_size`` pixels: VideoMAE's
    position table is built for that grid only.
    """

    num_prefix_tokens: int = 0

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        from transformers import VideoMAEForPreTraining, VideoMAEModel

        if isinstance(model, VideoMAEForPreTraining):
            model = model.videomae
        if not isinstance(model, VideoMAEModel):
            raise TypeError(
                "HFVideoMAEEncoder expects a VideoMAEModel or VideoMAEForPreTraining, "
                f"got {type(model).__name__}"
            )
        self.model = model
        tubelets = model.embeddings.patch_embeddings
        self.embed_dim: int = model.config.hidden_size
        self.patch_size: tuple[int, int] = tuple(tubelets.patch_size)
        self.tubelet_size: int = tubelets.tubelet_size
        self.num_frames: int = model.config.num_frames

    @property
    def blocks(self) -> nn.ModuleList:
        """The transformer layers, in order."""
        return self.model.encoder.layer

    def grid_size(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """Tubelet grid ``(gt, gh, gw)``; only the model's own frame count and image size."""
        built_for = tuple(self.model.embeddings.patch_embeddings.image_size)
        if num_frames != self.num_frames:
            raise ValueError(
                f"videos have {num_frames} frames but the VideoMAE was built for "
                f"config.num_frames={self.num_frames}"
            )
        if (height, width) != built_for:
            raise ValueError(
                f"videos are {height}x{width} but the VideoMAE was built for "
                f"{built_for[0]}x{built_for[1]} (config.image_size)"
            )
        return (num_frames // self.tubelet_size, *patch_grid(height, width, self.patch_size))

    @typecheck
    def forward(
        self, videos: Float[Tensor, "b t c h w"], ids_keep: Int[Tensor, "b k"] | None = None
    ) -> Float[Tensor, "b n d"]:
        """``[b k d]``: the kept tubelets in ``ids_keep`` order (all when ``None``)."""
        self.grid_size(*videos.shape[1:2], *videos.shape[-2:])
        embeddings = self.model.embeddings
        tokens = embeddings.patch_embeddings(videos)
        # A plain tensor attribute in transformers, not a buffer: moved here as VideoMAE does.
        positions = embeddings.position_embeddings.to(device=tokens.device, dtype=tokens.dtype)
        tokens = tokens + positions
        if ids_keep is not None:
            tokens = gather_tokens(tokens, ids_keep)
        for block in self.blocks:
            tokens = block(tokens)
            # transformers 4.x blocks return a tuple, 5.x a tensor
            tokens = tokens[0] if isinstance(tokens, tuple) else tokens
        if self.model.layernorm is not None:
            tokens = self.model.layernorm(tokens)
        return tokens
