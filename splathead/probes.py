"""Online linear probes: how linearly separable each encoder block's features are, while training.

After the GMAE authors' design: for every encoder block, a BatchNorm1d without affine parameters
and a Linear classifier on the block's mean-pooled tokens, trained on the labels. The features are
detached, so the probes never change the encoder: they measure it. They pool the tokens of the
pass they hook: the patch tokens of the masked training pass, or with ``num_prefix_tokens=0``
all tokens, cls included, as the authors pool a second pass over the whole image (the
pretraining recipe's ``--probe-view full``). They have their own optimiser (the authors' share
the GMAE's).

    blocks = BlockFeatures(model.encoder.blocks, num_prefix_tokens=1)
    probes = OnlineProbes(embed_dim=768, num_classes=1000, num_blocks=len(blocks))
    output = model(images)                      # hooks record every block's pooled tokens
    logits = probes(blocks.features())          # [blocks b classes]
    probe_loss(logits, labels).backward()       # reaches the probes only
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from splathead.typing import Float, Int, Tensor, typecheck

__all__ = ["BlockFeatures", "OnlineProbes", "probe_loss"]


class BlockFeatures:
    """Records the mean of the patch tokens each block outputs, detached, in float32.

    Forward hooks on ``blocks``: every forward pass through them overwrites the record, so the
    record always belongs to the latest pass. The mean runs over the tokens the block saw (the
    visible patches under masking), after the ``num_prefix_tokens`` cls / register tokens.

    Args:
        blocks: the encoder's transformer blocks, in order; each returns ``[b t d]`` tokens
            (or a tuple whose first item is they, as Hugging Face layers do).
        num_prefix_tokens: tokens in front of the patches, left out of the mean (0: every
            token is averaged, cls included).
    """

    def __init__(self, blocks: Sequence[nn.Module], *, num_prefix_tokens: int) -> None:
        if len(blocks) == 0:
            raise ValueError("blocks is empty: give the encoder blocks to probe")
        if num_prefix_tokens < 0:
            raise ValueError(f"num_prefix_tokens must be >= 0, got {num_prefix_tokens}")
        self.num_prefix_tokens = num_prefix_tokens
        self._pooled: list[Tensor | None] = [None] * len(blocks)
        self._handles: list[RemovableHandle] = [
            block.register_forward_hook(self._recorder(index)) for index, block in enumerate(blocks)
        ]

    def __len__(self) -> int:
        return len(self._pooled)

    def _recorder(self, index: int):
        def record(module: nn.Module, inputs: tuple, output: Tensor | tuple) -> None:
            tokens = output[0] if isinstance(output, tuple) else output
            self._pooled[index] = tokens[:, self.num_prefix_tokens:].detach().float().mean(dim=1)

        return record

    def features(self) -> Float[Tensor, "k b d"]:
        """``[blocks b d]``: each block's pooled tokens from the latest forward pass."""
        if any(pooled is None for pooled in self._pooled):
            raise RuntimeError("no forward pass through the blocks has been recorded yet")
        return torch.stack(self._pooled)

    def remove(self) -> None:
        """Take the hooks off the blocks."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


class OnlineProbes(nn.Module):
    """One ``BatchNorm1d(affine=False) + Linear`` classifier per block.

    Args:
        embed_dim: width ``d`` of the features.
        num_classes: classes of the labels.
        num_blocks: how many blocks are probed (one classifier each).
    """

    def __init__(self, *, embed_dim: int, num_classes: int, num_blocks: int) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.probes = nn.ModuleList(
            nn.Sequential(nn.BatchNorm1d(embed_dim, affine=False), nn.Linear(embed_dim, num_classes))
            for _ in range(num_blocks)
        )

    @typecheck
    def forward(self, features: Float[Tensor, "k b d"]) -> Float[Tensor, "k b n"]:
        """Logits ``[blocks b classes]`` from features ``[blocks b d]`` (detached by the caller)."""
        if features.shape[0] != len(self.probes):
            raise ValueError(
                f"features has {features.shape[0]} blocks, the probes expect {len(self.probes)}"
            )
        return torch.stack([probe(block) for probe, block in zip(self.probes, features)])


@typecheck
def probe_loss(logits: Float[Tensor, "k b n"], labels: Int[Tensor, "b"]) -> Float[Tensor, ""]:
    """Cross-entropy summed over the probes (each probe gets its own full gradient)."""
    return F.cross_entropy(logits.flatten(0, 1), labels.repeat(logits.shape[0])) * logits.shape[0]
