"""EWA projection of 3D Gaussians onto the image plane, exactly as gsplat 1.5 computes it.

For a Gaussian with centre ``mu``, scales ``s`` and quaternion ``q`` (w, x, y, z) and a camera with
world-to-camera transform ``[W | t]`` and intrinsics ``fx, fy, cx, cy``:

1. ``Sigma = (R_q S)(R_q S)^T`` with ``R_q`` the rotation of the normalised quaternion and
   ``S = diag(s)``; a zero quaternion is read as the identity rotation (gsplat's kernels give NaN).
2. Camera space: ``mu_c = W mu + t = (x, y, z)``, ``Sigma_c = W Sigma W^T``.
3. Projection with Jacobian ``J``:

   - pinhole: ``mean2d = (fx x/z + cx, fy y/z + cy)``,
     ``J = [[fx/z, 0, -fx tx/z^2], [0, fy/z, -fy ty/z^2]]`` where ``tx = z clamp(x/z)`` and
     ``ty = z clamp(y/z)`` are clamped to the view frustum widened by 30% of the half field of
     view (``-(cx/fx + 0.3 W/(2 fx)) <= x/z <= (W - cx)/fx + 0.3 W/(2 fx)``); the mean itself is
     not clamped.
   - ortho: ``mean2d = (fx x + cx, fy y + cy)``, ``J = [[fx, 0, 0], [0, fy, 0]]``.

4. ``cov2d = J Sigma_c J^T + eps2d I`` (``eps2d = 0.3`` px^2 of blur keeps ``cov2d`` invertible
   even for zero scales); the conic is ``cov2d^-1`` stored as ``(a, b, c)`` =
   ``(inv[0, 0], inv[0, 1], inv[1, 1])``.
5. Culling (``radii = 0``): ``z < near`` or ``z > far``; ``det(cov2d) <= 0``; opacity below
   ``1/255``; or a bounding box that misses the image. The box half-widths are
   ``ceil(k sqrt(cov2d[0, 0]))`` and ``ceil(k sqrt(cov2d[1, 1]))`` with the opacity-aware
   extent ``k = min(3.33, sqrt(2 ln(255 opacity)))`` (gsplat 1.5's CUDA kernel; without
   opacities ``k = 3.33`` as in gsplat's pure-torch reference). Since ``opacity <= 1`` gives
   ``k <= 3.329``, the box contains every pixel where ``opacity exp(-sigma) >= 1/255``, i.e.
   every pixel the Gaussian can contribute to.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange

from splathead.camera import Camera
from splathead.typing import Float, Int, Tensor, typecheck

EPS2D = 0.3
"""Screen-space blur (px^2) added to every projected covariance."""
ALPHA_THRESHOLD = 1.0 / 255.0
"""Contributions with ``alpha`` below this are skipped."""
RADIUS_EXTENT = 3.33
"""Largest bounding-box half-width in standard deviations."""
FRUSTUM_MARGIN = 0.3
"""The pinhole Jacobian clamps ``x/z, y/z`` to the frustum widened by this fraction of the
half field of view."""


class ProjectedGaussians(NamedTuple):
    """Screen-space Gaussians; only entries with ``radii > 0`` (both axes) are valid.

    Culled entries hold finite but meaningless values.
    """

    means2d: Float[Tensor, "b n 2"]
    """Centres in pixels (x = column, y = row); pixel ``(i, j)`` at ``(j + .5, i + .5)``."""
    conics: Float[Tensor, "b n 3"]
    """Inverse of the blurred 2D covariance as ``(a, b, c)``: ``[[a, b], [b, c]]``."""
    depths: Float[Tensor, "b n"]
    """Camera-space z of the centres (the compositing order)."""
    radii: Int[Tensor, "b n 2"]
    """Bounding-box half-widths ``(rx, ry)`` in pixels, int32; 0 when culled."""


@typecheck
def zero_quats_to_identity(quats: Float[Tensor, "*batch 4"]) -> Float[Tensor, "*batch 4"]:
    """Replace zero quaternions by the identity ``(1, 0, 0, 0)`` (gradient zero there), so that
    normalising stays finite; gsplat's kernels give NaN for them."""
    is_zero = (quats == 0).all(dim=-1, keepdim=True)
    return torch.where(is_zero, quats.new_tensor([1.0, 0.0, 0.0, 0.0]), quats)


@typecheck
def quat_to_rotmat(quats: Float[Tensor, "*batch 4"]) -> Float[Tensor, "*batch 3 3"]:
    """Rotation matrices of quaternions ``(w, x, y, z)``, normalised first; a zero quaternion
    gives the identity (:func:`zero_quats_to_identity`)."""
    w, x, y, z = F.normalize(zero_quats_to_identity(quats), dim=-1).unbind(-1)
    rotation = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    )
    return rearrange(rotation, "... (i j) -> ... i j", i=3)


@typecheck
def covariance_3d(
    quats: Float[Tensor, "*batch 4"], scales: Float[Tensor, "*batch 3"]
) -> Float[Tensor, "*batch 3 3"]:
    """``Sigma = (R S)(R S)^T`` from quaternions and per-axis standard deviations."""
    rotation_scale = quat_to_rotmat(quats) * scales[..., None, :]
    return rotation_scale @ rotation_scale.transpose(-1, -2)


@typecheck
def project_gaussians(
    means: Float[Tensor, "b n 3"],
    quats: Float[Tensor, "b n 4"],
    scales: Float[Tensor, "b n 3"],
    opacities: Float[Tensor, "b n"] | None,
    camera: Camera,
    *,
    eps2d: float = EPS2D,
) -> ProjectedGaussians:
    """Project world-space Gaussians to the image of ``camera`` (see the module docstring).

    Args:
        means, quats, scales: world-space Gaussians (scales are standard deviations).
        opacities: peak opacities, for gsplat 1.5's opacity-aware radii and culling; ``None``
            uses the fixed 3.33-sigma extent.
        camera: its matrices are brought to the device and dtype of ``means``; its size bounds
            the frustum clamp and the culling, ``near`` and ``far`` the depth range kept.
        eps2d: blur added to the 2D covariance's diagonal (px^2).

    Differentiable in ``means2d``, ``conics`` and ``depths``; ``radii`` are integers.
    """
    viewmat, intrinsics = camera.viewmat.to(means), camera.intrinsics.to(means)
    width, height, near, far = camera.width, camera.height, camera.near, camera.far
    rotation, translation = viewmat[:3, :3], viewmat[:3, 3]
    means_cam = means @ rotation.T + translation
    covars_cam = rotation @ covariance_3d(quats, scales) @ rotation.T
    x, y, z = means_cam.unbind(-1)
    fx, fy, cx, cy = intrinsics[0, 0], intrinsics[1, 1], intrinsics[0, 2], intrinsics[1, 2]
    in_depth_range = (z >= near) & (z <= far)

    zero = torch.zeros_like(z)
    if camera.model == "pinhole":
        # Culled centres (z <= 0 among them) divide by 1 instead, so no inf/NaN reaches autograd.
        z = torch.where(in_depth_range, z, torch.ones_like(z))
        u, v = x / z, y / z
        means2d = torch.stack([fx * u + cx, fy * v + cy], dim=-1)
        margin_x, margin_y = FRUSTUM_MARGIN * 0.5 * width / fx, FRUSTUM_MARGIN * 0.5 * height / fy
        tx = z * torch.clamp(u, min=-(cx / fx + margin_x), max=(width - cx) / fx + margin_x)
        ty = z * torch.clamp(v, min=-(cy / fy + margin_y), max=(height - cy) / fy + margin_y)
        rows = [fx / z, zero, -fx * tx / z**2, zero, fy / z, -fy * ty / z**2]
    elif camera.model == "ortho":
        means2d = torch.stack([fx * x + cx, fy * y + cy], dim=-1)
        rows = [fx + zero, zero, zero, zero, fy + zero, zero]
    else:
        raise ValueError(f"camera.model must be 'pinhole' or 'ortho', got {camera.model!r}")
    jacobian = rearrange(torch.stack(rows, dim=-1), "... (i j) -> ... i j", i=2)
    covars2d = jacobian @ covars_cam @ jacobian.transpose(-1, -2)
    covars2d = covars2d + eps2d * torch.eye(2, dtype=covars2d.dtype, device=covars2d.device)

    var_x, cov_xy, var_y = covars2d[..., 0, 0], covars2d[..., 0, 1], covars2d[..., 1, 1]
    det = var_x * var_y - cov_xy * covars2d[..., 1, 0]
    invertible = det > 0
    det = torch.where(invertible, det, torch.ones_like(det))
    conics = torch.stack([var_y / det, -cov_xy / det, var_x / det], dim=-1)

    with torch.no_grad():
        keep = in_depth_range & invertible
        extent = torch.full_like(det, RADIUS_EXTENT)
        if opacities is not None:
            bright = opacities >= ALPHA_THRESHOLD
            keep &= bright
            opacity_extent = torch.sqrt(2 * torch.log(torch.where(bright, opacities, 1.0) * 255))
            extent = torch.minimum(extent, opacity_extent)
        radii = torch.ceil(extent[..., None] * torch.sqrt(torch.stack([var_x, var_y], -1)))
        keep &= (radii > 0).any(dim=-1)
        box_min, box_max = means2d - radii, means2d + radii
        keep &= (box_max[..., 0] > 0) & (box_min[..., 0] < width)
        keep &= (box_max[..., 1] > 0) & (box_min[..., 1] < height)
        radii = torch.where(keep[..., None], radii, 0.0).to(torch.int32)

    return ProjectedGaussians(means2d=means2d, conics=conics, depths=means_cam[..., 2], radii=radii)
