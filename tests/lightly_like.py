"""lightly's MAE interface, written here from its published behaviour (lightly 1.5): the token
mask over the whole sequence and the masked timm ViT that encodes the tokens it keeps."""

import torch
from torch import nn

from splathead.masking import gather_tokens


def random_token_mask(batch_size, sequence_length, mask_ratio, generator=None):
    """``random_token_mask``: ``(idx_keep, idx_mask)`` over the whole token sequence, prefix
    tokens included; only token 0 (the class token) is never masked."""
    num_keep = max(1, int(sequence_length * (1 - mask_ratio)))
    noise = torch.rand(batch_size, sequence_length, generator=generator)
    noise[:, 0] = -1
    indices = torch.argsort(noise, dim=1)
    return indices[:, :num_keep], indices[:, num_keep:]


class MaskedVisionTransformerTIMM(nn.Module):
    """``MaskedVisionTransformerTIMM(vit=...)``: ``encode(images, idx_keep)`` runs the timm ViT
    on the tokens ``idx_keep`` (indices into prefix + patch tokens, positions added first)."""

    def __init__(self, vit):
        super().__init__()
        self.vit = vit
        self.sequence_length = vit.patch_embed.num_patches + vit.num_prefix_tokens

    def encode(self, images, idx_mask=None, idx_keep=None):
        assert idx_mask is None, "this stand-in implements idx_keep only"
        tokens = self.vit._pos_embed(self.vit.patch_embed(images))
        if idx_keep is not None:
            tokens = gather_tokens(tokens, idx_keep)
        return self.vit.norm(self.vit.blocks(self.vit.norm_pre(tokens)))
