"""gsplat's CUDA entry points replaced by pure-torch stand-ins, so that the project's own
``gsplat.rasterization`` call (:func:`splathead.render.gsplat_backend.rasterize_with_gsplat`)
runs on a CPU.

Projection and tile intersection are gsplat's own reference functions
(``gsplat.cuda._torch_impl``: its camera models, quaternion convention, conics, radii and the
depth-sorted tile lists). gsplat's reference rasteriser still calls a CUDA kernel, so the pixels
are composited here, tile by tile, in the order gsplat's tile lists give, by the library's
:func:`~splathead.render.composite.composite` (the classic rule of ``reference.py``). What this
checks is the call: argument order, camera model, quaternion order, backgrounds, the expected
depth channel and batching, all of which pass through gsplat's own code.
"""

from contextlib import contextmanager
from unittest import mock

import torch
from einops import rearrange

from splathead.render.composite import composite
from splathead.render.gsplat_backend import rasterize_with_gsplat


def fully_fused_projection(
    means, covars, quats, scales, viewmats, Ks, width, height, eps2d=0.3, near_plane=0.01,
    far_plane=1e10, radius_clip=0.0, packed=False, sparse_grad=False, calc_compensations=False,
    camera_model="pinhole", opacities=None,
):
    from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci

    assert covars is None and not packed and radius_clip == 0.0 and not calc_compensations
    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_preci=False)
    return _fully_fused_projection(
        means, covars, viewmats, Ks, width, height, eps2d, near_plane, far_plane,
        calc_compensations, camera_model,
    )


def isect_tiles(
    means2d, radii, depths, tile_size, tile_width, tile_height, sort=True, segmented=False,
    packed=False, n_images=None, image_ids=None, gaussian_ids=None,
):
    from gsplat.cuda._torch_impl import _isect_tiles

    assert sort and not packed
    return _isect_tiles(means2d, radii, depths, tile_size, tile_width, tile_height, sort)


def isect_offset_encode(isect_ids, n_images, tile_width, tile_height):
    from gsplat.cuda._torch_impl import _isect_offset_encode

    return _isect_offset_encode(isect_ids, n_images, tile_width, tile_height)


def rasterize_to_pixels(
    means2d, conics, colors, opacities, image_width, image_height, tile_size, isect_offsets,
    flatten_ids, backgrounds=None, masks=None, packed=False, absgrad=False,
):
    """gsplat's ``rasterize_to_pixels`` contract: ``[..., h, w, c]`` colours (background
    included) and ``[..., h, w, 1]`` alphas, from the depth-sorted ``flatten_ids`` of each tile."""
    assert masks is None and not packed
    image_dims = means2d.shape[:-2]
    tiles_y, tiles_x = isect_offsets.shape[-2:]
    flat = [rearrange(field, "... n f -> (...) n f") for field in (means2d, conics, colors)]
    flat_means2d, flat_conics, flat_colors = (field.flatten(0, 1) for field in flat)
    flat_opacities = opacities.flatten()
    starts = isect_offsets.flatten().long()
    ends = torch.cat([starts[1:], starts.new_tensor([len(flatten_ids)])])
    like = dict(dtype=means2d.dtype, device=means2d.device)
    features, transmittance = [], []
    for tile, (start, end) in enumerate(zip(starts.tolist(), ends.tolist())):
        tile_y, tile_x = divmod(tile % (tiles_y * tiles_x), tiles_x)
        ids = flatten_ids[start:end].long()
        pixels_x = torch.arange(tile_x * tile_size, min((tile_x + 1) * tile_size, image_width), **like)
        pixels_y = torch.arange(tile_y * tile_size, min((tile_y + 1) * tile_size, image_height), **like)
        if len(ids) == 0:  # composite needs one entry at least
            features.append(colors.new_zeros(len(pixels_y), len(pixels_x), colors.shape[-1]))
            transmittance.append(colors.new_ones(len(pixels_y), len(pixels_x)))
            continue
        tile_features, tile_transmittance = composite(
            (pixels_x + 0.5)[None], (pixels_y + 0.5)[None], flat_means2d[ids][None],
            flat_conics[ids][None], flat_opacities[ids][None], flat_colors[ids][None],
        )
        features.append(tile_features[0])
        transmittance.append(tile_transmittance[0])

    def assemble(tiles: list[torch.Tensor]) -> torch.Tensor:
        rows = [torch.cat(tiles[i : i + tiles_x], dim=1) for i in range(0, len(tiles), tiles_x)]
        images = [torch.cat(rows[i : i + tiles_y], dim=0) for i in range(0, len(rows), tiles_y)]
        return torch.stack(images).reshape(*image_dims, image_height, image_width, -1)

    transmittance = assemble([t[..., None] for t in transmittance])
    render_colors = assemble(features)
    if backgrounds is not None:
        render_colors = render_colors + transmittance * backgrounds[..., None, None, :]
    return render_colors, 1 - transmittance


@contextmanager
def cuda_entry_points_on_the_cpu():
    """Within the block, ``gsplat.rasterization`` runs on the stand-ins above."""
    import gsplat.rendering

    with mock.patch.multiple(
        gsplat.rendering, fully_fused_projection=fully_fused_projection, isect_tiles=isect_tiles,
        isect_offset_encode=isect_offset_encode, rasterize_to_pixels=rasterize_to_pixels,
    ):
        yield


class GsplatCallOnCPU:
    """The project's gsplat call as a render backend, on the stand-ins, in any float dtype."""

    name = "gsplat call on the CPU"

    def render(self, gaussians, camera, background, *, render_depth):
        with cuda_entry_points_on_the_cpu():
            return rasterize_with_gsplat(gaussians, camera, background, render_depth=render_depth)
