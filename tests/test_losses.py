import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from jaxtyping import TypeCheckError

from splathead.losses import image_mse, masked_patch_mse
from splathead.masking import RandomMasking
from splathead.patches import patchify, unpatchify


def mae_patchify(images, patch_height, patch_width):
    """MAE's published ``patchify`` (reshape + einsum), with separate patch height and width."""
    n, c = images.shape[:2]
    h, w = images.shape[2] // patch_height, images.shape[3] // patch_width
    x = images.reshape(n, c, h, patch_height, w, patch_width)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(n, h * w, patch_height * patch_width * c)


def mae_forward_loss(images, prediction, mask, patch_size):
    """MAE's published ``forward_loss`` without norm_pix_loss; ``prediction`` in patch form."""
    target = mae_patchify(images, patch_size, patch_size)
    loss = (prediction - target) ** 2
    loss = loss.mean(dim=-1)
    return (loss * mask).sum() / mask.sum()


@st.composite
def patch_layouts(draw):
    """(batch, channels, (ph, pw), (gh, gw)) with non-square patches and grids allowed."""
    return (
        draw(st.integers(1, 3)),
        draw(st.integers(1, 4)),
        (draw(st.integers(1, 5)), draw(st.integers(1, 5))),
        (draw(st.integers(1, 5)), draw(st.integers(1, 5))),
    )


def images_for(layout, seed=0):
    batch, channels, (ph, pw), (gh, gw) = layout
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, channels, gh * ph, gw * pw, generator=generator)


@given(patch_layouts())
def test_patchify_equals_mae_patchify(layout):
    images = images_for(layout)
    patch_size = layout[2]

    assert torch.equal(patchify(images, patch_size), mae_patchify(images, *patch_size))


def test_patchify_orders_patch_vectors_row_column_channel():
    images = torch.arange(2 * 2 * 4, dtype=torch.float32).reshape(1, 2, 2, 4)  # c=2, h=2, w=4

    patches = patchify(images, 2)

    # First patch: rows 0-1, columns 0-1; vector runs (row, column, channel).
    assert patches[0, 0].tolist() == [0.0, 8.0, 1.0, 9.0, 4.0, 12.0, 5.0, 13.0]


@given(patch_layouts())
def test_unpatchify_inverts_patchify(layout):
    images = images_for(layout)
    _, channels, patch_size, grid_size = layout

    restored = unpatchify(patchify(images, patch_size), patch_size, grid_size, channels=channels)

    assert torch.equal(restored, images)


@given(patch_layouts())
def test_patchify_inverts_unpatchify(layout):
    batch, channels, (ph, pw), (gh, gw) = layout
    patches = torch.randn(batch, gh * gw, ph * pw * channels)

    images = unpatchify(patches, (ph, pw), (gh, gw), channels=channels)

    assert images.shape == (batch, channels, gh * ph, gw * pw)
    assert torch.equal(patchify(images, (ph, pw)), patches)


def test_patchify_rejects_an_image_not_divisible_by_the_patch():
    with pytest.raises(ValueError, match="images is 30x32 pixels .* 16x16 patch size"):
        patchify(torch.rand(1, 3, 30, 32), 16)


def test_unpatchify_rejects_a_grid_that_does_not_match():
    with pytest.raises(ValueError, match="patches has 6 patches, expected 2x2"):
        unpatchify(torch.rand(1, 6, 48), 4, (2, 2))


def test_unpatchify_rejects_patch_vectors_of_the_wrong_length():
    with pytest.raises(ValueError, match="length 47, expected 4x4x3 = 48"):
        unpatchify(torch.rand(1, 4, 47), 4, 2)


@pytest.mark.parametrize("patch_size", [0, (4, 4, 4), (4, -1), 2.0])
def test_patch_size_must_be_positive_ints(patch_size):
    with pytest.raises((ValueError, TypeCheckError), match="patch_size"):
        patchify(torch.rand(1, 3, 8, 8), patch_size)


@given(st.integers(0, 2**31 - 1), st.sampled_from([0.25, 0.5, 0.75]))
def test_masked_patch_mse_equals_mae_loss(seed, ratio):
    generator = torch.Generator().manual_seed(seed)
    target = torch.rand(2, 3, 16, 16, generator=generator)
    image = torch.rand(2, 3, 16, 16, generator=generator)
    mask = RandomMasking(ratio)(2, 16, generator=generator).mask

    loss = masked_patch_mse(image, target, mask, 4)

    expected = mae_forward_loss(target, mae_patchify(image, 4, 4), mask.float(), 4)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)


def norm_pix_loss_by_patch_loops(image, target, mask, patch_size):
    """MAE's norm-pix loss on the render, patch by patch: the target patch's mean and unbiased
    variance over its pixels and channels, (x - mean) / sqrt(var + 1e-6) for render and target."""
    batch, _, height, width = target.shape
    losses, weights = [], []
    for b in range(batch):
        for row in range(height // patch_size):
            for column in range(width // patch_size):
                rows = slice(row * patch_size, (row + 1) * patch_size)
                columns = slice(column * patch_size, (column + 1) * patch_size)
                target_patch = target[b, :, rows, columns].double()
                image_patch = image[b, :, rows, columns].double()
                count = target_patch.numel()
                mean = target_patch.sum() / count
                variance = ((target_patch - mean) ** 2).sum() / (count - 1)
                scale = (variance + 1e-6).sqrt()
                error = ((image_patch - mean) / scale - (target_patch - mean) / scale) ** 2
                losses.append(error.sum() / count)
                weights.append(float(mask[b, row * (width // patch_size) + column]))
    losses, weights = torch.stack(losses), torch.tensor(weights, dtype=torch.float64)
    return ((losses * weights).sum() / weights.sum()).float()


@given(st.integers(0, 2**31 - 1), st.sampled_from([0.25, 0.5, 0.75]))
def test_norm_pix_loss_equals_maes_per_patch_normalisation_of_render_and_target(seed, ratio):
    generator = torch.Generator().manual_seed(seed)
    target = torch.rand(2, 3, 8, 12, generator=generator)
    target[0, :, :4, :4] = 0.5  # a flat patch: variance 0, only the 1e-6 keeps it finite
    image = torch.rand(2, 3, 8, 12, generator=generator)
    mask = RandomMasking(ratio)(2, 6, generator=generator).mask
    mask[0, 0] = True

    loss = masked_patch_mse(image, target, mask, 4, norm_pix=True)

    expected = norm_pix_loss_by_patch_loops(image, target, mask, 4)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=0)


def test_norm_pix_loss_is_the_squared_error_over_the_target_patchs_variance():
    target = torch.zeros(1, 1, 2, 2)
    target[0, 0, 0, 0] = 1.0  # mean 0.25, unbiased variance 0.25
    image = target + 0.5
    loss = masked_patch_mse(image, target, torch.ones(1, 1, dtype=torch.bool), 2, norm_pix=True)
    torch.testing.assert_close(loss, torch.tensor(0.25 / (0.25 + 1e-6)))


def test_norm_pix_loss_keeps_the_render_in_the_graph():
    target = torch.rand(1, 3, 8, 8)
    image = torch.rand(1, 3, 8, 8, requires_grad=True)
    masked_patch_mse(image, target, torch.ones(1, 4, dtype=torch.bool), 4, norm_pix=True).backward()
    assert image.grad.abs().sum() > 0


def test_masked_patch_mse_ignores_visible_patches():
    target = torch.rand(2, 3, 16, 16)
    image = torch.rand(2, 3, 16, 16)
    mask = RandomMasking(0.5)(2, 16).mask
    visible_pixels = unpatchify(
        (~mask).float()[..., None].expand(-1, -1, 48), 4, 4
    ).bool()

    changed = image.masked_fill(visible_pixels, 0.5)

    assert masked_patch_mse(changed, target, mask, 4) == masked_patch_mse(image, target, mask, 4)
    assert masked_patch_mse(changed + 0.1 * ~visible_pixels, target, mask, 4) != masked_patch_mse(
        image, target, mask, 4
    )


def test_masked_patch_mse_over_all_patches_is_image_mse():
    target = torch.rand(2, 3, 8, 12)
    image = torch.rand(2, 3, 8, 12)
    all_hidden = torch.ones(2, 6, dtype=torch.bool)

    torch.testing.assert_close(
        masked_patch_mse(image, target, all_hidden, 4), image_mse(image, target)
    )


def test_image_mse_is_mean_squared_error():
    target = torch.zeros(1, 1, 2, 2)
    image = torch.tensor([[[[1.0, 0.0], [0.0, 3.0]]]])

    assert image_mse(image, target).item() == 2.5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64, torch.int64,
                                   torch.uint8])
def test_masked_patch_mse_takes_a_real_mask_of_zeros_and_ones_as_mae_returns_it(dtype):
    generator = torch.Generator().manual_seed(0)
    target = torch.rand(2, 3, 16, 16, generator=generator)
    image = torch.rand(2, 3, 16, 16, generator=generator)
    mask = RandomMasking(0.75)(2, 16, generator=generator).mask
    assert masked_patch_mse(image, target, mask.to(dtype), 4) == masked_patch_mse(
        image, target, mask, 4)


@pytest.mark.parametrize("bad_value", [0.5, 2.0, -1.0, float("nan")])
def test_masked_patch_mse_names_a_mask_of_other_values_than_zero_and_one(bad_value):
    image = torch.rand(1, 3, 8, 8)
    mask = torch.tensor([[1.0, 0.0, 1.0, bad_value]])
    with pytest.raises(ValueError, match=r"mask must be bool or hold only 0 \(visible\) and 1"):
        masked_patch_mse(image, image, mask, 4)


def test_masked_patch_mse_refuses_a_complex_mask_naming_it():
    image = torch.rand(1, 3, 8, 8)
    with pytest.raises(TypeCheckError, match="mask"):
        masked_patch_mse(image, image, torch.ones(1, 4, dtype=torch.complex64), 4)


def test_masked_patch_mse_without_a_hidden_patch_raises():
    image = torch.rand(2, 3, 8, 8)
    nothing_hidden = torch.zeros(2, 4, dtype=torch.bool)

    with pytest.raises(ValueError, match="mask hides no patch"):
        masked_patch_mse(image, image, nothing_hidden, 4)


@pytest.mark.parametrize("bad_value", [-0.5, 1.5, float("nan")])
def test_target_outside_zero_one_raises(bad_value):
    target = torch.rand(1, 3, 8, 8)
    target[0, 0, 0, 0] = bad_value
    image = torch.rand(1, 3, 8, 8)
    mask = torch.ones(1, 4, dtype=torch.bool)

    with pytest.raises(ValueError, match=r"target must lie in \[0, 1\]"):
        masked_patch_mse(image, target, mask, 4)
    with pytest.raises(ValueError, match=r"target must lie in \[0, 1\]"):
        image_mse(image, target)


def test_check_inputs_false_accepts_a_normalised_target():
    target = torch.randn(1, 3, 8, 8) * 3
    image = torch.zeros(1, 3, 8, 8)

    loss = image_mse(image, target, check_inputs=False)

    torch.testing.assert_close(loss, target.square().mean())


def test_masked_patch_mse_rejects_an_image_not_divisible_by_the_patch():
    image = torch.rand(1, 3, 10, 8)

    with pytest.raises(ValueError, match="image is 10x8 pixels"):
        masked_patch_mse(image, image, torch.ones(1, 4, dtype=torch.bool), 4)


def test_masked_patch_mse_rejects_a_mask_of_the_wrong_length():
    image = torch.rand(1, 3, 8, 8)

    with pytest.raises(ValueError, match="mask covers 9 patches but image has 2x2"):
        masked_patch_mse(image, image, torch.ones(1, 9, dtype=torch.bool), 4)


def test_image_and_target_must_have_the_same_shape():
    with pytest.raises(TypeCheckError, match="target"):
        image_mse(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 4))


def test_masked_patch_mse_has_gradients_only_on_hidden_patches():
    target = torch.rand(1, 3, 8, 8)
    image = torch.rand(1, 3, 8, 8, requires_grad=True)
    mask = torch.tensor([[True, False, False, True]])

    masked_patch_mse(image, target, mask, 4).backward()

    gradient_per_patch = patchify(image.grad.abs(), 4).sum(dim=-1)
    assert torch.equal(gradient_per_patch[0] > 0, mask[0])
