"""GMAE pretraining on ImageNet: one process per GPU under torchrun, or a plain CPU demo.

    python recipes/gmae_imagenet.py --preset demo                      # laptop CPU, about a minute
    torchrun --nproc_per_node 8 recipes/gmae_imagenet.py --data-path /imagenet
    python recipes/gmae_imagenet.py --help                             # every setting

``--preset paper`` (the default) is the paper's ViT-B/16 schedule (docs/pretraining.md); every
config field is a flag. Interrupted runs continue exactly with ``--resume auto``; SIGTERM and
SIGUSR1 write a checkpoint and exit.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch
from splathead import GMAE, GMAEOutput
from splathead.viz import hide_patches, save_reconstruction_grid

from splathead_recipes import distributed
from splathead_recipes.checkpoint import CheckpointError
from splathead_recipes.config import Config, ConfigError, parse_config, validate
from splathead_recipes.data import Batch, build_dataset, build_loader
from splathead_recipes.distributed import Runtime
from splathead_recipes.logs import setup_logging
from splathead_recipes.loop import NonFiniteError, StepHook, fit, seed_everything
from splathead_recipes.models import build_model
from splathead_recipes.optim import build_optimizer, learning_rate
from splathead_recipes.train_step import StepResult

log = logging.getLogger("gmae")


def gmae_loss(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, GMAEOutput]:
    """The GMAE's own loss: MSE of the render on the masked patches."""
    output = model(batch.images)
    return output.loss, output


def save_images(path: Path, model: GMAE, images: torch.Tensor, output: GMAEOutput,
                count: int) -> None:
    """input | masked input | render | Gaussians, for the first ``count`` images."""
    inputs = model.unnormalize(images[:count].detach().float())
    masked = hide_patches(inputs, output.mask.mask[:count], model.patch_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_reconstruction_grid(path, inputs, masked, output.image[:count].detach().float(),
                             output.gaussians[:count].detach(), model.camera,
                             max_images=count)


def image_dumps(config: Config, model: GMAE, runtime: Runtime) -> StepHook:
    """Every ``image_every`` steps rank 0 writes ``images/step_<step>.png``."""

    def dump(step: int, result: StepResult) -> dict[str, float]:
        if runtime.is_main and config.image_every and step % config.image_every == 0:
            images = result.batch.images
            save_images(Path(config.output_dir) / "images" / f"step_{step:08d}.png", model,
                        images, result.output, min(config.num_images, images.shape[0]))
        return {}

    return dump


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 done (or checkpointed on a signal), 1 failed in training, 2 bad settings
    or checkpoint, found before any training step."""
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
        return train(config, runtime)
    except NonFiniteError as error:
        log.error("%s", error)
        return 1
    except (ConfigError, CheckpointError) as error:  # found once data, model or checkpoint load
        log.error("%s", error)
        return 2
    finally:
        distributed.teardown()


def build_model_for(config: Config) -> GMAE:
    """:func:`build_model`, with the settings it cannot take reported as :class:`ConfigError`."""
    settings = (f"--model {config.model} --img-size {config.img_size} --num-gaussians "
                f"{config.num_gaussians} --gaussians-per-token {config.gaussians_per_token} "
                f"--mask-ratio {config.mask_ratio}")
    try:
        model = build_model(config)
    except ValueError as error:
        raise ConfigError(f"{settings}: {error}") from None
    # MAE's masking keeps int(patches x (1 - ratio)); the encoder needs at least one.
    if int(model.num_patches * (1 - config.mask_ratio)) < 1:
        raise ConfigError(f"{settings}: --mask-ratio {config.mask_ratio} leaves no visible patch "
                          f"of the {model.num_patches}; lower it or raise --img-size")
    return model


def train(config: Config, runtime: Runtime) -> int:
    """Build the data, the GMAE and its optimiser, and hand them to the shared loop."""
    use_cuda = runtime.device.type == "cuda"
    loader, sampler = build_loader(config, build_dataset(config), rank=runtime.rank,
                                   world_size=runtime.world_size,
                                   pin_memory=config.pin_memory and use_cuda)
    seed_everything(config.seed)  # identical initial weights on every rank
    model = build_model_for(config).to(runtime.device)
    optimizer = build_optimizer(model, config, fused=use_cuda)
    log.info("%s, peak lr %.3g", config.model, config.learning_rate)

    def schedule(step: int) -> float:
        return learning_rate(step, config=config, steps_per_epoch=sampler.steps_per_epoch)

    return fit(config, runtime, model=model, optimizer=optimizer, forward=gmae_loss,
               loader=loader, sampler=sampler, schedule=schedule,
               hooks=[image_dumps(config, model, runtime)])


if __name__ == "__main__":
    sys.exit(main())
