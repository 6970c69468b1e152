import math

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from lightly_like import random_token_mask
from splathead.mask_formats import from_lightly, from_mae, to_lightly, to_mae
from splathead.masking import (
    PatchMask,
    RandomMasking,
    covering_masks,
    gather_tokens,
    restore_tokens,
)


def mae_random_masking(tokens, mask_ratio, noise):
    """MAE's published ``random_masking`` (models_mae.py), with the noise passed in."""
    batch, length, dim = tokens.shape
    len_keep = int(length * (1 - mask_ratio))
    ids_shuffle = torch.argsort(noise, dim=1)  # ascending: small is keep, large is remove
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    tokens_masked = torch.gather(tokens, dim=1, index=ids_keep.unsqueeze(-1).repeat(1, 1, dim))
    mask = torch.ones([batch, length])
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, dim=1, index=ids_restore)
    return tokens_masked, mask, ids_restore


def mae_decoder_unshuffle(tokens, ids_restore, mask_token):
    """MAE's decoder step that appends mask tokens and restores grid order (no cls token)."""
    mask_tokens = mask_token.repeat(tokens.shape[0], ids_restore.shape[1] - tokens.shape[1], 1)
    joined = torch.cat([tokens, mask_tokens], dim=1)
    index = ids_restore.unsqueeze(-1).repeat(1, 1, tokens.shape[2])
    return torch.gather(joined, dim=1, index=index)


@st.composite
def mask_settings(draw):
    """(batch_size, num_patches, ratio, seed) with at least one patch kept."""
    num_patches = draw(st.integers(1, 64))
    ratio = draw(st.floats(0, 1, exclude_max=True))
    if int(num_patches * (1 - ratio)) < 1:
        ratio = 0.0
    return draw(st.integers(1, 4)), num_patches, ratio, draw(st.integers(0, 2**31 - 1))


def draw_mask(batch_size, num_patches, ratio, seed):
    return RandomMasking(ratio)(
        batch_size, num_patches, generator=torch.Generator().manual_seed(seed)
    )


def assert_same(first: PatchMask, second: PatchMask):
    assert torch.equal(first.ids_keep, second.ids_keep)
    assert torch.equal(first.ids_restore, second.ids_restore)


@given(mask_settings())
def test_random_masking_equals_mae_on_the_same_noise(settings):
    batch_size, num_patches, ratio, seed = settings
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(batch_size, num_patches, generator=generator)
    tokens = torch.randn(batch_size, num_patches, 5, generator=generator)

    patch_mask = RandomMasking(ratio).from_noise(noise)
    tokens_masked, mask, ids_restore = mae_random_masking(tokens, ratio, noise)

    assert torch.equal(gather_tokens(tokens, patch_mask.ids_keep), tokens_masked)
    assert torch.equal(patch_mask.mask, mask.bool())
    assert torch.equal(patch_mask.ids_restore, ids_restore)


@given(mask_settings())
def test_restore_tokens_equals_mae_decoder_unshuffle(settings):
    batch_size, num_patches, ratio, seed = settings
    patch_mask = draw_mask(*settings)
    generator = torch.Generator().manual_seed(seed)
    kept = torch.randn(batch_size, patch_mask.num_kept, 6, generator=generator)
    mask_token = torch.randn(1, 1, 6, generator=generator)

    restored = restore_tokens(kept, patch_mask.ids_restore, mask_token[0, 0])

    assert torch.equal(restored, mae_decoder_unshuffle(kept, patch_mask.ids_restore, mask_token))


def test_restore_tokens_puts_visible_tokens_back_at_their_patches():
    tokens = torch.randn(3, 10, 4)
    patch_mask = RandomMasking(0.6)(3, 10)
    fill_token = torch.full((4,), 7.0)

    kept = gather_tokens(tokens, patch_mask.ids_keep)

    restored = restore_tokens(kept, patch_mask.ids_restore, fill_token)

    visible = ~patch_mask.mask
    assert torch.equal(restored[visible], tokens[visible])
    assert (restored[patch_mask.mask] == 7.0).all()


@pytest.mark.parametrize(
    ("num_patches", "ratio", "num_kept"),
    [(196, 0.75, 49), (10, 0.75, 2), (7, 0.5, 3), (64, 0.0, 64)],
)
def test_kept_count_is_int_of_num_patches_times_one_minus_ratio(num_patches, ratio, num_kept):
    patch_mask = RandomMasking(ratio)(2, num_patches)

    assert patch_mask.ids_keep.shape == (2, num_kept)
    assert patch_mask.num_kept == num_kept
    assert patch_mask.num_patches == num_patches


@given(mask_settings())
def test_ids_restore_inverts_the_shuffle(settings):
    patch_mask = draw_mask(*settings)

    grid_order = torch.arange(patch_mask.num_patches).expand(patch_mask.batch_size, -1)
    assert torch.equal(patch_mask.ids_shuffle.gather(1, patch_mask.ids_restore), grid_order)
    assert torch.equal(patch_mask.ids_shuffle[:, : patch_mask.num_kept], patch_mask.ids_keep)
    patch_mask.validate()


@given(mask_settings())
def test_mask_hides_exactly_the_patches_not_kept(settings):
    patch_mask = draw_mask(*settings)

    hidden_per_image = patch_mask.mask.sum(dim=1)
    assert (hidden_per_image == patch_mask.num_patches - patch_mask.num_kept).all()
    assert not patch_mask.mask.gather(1, patch_mask.ids_keep).any()
    assert patch_mask.mask.gather(1, patch_mask.ids_hidden).all()


def test_zero_ratio_hides_nothing():
    patch_mask = RandomMasking(0.0)(3, 16)

    assert not patch_mask.mask.any()
    assert torch.equal(patch_mask.ids_keep.sort(dim=1).values, torch.arange(16).expand(3, -1))


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, math.nan, True])
def test_ratio_outside_zero_one_is_rejected(ratio):
    with pytest.raises(ValueError, match=r"ratio must lie in \[0, 1\), got ratio="):
        RandomMasking(ratio)


def test_ratio_that_keeps_no_patch_is_rejected():
    with pytest.raises(ValueError, match=r"ratio=0\.9 keeps .* = 0 of num_patches=4"):
        RandomMasking(0.9)(2, 4)


def test_same_generator_seed_gives_the_same_mask():
    first = RandomMasking(0.75)(2, 49, generator=torch.Generator().manual_seed(3))
    second = RandomMasking(0.75)(2, 49, generator=torch.Generator().manual_seed(3))

    assert_same(first, second)


@given(mask_settings())
def test_bool_mask_constructor_round_trips_the_mask(settings):
    original = draw_mask(*settings)

    patch_mask = PatchMask.from_bool_mask(original.mask)

    assert torch.equal(patch_mask.mask, original.mask)
    patch_mask.validate()


def test_bool_mask_constructor_keeps_patches_in_ascending_grid_order():
    mask = torch.tensor([[True, False, True, False], [False, False, True, True]])

    patch_mask = PatchMask.from_bool_mask(mask)

    assert patch_mask.ids_keep.tolist() == [[1, 3], [0, 1]]
    assert patch_mask.ids_hidden.tolist() == [[0, 2], [2, 3]]


def test_bool_mask_with_uneven_rows_is_rejected():
    mask = torch.tensor([[True, False, False], [True, True, False]])

    with pytest.raises(ValueError, match="same number of patches in every row.*between 1 and 2"):
        PatchMask.from_bool_mask(mask)


def test_bool_mask_hiding_every_patch_is_rejected():
    with pytest.raises(ValueError, match="hides all 3 patches"):
        PatchMask.from_bool_mask(torch.ones(2, 3, dtype=torch.bool))


@given(mask_settings())
def test_ids_restore_and_the_visible_count_give_back_the_mask(settings):
    patch_mask = draw_mask(*settings)

    assert_same(PatchMask.from_ids_restore(patch_mask.ids_restore.int(), patch_mask.num_kept), patch_mask)


@given(mask_settings())
def test_mae_pair_round_trips(settings):
    patch_mask = draw_mask(*settings)

    mask, ids_restore = to_mae(patch_mask)

    assert mask.dtype == torch.float32
    assert_same(from_mae(mask, ids_restore), patch_mask)


@given(mask_settings())
def test_mae_pair_from_mae_random_masking_is_read_back(settings):
    batch_size, num_patches, ratio, seed = settings
    noise = torch.rand(batch_size, num_patches, generator=torch.Generator().manual_seed(seed))
    _, mask, ids_restore = mae_random_masking(torch.zeros(batch_size, num_patches, 1), ratio, noise)

    assert_same(from_mae(mask, ids_restore), RandomMasking(ratio).from_noise(noise))


def test_mae_pair_that_disagrees_is_rejected():
    patch_mask = PatchMask.from_bool_mask(torch.tensor([[True, True, False, False]]))
    mask, ids_restore = to_mae(patch_mask)

    with pytest.raises(ValueError, match="mask disagrees with ids_restore"):
        from_mae(mask.flip(1), ids_restore)


@given(mask_settings(), st.integers(0, 5))
def test_lightly_indices_round_trip(settings, num_prefix_tokens):
    patch_mask = draw_mask(*settings)

    idx_keep, idx_mask = to_lightly(patch_mask, num_prefix_tokens=num_prefix_tokens)

    assert idx_keep.shape == (patch_mask.batch_size, num_prefix_tokens + patch_mask.num_kept)
    prefix = torch.arange(num_prefix_tokens).expand(patch_mask.batch_size, -1)
    assert torch.equal(idx_keep[:, :num_prefix_tokens], prefix)
    assert_same(
        from_lightly(idx_keep, idx_mask, num_prefix_tokens=num_prefix_tokens), patch_mask
    )


@given(st.integers(1, 4), st.integers(2, 50), st.floats(0, 0.95), st.integers(0, 2**31 - 1))
def test_lightly_random_token_mask_output_is_read_and_written_back(batch_size, length, ratio, seed):
    assume(int(length * (1 - ratio)) >= 2)  # lightly's count includes the class token
    idx_keep, idx_mask = random_token_mask(
        batch_size, length, ratio, torch.Generator().manual_seed(seed)
    )

    patch_mask = from_lightly(idx_keep, idx_mask, num_prefix_tokens=1)

    assert torch.equal(patch_mask.ids_keep, idx_keep[:, 1:] - 1)  # patch i is token i + 1
    assert patch_mask.num_patches == length - 1
    written_keep, written_mask = to_lightly(patch_mask, num_prefix_tokens=1)
    assert torch.equal(written_keep, idx_keep)
    assert torch.equal(written_mask, idx_mask)


def test_lightly_indices_masking_the_class_token_are_rejected():
    idx_keep = torch.tensor([[2, 1]])
    idx_mask = torch.tensor([[0, 3]])

    with pytest.raises(ValueError, match="must start with the num_prefix_tokens=1 prefix tokens"):
        from_lightly(idx_keep, idx_mask, num_prefix_tokens=1)


def test_lightly_indices_hiding_a_register_token_are_rejected():
    # lightly's random_token_mask spares token 0 only; with four registers it can hide one
    idx_keep = torch.tensor([[0, 1, 2, 4, 5, 7]])
    idx_mask = torch.tensor([[3, 6, 8]])  # token 3 is a register
    with pytest.raises(ValueError, match="idx_mask must not hold any prefix token"):
        from_lightly(idx_keep, idx_mask, num_prefix_tokens=5)


def test_lightly_conversions_need_the_models_prefix_count():
    idx_keep, idx_mask = torch.tensor([[0, 2]]), torch.tensor([[1]])
    with pytest.raises(TypeError, match="num_prefix_tokens"):
        from_lightly(idx_keep, idx_mask)
    with pytest.raises(TypeError, match="num_prefix_tokens"):
        to_lightly(from_lightly(idx_keep, idx_mask, num_prefix_tokens=1))


def test_patch_mask_must_keep_at_least_one_patch():
    with pytest.raises(ValueError, match="keep between 1 and num_patches=4"):
        PatchMask(
            ids_keep=torch.zeros(2, 0, dtype=torch.long), ids_restore=torch.arange(4).expand(2, -1)
        )


def test_patch_mask_rejects_int32_indices():
    with pytest.raises(TypeError, match="ids_keep must be int64"):
        PatchMask(
            ids_keep=torch.zeros(1, 2, dtype=torch.int32), ids_restore=torch.arange(4).expand(1, -1)
        )


def test_validate_catches_indices_that_disagree():
    patch_mask = PatchMask(
        ids_keep=torch.tensor([[2, 0]]), ids_restore=torch.tensor([[0, 1, 2, 3]])
    )

    with pytest.raises(ValueError, match="ids_keep and ids_restore disagree"):
        patch_mask.validate()


def test_validate_catches_a_restore_that_is_not_a_permutation():
    patch_mask = PatchMask(
        ids_keep=torch.tensor([[0, 1]]), ids_restore=torch.tensor([[0, 1, 1, 3]])
    )

    with pytest.raises(ValueError, match="must be permutations"):
        patch_mask.validate()


def test_gather_tokens_selects_per_image_rows():
    tokens = torch.randn(3, 9, 4)
    ids = torch.tensor([[8, 0], [4, 4], [1, 2]])

    assert torch.equal(gather_tokens(tokens, ids), tokens[torch.arange(3)[:, None], ids])


@given(
    num_patches=st.integers(4, 64),
    ratio=st.sampled_from([0.5, 0.75, 0.9]),
    num_masks=st.integers(1, 12),
    seed=st.integers(0, 100),
)
def test_covering_masks_show_every_patch_when_they_have_room(num_patches, ratio, num_masks, seed):
    num_kept = int(num_patches * (1 - ratio))
    assume(num_kept >= 1)
    masks = covering_masks(ratio, 3, num_patches, num_masks,
                           generator=torch.Generator().manual_seed(seed))
    assert len(masks) == num_masks
    assert all(mask.num_kept == num_kept for mask in masks)
    for mask in masks:
        mask.validate()
    seen = torch.stack([~mask.mask for mask in masks]).any(dim=0)
    if num_masks * num_kept >= num_patches:
        assert seen.all()
    else:
        assert seen.sum(dim=1).eq(num_masks * num_kept).all()  # the windows do not overlap


def test_covering_masks_at_three_quarters_are_a_partition():
    masks = covering_masks(0.75, 2, 16, 4, generator=torch.Generator().manual_seed(0))
    visible = torch.stack([~mask.mask for mask in masks]).sum(dim=0)
    assert visible.eq(1).all()


def test_covering_masks_need_one_mask():
    with pytest.raises(ValueError, match="num_masks"):
        covering_masks(0.75, 2, 16, 0)
