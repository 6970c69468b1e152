"""Reference for dropping tokens: a backbone's own forward pass with those tokens hidden as keys.

Dropping a token before the blocks equals hiding it from every attention (everything else in a
ViT is per token), so the backbone's unmodified forward pass, with a key mask added where its
tokens meet, is the reference for the tokens that stay. The mask goes into torch's
``scaled_dot_product_attention``, which timm and Hugging Face ViTs call in every block, so the
reference needs no mask argument from the library: timm before 1.0.16 and transformers 4.48 take
none.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch.nn.functional as F
from torch import Tensor


@contextlib.contextmanager
def keys_hidden_from_attention(visible: Tensor, num_blocks: int) -> Iterator[None]:
    """Within the block, every query attends only to the keys where ``visible [b t]`` is True.

    Fails unless torch's fused attention ran exactly ``num_blocks`` times, so a model that computes
    attention another way cannot pass unmasked.
    """
    fused_attention = F.scaled_dot_product_attention
    calls = 0

    def masked_attention(query, key, value, attn_mask=None, *args, **kwargs):
        nonlocal calls
        assert attn_mask is None, "the model passed an attention mask of its own"
        calls += 1
        return fused_attention(query, key, value, visible[:, None, None, :], *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(F, "scaled_dot_product_attention", masked_attention)
        yield
    assert calls == num_blocks, f"attention ran {calls} times, not once in {num_blocks} blocks"
