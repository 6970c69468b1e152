"""What every recipe's configuration holds: :class:`RunConfig`, the base each recipe extends.

The input crops, the optimisation, the devices, checkpoints, evaluation interval and logging are
the same settings in pretraining, the linear probe and fine-tuning; a recipe's config subclasses
:class:`RunConfig`, adds its own fields and may give a shared field another default (a field
declared again keeps its place). :func:`~splathead_recipes.loop.fit` reads these fields only.
:func:`check_ranges`, :func:`check_output` and :func:`check_devices` check them before any work.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from splathead_recipes.checkpoint import foreign_run_problem
from splathead_recipes.cli import flag, option
from splathead_recipes.crops import CropStyle
from splathead_recipes.run_lock import folder_in_use

GPU_DECODE_HELP = ("decode JPEGs with nvJPEG on the GPU, crop and resize there; loader workers "
                   "only read files and draw crops")


@dataclass(frozen=True)
class RunConfig:
    """The settings every recipe has. Defaults are the GMAE paper's ViT-B/16 pretraining."""

    # Input.
    img_size: int = option(224, "input resolution in pixels")
    patch_size: int | None = option(None, "encoder patch size in pixels (none: the model's own, "
                                    "16 for ViT-B/16, 8 for the tiny ViT)")

    # Data.
    data_path: str | None = option(None, "ImageFolder root holding train/<class>/ (and "
                                   "val/<class>/ for evaluations on it)")
    crop_scale: tuple[float, float] = option((0.08, 1.0), "RandomResizedCrop area range")
    crop_style: CropStyle = option(
        "torchvision", "RandomResizedCrop's box: torchvision (up to ten draws, then the centre "
        "crop) or tf (one draw, sides clipped to the image: MAE's code and the GMAE authors')")
    hflip: bool = option(True, "random horizontal flips")
    jpeg_draft: bool = option(True, "decode a JPEG at 1/2, 1/4 or 1/8 size when the crop is at "
                              "least that many times the output size (libjpeg's scaled DCT)")
    num_workers: int = option(10, "data loader processes per GPU")
    pin_memory: bool = option(True, "page-locked host batches (CUDA only)")

    # Optimisation.
    batch_size: int = option(1024, "global batch: world size x per-GPU batch x accum steps")
    accum_steps: int = option(1, "gradient accumulation steps per optimiser step")
    blr: float = option(1e-4, "base learning rate; lr = blr x batch_size / 256")
    lr: float | None = option(None, "absolute learning rate (overrides blr)")
    min_lr: float = option(0.0, "learning rate at the end of the cosine")
    warmup_epochs: float = option(5.0, "linear warmup length in epochs")
    epochs: int = option(400, "training length in epochs")
    weight_decay: float = option(0.05, "AdamW decay (not on biases, norms, 1-D params, tokens)")
    clip_grad: float = option(2.0, "gradient-norm clip (0 turns it off)")
    precision: Literal["bf16", "fp16", "fp32"] = option("bf16", "autocast dtype (fp32: none; "
                                                         "fp16 on CUDA only)")
    compile: bool = option(False, "torch.compile the transformer blocks")

    # System.
    device: Literal["auto", "cuda", "cpu"] = option("auto", "auto: cuda when available")
    backend: Literal["auto", "nccl", "gloo"] = option("auto", "auto: nccl on cuda, gloo on cpu")
    seed: int = option(0, "seed for initialisation, data order, augmentation and masking")
    output_dir: str = option("runs/gmae_vit_base_patch16", "checkpoints, metrics and images")

    # Checkpoints, evaluation, logging.
    checkpoint_every: int = option(1000, "steps between checkpoints (and at each epoch end)")
    keep_checkpoints: int = option(3, "how many of the newest checkpoints to keep")
    resume: str | None = option(None, "'auto' (newest readable in output-dir) or a file")
    max_steps: int = option(0, "stop (with a checkpoint) after this many steps; 0: no limit")
    eval_every: int = option(10, "epochs between evaluations (and one at the end); 0: at the end "
                             "only")
    log_every: int = option(20, "steps between metric records")

    @property
    def learning_rate(self) -> float:
        """Peak learning rate: ``lr`` if given, else ``blr * batch_size / 256``."""
        return self.lr if self.lr is not None else self.blr * self.batch_size / 256


_AT_LEAST_ONE = ("img_size", "batch_size", "accum_steps", "epochs", "log_every",
                 "keep_checkpoints", "checkpoint_every")
_NON_NEGATIVE = ("num_workers", "max_steps", "warmup_epochs", "weight_decay", "clip_grad",
                 "min_lr", "eval_every")


def check_ranges(config: RunConfig, *, at_least_one: tuple[str, ...] = (),
                 non_negative: tuple[str, ...] = ()) -> str | None:
    """The shared numbers in their ranges; ``at_least_one`` and ``non_negative`` name more of
    the recipe's own fields to hold to those bounds."""
    if config.patch_size is not None and (config.patch_size < 1
                                          or config.img_size % config.patch_size):
        return (f"--patch-size {config.patch_size} must be positive and divide --img-size "
                f"{config.img_size}")
    low, high = config.crop_scale
    if not 0 < low <= high <= 1:
        return f"--crop-scale needs 0 < min <= max <= 1, got {low} {high}"
    for name in _AT_LEAST_ONE + at_least_one:
        if getattr(config, name) < 1:
            return f"{flag(name)} must be at least 1, got {getattr(config, name)}"
    for name in _NON_NEGATIVE + non_negative:
        if getattr(config, name) < 0:
            return f"{flag(name)} must be >= 0, got {getattr(config, name)}"
    if config.learning_rate <= 0:
        return f"learning rate must be positive, got {config.learning_rate} (--lr / --blr)"
    return None


def check_output(config: RunConfig) -> str | None:
    """``--resume`` file and ``--output-dir``: there, writable, not in use by a live run, not
    another run's."""
    if config.resume not in (None, "auto") and not os.path.isfile(config.resume):
        return f"--resume {config.resume}: no such file (use 'auto' or a checkpoint path)"
    if problem := _unwritable(Path(config.output_dir)):
        return f"--output-dir {config.output_dir}: {problem}"
    # Global rank 0 holds the lock (loop.run_recipe); under torchrun the other ranks validate
    # while it may already hold it.
    if os.environ.get("RANK", "0") == "0" and (problem := folder_in_use(Path(config.output_dir))):
        return problem
    return foreign_run_problem(Path(config.output_dir), config.resume)


def check_devices(config: RunConfig, world_size: int, cuda_available: bool) -> str | None:
    """The batch split over ranks (``batch_size``, ``accum_steps``) and ``device``,
    ``backend`` and ``precision`` against what the machine has."""
    per_step = world_size * config.accum_steps
    if config.batch_size % per_step:
        return (f"--batch-size {config.batch_size} is not divisible by world size {world_size} "
                f"x --accum-steps {config.accum_steps}; pick --accum-steps so that "
                f"{config.batch_size} / ({world_size} x accum-steps) is a whole per-GPU batch")
    if config.device == "cuda" and not cuda_available:
        return "--device cuda but CUDA is not available; use --device cpu"
    if config.backend == "nccl" and not uses_cuda(config, cuda_available):
        return "--backend nccl needs CUDA; use --backend gloo (or auto) on CPU"
    if config.precision == "fp16" and not uses_cuda(config, cuda_available):
        return ("--precision fp16 (autocast with a grad scaler) runs on CUDA only; use bf16 "
                "(torch's CPU autocast) or fp32 on CPU")
    return None


def uses_cuda(config: RunConfig, cuda_available: bool) -> bool:
    """Whether the ``device`` setting lands on CUDA on this machine."""
    return config.device == "cuda" or (config.device == "auto" and cuda_available)


def check_gpu_decode(gpu_decode: bool, config: RunConfig, cuda_available: bool) -> str | None:
    """A recipe's ``--gpu-decode`` against the device ``config`` runs on."""
    if gpu_decode and not uses_cuda(config, cuda_available):
        return "--gpu-decode needs CUDA; leave it off on CPU (the workers decode)"
    return None


def _unwritable(directory: Path) -> str | None:
    """Why ``directory`` cannot be created or written to, or None."""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None
