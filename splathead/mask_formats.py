"""A :class:`~splathead.masking.PatchMask` from and to the index formats of other codebases.

- MAE: ``(mask [b l], ids_restore [b l])`` as ``random_masking`` returns them (mask 1 = hidden).
- lightly: ``(idx_keep [b prefix+k], idx_mask [b l-k])`` over the whole token sequence, prefix
  tokens included, as ``random_token_mask`` returns them.

What is read is checked (:meth:`PatchMask.validate`), with one device sync per check group.
"""

from __future__ import annotations

import torch
from einops import repeat

from splathead.checks import host_scalars
from splathead.masking import PatchMask
from splathead.typing import Bool, Float, Int, Shaped, Tensor, typecheck

__all__ = ["from_lightly", "from_mae", "to_lightly", "to_mae"]


@typecheck
def from_mae(
    mask: Float[Tensor, "b l"] | Bool[Tensor, "b l"], ids_restore: Int[Tensor, "b l"]
) -> PatchMask:
    """From the ``(mask, ids_restore)`` pair MAE's ``random_masking`` returns.

    ``mask`` is 1 (or True) where hidden, in grid order, as MAE's is.
    """
    num_hidden = mask.sum(dim=1)
    counts = host_scalars({"fewest": num_hidden.min(), "most": num_hidden.max()})
    fewest, most = counts["fewest"], counts["most"]
    if fewest != most or not float(most).is_integer():
        raise ValueError(
            f"mask must hold 0/1 values and hide the same number of patches in every row, "
            f"got row sums between {fewest} and {most}"
        )
    patch_mask = PatchMask.from_ids_restore(ids_restore, mask.shape[1] - int(most)).validate()
    if not torch.equal(patch_mask.mask, mask.bool()):
        raise ValueError("mask disagrees with ids_restore: MAE's mask is ids_restore >= k")
    return patch_mask


@typecheck
def to_mae(
    patch_mask: PatchMask, dtype: torch.dtype = torch.float32
) -> tuple[Shaped[Tensor, "b l"], Int[Tensor, "b l"]]:
    """MAE's ``(mask [b l], ids_restore [b l])``, with the mask 1.0 where hidden."""
    return patch_mask.mask.to(dtype), patch_mask.ids_restore


@typecheck
def from_lightly(
    idx_keep: Int[Tensor, "b kp"], idx_mask: Int[Tensor, "b m"], *, num_prefix_tokens: int
) -> PatchMask:
    """From lightly's ``(idx_keep, idx_mask)`` as ``random_token_mask`` returns them.

    lightly indexes the whole token sequence, prefix tokens included (patch ``i`` is token
    ``i + num_prefix_tokens``), and keeps the prefix tokens at the front of ``idx_keep``.
    ``num_prefix_tokens`` has no default: it is the model's (``vit.num_prefix_tokens``: 1 for a
    cls token, 5 with four registers), and a wrong count would shift every patch. Indices that
    hide a prefix token (lightly's ``random_token_mask`` spares only token 0, so it can hide
    registers) raise ``ValueError``.
    """
    prefix = num_prefix_tokens
    if prefix < 0 or idx_keep.shape[1] <= prefix:
        raise ValueError(
            f"idx_keep has {idx_keep.shape[1]} columns; it must hold the "
            f"num_prefix_tokens={prefix} prefix tokens and at least one patch"
        )
    flags = host_scalars(
        {
            "prefix first": (idx_keep[:, :prefix] < prefix).all(),
            "no other prefix kept": (idx_keep[:, prefix:] >= prefix).all(),
            "no prefix hidden": (idx_mask >= prefix).all(),
        }
    )
    if not all(flags.values()):
        raise ValueError(
            f"idx_keep must start with the num_prefix_tokens={prefix} prefix tokens "
            f"(indices < {prefix}) and list no other prefix token, and idx_mask must not "
            "hold any prefix token"
        )
    ids_keep = idx_keep[:, prefix:].long() - prefix
    ids_shuffle = torch.cat([ids_keep, idx_mask.long() - prefix], dim=1)
    return PatchMask(ids_keep=ids_keep, ids_restore=torch.argsort(ids_shuffle, dim=1)).validate()


@typecheck
def to_lightly(
    patch_mask: PatchMask, *, num_prefix_tokens: int
) -> tuple[Int[Tensor, "b t"], Int[Tensor, "b m"]]:
    """lightly's ``(idx_keep [b prefix+k], idx_mask [b l-k])`` over the whole token sequence:
    prefix tokens first in ``idx_keep``, patch ``i`` shifted to ``i + num_prefix_tokens``."""
    if num_prefix_tokens < 0:
        raise ValueError(f"num_prefix_tokens must be >= 0, got {num_prefix_tokens}")
    prefix = repeat(
        torch.arange(num_prefix_tokens, device=patch_mask.device), "p -> b p",
        b=patch_mask.batch_size,
    )
    idx_keep = torch.cat([prefix, patch_mask.ids_keep + num_prefix_tokens], dim=1)
    return idx_keep, patch_mask.ids_hidden + num_prefix_tokens
