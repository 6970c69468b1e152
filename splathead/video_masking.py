"""Masking a tubelet grid ``(gt, gh, gw)``: VideoMAE's tube masking, and the per-frame patch masks
that the video loss reads.

Random masking over the whole tubelet grid (MAE-ST) is :class:`splathead.masking.RandomMasking`
with ``num_patches = gt * gh * gw``: MAE-ST draws it with MAE's algorithm on the flattened grid.
Tubelet indices run time slowest, then rows, then columns, as the video encoders number them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange, repeat

from splathead.masking import PatchMask, RandomMasking
from splathead.typing import Bool, Float, Tensor, typecheck

__all__ = ["TubeMasking", "frame_patch_mask"]


@dataclass(frozen=True)
class TubeMasking:
    """VideoMAE's tube masking: one random spatial mask, the same in every time slot.

    The spatial mask is MAE's for the same noise (:class:`RandomMasking` over the ``gh * gw``
    patches of one slot: ``int(gh gw (1 - ratio))`` patches stay visible); tubelet ``s gh gw + p``
    is hidden exactly when patch ``p`` is. The visible tubelets come slot by slot, each slot's in
    the spatial mask's order. (VideoMAE's own generator hides ``int(ratio * gh gw)`` patches, so
    where ``gh gw ratio`` is fractional it keeps one patch more per slot than this.)

    ``ratio`` lies in [0, 1); the video default is the Video-GMAE authors' 0.9.
    """

    ratio: float = 0.9

    def __post_init__(self) -> None:
        RandomMasking(self.ratio)  # validates the ratio and names it

    def __call__(
        self,
        batch_size: int,
        grid_size: tuple[int, int, int],
        *,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> PatchMask:
        """A fresh tube mask for ``batch_size`` videos over the tubelet grid ``(gt, gh, gw)``."""
        grid_t, grid_h, grid_w = grid_size
        if batch_size < 1 or min(grid_size) < 1:
            raise ValueError(
                f"batch_size and grid_size must be positive, got batch_size={batch_size}, "
                f"grid_size={grid_size}"
            )
        noise = torch.rand(batch_size, grid_h * grid_w, device=device, generator=generator)
        return self.from_noise(noise, grid_t)

    @typecheck
    def from_noise(self, noise: Float[Tensor, "b l"], num_slots: int) -> PatchMask:
        """The tube mask for the spatial ``noise [b gh*gw]`` repeated over ``num_slots`` slots."""
        if num_slots < 1:
            raise ValueError(f"num_slots must be >= 1, got {num_slots}")
        spatial = RandomMasking(self.ratio).from_noise(noise)
        num_spatial = spatial.num_patches
        offsets = torch.arange(num_slots, device=noise.device)[:, None] * num_spatial
        shuffle = spatial.ids_shuffle
        keep, hidden = shuffle[:, : spatial.num_kept], shuffle[:, spatial.num_kept :]
        # Visible tubelets of every slot first, then the hidden ones: MAE's shuffle order.
        ids_shuffle = torch.cat(
            [
                rearrange(keep[:, None] + offsets, "b s k -> b (s k)"),
                rearrange(hidden[:, None] + offsets, "b s k -> b (s k)"),
            ],
            dim=1,
        )
        return PatchMask(
            ids_keep=ids_shuffle[:, : num_slots * spatial.num_kept],
            ids_restore=torch.argsort(ids_shuffle, dim=1),
        )


@typecheck
def frame_patch_mask(
    mask: Bool[Tensor, "b l"], num_slots: int, tubelet_size: int
) -> Bool[Tensor, "b f p"]:
    """Per-frame patch masks ``[b t gh*gw]`` from a tubelet mask ``[b gt*gh*gw]`` (True = hidden):
    each frame's patches are hidden where its tubelet is (``t = gt * tubelet_size``)."""
    if mask.shape[1] % num_slots:
        raise ValueError(
            f"mask covers {mask.shape[1]} tubelets, not a multiple of num_slots={num_slots}"
        )
    return repeat(mask, "b (s p) -> b (s k) p", s=num_slots, k=tubelet_size)
