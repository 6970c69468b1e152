import math
import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from splathead.gaussians import Gaussians
from splathead.head import GaussianHead, shoemake_quaternion

magnitudes = st.floats(min_value=-2.0, max_value=4.0)  # log10 of the input scale: 0.01 .. 1e4
seeds = st.integers(min_value=0, max_value=2**31 - 1)


def random_tokens(seed: int, log_magnitude: float, shape=(2, 5, 16)) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator) * 10**log_magnitude


def test_rgb_head_is_one_bias_free_linear_with_14_outputs():
    head = GaussianHead(32)
    linears = [module for module in head.modules() if isinstance(module, torch.nn.Linear)]
    assert len(linears) == 1
    assert linears[0].bias is None
    assert linears[0].weight.shape == (14, 32)


@pytest.mark.parametrize("num_channels", [1, 3, 8])
def test_head_outputs_11_plus_channels_and_gaussians_of_that_width(num_channels):
    head = GaussianHead(16, num_channels=num_channels)
    gaussians = head(torch.randn(2, 7, 16))
    assert head.proj.weight.shape[0] == 11 + num_channels
    assert isinstance(gaussians, Gaussians)
    assert gaussians.colors.shape == (2, 7, num_channels)
    assert gaussians.means.shape == gaussians.scales.shape == (2, 7, 3)
    assert gaussians.quats.shape == (2, 7, 4)
    assert gaussians.opacities.shape == (2, 7)


@given(seed=seeds, log_magnitude=magnitudes)
def test_shoemake_quaternion_has_unit_norm(seed, log_magnitude):
    quats = shoemake_quaternion(random_tokens(seed, log_magnitude, shape=(64, 3)))
    torch.testing.assert_close(quats.norm(dim=-1), torch.ones(64), atol=1e-5, rtol=0)


def test_shoemake_quaternion_follows_the_papers_formula():
    logits = torch.randn(100, 3, dtype=torch.float64) * 3
    u, v, w = torch.sigmoid(logits).unbind(-1)
    expected = torch.stack(
        [
            torch.sqrt(1 - u) * torch.sin(2 * math.pi * v),
            torch.sqrt(1 - u) * torch.cos(2 * math.pi * v),
            torch.sqrt(u) * torch.sin(2 * math.pi * w),
            torch.sqrt(u) * torch.cos(2 * math.pi * w),
        ],
        dim=-1,
    )
    torch.testing.assert_close(shoemake_quaternion(logits), expected)


def test_shoemake_quaternion_gradient_is_finite_where_sigmoid_saturates():
    logits = torch.tensor([[-200.0, 0.3, -0.2], [200.0, 1.0, 2.0], [0.0, -300.0, 300.0]])
    logits.requires_grad_(True)
    shoemake_quaternion(logits).sum().backward()
    assert torch.isfinite(logits.grad).all()


@given(seed=seeds, log_magnitude=magnitudes)
def test_head_outputs_lie_in_their_documented_ranges(seed, log_magnitude):
    head = GaussianHead(16, max_scale=0.25, center_range=2.0)
    gaussians = head(random_tokens(seed, log_magnitude))
    assert gaussians.means.abs().max() <= 2.0
    assert gaussians.scales.min() >= 0 and gaussians.scales.max() <= 0.25
    assert gaussians.colors.min() >= 0 and gaussians.colors.max() <= 1
    assert gaussians.opacities.min() >= 0 and gaussians.opacities.max() <= 1
    torch.testing.assert_close(
        gaussians.quats.norm(dim=-1), torch.ones(2, 5), atol=1e-5, rtol=0
    )
    gaussians.validate()


def test_head_applies_the_papers_activations_to_the_linear_outputs():
    head = GaussianHead(16, max_scale=0.5, center_range=1.5)
    tokens = torch.randn(1, 4, 16)
    raw = tokens @ head.proj.weight.T
    gaussians = head(tokens)
    torch.testing.assert_close(gaussians.means, 1.5 * 2 * (torch.sigmoid(raw[..., 0:3]) - 0.5))
    torch.testing.assert_close(gaussians.scales, 0.5 * torch.sigmoid(raw[..., 3:6]))
    torch.testing.assert_close(gaussians.quats, shoemake_quaternion(raw[..., 6:9]))
    torch.testing.assert_close(gaussians.colors, torch.sigmoid(raw[..., 10:13]))
    torch.testing.assert_close(gaussians.opacities, torch.sigmoid(raw[..., 13]))


def test_shoemake_head_ignores_the_fourth_rotation_output():
    head = GaussianHead(16)
    tokens = torch.randn(1, 4, 16)
    before = head(tokens)
    with torch.no_grad():
        head.proj.weight[9] += 5.0
    torch.testing.assert_close(head(tokens).quats, before.quats)


def test_quaternion_rotation_normalises_all_four_raw_outputs():
    head = GaussianHead(16, rotation="quaternion")
    tokens = torch.randn(1, 4, 16)
    raw = (tokens @ head.proj.weight.T)[..., 6:10]
    torch.testing.assert_close(head(tokens).quats, raw / raw.norm(dim=-1, keepdim=True))


def test_head_computes_in_float32_under_bfloat16_autocast():
    head = GaussianHead(16)
    tokens = torch.randn(1, 4, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast_gaussians = head(tokens)
    assert autocast_gaussians.dtype == torch.float32
    torch.testing.assert_close(autocast_gaussians.means, head(tokens).means)


def test_head_outputs_float32_for_bfloat16_tokens():
    head = GaussianHead(16).to(torch.bfloat16)
    gaussians = head(torch.randn(1, 4, 16, dtype=torch.bfloat16))
    assert gaussians.dtype == torch.float32


def test_head_rejects_tokens_of_the_wrong_width():
    with pytest.raises(ValueError, match="width 16"):
        GaussianHead(16)(torch.randn(1, 4, 8))


def test_head_rejects_tokens_without_a_batch_dimension():
    with pytest.raises(TypeError, match="tokens"):
        GaussianHead(16)(torch.randn(4, 16))


@pytest.mark.parametrize(
    "kwargs",
    [dict(max_scale=0.0), dict(center_range=-1.0), dict(num_channels=0), dict(rotation="euler")],
)
def test_head_rejects_bad_configuration(kwargs):
    with pytest.raises(ValueError):
        GaussianHead(16, **kwargs)


@pytest.mark.parametrize("gaussians_per_token", [1, 2, 4])
@pytest.mark.parametrize("num_channels", [1, 3])
def test_head_gives_gaussians_per_token_from_one_linear(gaussians_per_token, num_channels):
    head = GaussianHead(16, num_channels=num_channels, gaussians_per_token=gaussians_per_token)
    linears = [module for module in head.modules() if isinstance(module, torch.nn.Linear)]
    assert len(linears) == 1 and linears[0].bias is None
    assert head.proj.weight.shape == (gaussians_per_token * (11 + num_channels), 16)
    assert set(head.state_dict()) == {"proj.weight"}
    gaussians = head(torch.randn(2, 5, 16))
    count = 5 * gaussians_per_token
    assert gaussians.means.shape == gaussians.scales.shape == (2, count, 3)
    assert gaussians.quats.shape == (2, count, 4)
    assert gaussians.colors.shape == (2, count, num_channels)
    assert gaussians.opacities.shape == (2, count)


@pytest.mark.parametrize("gaussians_per_token", [2, 3])
def test_a_tokens_gaussians_are_consecutive_and_each_the_one_gaussian_head_of_its_rows(
    gaussians_per_token,
):
    """Gaussian ``i m + j`` is token ``i`` through rows block ``j``, bit for bit as the m = 1
    head with those rows computes it."""
    head = GaussianHead(16, gaussians_per_token=gaussians_per_token)
    tokens = random_tokens(0, 1.0)
    gaussians = head(tokens)
    for block, rows in enumerate(head.proj.weight.split(14)):
        single = GaussianHead(16)
        with torch.no_grad():
            single.proj.weight.copy_(rows)
        expected = single(tokens)
        for field in ("means", "scales", "quats", "colors", "opacities"):
            assert torch.equal(getattr(gaussians, field)[:, block::gaussians_per_token],
                               getattr(expected, field)), field


def test_one_gaussian_per_token_is_the_default_head_with_the_same_weights():
    torch.manual_seed(3)
    default = GaussianHead(16)
    torch.manual_seed(3)
    explicit = GaussianHead(16, gaussians_per_token=1)
    assert torch.equal(default.proj.weight, explicit.proj.weight)
    tokens = random_tokens(1, 0.0)
    for field in ("means", "scales", "quats", "colors", "opacities"):
        assert torch.equal(getattr(default(tokens), field), getattr(explicit(tokens), field))


def test_every_gaussians_rows_start_with_the_one_gaussian_heads_xavier_bound():
    head = GaussianHead(512, gaussians_per_token=4)
    bound = math.sqrt(6 / (512 + 14))  # xavier-uniform of a (14, 512) weight
    for rows in head.proj.weight.split(14):
        assert rows.abs().max() <= bound
        assert rows.abs().max() > 0.95 * bound
        assert abs(rows.std().item() - bound / math.sqrt(3)) < 0.05 * bound


def test_head_rejects_zero_gaussians_per_token():
    with pytest.raises(ValueError, match="gaussians_per_token=0"):
        GaussianHead(16, gaussians_per_token=0)


@pytest.mark.parametrize(
    ("kwargs", "error", "named"),
    [
        (dict(in_dim=16.5), TypeError, "in_dim=16.5"),
        (dict(in_dim=16, gaussians_per_token=2.5), TypeError, "gaussians_per_token=2.5"),
        (dict(in_dim=16, num_channels=True), TypeError, "num_channels=True"),
        (dict(in_dim=0), ValueError, "in_dim=0"),
        (dict(in_dim=16, max_scale=math.inf), ValueError, "max_scale=inf"),
        (dict(in_dim=16, max_scale=math.nan), ValueError, "max_scale=nan"),
        (dict(in_dim=16, max_scale=-0.1), ValueError, "max_scale=-0.1"),
        (dict(in_dim=16, center_range=math.inf), ValueError, "center_range=inf"),
    ],
)
def test_head_refuses_a_bad_setting_by_name_before_building_the_linear(kwargs, error, named):
    with pytest.raises(error, match=rf"^GaussianHead: .*got {re.escape(named)}"):
        GaussianHead(**kwargs)


def test_head_takes_an_int_max_scale():
    assert GaussianHead(16, max_scale=1).max_scale == 1


def test_multi_gaussian_head_checks_token_shapes():
    head = GaussianHead(16, gaussians_per_token=2)
    with pytest.raises(ValueError, match="width 16"):
        head(torch.randn(1, 4, 8))
    with pytest.raises(TypeError, match="tokens"):
        head(torch.randn(4, 16))
