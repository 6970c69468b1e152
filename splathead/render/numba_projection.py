"""Compiled CPU loops of the numba backend's projection: :func:`splathead.render.projection.project_gaussians`
and its backward pass, one Gaussian at a time.

Importing this module needs numba (``pip install "splathead[cpu]"``). The maths is the projection
module's (its docstring is the definition); it is computed in float64 whatever the inputs' dtype
(outputs in that dtype), so no float32 square or determinant overflows and no scaling of huge
quaternions is needed. Two shortcuts that change no value: ``cov2d = A A^T + eps2d I`` with
``A = J W R_q S`` (``J W Sigma W^T J^T`` regrouped), and the backward pass recomputes the forward's
intermediates from the inputs instead of storing them. Loops are serial (a few thousand
Gaussians take microseconds each), so they need no thread pool.

``camera`` is a float64 array ``[W (9, row-major), t (3), fx, fy, cx, cy, width, height, near,
far, footprint_depth]`` and ``mode`` is ``PINHOLE``, ``ORTHO`` or ``FOOTPRINT`` (ortho with the
authors' footprint): see :func:`camera_arrays` in :mod:`splathead.render.numba_backend`.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from splathead.render.projection import (
    ALPHA_THRESHOLD,
    AUTHORS_FRUSTUM,
    EPS2D,
    FRUSTUM_MARGIN,
    MAX_FOOTPRINT,
    MAX_RADIUS,
    MAX_REACH,
    MAX_SCALE,
    RADIUS_EXTENT,
)

PINHOLE, ORTHO, FOOTPRINT = 0, 1, 2
"""Camera modes: pinhole, ortho, ortho with the authors' pinhole-sized footprint."""
_FX, _FY, _CX, _CY, _WIDTH, _HEIGHT, _NEAR, _FAR, _DEPTH = range(12, 21)


@njit(cache=True)
def _unit_quaternion(quats, image, g):
    """``(w, x, y, z) / |q|`` and ``1 / |q|`` (the identity and 0 for a zero quaternion); the
    components are first divided by the largest, so no square overflows or underflows."""
    largest = 0.0
    for k in range(4):
        largest = max(largest, abs(float(quats[image, g, k])))
    if largest == 0.0:
        return 1.0, 0.0, 0.0, 0.0, 0.0
    w, x = float(quats[image, g, 0]) / largest, float(quats[image, g, 1]) / largest
    y, z = float(quats[image, g, 2]) / largest, float(quats[image, g, 3]) / largest
    norm = math.sqrt(w * w + x * x + y * y + z * z)
    return w / norm, x / norm, y / norm, z / norm, 1.0 / norm / largest


@njit(cache=True)
def _rotation(w, x, y, z, out):
    """The rotation matrix of the unit quaternion ``(w, x, y, z)`` into ``out [3 3]``."""
    out[0, 0], out[0, 1], out[0, 2] = 1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)
    out[1, 0], out[1, 1], out[1, 2] = 2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)
    out[2, 0], out[2, 1], out[2, 2] = 2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)


@njit(cache=True)
def _clamp_with_mask(value, low, high):
    """``clamp(value, low, high)`` and whether its derivative is 1 (torch's: ends included)."""
    return min(max(value, low), high), 1.0 if low <= value <= high else 0.0


@njit(cache=True)
def _centre(means, camera, image, g):
    """Camera-space centre ``(x, y, z)``, whether ``near <= z <= far``, and the divisor ``z``
    (1 for a centre out of range, as the projection module)."""
    mean_x, mean_y, mean_z = float(means[image, g, 0]), float(means[image, g, 1]), float(means[image, g, 2])
    x = camera[0] * mean_x + camera[1] * mean_y + camera[2] * mean_z + camera[9]
    y = camera[3] * mean_x + camera[4] * mean_y + camera[5] * mean_z + camera[10]
    z = camera[6] * mean_x + camera[7] * mean_y + camera[8] * mean_z + camera[11]
    in_range = camera[_NEAR] <= z <= camera[_FAR]
    return x, y, z, in_range, z if in_range else 1.0


@njit(cache=True)
def _frustum(camera, mode):
    """Focal lengths of the Jacobian and the clamp's bounds on ``x/z`` and ``y/z``."""
    fx, fy, cx, cy = camera[_FX], camera[_FY], camera[_CX], camera[_CY]
    width, height = camera[_WIDTH], camera[_HEIGHT]
    if mode == PINHOLE:
        margin_x, margin_y = FRUSTUM_MARGIN * 0.5 * width / fx, FRUSTUM_MARGIN * 0.5 * height / fy
        return (fx, fy, -(cx / fx + margin_x), (width - cx) / fx + margin_x,
                -(cy / fy + margin_y), (height - cy) / fy + margin_y)
    limit_x, limit_y = AUTHORS_FRUSTUM * 0.5 * width / fx, AUTHORS_FRUSTUM * 0.5 * height / fy
    depth = camera[_DEPTH]
    return fx * depth, fy * depth, -limit_x, limit_x, -limit_y, limit_y


@njit(cache=True)
def _screen(x, y, z, camera, mode, jacobian):
    """The centre's pixel and the Jacobian ``[2 3]`` (into ``jacobian``) at divisor ``z``."""
    fx, fy, cx, cy = camera[_FX], camera[_FY], camera[_CX], camera[_CY]
    jacobian[:] = 0.0
    if mode == PINHOLE:
        pixel_x, pixel_y = fx * (x / z) + cx, fy * (y / z) + cy
    else:
        pixel_x, pixel_y = fx * x + cx, fy * y + cy
    if mode == ORTHO:
        jacobian[0, 0], jacobian[1, 1] = fx, fy
        return pixel_x, pixel_y
    focal_x, focal_y, low_x, high_x, low_y, high_y = _frustum(camera, mode)
    tx = z * _clamp_with_mask(x / z, low_x, high_x)[0]
    ty = z * _clamp_with_mask(y / z, low_y, high_y)[0]
    jacobian[0, 0], jacobian[0, 2] = focal_x / z, -focal_x * tx / (z * z)
    jacobian[1, 1], jacobian[1, 2] = focal_y / z, -focal_y * ty / (z * z)
    return pixel_x, pixel_y


@njit(cache=True)
def _to_screen(jacobian, camera, rotation, view_jacobian, to_screen):
    """``view_jacobian = J W [2 3]`` and ``to_screen = J W R_q [2 3]``: column ``k`` of the
    latter is the pixels one scene unit along the Gaussian's axis ``k`` moves."""
    for i in range(2):
        for j in range(3):
            view_jacobian[i, j] = (jacobian[i, 0] * camera[j] + jacobian[i, 1] * camera[3 + j]
                                   + jacobian[i, 2] * camera[6 + j])
    for i in range(2):
        for k in range(3):
            to_screen[i, k] = (view_jacobian[i, 0] * rotation[0, k] + view_jacobian[i, 1] * rotation[1, k]
                               + view_jacobian[i, 2] * rotation[2, k])


@njit(cache=True)
def _capped_scales(scales, image, g, pixel_x, pixel_y, jacobian, to_screen, camera, out, gain):
    """Scales capped as :func:`splathead.render.projection.cap_scales` into ``out [3]``, and
    ``gain [3]``, the derivative of each capped scale in the stored one: 1 below the cap, 0
    above, 1/2 at it (torch's ``minimum`` splits a tie's gradient)."""
    width, height = camera[_WIDTH], camera[_HEIGHT]
    reach = max(abs(pixel_x - width / 2) + width / 2, abs(pixel_y - height / 2) + height / 2)
    reach = min(reach + max(width, height), MAX_REACH)
    frobenius = 0.0
    for i in range(2):
        for j in range(3):
            frobenius += jacobian[i, j] * jacobian[i, j]
    shortest = math.sqrt(frobenius) / MAX_FOOTPRINT
    for k in range(3):
        length = math.sqrt(to_screen[0, k] ** 2 + to_screen[1, k] ** 2)
        cap = min(MAX_FOOTPRINT * reach / max(length, shortest), MAX_SCALE)
        scale = float(scales[image, g, k])
        out[k] = min(scale, cap)
        gain[k] = 1.0 if scale < cap else (0.5 if scale == cap else 0.0)


@njit(cache=True)
def _gaussian_on_screen(means, quats, scales, camera, mode, image, g, work):
    """The shared start of both passes for Gaussian ``g`` of ``image``: fills ``work``'s
    Jacobian, rotation, ``J W``, ``J W R_q``, capped scales and their gains; returns the centre's pixel,
    ``(x, y, z)``, whether z is in range, the divisor, the quaternion's unit ``(w, x, y, z)``
    and ``1 / |q|``."""
    jacobian, rotation, view_jacobian, to_screen, capped_scales, gain = work
    x, y, z, in_range, divisor = _centre(means, camera, image, g)
    pixel_x, pixel_y = _screen(x, y, divisor, camera, mode, jacobian)
    w, qx, qy, qz, inverse_norm = _unit_quaternion(quats, image, g)
    _rotation(w, qx, qy, qz, rotation)
    _to_screen(jacobian, camera, rotation, view_jacobian, to_screen)
    _capped_scales(scales, image, g, pixel_x, pixel_y, jacobian, to_screen, camera,
                   capped_scales, gain)
    return pixel_x, pixel_y, x, y, z, in_range, divisor, w, qx, qy, qz, inverse_norm


@njit(cache=True)
def _work():
    """Scratch arrays of :func:`_gaussian_on_screen`."""
    return (np.empty((2, 3)), np.empty((3, 3)), np.empty((2, 3)), np.empty((2, 3)), np.empty(3),
            np.empty(3))


@njit(cache=True)
def _covariance_2d(to_screen, scales):
    """``(var_x, cov_xy, var_y)`` of ``A A^T + eps2d I`` with ``A = to_screen diag(scales)``."""
    var_x, cov_xy, var_y = EPS2D, 0.0, EPS2D
    for k in range(3):
        a0, a1 = to_screen[0, k] * scales[k], to_screen[1, k] * scales[k]
        var_x += a0 * a0
        cov_xy += a0 * a1
        var_y += a1 * a1
    return var_x, cov_xy, var_y


@njit(cache=True)
def project_forward(means, quats, scales, opacities, camera, mode, means2d, conics, depths, radii):
    """Fill ``means2d [b n 2]``, ``conics [b n 3]``, ``depths [b n]`` and ``radii [b n 2]``
    (int32) from the Gaussians."""
    b, n = means.shape[0], means.shape[1]
    width, height = camera[_WIDTH], camera[_HEIGHT]
    work = _work()
    for image in range(b):
        for g in range(n):
            pixel_x, pixel_y, _, _, z, in_range, _, _, _, _, _, _ = _gaussian_on_screen(
                means, quats, scales, camera, mode, image, g, work
            )
            var_x, cov_xy, var_y = _covariance_2d(work[3], work[4])
            det = var_x * var_y - cov_xy * cov_xy
            invertible = det > 0
            if not invertible:
                det = 1.0
            means2d[image, g, 0], means2d[image, g, 1] = pixel_x, pixel_y
            conics[image, g, 0], conics[image, g, 1] = var_y / det, -cov_xy / det
            conics[image, g, 2] = var_x / det
            depths[image, g] = z

            opacity = float(opacities[image, g])
            bright = opacity >= ALPHA_THRESHOLD
            extent = RADIUS_EXTENT
            if bright:
                extent = min(extent, math.sqrt(2 * math.log(opacity * 255)))
            radius_x = min(math.ceil(extent * math.sqrt(var_x)), MAX_RADIUS)
            radius_y = min(math.ceil(extent * math.sqrt(var_y)), MAX_RADIUS)
            keep = in_range and invertible and bright and (radius_x > 0 or radius_y > 0)
            keep = keep and pixel_x + radius_x > 0 and pixel_x - radius_x < width
            keep = keep and pixel_y + radius_y > 0 and pixel_y - radius_y < height
            radii[image, g, 0] = int(radius_x) if keep else 0
            radii[image, g, 1] = int(radius_y) if keep else 0


@njit(cache=True)
def _grad_quaternion(w, x, y, z, inverse_norm, grad_rotation):
    """Gradient in the stored quaternion of a loss whose gradient in ``R_q`` is
    ``grad_rotation``: through the rotation formula, then through ``q / |q|``."""
    r = grad_rotation
    gw = 2 * (-z * r[0, 1] + y * r[0, 2] + z * r[1, 0] - x * r[1, 2] - y * r[2, 0] + x * r[2, 1])
    gx = 2 * (y * r[0, 1] + z * r[0, 2] + y * r[1, 0] - 2 * x * r[1, 1] - w * r[1, 2]
              + z * r[2, 0] + w * r[2, 1] - 2 * x * r[2, 2])
    gy = 2 * (-2 * y * r[0, 0] + x * r[0, 1] + w * r[0, 2] + x * r[1, 0] + z * r[1, 2]
              - w * r[2, 0] + z * r[2, 1] - 2 * y * r[2, 2])
    gz = 2 * (-2 * z * r[0, 0] - w * r[0, 1] + x * r[0, 2] + w * r[1, 0] - 2 * z * r[1, 1]
              + y * r[1, 2] + x * r[2, 0] + y * r[2, 1])
    along = w * gw + x * gx + y * gy + z * gz
    return ((gw - w * along) * inverse_norm, (gx - x * along) * inverse_norm,
            (gy - y * along) * inverse_norm, (gz - z * along) * inverse_norm)


@njit(cache=True)
def _grad_divisor_and_ratio(grad_j_focal, grad_j_shear, focal, ratio, low, high, divisor):
    """For one row of a pinhole Jacobian ``[focal / z, -focal t / z^2]`` with
    ``t = z clamp(ratio)``: the gradients in ``z`` and in ``ratio`` (``x / z``)."""
    clamped, passes = _clamp_with_mask(ratio, low, high)
    t = divisor * clamped
    grad_t = -focal / (divisor * divisor) * grad_j_shear
    grad_z = (-focal / (divisor * divisor) * grad_j_focal
              + 2 * focal * t / divisor**3 * grad_j_shear + clamped * grad_t)
    return grad_z, divisor * grad_t * passes


@njit(cache=True)
def project_backward(means, quats, scales, camera, mode, grad_means2d, grad_conics,
                     grad_depths, grad_means, grad_quats, grad_scales):
    """Fill ``grad_means [b n 3]``, ``grad_quats [b n 4]`` and ``grad_scales [b n 3]`` from the
    gradients of :func:`project_forward`'s ``means2d``, ``conics`` and ``depths``."""
    b, n = means.shape[0], means.shape[1]
    fx, fy = camera[_FX], camera[_FY]
    work = _work()
    _, rotation, view_jacobian, to_screen, capped_scales, gain = work
    grad_to_screen, grad_rotation = np.empty((2, 3)), np.empty((3, 3))
    grad_view_jacobian, grad_jacobian = np.empty((2, 3)), np.empty((2, 3))
    for image in range(b):
        for g in range(n):
            _, _, x, y, z, in_range, divisor, w, qx, qy, qz, inverse_norm = _gaussian_on_screen(
                means, quats, scales, camera, mode, image, g, work
            )
            var_x, cov_xy, var_y = _covariance_2d(to_screen, capped_scales)
            det = var_x * var_y - cov_xy * cov_xy
            grad_a, grad_b, grad_c = grad_conics[image, g, 0], grad_conics[image, g, 1], grad_conics[image, g, 2]
            if det > 0:
                grad_det = -(grad_a * var_y - grad_b * cov_xy + grad_c * var_x) / (det * det)
                grad_var_x = grad_c / det + grad_det * var_y
                grad_var_y = grad_a / det + grad_det * var_x
                grad_cov = -grad_b / det - 2 * grad_det * cov_xy
            else:  # divided by 1 instead
                grad_var_x, grad_var_y, grad_cov = float(grad_c), float(grad_a), -float(grad_b)
            # cov2d = A A^T with A = to_screen diag(s): dA = 2 G A, G = [[gvx, gc/2], [gc/2, gvy]].
            for k in range(3):
                s = capped_scales[k]
                a0, a1 = to_screen[0, k] * s, to_screen[1, k] * s
                grad_a0 = 2 * grad_var_x * a0 + grad_cov * a1
                grad_a1 = grad_cov * a0 + 2 * grad_var_y * a1
                grad_s = grad_a0 * to_screen[0, k] + grad_a1 * to_screen[1, k]
                grad_scales[image, g, k] = grad_s * gain[k]
                grad_to_screen[0, k], grad_to_screen[1, k] = grad_a0 * s, grad_a1 * s
            for j in range(3):
                for k in range(3):
                    grad_rotation[j, k] = (view_jacobian[0, j] * grad_to_screen[0, k]
                                           + view_jacobian[1, j] * grad_to_screen[1, k])
            for i in range(2):
                for j in range(3):
                    grad_view_jacobian[i, j] = (grad_to_screen[i, 0] * rotation[j, 0]
                                                + grad_to_screen[i, 1] * rotation[j, 1]
                                                + grad_to_screen[i, 2] * rotation[j, 2])
            gq = _grad_quaternion(w, qx, qy, qz, inverse_norm, grad_rotation)
            for k in range(4):
                grad_quats[image, g, k] = gq[k]
            # J W = view_jacobian: dJ[i, l] = sum_j dP[i, j] W[l, j].
            for i in range(2):
                for l in range(3):
                    grad_jacobian[i, l] = (grad_view_jacobian[i, 0] * camera[3 * l]
                                    + grad_view_jacobian[i, 1] * camera[3 * l + 1]
                                    + grad_view_jacobian[i, 2] * camera[3 * l + 2])
            grad_px, grad_py = float(grad_means2d[image, g, 0]), float(grad_means2d[image, g, 1])
            grad_x = grad_y = grad_divisor = 0.0
            if mode == PINHOLE:
                grad_u, grad_v = fx * grad_px, fy * grad_py
            else:
                grad_x, grad_y = fx * grad_px, fy * grad_py
                grad_u = grad_v = 0.0
            if mode != ORTHO:
                focal_x, focal_y, low_x, high_x, low_y, high_y = _frustum(camera, mode)
                u, v = x / divisor, y / divisor
                gz_x, gu = _grad_divisor_and_ratio(grad_jacobian[0, 0], grad_jacobian[0, 2], focal_x, u, low_x, high_x, divisor)
                gz_y, gv = _grad_divisor_and_ratio(grad_jacobian[1, 1], grad_jacobian[1, 2], focal_y, v, low_y, high_y, divisor)
                grad_u += gu
                grad_v += gv
                grad_divisor += gz_x + gz_y
                # u = x / z, v = y / z
                grad_x += grad_u / divisor
                grad_y += grad_v / divisor
                grad_divisor -= (grad_u * u + grad_v * v) / divisor
            grad_z = float(grad_depths[image, g]) + (grad_divisor if in_range else 0.0)
            for l in range(3):
                grad_means[image, g, l] = camera[l] * grad_x + camera[3 + l] * grad_y + camera[6 + l] * grad_z
