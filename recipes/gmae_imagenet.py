"""GMAE pretraining on ImageNet: one process per GPU under torchrun, or a plain CPU demo.

    python recipes/gmae_imagenet.py --preset demo                      # laptop CPU, about a minute
    torchrun --nproc_per_node 8 recipes/gmae_imagenet.py --data-path /imagenet
    python recipes/gmae_imagenet.py --help                             # every setting

``--preset paper`` (the default) is the paper's ViT-B/16 schedule (docs/pretraining.md); every
config field is a flag. Interrupted runs continue exactly with ``--resume auto``; SIGTERM and
SIGUSR1 write a checkpoint and exit.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import splathead.model
from splathead.model import GMAE, GMAEOutput
from splathead.viz import hide_patches, save_reconstruction_grid

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the `pretrain` helpers beside us

from pretrain import checkpoint, distributed  # noqa: E402
from pretrain.config import Config, ConfigError, load_config, parse_config, validate  # noqa: E402
from pretrain.data import build_dataset, build_loader  # noqa: E402
from pretrain.distributed import Runtime  # noqa: E402
from pretrain.logs import MetricsLog, setup_logging  # noqa: E402
from pretrain.optim import build_optimizer, learning_rate  # noqa: E402

log = logging.getLogger("gmae")

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLossError(RuntimeError):
    """The loss or gradient norm became NaN/Inf; the run stops before the optimiser step."""


class StopSignal:
    """While active, remembers SIGTERM / SIGUSR1 (cluster preemption) until the step ends."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignal:
        self._previous = {signum: signal.signal(signum, self._handle) for signum in self.SIGNALS}
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: object) -> None:
        self.received = signum


def build_model(config: Config) -> GMAE:
    factory = getattr(splathead.model, config.model)
    return factory(img_size=config.img_size, num_queries=config.num_gaussians,
                   max_scale=config.max_scale, mask_ratio=config.mask_ratio,
                   backend=config.render_backend)


def save_images(path: Path, model: GMAE, images: torch.Tensor, output: GMAEOutput,
                count: int) -> None:
    """input | masked input | render | Gaussians, for the first ``count`` images."""
    inputs = model.unnormalize(images[:count].detach().float())
    masked = hide_patches(inputs, output.mask.mask[:count], model.patch_size[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    save_reconstruction_grid(path, inputs, masked, output.image[:count].detach().float(),
                             output.gaussians[:count].detach(), model.decoder.renderer.camera,
                             max_images=count)


def compile_blocks(model: nn.Module) -> None:
    """Compile each transformer block in place; the renderer stays eager (custom kernels)."""
    from timm.models.vision_transformer import Block

    for module in model.modules():
        if isinstance(module, Block):
            module.compile()


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def gather_rng_states(runtime: Runtime) -> list[dict]:
    """Every rank's generators, in rank order (each rank masks its own images)."""
    state = checkpoint.rng_state()
    if not runtime.distributed:
        return [state]
    gathered: list[dict | None] = [None] * runtime.world_size
    dist.all_gather_object(gathered, state)
    return gathered


def main(argv: list[str] | None = None) -> int:
    config = parse_config(argv)
    try:
        validate(config, world_size=distributed.world_size_from_env(),
                 cuda_available=torch.cuda.is_available())
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    runtime = distributed.setup(config.device, config.backend)
    setup_logging(runtime.is_main)
    try:
        with StopSignal() as stop:
            return train(config, runtime, stop)
    except NonFiniteLossError as error:
        log.error("%s", error)
        return 1
    except ConfigError as error:  # found late, e.g. a checkpoint that does not fit
        log.error("%s", error)
        return 2
    finally:
        distributed.teardown()


def train(config: Config, runtime: Runtime, stop: StopSignal) -> int:
    output_dir = Path(config.output_dir)
    if runtime.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        log.info("config (%s, world size %d):\n%s", runtime.device, runtime.world_size,
                 config.to_json())
        (output_dir / "config.json").write_text(config.to_json() + "\n")

    seed_everything(config.seed)  # identical initial weights on every rank
    model = build_model(config).to(runtime.device)
    use_cuda = runtime.device.type == "cuda"
    optimizer = build_optimizer(model, config, fused=use_cuda)
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=config.precision == "fp16")
    dataset = build_dataset(config)
    loader, sampler = build_loader(config, dataset, rank=runtime.rank,
                                   world_size=runtime.world_size,
                                   pin_memory=config.pin_memory and use_cuda)
    steps_per_epoch = sampler.steps_per_epoch
    total_steps = config.epochs * steps_per_epoch
    last_step = min(total_steps, config.max_steps) if config.max_steps else total_steps
    # Masking draws from the global generator: a different stream per rank.
    seed_everything(config.seed + runtime.rank)

    step = skipped_total = 0
    if config.resume is not None:
        found = (checkpoint.load_newest(output_dir) if config.resume == "auto"
                 else (Path(config.resume), checkpoint.load(Path(config.resume))))
        if found is None:
            log.info("no checkpoint in %s; starting from scratch", output_dir)
        else:
            path, state = found
            step = resume_from(state, config, runtime, model, optimizer, scaler, steps_per_epoch)
            skipped_total = state["skipped_images"]
            log.info("resumed from %s at step %d (epoch %d)", path, step, step // steps_per_epoch)

    if config.compile:
        compile_blocks(model)
    ddp_model = (DistributedDataParallel(model, device_ids=[runtime.local_rank] if use_cuda
                                         else None) if runtime.distributed else model)
    log.info("%s: %.1fM parameters, %d steps per epoch, %d per-GPU x %d accum x %d ranks = "
             "batch %d, peak lr %.3g", config.model,
             sum(p.numel() for p in model.parameters()) / 1e6, steps_per_epoch,
             loader.batch_size, config.accum_steps, runtime.world_size, config.batch_size,
             config.learning_rate)

    def save(at_step: int) -> None:
        # Collective (every rank's generators), so every rank calls it; rank 0 writes.
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "step": at_step,
            "epoch": at_step // steps_per_epoch,
            "step_in_epoch": at_step % steps_per_epoch,
            "steps_per_epoch": steps_per_epoch,
            "skipped_images": skipped_total,
            "rng": gather_rng_states(runtime),
            "config": dataclasses.asdict(config),
        }
        if runtime.is_main:
            path = checkpoint.save_and_prune(state, output_dir, step=at_step,
                                             keep=config.keep_checkpoints)
            log.info("saved %s", path)
        distributed.barrier()

    metrics = (MetricsLog(output_dir, start_step=step, total_steps=last_step)
               if runtime.is_main else None)
    autocast = (torch.autocast(runtime.device.type, dtype=_AUTOCAST_DTYPES[config.precision])
                if config.precision in _AUTOCAST_DTYPES else nullcontext())
    parameters = [p for p in model.parameters() if p.requires_grad]
    micro_batch = loader.batch_size
    clock, clock_step = time.perf_counter(), step

    ddp_model.train()
    while step < last_step:
        epoch = step // steps_per_epoch
        sampler.set_epoch(epoch)
        sampler.set_start_step(step - epoch * steps_per_epoch)
        batches = iter(loader)
        epoch_end = min((epoch + 1) * steps_per_epoch, last_step)
        while step < epoch_end:
            lr = learning_rate(step, config=config, steps_per_epoch=steps_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = torch.zeros((), device=runtime.device)
            skipped = 0
            for micro_step in range(config.accum_steps):
                batch = next(batches)
                images = batch.images.to(runtime.device, non_blocking=True)
                last_micro = micro_step == config.accum_steps - 1
                # Gradients are all-reduced once per optimiser step, on the last micro-batch.
                skip_sync = runtime.distributed and not last_micro
                with ddp_model.no_sync() if skip_sync else nullcontext():
                    with autocast:
                        output = ddp_model(images)
                    scaler.scale(output.loss / config.accum_steps).backward()
                loss_sum += output.loss.detach().float()
                skipped += batch.num_skipped
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(parameters, config.clip_grad or math.inf)
            loss = loss_sum / config.accum_steps
            # fp16's scaler skips steps with Inf gradients by design; only the loss counts there.
            bad = ~torch.isfinite(loss) if scaler.is_enabled() else ~(
                torch.isfinite(loss) & torch.isfinite(grad_norm))
            # One all-reduce (and one host sync) per step: mean loss, skipped files, NaN, stop.
            stats = torch.stack([loss, torch.tensor(float(skipped), device=runtime.device),
                                 bad.float(), torch.tensor(float(stop.received is not None),
                                                           device=runtime.device)])
            loss_total, skipped_step, bad_ranks, stop_ranks = (
                distributed.all_reduce_sum(stats).tolist())
            if bad_ranks:
                newest = checkpoint.list_checkpoints(output_dir)
                raise NonFiniteLossError(
                    f"non-finite loss or gradient at step {step} (epoch {epoch}); stopped before "
                    f"the optimiser step. Last good checkpoint: "
                    f"{newest[0] if newest else 'none'}")
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            skipped_total += int(skipped_step)

            if metrics is not None:
                if step % config.log_every == 0 or step == last_step:
                    elapsed = time.perf_counter() - clock
                    images_per_s = (step - clock_step) * config.batch_size / max(elapsed, 1e-9)
                    clock, clock_step = time.perf_counter(), step
                    metrics.write({"step": step, "epoch": step / steps_per_epoch,
                                   "loss": loss_total / runtime.world_size, "lr": lr,
                                   "grad_norm": float(grad_norm), "images_per_s": images_per_s,
                                   "skipped_images": skipped_total})
                    metrics.advance(0, img_s=f"{images_per_s:.0f}")
                metrics.advance(1, loss=f"{loss_total / runtime.world_size:.4f}", lr=f"{lr:.2e}")
                if config.image_every and step % config.image_every == 0:
                    save_images(output_dir / "images" / f"step_{step:08d}.png", model, images,
                                output, min(config.num_images, micro_batch))
            if skipped_step:
                log.warning("step %d: %d unreadable images replaced (%d so far)", step,
                            int(skipped_step), skipped_total)
            if stop_ranks:
                log.info("signal received: checkpointing at step %d and exiting", step)
                save(step)
                return finish(metrics, model, runtime, step)
            if step % config.checkpoint_every == 0 or step == epoch_end:
                save(step)
    return finish(metrics, model, runtime, step)


def resume_from(state: dict, config: Config, runtime: Runtime, model: nn.Module,
                optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                steps_per_epoch: int) -> int:
    """Load a checkpoint's state into this run; returns the step to continue from."""
    if state["steps_per_epoch"] != steps_per_epoch:
        raise ConfigError(
            f"the checkpoint has {state['steps_per_epoch']} steps per epoch, this run "
            f"{steps_per_epoch}: dataset or --batch-size changed "
            f"(checkpoint config: {load_config(state['config'])})")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    if len(state["rng"]) == runtime.world_size:
        checkpoint.set_rng_state(state["rng"][runtime.rank])
    else:
        log.warning("checkpoint written by %d ranks, resuming on %d: data order is kept, "
                    "masking noise is reseeded", len(state["rng"]), runtime.world_size)
        seed_everything(config.seed + runtime.rank + state["step"])
    return state["step"]


def finish(metrics: MetricsLog | None, model: nn.Module, runtime: Runtime, step: int) -> int:
    # Replicas must hold identical weights; record each rank's checksum to show it.
    checksum = sum(p.detach().double().sum().item() for p in model.parameters())
    checksums = distributed.all_gather_floats(checksum, runtime.device)
    if metrics is not None:
        metrics.event("end", step, param_checksums=checksums)
        metrics.close()
        output_dir = metrics.path.parent
        log.info("step %d: checkpoints and config.json in %s/, metrics in %s, TensorBoard in "
                 "%s/, PNG grids in %s/", step, output_dir, metrics.path,
                 output_dir / "tensorboard", output_dir / "images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
