"""Compiled CPU loops of the numba backend: tile binning, compositing and its backward pass
(the projection's are in :mod:`splathead.render.numba_projection`).

Importing this module needs numba (``pip install "splathead[cpu]"``); :mod:`splathead.render.numba_backend`
wraps it. Every loop runs in the inputs' precision (float32 or float64: the constants come in an
array of that dtype, so no float64 literal widens float32 arithmetic) and is compiled once per
dtype, then cached on disk (``cache=True``: later processes load it in well under a second).

The Gaussians arrive unsorted with ``order``, each image's indices front to back. The image is
cut into ``tile_size``-square tiles; each tile lists, in depth order, the Gaussians whose box
touches it (gsplat's rule, as :mod:`splathead.render.tiles`). Tiles of all images run in
parallel (``prange``), or one after another on the calling thread for small renders (each loop
is compiled both ways around one per-tile function). Within a tile the loop runs over its Gaussians in depth order and, for
each, over the pixels of the tile inside the Gaussian's box widened by one pixel (the box holds
every pixel where ``alpha >= 1/255``, :mod:`splathead.render.projection`), carrying each pixel's
transmittance; a pixel that stops is marked and skipped from then on. This visits every pair
the definition draws in the definition's order, so the result is that of
:mod:`splathead.render.reference`.

The backward pass walks each tile's list back to front and recovers the transmittance in front
of each Gaussian by dividing by ``1 - alpha`` (as gsplat's kernels do). A Gaussian's gradient is
summed over its pixels of the tile into one row per (tile, Gaussian) pair, and the rows are
added up per image afterwards, so no two threads write to the same place.
"""

from __future__ import annotations

import math
import os
import threading

import numba
import numpy as np
from numba import njit, prange

# numba's default OpenMP layer runs a second OpenMP pool beside torch's: measured on 2 cores with
# torch on one thread, a tiny GMAE step took 6 s instead of 0.45 s, and torch's own ops slowed
# twentyfold. Its own "workqueue" layer does not; it must not be entered by two threads at
# once, so every parallel launch holds `launch_lock`. NUMBA_THREADING_LAYER, when set, decides instead.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"
launch_lock = threading.Lock()

# Positions in the `constants` array every kernel takes (built by `constants_like`).
_HALF, _ALPHA_THRESHOLD, _MAX_ALPHA, _MIN_TRANSMITTANCE, _MIN_NEG_SIGMA, _ONE, _ZERO = range(7)
GRADIENT_COLUMNS = 6
"""Per (tile, Gaussian) gradient row: mean x, mean y, conic a, b, c, opacity, then features."""
_CUTOFF_MARGIN = 1e-3
"""``-sigma`` this far below ``log(threshold / opacity)`` gives ``alpha < 1/255`` whatever
the rounding of ``exp``; only pairs within it are decided by computing ``exp``."""


def constants_like(
    dtype: np.dtype,
    *,
    alpha_threshold: float,
    max_alpha: float,
    min_transmittance: float,
    max_sigma: float,
) -> np.ndarray:
    """The rules' constants in ``dtype``, in the order the kernels read them."""
    values = [0.5, alpha_threshold, max_alpha, min_transmittance, -max_sigma, 1.0, 0.0]
    return np.array(values, dtype=dtype)


def set_num_threads(threads: int) -> None:
    """Run the parallel loops on ``threads`` threads (at most numba's pool size)."""
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))


@njit(cache=True, error_model="numpy")
def _tile_span(mean: float, radius: float, tile_size: int, num_tiles: int) -> tuple[int, int]:
    """Tiles ``[first, last)`` along one axis touched by the box ``mean +- radius`` (gsplat's
    ``floor((m - r) / s) <= tile < ceil((m + r) / s)``), clamped to ``[0, num_tiles]``; a
    non-finite mean touches none."""
    first = np.floor((mean - radius) / tile_size)
    last = np.ceil((mean + radius) / tile_size)
    if not first >= 0.0:  # also NaN
        first = 0.0
    if not last >= 0.0:
        last = 0.0
    return int(min(first, num_tiles)), int(min(last, num_tiles))


@njit(cache=True, error_model="numpy")
def _pixel_span(mean: float, radius: float, start: int, stop: int) -> tuple[int, int]:
    """Pixels ``[first, last)`` of ``[start, stop)`` within the box ``mean +- radius`` widened
    by one pixel."""
    first = np.floor(mean - radius) - 1.0
    last = np.ceil(mean + radius) + 1.0
    if not first >= start:
        first = start
    if not last <= stop:
        last = stop
    if not last >= first:
        last = first
    return int(first), int(last)


@njit(cache=True, error_model="numpy")
def bin_into_tiles(
    means2d: np.ndarray,
    radii: np.ndarray,
    order: np.ndarray,
    tile_size: int,
    tiles_x: int,
    tiles_y: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Per flat tile ``image * tiles + tile``, the Gaussians touching it in depth order.

    Returns ``starts [b*tiles + 1]`` and ``ids``: tile ``j`` lists ``ids[starts[j]:starts[j+1]]``
    (indices into the image's unsorted Gaussians). Culled Gaussians (a radius 0) touch nothing.
    """
    b, n = order.shape
    tiles = tiles_x * tiles_y
    counts = np.zeros(b * tiles, dtype=np.int64)
    for image in range(b):
        for rank in range(n):
            g = order[image, rank]
            rx, ry = radii[image, g, 0], radii[image, g, 1]
            if rx <= 0 or ry <= 0:
                continue
            x0, x1 = _tile_span(means2d[image, g, 0], rx, tile_size, tiles_x)
            y0, y1 = _tile_span(means2d[image, g, 1], ry, tile_size, tiles_y)
            for tile_y in range(y0, y1):
                for tile_x in range(x0, x1):
                    counts[image * tiles + tile_y * tiles_x + tile_x] += 1
    starts = np.zeros(b * tiles + 1, dtype=np.int64)
    starts[1:] = np.cumsum(counts)
    ids = np.empty(starts[-1], dtype=np.int64)
    for image in range(b):
        cursor = starts[image * tiles : (image + 1) * tiles].copy()
        for rank in range(n):
            g = order[image, rank]
            rx, ry = radii[image, g, 0], radii[image, g, 1]
            if rx <= 0 or ry <= 0:
                continue
            x0, x1 = _tile_span(means2d[image, g, 0], rx, tile_size, tiles_x)
            y0, y1 = _tile_span(means2d[image, g, 1], ry, tile_size, tiles_y)
            for tile_y in range(y0, y1):
                for tile_x in range(x0, x1):
                    tile = tile_y * tiles_x + tile_x
                    ids[cursor[tile]] = g
                    cursor[tile] += 1
    return starts, ids


@njit(cache=True, error_model="numpy")
def _tile_box(
    job: int, tiles: int, tiles_x: int, tile_size: int, height: int, width: int
) -> tuple[int, int, int, int, int]:
    """The image of flat tile ``job`` and the tile's pixels ``[x0, x1) x [y0, y1)``."""
    image, tile = job // tiles, job % tiles
    x0, y0 = (tile % tiles_x) * tile_size, (tile // tiles_x) * tile_size
    return image, x0, y0, min(x0 + tile_size, width), min(y0 + tile_size, height)


@njit(cache=True, error_model="numpy")
def _footprint(means2d, conics, opacities, radii, image, g, threshold, x0, y0, x1, y1):
    """Gaussian ``g`` of ``image``: centre, conic ``(a, b, c)``, opacity, the ``-sigma`` below
    which it is certainly skipped, and the tile's pixels it can reach ``[px0, px1) x [py0, py1)``."""
    mean_x, mean_y, opacity = means2d[image, g, 0], means2d[image, g, 1], opacities[image, g]
    px0, px1 = _pixel_span(mean_x, radii[image, g, 0], x0, x1)
    py0, py1 = _pixel_span(mean_y, radii[image, g, 1], y0, y1)
    cutoff = math.log(threshold / opacity) - _CUTOFF_MARGIN
    a, b, c = conics[image, g, 0], conics[image, g, 1], conics[image, g, 2]
    return mean_x, mean_y, a, b, c, opacity, cutoff, px0, px1, py0, py1


@njit(cache=True, error_model="numpy")
def _evaluate(dx, dy, a, b, c, opacity, cutoff, constants):
    """``(exp(-sigma), o exp(-sigma))`` at offset ``(dx, dy)``, or zeros where the skip rule
    drops the pair (``sigma < 0`` or ``alpha < 1/255``)."""
    half, zero = constants[_HALF], constants[_ZERO]
    neg_sigma = -half * a * dx * dx - half * c * dy * dy - b * dx * dy
    if neg_sigma > zero or neg_sigma < cutoff:
        return zero, zero
    gaussian = math.exp(max(neg_sigma, constants[_MIN_NEG_SIGMA]))
    peak = opacity * gaussian
    if peak < constants[_ALPHA_THRESHOLD]:
        return zero, zero
    return gaussian, peak


@njit(cache=True, error_model="numpy")
def _forward_tile(job, scene, layout, summed, final, stop):
    """Composite flat tile ``job`` (see :func:`composite_forward`)."""
    means2d, conics, opacities, features, radii = scene
    starts, ids, tile_size, tiles_x, centres, constants = layout
    b, num_features = means2d.shape[0], features.shape[2]
    height, width = final.shape[1], final.shape[2]
    tiles = (starts.shape[0] - 1) // b
    threshold, max_alpha = constants[_ALPHA_THRESHOLD], constants[_MAX_ALPHA]
    min_transmittance, one = constants[_MIN_TRANSMITTANCE], constants[_ONE]
    image, x0, y0, x1, y1 = _tile_box(job, tiles, tiles_x, tile_size, height, width)
    end = starts[job + 1]
    transmittance = np.full((y1 - y0, x1 - x0), one)
    stopped = np.zeros((y1 - y0, x1 - x0), dtype=np.bool_)
    stop[image, y0:y1, x0:x1] = end
    for position in range(starts[job], end):
        g = ids[position]
        mean_x, mean_y, a, b_, c, opacity, cutoff, px0, px1, py0, py1 = _footprint(
            means2d, conics, opacities, radii, image, g, threshold, x0, y0, x1, y1
        )
        for row in range(py0, py1):
            dy = mean_y - centres[row]
            for column in range(px0, px1):
                if stopped[row - y0, column - x0]:
                    continue
                dx = mean_x - centres[column]
                _, peak = _evaluate(dx, dy, a, b_, c, opacity, cutoff, constants)
                if peak == 0:
                    continue
                alpha = min(peak, max_alpha)
                in_front = transmittance[row - y0, column - x0]
                after = in_front * (one - alpha)
                if after <= min_transmittance:
                    stopped[row - y0, column - x0] = True
                    stop[image, row, column] = position
                    continue
                weight = alpha * in_front
                for f in range(num_features):
                    summed[image, f, row, column] += weight * features[image, g, f]
                transmittance[row - y0, column - x0] = after
    final[image, y0:y1, x0:x1] = transmittance


@njit(parallel=True, cache=True, error_model="numpy")
def _forward_parallel(scene, layout, summed, final, stop):
    for job in prange(layout[0].shape[0] - 1):
        _forward_tile(job, scene, layout, summed, final, stop)


@njit(cache=True, error_model="numpy")
def _forward_serial(scene, layout, summed, final, stop):
    for job in range(layout[0].shape[0] - 1):
        _forward_tile(job, scene, layout, summed, final, stop)


def composite_forward(scene, layout, summed, final, stop, *, parallel: bool) -> None:
    """Composite every tile into ``summed [b f h w]`` (zeros on entry; ``sum alpha T f``),
    ``final [b h w]`` (``T_final``) and ``stop [b h w]`` (the list position a pixel stopped
    before, or its tile's list end); in parallel over tiles, or on this thread alone.

    ``scene``: ``(means2d, conics, opacities, features, radii)``; ``layout``: ``(starts, ids,
    tile_size, tiles_x, centres, constants)`` (:func:`bin_into_tiles`, the pixel centres,
    :func:`constants_like`).
    """
    (_forward_parallel if parallel else _forward_serial)(scene, layout, summed, final, stop)


@njit(cache=True, error_model="numpy")
def _backward_tile(job, scene, layout, final, stop, grad_summed, grad_final, per_pair):
    """The gradient rows of flat tile ``job``'s pairs into ``per_pair`` (see
    :func:`composite_backward`)."""
    means2d, conics, opacities, features, radii = scene
    starts, ids, tile_size, tiles_x, centres, constants = layout
    b = features.shape[0]
    num_features = features.shape[2]
    height, width = final.shape[1], final.shape[2]
    tiles = (starts.shape[0] - 1) // b
    half, threshold = constants[_HALF], constants[_ALPHA_THRESHOLD]
    max_alpha, one, zero = constants[_MAX_ALPHA], constants[_ONE], constants[_ZERO]
    image, x0, y0, x1, y1 = _tile_box(job, tiles, tiles_x, tile_size, height, width)
    start, end = starts[job], starts[job + 1]
    if start == end:
        return
    transmittance = final[image, y0:y1, x0:x1].copy()
    behind = transmittance * grad_final[image, y0:y1, x0:x1]  # sum_{j>k} g_j w_j + g_T T
    for position in range(end - 1, start - 1, -1):
        g = ids[position]
        mean_x, mean_y, a, b_, c, opacity, cutoff, px0, px1, py0, py1 = _footprint(
            means2d, conics, opacities, radii, image, g, threshold, x0, y0, x1, y1
        )
        gradient = per_pair[position]
        grad_x = grad_y = grad_a = grad_b = grad_c = grad_opacity = zero
        for row in range(py0, py1):
            dy = mean_y - centres[row]
            for column in range(px0, px1):
                if position >= stop[image, row, column]:
                    continue
                dx = mean_x - centres[column]
                gaussian, peak = _evaluate(dx, dy, a, b_, c, opacity, cutoff, constants)
                if peak == 0:
                    continue
                alpha = min(peak, max_alpha)
                one_minus_alpha = one - alpha
                in_front = transmittance[row - y0, column - x0] / one_minus_alpha
                transmittance[row - y0, column - x0] = in_front
                weight = alpha * in_front
                grad_weight = zero
                for f in range(num_features):
                    upstream = grad_summed[image, f, row, column]
                    grad_weight += upstream * features[image, g, f]
                    gradient[GRADIENT_COLUMNS + f] += weight * upstream
                if peak <= max_alpha:  # a clamped alpha depends on neither o nor sigma
                    grad_alpha = (
                        grad_weight * in_front
                        - behind[row - y0, column - x0] / one_minus_alpha
                    )
                    grad_opacity += grad_alpha * gaussian
                    grad_neg_sigma = grad_alpha * alpha
                    grad_x -= grad_neg_sigma * (a * dx + b_ * dy)
                    grad_y -= grad_neg_sigma * (c * dy + b_ * dx)
                    grad_a -= half * grad_neg_sigma * dx * dx
                    grad_b -= grad_neg_sigma * dx * dy
                    grad_c -= half * grad_neg_sigma * dy * dy
                behind[row - y0, column - x0] += grad_weight * weight
        gradient[0] += grad_x
        gradient[1] += grad_y
        gradient[2] += grad_a
        gradient[3] += grad_b
        gradient[4] += grad_c
        gradient[5] += grad_opacity


@njit(cache=True, error_model="numpy")
def _sum_pairs(image, layout, per_pair, gradients):
    """Add image ``image``'s gradient rows into ``gradients [b n 6+f]`` by Gaussian."""
    starts, ids = layout[0], layout[1]
    tiles = (starts.shape[0] - 1) // gradients.shape[0]
    for position in range(starts[image * tiles], starts[(image + 1) * tiles]):
        gradients[image, ids[position]] += per_pair[position]


@njit(parallel=True, cache=True, error_model="numpy")
def _backward_parallel(scene, layout, final, stop, grad_summed, grad_final, per_pair, gradients):
    for job in prange(layout[0].shape[0] - 1):
        _backward_tile(job, scene, layout, final, stop, grad_summed, grad_final, per_pair)
    for image in prange(gradients.shape[0]):
        _sum_pairs(image, layout, per_pair, gradients)


@njit(cache=True, error_model="numpy")
def _backward_serial(scene, layout, final, stop, grad_summed, grad_final, per_pair, gradients):
    for job in range(layout[0].shape[0] - 1):
        _backward_tile(job, scene, layout, final, stop, grad_summed, grad_final, per_pair)
    for image in range(gradients.shape[0]):
        _sum_pairs(image, layout, per_pair, gradients)


def composite_backward(scene, layout, final, stop, grad_summed, grad_final, *, parallel: bool):
    """Gradients ``[b n 6+f]`` (means2d x, y, conic a, b, c, opacity, features) of the
    loss whose gradients in ``summed`` and ``final`` are ``grad_summed``, ``grad_final``.

    With ``G`` the pixel's ``grad_summed``, ``g_k = G . f_k`` and ``w_k = alpha_k T_k``, a drawn
    Gaussian whose alpha is not clamped at 0.999 gets
    ``dL/dalpha_k = g_k T_k - (sum_{j > k} g_j w_j + g_T T_final) / (1 - alpha_k)``
    (:class:`splathead.render.composite._Composite` derives it), then ``dL/do = dL/dalpha
    exp(-sigma)`` and ``dL/d(-sigma) = dL/dalpha alpha`` through the quadratic form.
    """
    features = scene[3]
    b, n, num_features = features.shape
    columns = GRADIENT_COLUMNS + num_features
    per_pair = np.zeros((layout[1].shape[0], columns), dtype=features.dtype)
    gradients = np.zeros((b, n, columns), dtype=features.dtype)
    run = _backward_parallel if parallel else _backward_serial
    run(scene, layout, final, stop, grad_summed, grad_final, per_pair, gradients)
    return gradients
