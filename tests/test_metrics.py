"""Reconstruction metrics: known values and agreement with scikit-image's reference SSIM."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from jaxtyping import TypeCheckError
from skimage.metrics import structural_similarity

from splathead.metrics import masked_psnr, psnr, ssim


def _images(seed: int, size: int = 32, batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_identical_images_have_infinite_psnr_and_ssim_one():
    images = _images(0)
    assert torch.isinf(psnr(images, images)).all()
    assert torch.allclose(ssim(images, images), torch.ones(2))


@given(offset=st.sampled_from([0.1, 0.01, 0.003]))
def test_psnr_of_a_uniform_error_is_minus_twenty_log10_of_it(offset):
    target = torch.full((1, 3, 16, 16), 0.5)
    expected = -20 * math.log10(offset)
    assert psnr(target + offset, target).item() == pytest.approx(expected, abs=1e-3)


def test_psnr_of_gaussian_noise_matches_its_standard_deviation():
    target = torch.full((1, 3, 256, 256), 0.5)
    noise = 0.05 * torch.randn(target.shape, generator=torch.Generator().manual_seed(1))
    # MSE ~ 0.05^2: 26.02 dB, up to the sampling error of 196608 squared draws.
    assert psnr(target + noise, target).item() == pytest.approx(26.02, abs=0.05)


def test_psnr_is_per_image():
    target = torch.full((2, 3, 16, 16), 0.5)
    image = target + torch.tensor([0.1, 0.01]).view(2, 1, 1, 1)
    assert psnr(image, target).tolist() == pytest.approx([20.0, 40.0], abs=1e-3)


def test_masked_psnr_scores_hidden_patches_only():
    target = torch.full((1, 3, 16, 16), 0.5)
    image = target.clone()
    image[..., :8, :] += 0.1  # top row of 8 px patches (0, 1): error 0.1
    image[..., 8:, :] += 0.01  # bottom row (2, 3): error 0.01
    top_hidden = torch.tensor([[True, True, False, False]])
    bottom_hidden = torch.tensor([[False, False, True, True]])
    assert masked_psnr(image, target, top_hidden, (8, 8)).item() == pytest.approx(20.0, abs=1e-3)
    assert masked_psnr(image, target, bottom_hidden, (8, 8)).item() == pytest.approx(40.0, abs=1e-3)


def test_masked_psnr_with_every_patch_hidden_equals_psnr():
    images, target = _images(2), _images(3)
    everything = torch.ones(2, 16, dtype=torch.bool)
    assert torch.allclose(masked_psnr(images, target, everything, (8, 8)), psnr(images, target))


def test_masked_psnr_allows_a_different_number_of_hidden_patches_per_image():
    images, target = _images(4), _images(5)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, :3] = True
    mask[1, 5:12] = True
    result = masked_psnr(images, target, mask, (8, 8))
    single = masked_psnr(images[1:], target[1:], mask[1:], (8, 8))
    assert result[1] == single[0]


def test_ssim_of_constant_images_is_the_luminance_term():
    # Constant images have no variance: SSIM = (2ab + C1) / (a^2 + b^2 + C1), C1 = 0.01^2.
    a, b, c1 = 0.4, 0.6, 0.01**2
    expected = (2 * a * b + c1) / (a**2 + b**2 + c1)
    value = ssim(torch.full((1, 3, 32, 32), a), torch.full((1, 3, 32, 32), b))
    assert value.item() == pytest.approx(expected, abs=1e-5)


def test_ssim_matches_scikit_image_with_gaussian_weights():
    target = _images(6, size=96, batch=1)
    noisy = (target + 0.1 * torch.randn(target.shape, generator=torch.Generator().manual_seed(7)))
    noisy = noisy.clamp(0, 1)
    reference = structural_similarity(noisy[0].numpy(), target[0].numpy(), data_range=1.0,
                                      channel_axis=0, gaussian_weights=True, sigma=1.5,
                                      use_sample_covariance=False)
    # The two treat the 5 px border differently; interiors agree.
    assert ssim(noisy, target).item() == pytest.approx(reference, abs=2e-3)


def test_normalised_images_are_refused_naming_the_argument():
    with pytest.raises(ValueError, match="target must be RGB in \\[0, 1\\]"):
        psnr(_images(8), _images(9) * 4 - 2)


def test_mismatched_shapes_are_refused_by_the_shape_contract():
    with pytest.raises(TypeCheckError, match="target"):
        ssim(_images(0, size=32), _images(0, size=16))


def test_mask_that_hides_nothing_in_an_image_is_refused():
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, 0] = True
    with pytest.raises(ValueError, match="hides no patch"):
        masked_psnr(_images(0), _images(1), mask, (8, 8))


def test_mask_of_the_wrong_grid_is_refused():
    with pytest.raises(ValueError, match="mask must be \\[2 16\\]"):
        masked_psnr(_images(0), _images(1), torch.ones(2, 4, dtype=torch.bool), (8, 8))
