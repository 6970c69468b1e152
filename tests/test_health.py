"""Gaussian health: border, invisible and coverage shares, and the collapse warning."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from splathead import Camera, Gaussians, SplatRenderer
from splathead.health import (
    COLLAPSE_BORDER,
    COLLAPSE_COVERAGE,
    GaussianHealth,
    collapse_warning,
    gaussian_health,
)

SIZE = 32
CAMERA = Camera.gmae(SIZE, SIZE)
RENDERER = SplatRenderer(CAMERA, backend="torch")


def gaussians_at(means: torch.Tensor, opacities: torch.Tensor, scale: float = 0.05) -> Gaussians:
    b, n, _ = means.shape
    return Gaussians(
        means=means,
        scales=torch.full((b, n, 3), scale),
        quats=torch.tensor([1.0, 0, 0, 0]).expand(b, n, 4),
        colors=torch.zeros(b, n, 3),
        opacities=opacities,
    )


def health_of(gaussians: Gaussians) -> GaussianHealth:
    return gaussian_health(gaussians, RENDERER(gaussians).alpha, CAMERA)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    spread=st.floats(0.1, 5.0),
    opacity_floor=st.floats(0.0, 1.0),
)
def test_every_share_lies_in_zero_one(seed, spread, opacity_floor):
    generator = torch.Generator().manual_seed(seed)
    means = spread * (2 * torch.rand(2, 16, 3, generator=generator) - 1)
    opacities = opacity_floor * torch.rand(2, 16, generator=generator)
    health = health_of(gaussians_at(means, opacities))
    for share in health:
        assert share.shape == (2,)
        assert ((share >= 0) & (share <= 1)).all()


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), num_on_border=st.integers(0, 8))
def test_border_counts_the_centres_within_two_percent_of_an_edge(seed, num_on_border):
    generator = torch.Generator().manual_seed(seed)
    # x, y in (-1, 1) span the image: 2% of its width is 0.04 scene units from +-1.
    means = 0.95 * (2 * torch.rand(1, 8, 3, generator=generator) - 1)
    edge = 0.97 + 0.5 * torch.rand(num_on_border, generator=generator)
    side = torch.randint(2, (num_on_border,), generator=generator) * 2 - 1
    axis = torch.randint(2, (num_on_border,), generator=generator)
    means[0, torch.arange(num_on_border), axis] = side * edge
    health = health_of(gaussians_at(means, torch.ones(1, 8)))
    assert health.border.item() == pytest.approx(num_on_border / 8)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), num_invisible=st.integers(0, 10))
def test_invisible_counts_the_opacities_below_one_in_255(seed, num_invisible):
    generator = torch.Generator().manual_seed(seed)
    opacities = 1 / 255 + (1 - 1 / 255) * torch.rand(1, 10, generator=generator)
    opacities[0, :num_invisible] = torch.rand(num_invisible, generator=generator) / 256
    health = health_of(gaussians_at(torch.zeros(1, 10, 3), opacities))
    assert health.invisible.item() == pytest.approx(num_invisible / 10)


def test_coverage_is_the_renders_mean_alpha_zero_to_one():
    nothing = gaussians_at(torch.zeros(1, 4, 3), torch.zeros(1, 4))
    assert health_of(nothing).coverage.item() == 0
    everywhere = gaussians_at(torch.zeros(1, 1, 3), torch.ones(1, 1), scale=100.0)
    assert health_of(everywhere).coverage.item() == pytest.approx(0.999, abs=1e-3)


def test_alpha_of_another_size_is_refused_naming_alpha():
    gaussians = gaussians_at(torch.zeros(2, 4, 3), torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"alpha is \[2, 1, 16, 16\], expected \[2 1 32 32\]"):
        gaussian_health(gaussians, torch.zeros(2, 1, 16, 16), CAMERA)


def test_healthy_figures_give_no_warning():
    # benchmarks/collapse_probe.py's healthy runs: trained, a passing moment in warmup, the first
    # step's low coverage; and white images, which need no Gaussian.
    assert collapse_warning(border=0.18, invisible=0.0, coverage=0.93) is None
    assert collapse_warning(border=0.86, invisible=0.0, coverage=0.15) is None
    assert collapse_warning(border=0.1, invisible=0.0, coverage=0.24) is None
    assert collapse_warning(border=0.0, invisible=0.0, coverage=0.0) is None


def test_centres_on_the_border_with_an_empty_render_warn_naming_figures_and_cause():
    message = collapse_warning(border=1.0, invisible=0.0, coverage=0.172)  # the collapsed run
    assert "100% of the centres on the image border" in message
    assert "covers 17.2%" in message
    assert "learning rate" in message and "warmup" in message
    assert collapse_warning(border=0.0, invisible=1.0, coverage=0.0) is not None


def test_a_batch_pushed_onto_the_border_is_a_collapse():
    means = torch.rand(2, 64, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    means[..., :2] = means[..., :2].sign() * 0.999  # the collapsed run's centres
    health = health_of(gaussians_at(means, torch.full((2, 64), 0.9997), scale=0.01))
    assert health.border.min().item() == 1.0
    figures = {name: share.mean().item() for name, share in health._asdict().items()}
    assert figures["coverage"] < COLLAPSE_COVERAGE and figures["border"] > COLLAPSE_BORDER
    assert collapse_warning(**figures) is not None
