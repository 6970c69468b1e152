"""SplatRenderer's contract at its boundary: bad input fails clearly, degenerate input renders."""

import logging

import pytest
import torch
from jaxtyping import TypeCheckError

from splathead.camera import Camera
from splathead.gaussians import Gaussians
from splathead.render import NumbaBackend, RenderOutput, SplatRenderer, numba_available
from splathead.render.gsplat_backend import gsplat_available

FIELDS = ("means", "scales", "quats", "colors", "opacities")

needs_gsplat = pytest.mark.skipif(not gsplat_available(), reason="gsplat not installed")


def gaussians(b: int = 2, n: int = 5, c: int = 3, dtype=torch.float32) -> Gaussians:
    generator = torch.Generator().manual_seed(0)
    return Gaussians(
        means=(torch.rand(b, n, 3, generator=generator) * 2 - 1).to(dtype),
        scales=(torch.rand(b, n, 3, generator=generator) / 8).to(dtype),
        quats=torch.randn(b, n, 4, generator=generator).to(dtype),
        colors=torch.rand(b, n, c, generator=generator).to(dtype),
        opacities=torch.rand(b, n, generator=generator).to(dtype),
    )


@pytest.fixture
def renderer() -> SplatRenderer:
    return SplatRenderer(Camera.gmae(16, 16), backend="torch")


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_value_is_an_error_naming_the_field(renderer, field, bad):
    scene = gaussians()
    values = getattr(scene, field).clone()
    values.view(-1)[3] = bad
    with pytest.raises(ValueError, match=f"{field} holds NaN or Inf"):
        renderer(scene.replace(**{field: values}))


def test_negative_scale_is_an_error(renderer):
    scene = gaussians()
    with pytest.raises(ValueError, match="scales has negative values"):
        renderer(scene.replace(scales=scene.scales - 1))


@pytest.mark.parametrize("opacity", [-0.1, 1.1])
def test_opacity_outside_unit_interval_is_an_error(renderer, opacity):
    scene = gaussians()
    with pytest.raises(ValueError, match=r"opacities lie outside \[0, 1\]"):
        renderer(scene.replace(opacities=torch.full_like(scene.opacities, opacity)))


def test_check_inputs_false_skips_the_value_checks():
    scene = gaussians()
    colors = scene.colors.clone()
    colors[0, 0, 0] = float("nan")
    output = SplatRenderer(Camera.gmae(16, 16), backend="torch", check_inputs=False)(scene.replace(colors=colors))
    assert output.image.isnan().any()


def test_mismatched_gaussian_count_is_an_error_naming_the_field():
    scene = gaussians()
    with pytest.raises(TypeCheckError, match="opacities"):
        scene.replace(opacities=scene.opacities[:, :3])


def test_mismatched_batch_is_an_error_naming_the_field():
    scene = gaussians()
    with pytest.raises(TypeCheckError, match="colors"):
        scene.replace(colors=scene.colors[:1])


def test_gaussians_on_another_device_than_the_renderer_is_an_error(renderer):
    with pytest.raises(ValueError, match="Gaussians are on cpu but the renderer is on meta"):
        renderer.to("meta")(gaussians())


def test_background_channel_count_must_match_the_colours():
    renderer = SplatRenderer(Camera.gmae(16, 16), backend="torch", background=(1.0, 1.0))
    with pytest.raises(ValueError, match="background has 2 channels but Gaussians.colors has 3"):
        renderer(gaussians())


def test_per_image_background_must_be_b_by_c(renderer):
    with pytest.raises(ValueError, match=r"background must be \[b c\] = \(2, 3\).*got \(2, 4\)"):
        renderer(gaussians(), torch.ones(2, 4))


def test_per_image_background_with_nan_is_an_error(renderer):
    with pytest.raises(ValueError, match="background holds NaN"):
        renderer(gaussians(), torch.full((2, 3), float("nan")))


@pytest.mark.parametrize("background", [[[1.0]], [], float("nan")])
def test_bad_default_background_is_rejected_at_construction(background):
    with pytest.raises(ValueError, match="background"):
        SplatRenderer(Camera.gmae(16, 16), background=background)


def test_unknown_backend_is_rejected_at_construction():
    with pytest.raises(ValueError, match="backend must be 'auto', 'torch', 'numba', 'gsplat' or a RenderBackend"):
        SplatRenderer(Camera.gmae(16, 16), backend="cuda")


@needs_gsplat
def test_float64_to_gsplat_is_an_error():
    renderer = SplatRenderer(Camera.gmae(16, 16), backend="gsplat")
    with pytest.raises(TypeError, match="float64 but the gsplat backend computes in float32"):
        renderer(gaussians(dtype=torch.float64))


@needs_gsplat
def test_gsplat_backend_needs_cuda_tensors():
    renderer = SplatRenderer(Camera.gmae(16, 16), backend="gsplat")
    with pytest.raises(ValueError, match="needs CUDA tensors, but means is on cpu"):
        renderer(gaussians())


@pytest.mark.skipif(not numba_available(), reason="numba not installed")
def test_auto_picks_numba_on_cpu_and_logs_the_choice_once(caplog):
    renderer = SplatRenderer(Camera.gmae(16, 16))
    assert renderer.backend == "numba"
    with caplog.at_level(logging.INFO, logger="splathead"):
        renderer(gaussians())
        renderer(gaussians())
    assert [record.getMessage() for record in caplog.records] == [
        "SplatRenderer: backend 'auto' renders with 'numba'"
    ]


def test_auto_without_numba_falls_back_to_torch_with_the_same_pixels_and_says_why(
    caplog, monkeypatch
):
    scene = gaussians()
    expected = SplatRenderer(Camera.gmae(16, 16), backend="torch")(scene)
    monkeypatch.setattr("splathead.render.renderer.numba_available", lambda: False)
    renderer = SplatRenderer(Camera.gmae(16, 16))
    assert renderer.backend == "torch"
    with caplog.at_level(logging.INFO, logger="splathead"):
        output = renderer(scene)
    for got, want in zip(output, expected):
        assert got is None and want is None or torch.equal(got, want)
    assert [record.getMessage() for record in caplog.records] == [
        "SplatRenderer: backend 'auto' renders with 'torch' (numba not importable: "
        'pip install "splathead[cpu]")'
    ]


@pytest.mark.skipif(not numba_available(), reason="numba not installed")
def test_numba_backend_needs_cpu_tensors():
    scene, background = gaussians().to("meta"), torch.ones(2, 3, device="meta")
    with pytest.raises(ValueError, match="renders CPU tensors, but means is on meta"):
        NumbaBackend().render(scene, Camera.gmae(16, 16), background, render_depth=False)


def test_renderer_moves_with_the_module_and_keeps_nothing_in_the_state_dict(renderer):
    assert dict(renderer.state_dict()) == {}
    moved = renderer.to(torch.float64)
    assert moved.background.dtype == torch.float64
    assert moved(gaussians(dtype=torch.float64)).image.dtype == torch.float64


def test_an_object_without_name_and_render_is_rejected_as_backend():
    with pytest.raises(TypeError, match="backend must be 'auto', 'torch', 'numba', 'gsplat' or a RenderBackend"):
        SplatRenderer(Camera.gmae(16, 16), backend=object())


class ShapeBreakingBackend:
    name = "broken"

    def render(self, gaussians, camera, background, *, render_depth):
        image = background[:, :, None, None].expand(-1, -1, camera.height, camera.width + 1)
        return RenderOutput(image, image[:, :1], None)


def test_a_backend_returning_the_wrong_shape_is_an_error_naming_it():
    renderer = SplatRenderer(Camera.gmae(16, 16), backend=ShapeBreakingBackend())
    with pytest.raises(ValueError, match=r"backend 'broken' returned image \(2, 3, 16, 17\), expected \(2, 3, 16, 16\)"):
        renderer(gaussians())


@pytest.mark.parametrize("c", [1, 2, 5])
def test_any_number_of_channels_renders(c):
    output = SplatRenderer(Camera.gmae(8, 8), backend="torch", background=0.0)(gaussians(c=c))
    assert isinstance(output, RenderOutput)
    assert output.image.shape == (2, c, 8, 8) and output.depth is None


def test_half_precision_renders_in_float32():
    scene = gaussians(dtype=torch.bfloat16)
    renderer = SplatRenderer(Camera.gmae(16, 16), backend="torch")
    output = renderer(scene)
    assert output.image.dtype == torch.float32
    torch.testing.assert_close(output.image, renderer(scene.to(torch.float32)).image)


def test_autocast_does_not_lower_the_precision():
    scene = gaussians()
    renderer = SplatRenderer(Camera.gmae(16, 16), backend="torch")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = renderer(scene)
    assert output.image.dtype == torch.float32
    torch.testing.assert_close(output.image, renderer(scene).image)


@pytest.mark.parametrize(
    "degenerate",
    {
        "zero scales": lambda g: g.replace(scales=torch.zeros_like(g.scales)),
        "zero quaternions": lambda g: g.replace(quats=torch.zeros_like(g.quats)),
        "behind the camera": lambda g: g.replace(means=g.means - torch.tensor([0.0, 0.0, 20.0])),
        "outside the image": lambda g: g.replace(means=g.means + torch.tensor([5.0, 0.0, 0.0])),
        "no gaussians": lambda g: g.gather(torch.zeros(2, 0, dtype=torch.long)),
    }.items(),
    ids=lambda item: item[0],
)
@pytest.mark.parametrize("model", ["ortho", "pinhole"])
def test_degenerate_but_valid_input_renders_finite_values_and_gradients(degenerate, model):
    name, transform = degenerate
    camera = Camera.gmae(16, 16)
    if model == "pinhole":
        viewmat = torch.eye(4)
        viewmat[2, 3] = 3.0
        camera = Camera(width=16, height=16, fx=16.0, fy=16.0, cx=8.0, cy=8.0, viewmat=viewmat)
    scene = transform(gaussians()).map(lambda t: t.clone().requires_grad_())
    output = SplatRenderer(camera, backend="torch", render_depth=True)(scene)
    assert all(torch.isfinite(t).all() for t in output)
    if scene.num_gaussians and output.image.requires_grad:
        (output.image.sum() + output.depth.sum()).backward()
        for field in FIELDS:
            assert torch.isfinite(getattr(scene, field).grad).all(), field
    if name in ("behind the camera", "outside the image", "no gaussians"):
        assert torch.equal(output.image, torch.ones_like(output.image))
