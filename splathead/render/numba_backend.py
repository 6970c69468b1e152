"""The compiled CPU backend: :mod:`splathead.render.reference`'s definition in numba loops.

The projection (:mod:`splathead.render.projection`'s definition) and its backward pass are
compiled loops (:mod:`splathead.render.numba_projection`), and so are binning, compositing and the
compositing's backward pass (:mod:`splathead.render.numba_kernels`), parallel over the tiles of
all images on as many threads as ``torch.get_num_threads()``: a render's forward and backward are
a few compiled calls instead of a hundred small tensor operations each way.
Needs ``pip install "splathead[cpu]"`` (numba's wheels hold their own LLVM: no compiler); the
first call in a fresh environment compiles the loops (seconds, once per dtype) and caches them
on disk.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
from collections.abc import Iterator
from types import ModuleType

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from splathead.camera import Camera
from splathead.gaussians import Gaussians
from splathead.render.backend import RenderOutput
from splathead.render.composite import MAX_SIGMA
from splathead.render.projection import ALPHA_THRESHOLD
from splathead.render.reference import MAX_ALPHA, MIN_TRANSMITTANCE
from splathead.render.tiles import TILE_SIZE
from splathead.typing import Float, Int, Tensor, typecheck

__all__ = ["NumbaBackend", "numba_available"]


@functools.cache
def _kernels() -> ModuleType:
    """:mod:`splathead.render.numba_kernels`, imported once (it imports numba)."""
    return importlib.import_module("splathead.render.numba_kernels")


@functools.cache
def _projection_kernels() -> ModuleType:
    """:mod:`splathead.render.numba_projection`, imported once (it imports numba)."""
    return importlib.import_module("splathead.render.numba_projection")


@functools.cache
def numba_available() -> bool:
    """Whether numba imports here (``pip install "splathead[cpu]"``), so that
    ``backend="numba"`` can render and ``"auto"`` picks it on the CPU."""
    try:
        _kernels()
        _projection_kernels()
    except ImportError:  # numba missing, or too old or new for the installed numpy
        return False
    return True


class NumbaBackend:
    """The "numba" :class:`~splathead.render.RenderBackend`: CPU tensors, float32 and float64.

    ``tile_size`` only sets the unit of parallel work; the result does not depend on it.
    """

    name = "numba"

    def __init__(self, *, tile_size: int = TILE_SIZE) -> None:
        if not numba_available():
            raise ImportError(
                'backend="numba" needs numba: pip install "splathead[cpu]" (or use "torch")'
            )
        self.tile_size = tile_size

    @typecheck
    def render(
        self,
        gaussians: Gaussians,
        camera: Camera,
        background: Float[Tensor, "b c"],
        *,
        render_depth: bool,
    ) -> RenderOutput:
        """Render ``b`` images of ``n`` Gaussians each (:mod:`splathead.render.reference`)."""
        if gaussians.device.type != "cpu":
            raise ValueError(
                f"the numba backend renders CPU tensors, but means is on {gaussians.device}"
            )
        c = gaussians.num_channels
        means2d, conics, depths, radii = _CompiledProjection.apply(
            gaussians.means, gaussians.quats, gaussians.scales, gaussians.opacities, camera
        )
        features = gaussians.colors
        if render_depth:
            features = torch.cat([features, depths[..., None]], dim=-1)
        order = torch.argsort(depths.detach(), dim=1, stable=True)
        summed, transmittance = _CompiledComposite.apply(
            means2d, conics, gaussians.opacities, features, radii, order, camera.height,
            camera.width, self.tile_size,
        )
        transmittance = transmittance[:, None]
        alpha = 1 - transmittance
        image = summed[:, :c] + transmittance * background[:, :, None, None]
        depth = summed[:, c:] / alpha.clamp(min=1e-10) if render_depth else None
        return RenderOutput(image=image, alpha=alpha, depth=depth)


def _numpy(tensor: Tensor) -> np.ndarray:
    return tensor.detach().contiguous().numpy()


def camera_arrays(camera: Camera) -> tuple[np.ndarray, int]:
    """``camera`` as :mod:`splathead.render.numba_projection` reads it: float64 ``[W (9), t (3),
    fx, fy, cx, cy, width, height, near, far, footprint_depth]`` and the mode."""
    kernels = _projection_kernels()
    viewmat = camera.viewmat.double().numpy()
    values = [
        *viewmat[:3, :3].reshape(-1), *viewmat[:3, 3], camera.fx, camera.fy, camera.cx, camera.cy,
        camera.width, camera.height, camera.near, camera.far, camera.footprint_depth or 0.0,
    ]
    if camera.model == "pinhole":
        mode = kernels.PINHOLE
    elif camera.model == "ortho":
        mode = kernels.ORTHO if camera.footprint_depth is None else kernels.FOOTPRINT
    else:
        raise ValueError(f"camera.model must be 'pinhole' or 'ortho', got {camera.model!r}")
    return np.array(values, dtype=np.float64), mode


class _CompiledProjection(torch.autograd.Function):
    """:func:`splathead.render.projection.project_gaussians` in compiled loops: ``means2d``,
    ``conics``, ``depths`` (differentiable in ``means``, ``quats``, ``scales``) and ``radii``."""

    @staticmethod
    def forward(
        ctx,
        means: Float[Tensor, "b n 3"],
        quats: Float[Tensor, "b n 4"],
        scales: Float[Tensor, "b n 3"],
        opacities: Float[Tensor, "b n"],
        camera: Camera,
    ):
        kernels = _projection_kernels()
        b, n, _ = means.shape
        arrays = [_numpy(t) for t in (means, quats, scales)]
        parameters, mode = camera_arrays(camera)
        means2d = means.new_empty(b, n, 2)
        conics = means.new_empty(b, n, 3)
        depths = means.new_empty(b, n)
        radii = torch.empty(b, n, 2, dtype=torch.int32)
        kernels.project_forward(
            *arrays, _numpy(opacities), parameters, mode, means2d.numpy(), conics.numpy(),
            depths.numpy(), radii.numpy(),
        )
        ctx.arrays, ctx.parameters, ctx.mode = arrays, parameters, mode
        ctx.mark_non_differentiable(radii)
        return means2d, conics, depths, radii

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_means2d, grad_conics, grad_depths, _):
        means = ctx.arrays[0]
        grads = [
            torch.zeros(means.shape[:2] + shape, dtype=torch.from_numpy(means).dtype)
            if grad is None else grad
            for grad, shape in ((grad_means2d, (2,)), (grad_conics, (3,)), (grad_depths, ()))
        ]
        grad_means = torch.empty(means.shape, dtype=grads[0].dtype)
        grad_quats = torch.empty(ctx.arrays[1].shape, dtype=grads[0].dtype)
        grad_scales = torch.empty(ctx.arrays[2].shape, dtype=grads[0].dtype)
        _projection_kernels().project_backward(
            *ctx.arrays, ctx.parameters, ctx.mode, *(_numpy(g) for g in grads),
            grad_means.numpy(), grad_quats.numpy(), grad_scales.numpy(),
        )
        return grad_means, grad_quats, grad_scales, None, None


PARALLEL_PAIRS = 2**14
"""Below this many (tile, Gaussian) pairs (and always on one torch thread) a render's
compositing runs on the calling thread: starting numba's parallel loops costs about 0.3 ms or
more per launch, as much as compositing 4000 pairs (32 images x 64 Gaussians x 32^2)."""


def _in_parallel(pairs: int) -> bool:
    """Whether compositing ``pairs`` (tile, Gaussian) pairs runs on numba's threads."""
    return torch.get_num_threads() > 1 and pairs >= PARALLEL_PAIRS


@contextlib.contextmanager
def _launch(kernels: ModuleType, parallel: bool) -> Iterator[None]:
    """Hold numba's launch lock around a parallel loop, on ``torch.get_num_threads()`` threads
    (the workqueue layer is not re-entrant); a serial loop needs neither."""
    if not parallel:
        yield
        return
    with kernels.launch_lock:
        kernels.set_num_threads(torch.get_num_threads())
        yield


class _CompiledComposite(torch.autograd.Function):
    """Front-to-back compositing of unsorted screen-space Gaussians (``order``: each image's
    indices front to back) into ``summed [b f h w]`` (``sum alpha T f``, no background) and
    ``T_final [b h w]``; differentiable in ``means2d``, ``conics``, ``opacities``,
    ``features`` with the gradient of :class:`splathead.render.composite._Composite`."""

    @staticmethod
    def forward(
        ctx,
        means2d: Float[Tensor, "b n 2"],
        conics: Float[Tensor, "b n 3"],
        opacities: Float[Tensor, "b n"],
        features: Float[Tensor, "b n f"],
        radii: Int[Tensor, "b n 2"],
        order: Int[Tensor, "b n"],
        height: int,
        width: int,
        tile_size: int,
    ):
        kernels = _kernels()
        dtype = means2d.dtype
        b, _, f = features.shape
        tiles_x, tiles_y = -(-width // tile_size), -(-height // tile_size)
        scene = tuple(_numpy(t) for t in (means2d, conics, opacities, features, radii))
        starts, ids = kernels.bin_into_tiles(
            scene[0], scene[4], _numpy(order), tile_size, tiles_x, tiles_y
        )
        numpy_dtype = scene[0].dtype
        centres = np.arange(max(height, width), dtype=numpy_dtype) + numpy_dtype.type(0.5)
        constants = kernels.constants_like(
            numpy_dtype, alpha_threshold=ALPHA_THRESHOLD, max_alpha=MAX_ALPHA,
            min_transmittance=MIN_TRANSMITTANCE, max_sigma=MAX_SIGMA,
        )
        summed = torch.zeros(b, f, height, width, dtype=dtype)
        final = torch.empty(b, height, width, dtype=dtype)
        stop = np.empty((b, height, width), dtype=np.int64)
        layout = (starts, ids, tile_size, tiles_x, centres, constants)
        ctx.parallel = _in_parallel(len(ids))
        with _launch(kernels, ctx.parallel):
            kernels.composite_forward(
                scene, layout, summed.numpy(), final.numpy(), stop, parallel=ctx.parallel
            )
        ctx.scene, ctx.layout, ctx.stop = scene, layout, stop
        ctx.final = final.numpy()
        return summed, final

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_summed: Tensor, grad_final: Tensor):
        kernels = _kernels()
        with _launch(kernels, ctx.parallel):
            gradients = kernels.composite_backward(
                ctx.scene, ctx.layout, ctx.final, ctx.stop, _numpy(grad_summed),
                _numpy(grad_final), parallel=ctx.parallel,
            )
        gradients = torch.from_numpy(gradients)
        columns = kernels.GRADIENT_COLUMNS
        return (
            gradients[..., 0:2], gradients[..., 2:5], gradients[..., 5],
            gradients[..., columns:], None, None, None, None, None,
        )
