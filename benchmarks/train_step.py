"""Training-step speed: GMAE against MAE's pixel decoder on the same encoder.

    python benchmarks/train_step.py                                     # tiny config, CPU
    python benchmarks/train_step.py --config base --batch 256 --device cuda [--compile]

The input pipeline has its own benchmark, ``benchmarks/data.py``.

Both models train with the same AdamW (fused on CUDA), precision and synthetic batch. MAE's
decoder (8 blocks, 512 wide, mask tokens, Linear to p*p*3) is built here from timm Blocks. A
second measurement isolates GMAE's tail: head + activations + render + loss, forward and
backward, from fixed decoder outputs; a torch.profiler run splits the forward into ranges. A
third row adds what pretraining on labelled data adds to every step: the online linear probes
(hooks pooling every encoder block's tokens, one BatchNorm1d + Linear per block over 1000
classes, their own AdamW step), trained by the recipe's own ``OnlineProbeTraining``, in both
views (``--probe-view``): ``masked`` reads the training pass, ``full`` (the GMAE authors') adds
a second encoder pass over every patch without gradient. Prints markdown tables.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import numpy as np
import torch
from timm.models.vision_transformer import Block
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

from splathead.factories import gmae_vit_base_patch16, gmae_vit_tiny
from splathead.initialization import init_like_mae
from splathead.losses import masked_patch_mse
from splathead.masking import restore_tokens
from splathead.model import GMAE
from splathead.patches import unpatchify
from splathead.pos_embed import sincos_pos_embed_2d

# recipes/ is not installed; a script there finds splathead_recipes beside itself.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
from splathead_recipes.config import Config  # noqa: E402
from splathead_recipes.data import Batch  # noqa: E402
from splathead_recipes.distributed import Runtime  # noqa: E402
from splathead_recipes.pretrain_eval import OnlineProbeTraining  # noqa: E402

CONFIGS = {  # GMAE factory overrides; MAE's decoder takes the same width and depth
    "tiny": dict(factory=gmae_vit_tiny, img_size=64, decoder=(64, 2, 4)),
    "base": dict(factory=gmae_vit_base_patch16, img_size=224, decoder=(512, 8, 16)),
}


class MAE(nn.Module):
    """MAE on a GMAE's encoder: mask tokens, sin-cos positions, blocks, Linear to pixels."""

    def __init__(self, gmae: GMAE, *, dim: int, depth: int, num_heads: int) -> None:
        super().__init__()
        self.encoder, self.masking = gmae.encoder, gmae.masking
        self.gmae = gmae  # for patch grid and normalisation only
        grid = gmae.decoder.grid_size
        self.embed = nn.Linear(gmae.encoder.embed_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(dim).normal_(std=0.02))
        self.register_buffer("pos_embed", sincos_pos_embed_2d(dim, grid, num_prefix_tokens=1))
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.Sequential(*[Block(dim, num_heads, 4.0, qkv_bias=True, norm_layer=norm)
                                      for _ in range(depth)])
        self.norm = norm(dim)
        self.pred = nn.Linear(dim, math.prod(gmae.patch_size) * 3)
        for module in (self.embed, self.blocks, self.norm, self.pred):
            module.apply(init_like_mae)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        mask = self.masking(images.shape[0], self.gmae.num_patches, device=images.device)
        tokens = self.embed(self.encoder(images, mask.ids_keep))
        patches = restore_tokens(tokens[:, 1:], mask.ids_restore, self.mask_token.to(tokens.dtype))
        sequence = torch.cat([tokens[:, :1], patches], dim=1) + self.pos_embed
        pixels = self.pred(self.norm(self.blocks(sequence)))[:, 1:].float()
        image = unpatchify(pixels, self.gmae.patch_size, self.gmae.decoder.grid_size)
        return masked_patch_mse(image, self.gmae.unnormalize(images), mask.mask,
                                self.gmae.patch_size)


def compile_blocks(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, Block):
            module.compile()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(step, device: torch.device, *, warmup: int, steps: int) -> float:
    """Median seconds of ``step()`` over ``steps`` calls after ``warmup``."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def training_step(model: nn.Module, loss_of, images, optimizer, autocast):
    def step() -> None:
        with autocast:
            loss = loss_of(model, images)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def with_online_probes(gmae: GMAE, images: torch.Tensor, labels: torch.Tensor, optimizer,
                       autocast, num_classes: int, view: str):
    """GMAE's training step that also collects the block features for the pretraining recipe's
    online probes, and the probes, whose call is their step (take their hooks off with
    ``probes.blocks.remove()``)."""
    runtime = Runtime(rank=0, local_rank=0, world_size=1, device=images.device)
    probes = OnlineProbeTraining(gmae, num_classes=num_classes, lr=Config().probe_lr,
                                 runtime=runtime, log_every=2**31, view=view)
    forward = probes.collecting(lambda model, batch: (model(batch.images).loss, None))
    batch = Batch(images, labels, 0)
    step = training_step(gmae, lambda model, _: forward(model, batch)[0], images, optimizer,
                         autocast)
    return step, probes


def time_step_and_hook(step, hook, device: torch.device, *, warmup: int,
                       steps: int) -> tuple[float, float]:
    """Median seconds of ``step()`` and of ``hook()`` run right after it, timed in the same
    iterations, so that a drift of the machine's speed moves both alike."""
    for _ in range(warmup):
        step()
        hook()
    times = []
    for _ in range(steps):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        middle = time.perf_counter()
        hook()
        synchronize(device)
        times.append((middle - start, time.perf_counter() - middle))
    return tuple(float(np.median(column)) for column in zip(*times))


def tail_step(gmae: GMAE, images: torch.Tensor, autocast):
    """Forward + backward of head, activations, render and loss from fixed query outputs."""
    with torch.no_grad(), autocast:
        mask = gmae.masking(images.shape[0], gmae.num_patches, device=images.device)
        queries = gmae.decoder.query_decoder(gmae.encode(images, mask.ids_keep), mask.ids_keep)
    queries = queries.detach().requires_grad_()
    target = gmae.unnormalize(images)

    def step() -> None:
        with autocast:
            image = gmae.render(gmae.decoder.head(queries))
            loss = masked_patch_mse(image, target, mask.mask, gmae.patch_size)
        loss.backward()

    return step


def profile_ranges(gmae: GMAE, images: torch.Tensor, autocast, device) -> dict[str, float]:
    """Forward time (ms) per part, from torch.profiler ranges opened by module hooks."""
    parts = {"encoder": gmae.encoder, "decoder": gmae.decoder.query_decoder,
             "head": gmae.decoder.head, "render": gmae.renderer}
    handles, open_ranges = [], {}
    for name, module in parts.items():
        def enter(module, args, name=name):
            open_ranges[name] = record_function(f"gmae/{name}")
            open_ranges[name].__enter__()

        def leave(module, args, output, name=name):
            open_ranges.pop(name).__exit__(None, None, None)

        handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as profiler:
        with record_function("gmae/forward"), autocast:
            gmae(images)
        synchronize(device)
    for handle in handles:
        handle.remove()
    use_cuda = device.type == "cuda"
    return {event.key.removeprefix("gmae/"):
            (event.device_time_total if use_cuda else event.cpu_time_total) / 1e3
            for event in profiler.key_averages() if event.key.startswith("gmae/")}


def benchmark_models(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    spec = CONFIGS[args.config]
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
                else nullcontext())
    torch.manual_seed(0)
    gmae = spec["factory"](img_size=spec["img_size"]).to(device)
    dim, depth, heads = spec["decoder"]
    mae = MAE(spec["factory"](img_size=spec["img_size"]), dim=dim, depth=depth,
              num_heads=heads).to(device)
    if args.compile:
        compile_blocks(gmae)
        compile_blocks(mae)
    images = torch.randn(args.batch, 3, spec["img_size"], spec["img_size"], device=device)
    fused = device.type == "cuda" and not args.no_fused
    rows, optimizers = {}, {}
    for name, model, loss_of in (("MAE", mae, lambda m, x: m(x)),
                                 ("GMAE", gmae, lambda m, x: m(x).loss)):
        optimizers[name] = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95),
                                             weight_decay=0.05, fused=fused or None)
        rows[name] = time_steps(training_step(model, loss_of, images, optimizers[name], autocast),
                                device, warmup=args.warmup, steps=args.steps)
    labels = torch.randint(0, args.probe_classes, (args.batch,), device=device)
    masked_step, masked_probes = with_online_probes(
        gmae, images, labels, optimizers["GMAE"], autocast, args.probe_classes, "masked")
    # The probes' step hook does not read the step's result.
    alongside, probe_step = time_step_and_hook(masked_step, lambda: masked_probes(1, None),
                                               device, warmup=args.warmup, steps=args.steps)
    rows["GMAE + online probes (masked view)"] = alongside + probe_step
    full_step, full_probes = with_online_probes(
        gmae, images, labels, optimizers["GMAE"], autocast, args.probe_classes, "full")
    # Both views in the same iterations, so that the machine's drift moves both alike.
    masked, full = time_step_and_hook(lambda: (masked_step(), masked_probes(1, None)),
                                      lambda: (full_step(), full_probes(1, None)),
                                      device, warmup=args.warmup, steps=args.steps)
    rows["GMAE + online probes (full view)"] = full
    masked_probes.blocks.remove()
    full_probes.blocks.remove()
    tail = time_steps(tail_step(gmae, images, autocast), device, warmup=args.warmup,
                      steps=args.steps)
    print(f"\n{args.config}, batch {args.batch}, {device}, {precision}, fused AdamW {fused}, "
          f"compile {args.compile}, render backend {gmae.renderer.backend}\n")
    print("| model | ms / step | images / s | time vs MAE |\n|---|---:|---:|---:|")
    for name, seconds in rows.items():
        print(f"| {name} | {seconds * 1e3:.1f} | {args.batch / seconds:.0f} | "
              f"{seconds / rows['MAE']:.2f}x |")
    print(f"\nonline probes ({args.probe_classes} classes): their step {probe_step * 1e3:.1f} ms = "
          f"{100 * probe_step / alongside:.1f}% of the GMAE step timed alongside it "
          f"({alongside * 1e3:.1f} ms, feature hooks included)")
    print(f"full probe view (a second encoder pass, no gradient), timed alongside the masked "
          f"view: {full * 1e3:.1f} ms per step = {full / masked:.2f}x the masked view's "
          f"{masked * 1e3:.1f} ms (probe steps included)")
    print(f"GMAE tail (head + activations + render + loss, fwd + bwd): {tail * 1e3:.1f} ms = "
          f"{100 * tail / rows['GMAE']:.1f}% of the GMAE step")
    if args.profile:
        ranges = profile_ranges(gmae, images, autocast, device)
        total = ranges.pop("forward")
        print("\n| GMAE forward part | ms | share |\n|---|---:|---:|")
        for name, ms in ranges.items():
            print(f"| {name} | {ms:.1f} | {100 * ms / total:.1f}% |")
        rest = total - sum(ranges.values())
        print(f"| loss + masking + rest | {rest:.1f} | {100 * rest / total:.1f}% |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default=None,
                        help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--compile", action="store_true", help="torch.compile every ViT block")
    parser.add_argument("--no-fused", action="store_true", help="unfused AdamW on CUDA")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--probe-classes", type=int, default=1000,
                        help="classes of the online probes' row (ImageNet: 1000)")
    parser.add_argument("--profile", action="store_true", help="torch.profiler forward ranges")
    args = parser.parse_args()
    benchmark_models(args)


if __name__ == "__main__":
    main()
