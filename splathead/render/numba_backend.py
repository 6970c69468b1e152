"""The compiled CPU backend: :mod:`splathead.render.reference`'s definition in numba loops.

Projection stays in PyTorch (:mod:`splathead.render.projection`, autograd); binning, compositing
and the compositing's backward pass are compiled loops (:mod:`splathead.render.numba_kernels`),
parallel over the tiles of all images, on as many threads as ``torch.get_num_threads()``.
Needs ``pip install "splathead[cpu]"`` (numba's wheels hold their own LLVM: no compiler); the
first call in a fresh environment compiles the loops (seconds, once per dtype) and caches them
on disk.
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from splathead.camera import Camera
from splathead.gaussians import Gaussians
from splathead.render.backend import RenderOutput
from splathead.render.composite import MAX_SIGMA
from splathead.render.projection import ALPHA_THRESHOLD, project_gaussians
from splathead.render.reference import MAX_ALPHA, MIN_TRANSMITTANCE
from splathead.render.tiles import TILE_SIZE
from splathead.typing import Float, Int, Tensor, typecheck

__all__ = ["NumbaBackend", "numba_available"]


@functools.cache
def _kernels() -> ModuleType:
    """:mod:`splathead.render.numba_kernels`, imported once (it imports numba)."""
    return importlib.import_module("splathead.render.numba_kernels")


@functools.cache
def numba_available() -> bool:
    """Whether numba imports here (``pip install "splathead[cpu]"``), so that
    ``backend="numba"`` can render and ``"auto"`` picks it on the CPU."""
    try:
        _kernels()
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
        projected = project_gaussians(
            gaussians.means, gaussians.quats, gaussians.scales, gaussians.opacities, camera
        )
        features = gaussians.colors
        if render_depth:
            features = torch.cat([features, projected.depths[..., None]], dim=-1)
        order = torch.argsort(projected.depths.detach(), dim=1, stable=True)
        summed, transmittance = _CompiledComposite.apply(
            projected.means2d, projected.conics, gaussians.opacities, features,
            projected.radii, order, camera.height, camera.width, self.tile_size,
        )
        transmittance = transmittance[:, None]
        alpha = 1 - transmittance
        image = summed[:, :c] + transmittance * background[:, :, None, None]
        depth = summed[:, c:] / alpha.clamp(min=1e-10) if render_depth else None
        return RenderOutput(image=image, alpha=alpha, depth=depth)


def _numpy(tensor: Tensor) -> np.ndarray:
    return tensor.detach().contiguous().numpy()


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
        arrays = [_numpy(t) for t in (means2d, conics, opacities, features, radii)]
        with kernels.launch_lock:
            kernels.set_num_threads(torch.get_num_threads())
            starts, ids = kernels.bin_into_tiles(
                arrays[0], arrays[4], _numpy(order), tile_size, tiles_x, tiles_y
            )
        numpy_dtype = arrays[0].dtype
        centres = np.arange(max(height, width), dtype=numpy_dtype) + numpy_dtype.type(0.5)
        constants = kernels.constants_like(
            numpy_dtype, alpha_threshold=ALPHA_THRESHOLD, max_alpha=MAX_ALPHA,
            min_transmittance=MIN_TRANSMITTANCE, max_sigma=MAX_SIGMA,
        )
        summed = torch.zeros(b, f, height, width, dtype=dtype)
        final = torch.empty(b, height, width, dtype=dtype)
        stop = np.empty((b, height, width), dtype=np.int64)
        layout = (starts, ids, tile_size, tiles_x, centres, constants)
        with kernels.launch_lock:
            kernels.composite_forward(*arrays, *layout, summed.numpy(), final.numpy(), stop)
        ctx.arrays, ctx.layout, ctx.stop = arrays, layout, stop
        ctx.final = final.numpy()
        return summed, final

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_summed: Tensor, grad_final: Tensor):
        kernels = _kernels()
        with kernels.launch_lock:
            kernels.set_num_threads(torch.get_num_threads())
            gradients = kernels.composite_backward(
                *ctx.arrays, *ctx.layout, ctx.final, ctx.stop, _numpy(grad_summed),
                _numpy(grad_final),
            )
        gradients = torch.from_numpy(gradients)
        columns = kernels.GRADIENT_COLUMNS
        return (
            gradients[..., 0:2], gradients[..., 2:5], gradients[..., 5],
            gradients[..., columns:], None, None, None, None, None,
        )
