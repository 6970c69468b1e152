"""Renderer speed and memory: backends x (images, Gaussians, size), as a markdown table.

    python benchmarks/render.py                      # CPU: numba and torch backends vs the dense baseline
    python benchmarks/render.py --configs 32x64x64   # the laptop demo's render (batch 32, 64 px)
    python benchmarks/render.py --device cuda --configs 256x256x224 --backends torch,gsplat

Scenes follow the GMAE head's ranges: centres 2 (sigmoid - 0.5) in (-1, 1), scales
sigmoid / 8, Shoemake rotations, sigmoid colours and opacities, rendered with
``Camera.gmae(size, size)``. Each repeat runs every backend once, interleaved, and the table
reports medians, so a shared machine's load hits all backends alike. "dense" is the naive
baseline (every Gaussian at every pixel; same maths, no tiling), kept here and not in the
library. Ratios are against dense on CPU and against gsplat on CUDA.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
from einops import rearrange
from torch.utils.checkpoint import checkpoint

from splathead.camera import Camera
from splathead.gaussians import Gaussians
from splathead.head import shoemake_quaternion
from splathead.indexing import batched_gather
from splathead.render import SplatRenderer
from splathead.render.projection import project_gaussians
from splathead.render.composite import composite


def gmae_scene(images: int, gaussians: int, *, device: str, seed: int = 0) -> Gaussians:
    """Gaussians in the ranges the GMAE head produces (the paper's activations)."""
    generator = torch.Generator().manual_seed(seed)

    def sigmoid(*shape: int) -> torch.Tensor:
        return torch.sigmoid(torch.randn(*shape, generator=generator))

    quats = shoemake_quaternion(torch.randn(images, gaussians, 3, generator=generator))
    scene = Gaussians(
        means=2 * (sigmoid(images, gaussians, 3) - 0.5),
        scales=sigmoid(images, gaussians, 3) / 8,
        quats=quats,
        colors=sigmoid(images, gaussians, 3),
        opacities=sigmoid(images, gaussians),
    )
    return scene.to(device)


def render_dense(gaussians: Gaussians, camera: Camera, images_per_chunk: int = 1) -> torch.Tensor:
    """The naive baseline: every Gaussian at every pixel, checkpointed per chunk of images."""
    projected = project_gaussians(
        gaussians.means, gaussians.quats, gaussians.scales, gaussians.opacities, camera
    )
    order = torch.argsort(projected.depths.detach(), dim=1, stable=True)
    visible = (projected.radii > 0).all(-1)
    fields = [batched_gather(t, order) for t in (projected.means2d, projected.conics, gaussians.opacities * visible, gaussians.colors)]
    b = gaussians.batch_size
    xs = (torch.arange(camera.width, device=gaussians.device) + 0.5).expand(b, -1)
    ys = (torch.arange(camera.height, device=gaussians.device) + 0.5).expand(b, -1)

    def chunk(xs, ys, means2d, conics, opacities, colors):
        summed, transmittance = composite(xs, ys, means2d, conics, opacities, colors)
        return summed + transmittance[..., None]  # white background

    parts = [
        checkpoint(chunk, *pieces, use_reentrant=False)
        for pieces in zip(*(t.split(images_per_chunk) for t in (xs, ys, *fields)))
    ]
    return rearrange(torch.cat(parts), "b h w c -> b c h w")


def peak_memory_mib(backend: str, config: str, device: str) -> float:
    """Peak memory of one forward+backward above the level before it: CUDA's allocator
    statistics, or on CPU the peak resident set of a fresh process (so no other run's freed
    pages hide the growth)."""
    if device == "cuda":
        images, gaussians, size = (int(part) for part in config.split("x"))
        render = make_renderer(backend, Camera.gmae(size, size), device)
        leaves = gmae_scene(images, gaussians, device=device).map(lambda t: t.requires_grad_())
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        render(leaves).square().mean().backward()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - start) / 2**20
    command = [sys.executable, __file__, "--measure-memory", backend, "--configs", config, "--device", device]
    return float(subprocess.run(command, check=True, capture_output=True, text=True).stdout)


def resident_bytes(field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process, from /proc/self/status."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def measure_memory_here(backend: str, config: str, device: str) -> None:
    """Child process of :func:`peak_memory_mib` on CPU: prints the peak RSS growth in MiB."""
    images, gaussians, size = (int(part) for part in config.split("x"))
    render = make_renderer(backend, Camera.gmae(size, size), device)
    # A first small run loads everything lazily loaded, so only the render's own memory counts.
    render(gmae_scene(1, 4, device=device).map(lambda t: t.requires_grad_())).sum().backward()
    leaves = gmae_scene(images, gaussians, device=device).map(lambda t: t.requires_grad_())
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # resets the peak resident set (VmHWM) to the current one
    before = resident_bytes("VmRSS")
    render(leaves).square().mean().backward()
    peak = resident_bytes("VmHWM")
    print((peak - before) / 2**20)


def timed(fn: Callable[[], None], device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1000


def make_renderer(backend: str, camera: Camera, device: str) -> Callable[[Gaussians], torch.Tensor]:
    if backend == "dense":
        return lambda gaussians: render_dense(gaussians, camera)
    renderer = SplatRenderer(camera, backend=backend).to(device)
    return lambda gaussians: renderer(gaussians).image


def benchmark(config: str, backends: list[str], args: argparse.Namespace) -> list[dict]:
    images, gaussians, size = (int(part) for part in config.split("x"))
    camera = Camera.gmae(size, size)
    scene = gmae_scene(images, gaussians, device=args.device)
    leaves = scene.map(lambda t: t.detach().requires_grad_())
    renderers = {backend: make_renderer(backend, camera, args.device) for backend in backends}
    forward_ms = {backend: [] for backend in backends}
    backward_ms = {backend: [] for backend in backends}
    for repeat in range(args.warmup + args.repeats):
        for backend, render in renderers.items():  # interleaved: load hits every backend alike

            def forward() -> None:
                with torch.no_grad():
                    render(scene)

            def forward_backward() -> None:
                render(leaves).square().mean().backward()

            forward_time, backward_time = timed(forward, args.device), timed(forward_backward, args.device)
            if repeat >= args.warmup:
                forward_ms[backend].append(forward_time)
                backward_ms[backend].append(backward_time)
    rows = []
    for backend in renderers:
        rows.append(
            dict(
                config=f"{images} x {gaussians} x {size}^2", backend=backend,
                forward=statistics.median(forward_ms[backend]),
                forward_backward=statistics.median(backward_ms[backend]),
                memory=peak_memory_mib(backend, config, args.device),
            )
        )
    reference = "gsplat" if args.device == "cuda" else "dense"
    base = next((row for row in rows if row["backend"] == reference), None)
    for row in rows:
        row["ratio"] = (
            f"{base['forward'] / row['forward']:.1f}x / {base['forward_backward'] / row['forward_backward']:.1f}x"
            if base is not None else "-"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--configs", default=None, help="comma-separated IMAGESxGAUSSIANSxSIZE")
    parser.add_argument("--backends", default=None, help="comma-separated: auto, numba, torch, gsplat, dense")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--measure-memory", metavar="BACKEND", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_memory:
        return measure_memory_here(args.measure_memory, args.configs, args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    on_cuda = args.device == "cuda"
    configs = args.configs or ("256x256x224" if on_cuda else "8x256x224,32x64x64,2x64x64")
    backends = (args.backends or ("torch,gsplat" if on_cuda else "numba,torch,dense")).split(",")

    rows = [row for config in configs.split(",") for row in benchmark(config, backends, args)]
    device_name = torch.cuda.get_device_name() if on_cuda else f"CPU, {torch.get_num_threads()} threads"
    reference = "gsplat" if on_cuda else "dense"
    print(f"\nSplatRenderer on {device_name}, torch {torch.__version__}, median of {args.repeats}\n")
    print(f"| images x Gaussians x size | backend | forward ms | fwd+bwd ms | peak memory MiB | speed-up vs {reference} (fwd / fwd+bwd) |")
    print("|---|---|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['config']} | {row['backend']} | {row['forward']:.1f} | {row['forward_backward']:.1f} "
            f"| {row['memory']:.0f} | {row['ratio']} |"
        )


if __name__ == "__main__":
    main()
