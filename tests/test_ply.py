"""export_ply: the reference 3D Gaussian-splatting PLY layout, read back with plyfile and inverted
by the formulas viewers use (sigmoid, exp, 0.5 + C0 * f_dc)."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from splathead import Gaussians, export_ply, gmae_vit_tiny

plyfile = pytest.importorskip("plyfile")

C0 = 0.28209479177387814  # 1 / (2 sqrt(pi)), the viewers' degree-0 harmonic
REFERENCE_PROPERTIES = (
    ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    + [f"f_rest_{i}" for i in range(45)]
    + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
)


def scene(b: int, n: int, seed: int = 0, channels: int = 3) -> Gaussians:
    generator = torch.Generator().manual_seed(seed)
    return Gaussians(
        means=torch.rand(b, n, 3, generator=generator) * 2 - 1,
        scales=torch.rand(b, n, 3, generator=generator) * 0.3 + 1e-3,
        quats=torch.randn(b, n, 4, generator=generator),
        colors=torch.rand(b, n, channels, generator=generator),
        opacities=torch.rand(b, n, generator=generator) * 0.98 + 0.01,
    )


def read_vertices(path) -> np.ndarray:
    ply = plyfile.PlyData.read(str(path))
    assert [element.name for element in ply.elements] == ["vertex"]
    return ply["vertex"].data


def column(vertices: np.ndarray, *names: str) -> torch.Tensor:
    return torch.from_numpy(np.stack([vertices[name] for name in names], axis=-1))


def test_the_file_holds_the_reference_layout_as_binary_little_endian_float32(tmp_path):
    path = tmp_path / "scene.ply"
    export_ply(scene(b=1, n=5), path)
    ply = plyfile.PlyData.read(str(path))
    assert not ply.text and ply.byte_order == "<"
    vertex = ply["vertex"]
    assert [prop.name for prop in vertex.properties] == REFERENCE_PROPERTIES
    assert {prop.val_dtype for prop in vertex.properties} == {"f4"}
    assert vertex.count == 5


@given(b=st.integers(1, 3), n=st.integers(1, 40), seed=st.integers(0, 2**16), data=st.data())
def test_viewers_formulas_give_back_the_chosen_images_gaussians(tmp_path_factory, b, n, seed, data):
    index = data.draw(st.integers(-b, b - 1), label="index")
    gaussians = scene(b, n, seed)
    path = tmp_path_factory.mktemp("ply") / "scene.ply"
    export_ply(gaussians, path, index=index)
    vertices = read_vertices(path)
    expected = gaussians[index]
    torch.testing.assert_close(column(vertices, "x", "y", "z"), expected.means[0])
    torch.testing.assert_close(
        0.5 + C0 * column(vertices, "f_dc_0", "f_dc_1", "f_dc_2"), expected.colors[0]
    )
    torch.testing.assert_close(column(vertices, "opacity")[:, 0].sigmoid(), expected.opacities[0])
    torch.testing.assert_close(
        column(vertices, "scale_0", "scale_1", "scale_2").exp(), expected.scales[0]
    )
    torch.testing.assert_close(
        column(vertices, "rot_0", "rot_1", "rot_2", "rot_3"), expected.quats[0]
    )
    normals_and_rest = ["nx", "ny", "nz"] + [f"f_rest_{i}" for i in range(45)]
    assert not column(vertices, *normals_and_rest).any()


def test_opacities_of_zero_and_one_and_zero_scales_stay_finite(tmp_path):
    gaussians = scene(b=1, n=2)
    gaussians = gaussians.replace(
        opacities=torch.tensor([[0.0, 1.0]]), scales=torch.zeros(1, 2, 3)
    )
    path = tmp_path / "edge.ply"
    export_ply(gaussians, path)
    vertices = read_vertices(path)
    values = column(vertices, *REFERENCE_PROPERTIES)
    assert torch.isfinite(values).all()
    torch.testing.assert_close(
        column(vertices, "opacity")[:, 0].sigmoid(), torch.tensor([0.0, 1.0]), atol=2e-6, rtol=0
    )


def test_a_gmae_forward_pass_exports_for_every_image(tmp_path):
    torch.manual_seed(0)
    model = gmae_vit_tiny(img_size=32).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    for index in range(2):
        export_ply(out.gaussians, tmp_path / f"{index}.ply", index=index)
        vertices = read_vertices(tmp_path / f"{index}.ply")
        torch.testing.assert_close(
            column(vertices, "x", "y", "z"), out.gaussians.means[index]
        )


@pytest.mark.parametrize("index", [2, -3])
def test_an_index_outside_the_batch_is_refused_by_name(tmp_path, index):
    with pytest.raises(IndexError, match=rf"index must lie in \[-2, 2\).*got {index}"):
        export_ply(scene(b=2, n=3), tmp_path / "x.ply", index=index)
    assert not (tmp_path / "x.ply").exists()


@pytest.mark.parametrize("channels", [1, 4])
def test_colours_other_than_rgb_are_refused(tmp_path, channels):
    with pytest.raises(ValueError, match=rf"RGB Gaussians .*got {channels} colour channels"):
        export_ply(scene(b=1, n=3, channels=channels), tmp_path / "x.ply")


def test_colours_outside_zero_one_are_refused(tmp_path):
    gaussians = scene(b=1, n=3)
    gaussians = gaussians.replace(colors=gaussians.colors + 1.0)
    with pytest.raises(ValueError, match=r"colours in \[0, 1\]"):
        export_ply(gaussians, tmp_path / "x.ply")


def test_invalid_gaussians_are_refused_before_writing(tmp_path):
    gaussians = scene(b=1, n=3)
    means = gaussians.means.clone()
    means[0, 1, 0] = float("nan")
    gaussians = gaussians.replace(means=means)
    with pytest.raises(ValueError, match="means holds NaN"):
        export_ply(gaussians, tmp_path / "x.ply")
    assert not (tmp_path / "x.ply").exists()
