"""`batched_gather`: per-image index selection along the second dimension, for any trailing shape."""

from __future__ import annotations

import torch

from splathead.typing import Integer, Shaped, Tensor, typecheck

__all__ = ["batched_gather"]


@typecheck
def batched_gather(
    values: Shaped[Tensor, "b n *rest"], ids: Integer[Tensor, "b k"]
) -> Shaped[Tensor, "b k *rest"]:
    """``result[i, j] = values[i, ids[i, j]]``: tokens, Gaussian fields or masks by index.

    ``torch.take_along_dim`` with ``ids`` broadcast over the trailing dimensions (no copy of the
    index per channel). Indices must lie in ``[0, n)``; ``k`` may differ from ``n``.
    """
    index = ids.long().view(*ids.shape, *[1] * (values.dim() - 2))
    return torch.take_along_dim(values, index, dim=1)
