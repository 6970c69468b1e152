"""GMAE pretraining on ImageNet: one process per GPU under torchrun, or a plain CPU demo.

    python recipes/gmae_imagenet.py --preset demo                      # laptop CPU, about a minute
    torchrun --nproc_per_node 8 recipes/gmae_imagenet.py --data-path /imagenet
    python recipes/gmae_imagenet.py --help                             # every setting

``--preset paper`` (the default) is the paper's ViT-B/16 schedule (docs/pretraining.md); every
config field is a flag. Interrupted runs continue exactly with ``--resume auto``; SIGTERM and
SIGUSR1 write a checkpoint and exit. Every ``--eval-every`` epochs and at the end the run is
evaluated (online linear probes on labelled data with a val/ folder, reconstruction PSNR / SSIM
under fixed masks; docs/evaluation.md); its last line gives the final masked-patch PSNR.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch
from splathead import GMAE
from splathead.model import GMAEOutput
from splathead.viz import hide_patches, save_reconstruction_grid

from splathead_recipes.config import Config, ConfigError, parse_config, validate
from splathead_recipes.data import Batch, build_dataset, build_loader
from splathead_recipes.distributed import Runtime
from splathead_recipes.loop import Evaluation, StepHook, fit, run_recipe, seed_everything
from splathead_recipes.models import build_model
from splathead_recipes.optim import build_optimizer, learning_rate, per_epoch_learning_rate
from splathead_recipes.pretrain_eval import (
    FixedMaskEvaluation, OnlineProbeTraining, split_eval_data)
from splathead_recipes.train_step import AUTOCAST_DTYPES, StepResult

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


def pictured(config: Config, model: GMAE, evaluation: FixedMaskEvaluation,
             runtime: Runtime, finals: dict[int, dict]) -> Evaluation:
    """``evaluation``, also drawing ``images/eval_<step>.png`` (the first evaluated images under
    their fixed masks; not with ``--image-every 0``) and keeping each step's results."""

    def evaluate_and_draw(step: int) -> dict:
        results = evaluation(step)
        finals[step] = results
        if runtime.is_main and config.image_every and config.num_images and evaluation.first:
            images, output = evaluation.first
            save_images(eval_picture(config, step), model, images, output,
                        min(config.num_images, images.shape[0]))
        return results

    return evaluate_and_draw


def eval_picture(config: Config, step: int) -> Path:
    return Path(config.output_dir) / "images" / f"eval_{step:08d}.png"


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 done (or checkpointed on a signal), 1 failed in training, 2 bad settings
    or checkpoint, found before any training step."""
    return run_recipe(parse_config(argv), validate=validate, train=train)


def build_model_for(config: Config) -> GMAE:
    """:func:`build_model`, with the settings it cannot take reported as :class:`ConfigError`."""
    settings = (f"--model {config.model} --img-size {config.img_size} --num-gaussians "
                f"{config.num_gaussians} --gaussians-per-token {config.gaussians_per_token} "
                f"--mask-ratio {config.mask_ratio}")
    try:
        model = build_model(config)
    except ValueError as error:
        raise ConfigError(f"{settings}: {error}") from None
    if config.dataset != "synthetic" and config.img_size < 11:
        raise ConfigError(f"--img-size {config.img_size}: the evaluation's SSIM needs at least "
                          f"11 px (its window)")
    # MAE's masking keeps int(patches x (1 - ratio)); the encoder needs at least one.
    if int(model.num_patches * (1 - config.mask_ratio)) < 1:
        raise ConfigError(f"{settings}: --mask-ratio {config.mask_ratio} leaves no visible patch "
                          f"of the {model.num_patches}; lower it or raise --img-size")
    return model


def train(config: Config, runtime: Runtime) -> int:
    """Build the data, the GMAE and its optimiser, and hand them to the shared loop."""
    use_cuda = runtime.device.type == "cuda"
    data = split_eval_data(config, build_dataset(config))
    loader, sampler = build_loader(config, data.train, rank=runtime.rank,
                                   world_size=runtime.world_size,
                                   pin_memory=config.pin_memory and use_cuda)
    seed_everything(config.seed)  # identical initial weights on every rank
    model = build_model_for(config).to(runtime.device)
    optimizer = build_optimizer(model, config, decay_groups=config.decay_groups, fused=use_cuda)
    log.info("%s, peak lr %.3g", config.model, config.learning_rate)
    probes = (OnlineProbeTraining(model, num_classes=data.num_classes, lr=config.probe_lr,
                                  runtime=runtime, log_every=config.log_every,
                                  view=config.probe_view)
              if config.probes and data.num_classes > 1 else None)
    log.info("evaluation on %s; online probes: %s", data.source,
             f"{data.num_classes} classes" if probes else "none")
    finals: dict[int, dict] = {}
    evaluation = None
    if data.eval is not None:
        autocast = (torch.autocast(runtime.device.type, dtype=AUTOCAST_DTYPES[config.precision])
                    if config.precision in AUTOCAST_DTYPES else None)
        evaluation = pictured(config, model, FixedMaskEvaluation(
            model, data.eval, probes=probes, runtime=runtime, batch_size=loader.batch_size,
            num_workers=min(config.num_workers, 2), seed=config.seed, autocast=autocast),
            runtime, finals)

    lr_at = learning_rate if config.lr_schedule == "per-step" else per_epoch_learning_rate

    def schedule(step: int) -> float:
        return lr_at(step, config=config, steps_per_epoch=sampler.steps_per_epoch)

    status = fit(config, runtime, model=model, optimizer=optimizer,
                 forward=probes.collecting(gmae_loss) if probes else gmae_loss,
                 loader=loader, sampler=sampler, schedule=schedule,
                 hooks=[image_dumps(config, model, runtime), *([probes] if probes else [])],
                 evaluation=evaluation, eval_interval=config.eval_every * sampler.steps_per_epoch,
                 extras={"online_probes": probes} if probes else {})
    if runtime.is_main and finals:
        print(final_line(config, *max(finals.items(), key=lambda item: item[0])))
    return status


def final_line(config: Config, step: int, results: dict) -> str:
    """Where to look, and the last evaluation's masked-patch PSNR."""
    output_dir = Path(config.output_dir)
    picture = eval_picture(config, step)
    look = f"pictures: {picture}, " if picture.exists() else ""
    probe = f", probe top-1 {results['probe_top1']:.2f}%" if "probe_top1" in results else ""
    return (f"step {step}: {look}metrics: {output_dir / 'metrics.jsonl'}, TensorBoard: "
            f"{output_dir / 'tensorboard'}; psnr_masked={results['psnr_masked']:.2f} dB "
            f"(psnr {results['psnr']:.2f} dB, ssim {results['ssim']:.3f}{probe})")


if __name__ == "__main__":
    sys.exit(main())
