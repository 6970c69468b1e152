"""Random patch masking as in MAE (:mod:`splathead.mask_formats` reads and writes other
codebases' index formats for the same mask).

Indices count patch tokens only, in row-major grid order: patch ``i`` is token ``i`` of the
encoder's patch sequence. Prefix tokens (cls, registers) are never masked and never indexed here;
the encoder adapters keep them in front of the visible patches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from splathead.checks import host_scalars, require_finite
from splathead.indexing import batched_gather
from splathead.typing import Bool, Float, Int, Tensor, typecheck

__all__ = ["PatchMask", "RandomMasking", "covering_masks", "gather_tokens", "restore_tokens"]


@typecheck
@dataclass(frozen=True, eq=False)
class PatchMask:
    """Which patches of each image the encoder sees, as MAE's ``random_masking`` describes it.

    Every image keeps the same number ``k`` of its ``l`` patches (``1 <= k <= l``).

    Attributes:
        ids_keep: ``[b k]`` visible patches, in the order the encoder receives them.
        ids_restore: ``[b l]`` MAE's ``ids_restore``: the position of each patch in the sequence
            "visible patches in ``ids_keep`` order, then hidden patches". Gathering that
            sequence with ``ids_restore`` puts it back in grid order (see :func:`restore_tokens`).

    Shapes, dtypes (int64) and devices are checked when the object is built; that the two index
    tensors agree is checked by :meth:`validate`, which :mod:`splathead.mask_formats` calls on
    what it reads; :class:`RandomMasking` and :meth:`from_bool_mask` are consistent by
    construction.
    """

    ids_keep: Int[Tensor, "b k"]
    ids_restore: Int[Tensor, "b l"]

    def __post_init__(self) -> None:
        for name in ("ids_keep", "ids_restore"):
            if getattr(self, name).dtype != torch.long:
                raise TypeError(
                    f"PatchMask.{name} must be int64 (torch.long), got {getattr(self, name).dtype}"
                )
        if self.ids_keep.device != self.ids_restore.device:
            raise ValueError(
                f"PatchMask.ids_keep is on {self.ids_keep.device} but ids_restore is on "
                f"{self.ids_restore.device}; both must be on one device"
            )
        if not 1 <= self.num_kept <= self.num_patches:
            raise ValueError(
                f"PatchMask must keep between 1 and num_patches={self.num_patches} patches per "
                f"image, got ids_keep with {self.num_kept} columns"
            )

    @property
    def batch_size(self) -> int:
        return self.ids_restore.shape[0]

    @property
    def num_patches(self) -> int:
        """``l``: patches per image, visible and hidden."""
        return self.ids_restore.shape[1]

    @property
    def num_kept(self) -> int:
        """``k``: visible patches per image."""
        return self.ids_keep.shape[1]

    @property
    def num_hidden(self) -> int:
        return self.num_patches - self.num_kept

    @property
    def device(self) -> torch.device:
        return self.ids_keep.device

    @property
    def mask(self) -> Bool[Tensor, "b l"]:
        """``[b l]`` True where a patch is hidden, in grid order."""
        return self.ids_restore >= self.num_kept

    @property
    def ids_shuffle(self) -> Int[Tensor, "b l"]:
        """``[b l]`` visible patches (``ids_keep``) followed by the hidden ones."""
        return torch.argsort(self.ids_restore, dim=1)

    @property
    def ids_hidden(self) -> Int[Tensor, "b l-k"]:
        """``[b l-k]`` hidden patches, in MAE's shuffle order."""
        return self.ids_shuffle[:, self.num_kept :]

    def to(self, device: torch.device | str) -> PatchMask:
        return PatchMask(ids_keep=self.ids_keep.to(device), ids_restore=self.ids_restore.to(device))

    def validate(self) -> PatchMask:
        """Raise ``ValueError`` unless each ``ids_restore`` row is a permutation of ``0..l-1`` and
        ``ids_keep`` lists the first ``k`` patches of the shuffle it inverts.

        Costs a sort per row and one device-to-host sync. Returns ``self``.
        """
        grid_order = torch.arange(self.num_patches, device=self.device)
        is_permutation = (torch.sort(self.ids_restore, dim=1).values == grid_order).all()
        # An in-range check first keeps the gather below from failing with an indexing error.
        keep_in_range = ((self.ids_keep >= 0) & (self.ids_keep < self.num_patches)).all()
        flags = host_scalars({"permutation": is_permutation, "in range": keep_in_range})
        if not flags["permutation"]:
            raise ValueError("PatchMask.ids_restore rows must be permutations of 0..num_patches-1")
        if not flags["in range"]:
            raise ValueError(
                f"PatchMask.ids_keep holds indices outside [0, {self.num_patches}) (num_patches)"
            )
        positions = self.ids_restore.gather(1, self.ids_keep)
        if not torch.equal(positions, grid_order[: self.num_kept].expand_as(positions)):
            raise ValueError(
                "PatchMask.ids_keep and ids_restore disagree: ids_restore[i, ids_keep[i, j]] "
                "must equal j"
            )
        return self

    @classmethod
    @typecheck
    def from_bool_mask(cls, mask: Bool[Tensor, "b l"]) -> PatchMask:
        """From ``mask [b l]`` (True = hidden); every row must hide the same number of patches.

        ``ids_keep`` lists the visible patches in ascending grid order, and the hidden ones
        follow in ascending order in ``ids_shuffle``.
        """
        num_hidden = mask.sum(dim=1)
        counts = host_scalars({"fewest": num_hidden.min(), "most": num_hidden.max()})
        fewest, most = counts["fewest"], counts["most"]
        if fewest != most:
            raise ValueError(
                f"mask must hide the same number of patches in every row (a batch of visible "
                f"patches is one rectangular tensor), got between {fewest} and {most} per row"
            )
        num_patches = mask.shape[1]
        if most == num_patches:
            raise ValueError(f"mask hides all {num_patches} patches; keep at least one")
        # Stable sort of 0 (visible) before 1 (hidden) keeps grid order within each group.
        ids_shuffle = torch.argsort(mask.to(torch.uint8), dim=1, stable=True)
        return cls(
            ids_keep=ids_shuffle[:, : num_patches - most],
            ids_restore=torch.argsort(ids_shuffle, dim=1),
        )

    @classmethod
    @typecheck
    def from_ids_restore(cls, ids_restore: Int[Tensor, "b l"], num_kept: int) -> PatchMask:
        """From MAE's ``ids_restore`` and the number of visible patches ``k``: the visible ones
        are the first ``k`` of its inverse permutation (MAE's ``ids_shuffle``)."""
        ids_restore = ids_restore.long()
        return cls(ids_keep=torch.argsort(ids_restore, dim=1)[:, :num_kept], ids_restore=ids_restore)


@dataclass(frozen=True)
class RandomMasking:
    """MAE's random masking: each image hides a uniformly random ``ratio`` of its patches.

    Keeps ``int(l * (1 - ratio))`` patches, those with the lowest noise, exactly as MAE's
    ``random_masking`` does for the same noise. ``ratio`` lies in [0, 1); 0 hides nothing (the
    visible patches then come in random order, as in MAE).

    Example::

        masking = RandomMasking(0.75)
        patch_mask = masking(images.shape[0], num_patches, device=images.device)
        latent = encoder(images, patch_mask.ids_keep)
    """

    ratio: float

    def __post_init__(self) -> None:
        if isinstance(self.ratio, bool) or not (
            isinstance(self.ratio, (int, float)) and 0 <= self.ratio < 1
        ):
            raise ValueError(f"ratio must lie in [0, 1), got ratio={self.ratio!r}")

    def num_kept(self, num_patches: int) -> int:
        """Patches each image keeps out of ``num_patches``; raises if that is none."""
        num_kept = int(num_patches * (1 - self.ratio))
        if num_kept < 1:
            raise ValueError(
                f"ratio={self.ratio} keeps int(num_patches * (1 - ratio)) = 0 of "
                f"num_patches={num_patches} patches; use a smaller ratio or more patches"
            )
        return num_kept

    def __call__(
        self,
        batch_size: int,
        num_patches: int,
        *,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> PatchMask:
        """A fresh random mask for ``batch_size`` images of ``num_patches`` patches each."""
        if batch_size < 1 or num_patches < 1:
            raise ValueError(
                f"batch_size and num_patches must be positive, got batch_size={batch_size}, "
                f"num_patches={num_patches}"
            )
        noise = torch.rand(batch_size, num_patches, device=device, generator=generator)
        return self.from_noise(noise)

    @typecheck
    def from_noise(self, noise: Float[Tensor, "b l"]) -> PatchMask:
        """The mask MAE draws for ``noise [b l]``: the ``k`` lowest-noise patches stay visible.

        Raises ``ValueError`` when ``noise`` holds NaN or Inf (sorting would silently decide).
        """
        require_finite(noise=noise)
        num_kept = self.num_kept(noise.shape[1])
        ids_shuffle = torch.argsort(noise, dim=1)
        return PatchMask(
            ids_keep=ids_shuffle[:, :num_kept], ids_restore=torch.argsort(ids_shuffle, dim=1)
        )


def covering_masks(
    ratio: float,
    batch_size: int,
    num_patches: int,
    num_masks: int,
    *,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> list[PatchMask]:
    """``num_masks`` masks at ``ratio`` that together show every patch when they can.

    Each image draws one random permutation of its patches; mask ``m`` keeps the window of
    ``k = int(l * (1 - ratio))`` patches starting at position ``m k`` of it (cyclically). When
    ``num_masks * k >= l`` every patch is visible in at least one mask (at ratio 0.75, 4 masks
    are a partition); each mask alone is a uniformly random mask, as :class:`RandomMasking` draws.
    The noise is drawn on the CPU with ``generator``, so a seed gives the same masks on any device.
    """
    if num_masks < 1:
        raise ValueError(f"num_masks must be >= 1, got {num_masks}")
    masking = RandomMasking(ratio)
    num_kept = masking.num_kept(num_patches)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    permutation = torch.argsort(torch.rand(batch_size, num_patches, generator=generator), dim=1)
    masks = []
    for index in range(num_masks):
        # Rank of each patch in this mask: the window starting at index * k comes first.
        shift = (index * num_kept) % num_patches
        order = torch.roll(permutation, -shift, dims=1)
        noise = torch.empty(batch_size, num_patches).scatter_(
            1, order, torch.arange(num_patches, dtype=torch.float32).expand(batch_size, -1)
        )
        masks.append(masking.from_noise(noise.to(device)))
    return masks


@typecheck
def gather_tokens(
    tokens: Float[Tensor, "b l d"], ids: Int[Tensor, "b k"]
) -> Float[Tensor, "b k d"]:
    """``result[i, j] = tokens[i, ids[i, j]]``, e.g. the visible patches ``ids_keep``.

    Indices must lie in ``[0, l)``; ``k`` may exceed ``l`` (repeated indices are allowed).
    """
    return batched_gather(tokens, ids)


@typecheck
def restore_tokens(
    tokens: Float[Tensor, "b k d"], ids_restore: Int[Tensor, "b l"], fill_token: Float[Tensor, "d"]
) -> Float[Tensor, "b l d"]:
    """Put ``k`` visible-patch tokens back in grid order, ``fill_token`` at the hidden patches.

    ``tokens`` must be in ``ids_keep`` order (as the encoder returns them, without prefix tokens);
    this is MAE's decoder unshuffle with ``fill_token`` as its mask token.
    """
    batch_size, num_kept, dim = tokens.shape
    num_patches = ids_restore.shape[1]
    if num_kept > num_patches:
        raise ValueError(
            f"tokens has {num_kept} tokens but ids_restore covers only {num_patches} patches"
        )
    hidden = fill_token.to(tokens.dtype).expand(batch_size, num_patches - num_kept, dim)
    return gather_tokens(torch.cat([tokens, hidden], dim=1), ids_restore)
