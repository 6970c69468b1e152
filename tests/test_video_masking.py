"""Tube masking over a tubelet grid (VideoMAE) and the per-frame patch masks of the video loss."""

import pytest
import torch
from einops import rearrange
from hypothesis import given
from hypothesis import strategies as st
from test_masking import mae_random_masking

from splathead.video_masking import TubeMasking, frame_patch_mask

grids = st.tuples(st.integers(1, 4), st.integers(1, 5), st.integers(1, 5))
ratios = st.sampled_from([0.0, 0.5, 0.75, 0.9])


@given(grid=grids, ratio=ratios, batch=st.integers(1, 3), seed=st.integers(0, 2**31 - 1))
def test_tube_mask_is_the_same_in_every_time_slot(grid, ratio, batch, seed):
    grid_t, grid_h, grid_w = grid
    if int(grid_h * grid_w * (1 - ratio)) < 1:
        return  # nothing to keep: refused, tested below
    mask = TubeMasking(ratio)(batch, grid, generator=torch.Generator().manual_seed(seed))
    hidden = rearrange(mask.mask, "b (s p) -> b s p", s=grid_t)
    assert torch.equal(hidden, hidden[:, :1].expand_as(hidden))
    mask.validate()
    assert mask.num_kept == grid_t * int(grid_h * grid_w * (1 - ratio))


@given(grid=grids, ratio=ratios, seed=st.integers(0, 2**31 - 1))
def test_each_slot_is_maes_mask_for_the_same_noise(grid, ratio, seed):
    grid_t, grid_h, grid_w = grid
    if int(grid_h * grid_w * (1 - ratio)) < 1:
        return
    noise = torch.rand(2, grid_h * grid_w, generator=torch.Generator().manual_seed(seed))
    mask = TubeMasking(ratio).from_noise(noise, grid_t)
    _, mae_mask, mae_ids_restore = mae_random_masking(
        torch.zeros(2, grid_h * grid_w, 1), ratio, noise
    )
    hidden = rearrange(mask.mask, "b (s p) -> b s p", s=grid_t)
    for slot in range(grid_t):
        assert torch.equal(hidden[:, slot], mae_mask.bool())
    # Slot 0's visible tubelets come first, in MAE's shuffle order.
    kept = mae_ids_restore.argsort(dim=1)[:, : mask.num_kept // grid_t]
    assert torch.equal(mask.ids_keep[:, : kept.shape[1]], kept)


def test_tube_masking_refuses_a_ratio_keeping_nothing():
    with pytest.raises(ValueError, match="ratio=0.9 keeps .* 0 of num_patches=4"):
        TubeMasking(0.9)(1, (2, 2, 2))
    with pytest.raises(ValueError, match="ratio must lie in"):
        TubeMasking(1.0)


def test_frames_of_a_tubelet_share_its_patch_mask():
    mask = torch.tensor([[True, False, False, True, False, True]])  # 2 slots of 3 patches
    frames = frame_patch_mask(mask, num_slots=2, tubelet_size=2)
    assert frames.tolist() == [[[True, False, False]] * 2 + [[True, False, True]] * 2]
