"""EWA projection of 3D Gaussians onto the image plane, exactly as gsplat 1.5 computes it.

For a Gaussian with centre ``mu``, scales ``s`` and quaternion ``q`` (w, x, y, z) and a camera with
world-to-camera transform ``[W | t]`` and intrinsics ``fx, fy, cx, cy``:

1. ``Sigma = (R_q S)(R_q S)^T`` with ``R_q`` the rotation of the normalised quaternion and
   ``S = diag(s)``. Every finite non-zero quaternion gives its rotation, whatever its norm
   (:func:`normalize_quats`); an exact zero is read as the identity (gsplat's kernels give NaN).
2. Camera space: ``mu_c = W mu + t = (x, y, z)``, ``Sigma_c = W Sigma W^T``.
3. Projection with Jacobian ``J``:

   - pinhole: ``mean2d = (fx x/z + cx, fy y/z + cy)``,
     ``J = [[fx/z, 0, -fx tx/z^2], [0, fy/z, -fy ty/z^2]]`` where ``tx = z clamp(x/z)`` and
     ``ty = z clamp(y/z)`` are clamped to the view frustum widened by 30% of the half field of
     view (``-(cx/fx + 0.3 W/(2 fx)) <= x/z <= (W - cx)/fx + 0.3 W/(2 fx)``); the mean itself is
     not clamped.
   - ortho: ``mean2d = (fx x + cx, fy y + cy)``, ``J = [[fx, 0, 0], [0, fy, 0]]``.
   - ortho with ``camera.footprint_depth = d`` (the GMAE authors' footprint): the ortho
     ``mean2d``, and the pinhole ``J`` of focal ``(fx d, fy d)``, its ``x/z`` and ``y/z``
     clamped symmetrically to ``1.3 W / (2 fx)`` and ``1.3 H / (2 fy)`` (gsplat 0.1.0's
     ``project_cov3d_ewa`` with the authors' focal ``fx``, their scales being ours times ``d``).

4. ``cov2d = J Sigma_c J^T + eps2d I`` (``eps2d = 0.3`` px^2 of blur keeps ``cov2d`` invertible
   even for zero scales); the conic is ``cov2d^-1`` stored as ``(a, b, c)`` =
   ``(inv[0, 0], inv[0, 1], inv[1, 1])``.
5. Culling (``radii = 0``): ``z < near`` or ``z > far``; ``det(cov2d) <= 0``; opacity below
   ``1/255``; or a bounding box that misses the image. The box half-widths are
   ``ceil(k sqrt(cov2d[0, 0]))`` and ``ceil(k sqrt(cov2d[1, 1]))`` with the opacity-aware
   extent ``k = min(3.33, sqrt(2 ln(255 opacity)))`` (gsplat 1.5's CUDA kernel; without
   opacities ``k = 3.33`` as in gsplat's pure-torch reference). Since ``opacity <= 1`` gives
   ``k <= 3.329``, the box contains every pixel where ``opacity exp(-sigma) >= 1/255``, i.e.
   every pixel the Gaussian can contribute to. Radii are int32 (as gsplat's) and capped at
   ``MAX_RADIUS``; the cull uses the capped box.

Huge Gaussians. Each axis's scale is capped where its projected standard deviation reaches
``MAX_FOOTPRINT`` times the centre's reach (its distance to the image's far edges plus the image
size, at most ``MAX_REACH``), and at ``MAX_SCALE`` (:func:`cap_scales`; no gradient flows
through a capped entry). Such a footprint is flat over the image (``exp(-sigma)`` within
``2^-24`` of 1 on it, before and after the cap), so the render does not change, while squares,
determinants and radii stay finite: a standard deviation of ``1e20`` would overflow float32.
An axis that projects to under ``1 / MAX_FOOTPRINT`` of the Jacobian's norm (nearly along the
line of sight) is capped as if it projected to that much, which bounds float32's rounding of the
huge 3D covariance into the 2D one. Very elongated footprints (axis ratios beyond about 1e3)
lose precision in float32's determinant, in gsplat as here.

Precision. float16 and bfloat16 inputs are projected in float32 (outputs float32): the 2D
determinant of a footprint over ~16 px overflows float16.
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
AUTHORS_FRUSTUM = 1.3
"""The authors' footprint clamps ``|x/z|, |y/z|`` to this many tangents of the half field of
view of focal ``fx, fy`` (gsplat 0.1.0, symmetric about the axis)."""
MAX_FOOTPRINT = 2.0**12
"""Scales are capped where an axis's projected standard deviation exceeds this times the
centre's reach: ``0.5 / MAX_FOOTPRINT^2 = 2^-25``, so the footprint is flat over the image."""
MAX_REACH = 2.0**16
"""The reach (px) used for the cap is at most this, which keeps ``cov2d``'s determinant below
about ``(9 (MAX_FOOTPRINT MAX_REACH)^2)^2 ~ 2^118``, finite in float32."""
MAX_SCALE = 1e18
"""No scale exceeds this (scene units): its square stays finite in float32."""
MAX_RADIUS = 2**30
"""Bounding-box half-widths are capped here so that they fit gsplat's int32 radii."""
_HALF_DTYPES = (torch.float16, torch.bfloat16)


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
def normalize_quats(quats: Float[Tensor, "*batch 4"]) -> Float[Tensor, "*batch 4"]:
    """Unit quaternions for every finite quaternion, whatever its norm; a zero quaternion gives
    the identity ``(1, 0, 0, 0)`` with gradient zero (gsplat's kernels give NaN there).

    A quaternion whose largest absolute component lies outside ``[1e-6, sqrt(max / 8)]`` of its
    dtype is first divided by that component, so that the squares in its norm neither overflow
    (``|q| >= 1e19`` in float32) nor fall below ``F.normalize``'s ``eps`` (``|q| <= 1e-12``);
    this is the same function of ``q``, gradients included, and every other quaternion is
    normalised exactly as gsplat does it.
    """
    largest = quats.abs().amax(dim=-1, keepdim=True)
    is_zero = largest == 0
    in_range = (largest >= 1e-6) & (largest <= (torch.finfo(quats.dtype).max / 8) ** 0.5)
    scaled = quats / torch.where(in_range | is_zero, 1.0, largest)
    return F.normalize(torch.where(is_zero, quats.new_tensor([1.0, 0.0, 0.0, 0.0]), scaled), dim=-1)


@typecheck
def quat_to_rotmat(quats: Float[Tensor, "*batch 4"]) -> Float[Tensor, "*batch 3 3"]:
    """Rotation matrices of quaternions ``(w, x, y, z)`` of any norm (:func:`normalize_quats`);
    a zero quaternion gives the identity."""
    w, x, y, z = normalize_quats(quats).unbind(-1)
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


class _ScreenProjection(NamedTuple):
    means_cam: Float[Tensor, "b n 3"]
    means2d: Float[Tensor, "b n 2"]
    jacobian: Float[Tensor, "b n 2 3"]
    in_depth_range: Tensor


def _project_centres(means: Tensor, camera: Camera) -> _ScreenProjection:
    """Camera-space centres, their pixels and the projection's Jacobian at them."""
    viewmat, intrinsics = camera.viewmat.to(means), camera.intrinsics.to(means)
    width, height, near, far = camera.width, camera.height, camera.near, camera.far
    rotation, translation = viewmat[:3, :3], viewmat[:3, 3]
    means_cam = means @ rotation.T + translation
    x, y, z = means_cam.unbind(-1)
    fx, fy, cx, cy = intrinsics[0, 0], intrinsics[1, 1], intrinsics[0, 2], intrinsics[1, 2]
    in_depth_range = (z >= near) & (z <= far)

    # Culled centres (z <= 0 among them) divide by 1 instead, so no inf/NaN reaches autograd.
    z = torch.where(in_depth_range, z, torch.ones_like(z))
    if camera.model == "pinhole":
        u, v = x / z, y / z
        means2d = torch.stack([fx * u + cx, fy * v + cy], dim=-1)
        margin_x, margin_y = FRUSTUM_MARGIN * 0.5 * width / fx, FRUSTUM_MARGIN * 0.5 * height / fy
        tx = z * torch.clamp(u, min=-(cx / fx + margin_x), max=(width - cx) / fx + margin_x)
        ty = z * torch.clamp(v, min=-(cy / fy + margin_y), max=(height - cy) / fy + margin_y)
        rows = _pinhole_jacobian(fx, fy, z, tx, ty)
    elif camera.model == "ortho":
        means2d = torch.stack([fx * x + cx, fy * y + cy], dim=-1)
        if camera.footprint_depth is None:
            zero = torch.zeros_like(z)
            rows = [fx + zero, zero, zero, zero, fy + zero, zero]
        else:
            limit_x = AUTHORS_FRUSTUM * 0.5 * width / fx
            limit_y = AUTHORS_FRUSTUM * 0.5 * height / fy
            tx = z * torch.clamp(x / z, min=-limit_x, max=limit_x)
            ty = z * torch.clamp(y / z, min=-limit_y, max=limit_y)
            depth = camera.footprint_depth
            rows = _pinhole_jacobian(fx * depth, fy * depth, z, tx, ty)
    else:
        raise ValueError(f"camera.model must be 'pinhole' or 'ortho', got {camera.model!r}")
    jacobian = rearrange(torch.stack(rows, dim=-1), "... (i j) -> ... i j", i=2)
    return _ScreenProjection(means_cam, means2d, jacobian, in_depth_range)


def _pinhole_jacobian(
    fx: Tensor, fy: Tensor, z: Tensor, tx: Tensor, ty: Tensor
) -> list[Tensor]:
    """The rows of ``J = [[fx/z, 0, -fx tx/z^2], [0, fy/z, -fy ty/z^2]]``, flattened."""
    zero = torch.zeros_like(z)
    return [fx / z, zero, -fx * tx / z**2, zero, fy / z, -fy * ty / z**2]


@typecheck
def centre_pixels(means: Float[Tensor, "b n 3"], camera: Camera) -> Float[Tensor, "b n 2"]:
    """Pixel coordinates ``(x right, y down)`` of each centre under ``camera``; pinhole centres
    outside ``[near, far]`` are divided by depth 1 instead (they are culled when rendered)."""
    return _project_centres(means, camera).means2d


@torch.no_grad()
def _scale_caps(quats: Tensor, camera: Camera, screen: _ScreenProjection) -> Tensor:
    """Per-axis scale caps ``[b n 3]`` (see the module docstring, "Huge Gaussians")."""
    width, height = camera.width, camera.height
    image_size = screen.means2d.new_tensor([width, height])
    offset = (screen.means2d - image_size / 2).abs()
    reach = torch.clamp((offset + image_size / 2).amax(dim=-1) + max(width, height), max=MAX_REACH)
    # Column i: the pixels one scene unit along the Gaussian's axis i moves its footprint.
    rotation = camera.viewmat[:3, :3].to(quats)
    axes = screen.jacobian @ rotation @ quat_to_rotmat(quats)
    shortest = screen.jacobian.norm(dim=(-2, -1))[..., None] / MAX_FOOTPRINT
    caps = MAX_FOOTPRINT * reach[..., None] / torch.maximum(axes.norm(dim=-2), shortest)
    return torch.clamp(caps, max=MAX_SCALE)


@typecheck
def cap_scales(
    means: Float[Tensor, "b n 3"],
    quats: Float[Tensor, "b n 4"],
    scales: Float[Tensor, "b n 3"],
    camera: Camera,
) -> Float[Tensor, "b n 3"]:
    """``scales`` with every axis capped where its footprint is flat over the image (module
    docstring, "Huge Gaussians"): the render is unchanged and float32 stays finite. No gradient
    flows through a capped entry. :func:`project_gaussians` applies it; the gsplat backend
    applies it before gsplat's kernels, so that both backends draw the same Gaussians."""
    caps = _scale_caps(quats, camera, _project_centres(means, camera))
    return torch.minimum(scales, caps)


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
        means: world-space Gaussian centres.
        quats: their rotations, quaternions (w, x, y, z) of any norm.
        scales: their standard deviations along their own axes.
        opacities: peak opacities, for gsplat 1.5's opacity-aware radii and culling; ``None``
            uses the fixed 3.33-sigma extent.
        camera: its matrices are brought to the device and dtype of ``means``; its size bounds
            the frustum clamp and the culling, ``near`` and ``far`` the depth range kept.
        eps2d: blur added to the 2D covariance's diagonal (px^2).

    Differentiable in ``means2d``, ``conics`` and ``depths``; ``radii`` are integers. Half
    precision inputs are projected in float32 and give float32 outputs.
    """
    if means.dtype in _HALF_DTYPES:
        means, quats, scales = means.float(), quats.float(), scales.float()
        opacities = None if opacities is None else opacities.float()
    width, height = camera.width, camera.height
    screen = _project_centres(means, camera)
    scales = torch.minimum(scales, _scale_caps(quats, camera, screen))
    rotation = camera.viewmat[:3, :3].to(means)
    covars_cam = rotation @ covariance_3d(quats, scales) @ rotation.T
    jacobian, means2d = screen.jacobian, screen.means2d
    covars2d = jacobian @ covars_cam @ jacobian.transpose(-1, -2)
    covars2d = covars2d + eps2d * torch.eye(2, dtype=covars2d.dtype, device=covars2d.device)

    var_x, cov_xy, var_y = covars2d[..., 0, 0], covars2d[..., 0, 1], covars2d[..., 1, 1]
    det = var_x * var_y - cov_xy * covars2d[..., 1, 0]
    invertible = det > 0
    det = torch.where(invertible, det, torch.ones_like(det))
    conics = torch.stack([var_y / det, -cov_xy / det, var_x / det], dim=-1)

    with torch.no_grad():
        keep = screen.in_depth_range & invertible
        extent = torch.full_like(det, RADIUS_EXTENT)
        if opacities is not None:
            bright = opacities >= ALPHA_THRESHOLD
            keep &= bright
            opacity_extent = torch.sqrt(2 * torch.log(torch.where(bright, opacities, 1.0) * 255))
            extent = torch.minimum(extent, opacity_extent)
        radii = torch.ceil(extent[..., None] * torch.sqrt(torch.stack([var_x, var_y], -1)))
        radii = torch.clamp(radii, max=MAX_RADIUS)
        keep &= (radii > 0).any(dim=-1)
        box_min, box_max = means2d - radii, means2d + radii
        keep &= (box_max[..., 0] > 0) & (box_min[..., 0] < width)
        keep &= (box_max[..., 1] > 0) & (box_min[..., 1] < height)
        radii = torch.where(keep[..., None], radii, 0.0).to(torch.int32)

    return ProjectedGaussians(
        means2d=means2d, conics=conics, depths=screen.means_cam[..., 2], radii=radii
    )
