"""The pretraining configuration: one dataclass, two presets, a command line derived from it."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from splathead.render.renderer import BackendName

from splathead_recipes.checkpoint import foreign_run_problem
from splathead_recipes.models import MODEL_FACTORIES

IMAGENET_TRAIN_SIZE = 1_281_167


GPU_DECODE_HELP = ("decode JPEGs with nvJPEG on the GPU, crop and resize there; loader workers "
                   "only read files and draw crops")


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Config:
    """Every setting of a pretraining run. Defaults are the GMAE paper's ViT-B/16 pretraining."""

    # Model.
    model: str = _opt("gmae_vit_base_patch16", f"one of {', '.join(MODEL_FACTORIES)}")
    img_size: int = _opt(224, "input resolution in pixels")
    patch_size: int | None = _opt(None, "encoder patch size in pixels (none: the model's own, "
                                  "16 for ViT-B/16, 8 for the tiny ViT)")
    num_gaussians: int = _opt(256, "Gaussians per image")
    gaussians_per_token: int = _opt(1, "Gaussians each decoder query predicts; the decoder has "
                                    "num-gaussians / gaussians-per-token queries")
    max_scale: float = _opt(0.125, "largest Gaussian std in scene units (paper c = 1: 1/8)")
    mask_ratio: float = _opt(0.75, "fraction of patches hidden from the encoder, in (0, 1)")
    render_backend: BackendName = _opt("auto", "splatting backend")

    # Data.
    dataset: Literal["imagefolder", "photos", "synthetic"] = _opt(
        "imagefolder",
        "imagefolder: <data-path>/train/<class>/*.JPEG; photos: scikit-image's bundled photos; "
        "synthetic: random tensors (throughput runs)",
    )
    data_path: str | None = _opt(None, "ImageNet root holding train/ (dataset imagefolder)")
    samples_per_epoch: int = _opt(
        IMAGENET_TRAIN_SIZE, "epoch length for the photos and synthetic datasets"
    )
    crop_scale: tuple[float, float] = _opt((0.08, 1.0), "RandomResizedCrop area range")
    hflip: bool = _opt(True, "random horizontal flips")
    jpeg_draft: bool = _opt(True, "decode a JPEG at 1/2, 1/4 or 1/8 size when the crop is at "
                            "least that many times the output size (libjpeg's scaled DCT)")
    gpu_decode: bool = _opt(False, GPU_DECODE_HELP)
    num_workers: int = _opt(10, "data loader processes per GPU")
    pin_memory: bool = _opt(True, "page-locked host batches (CUDA only)")

    # Optimisation.
    batch_size: int = _opt(1024, "global batch: world size x per-GPU batch x accum steps")
    accum_steps: int = _opt(1, "gradient accumulation steps per optimiser step")
    blr: float = _opt(1e-4, "base learning rate; lr = blr x batch_size / 256")
    lr: float | None = _opt(None, "absolute learning rate (overrides blr)")
    min_lr: float = _opt(0.0, "learning rate at the end of the cosine")
    warmup_epochs: float = _opt(5.0, "linear warmup length in epochs")
    epochs: int = _opt(400, "training length in epochs")
    weight_decay: float = _opt(0.05, "AdamW decay (not on biases, norms, 1-D params, tokens)")
    betas: tuple[float, float] = _opt((0.9, 0.95), "AdamW betas")
    clip_grad: float = _opt(2.0, "gradient-norm clip (0 turns it off)")
    precision: Literal["bf16", "fp16", "fp32"] = _opt("bf16", "autocast dtype (fp32: none)")
    compile: bool = _opt(False, "torch.compile the transformer blocks")

    # System.
    device: Literal["auto", "cuda", "cpu"] = _opt("auto", "auto: cuda when available")
    backend: Literal["auto", "nccl", "gloo"] = _opt("auto", "auto: nccl on cuda, gloo on cpu")
    seed: int = _opt(0, "seed for initialisation, data order, augmentation and masking")
    output_dir: str = _opt("runs/gmae_vit_base_patch16", "checkpoints, metrics and images")

    # Checkpoints.
    checkpoint_every: int = _opt(1000, "steps between checkpoints (and at each epoch end)")
    keep_checkpoints: int = _opt(3, "how many of the newest checkpoints to keep")
    resume: str | None = _opt(None, "'auto' (newest readable in output-dir) or a file")
    max_steps: int = _opt(0, "stop (with a checkpoint) after this many steps; 0: no limit")

    # Evaluation (docs/evaluation.md).
    eval_every: int = _opt(10, "epochs between evaluations (and one at the end); 0: at the end "
                           "only")
    probes: bool = _opt(True, "online linear probes on every encoder block (labelled "
                        "imagefolder data with <data-path>/val only)")
    probe_lr: float = _opt(1e-3, "AdamW learning rate of the online probes (constant, no "
                           "weight decay)")

    # Logging.
    log_every: int = _opt(20, "steps between metric records")
    image_every: int = _opt(1000, "steps between PNG grids (0: never)")
    num_images: int = _opt(8, "images per PNG grid")

    @property
    def learning_rate(self) -> float:
        """Peak learning rate: ``lr`` if given, else ``blr * batch_size / 256``."""
        return self.lr if self.lr is not None else self.blr * self.batch_size / 256

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)


PRESETS: dict[str, Config] = {
    "paper": Config(),
    # A tiny ViT on scikit-image's photos: a laptop CPU runs it in under 3 minutes.
    "demo": Config(
        # 32 px in 4 px patches: the 64 Gaussians cover 16 pixels each (at 64 px, 64 and the
        # renders stay blobs); crops of half a photo or more, so that it learns the 8 photos.
        model="gmae_vit_tiny",
        img_size=32,
        patch_size=4,
        num_gaussians=64,
        max_scale=0.25,
        dataset="photos",
        samples_per_epoch=256,
        crop_scale=(0.5, 1.0),
        num_workers=1,
        batch_size=32,
        lr=1e-3,
        warmup_epochs=1.0,
        epochs=48,
        precision="fp32",
        device="cpu",
        output_dir="runs/demo",
        eval_every=16,
        checkpoint_every=96,
        log_every=4,
        image_every=96,
    ),
}


class ConfigError(ValueError):
    """A setting that cannot work; the message says which flag to change."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def validate(config: Config, *, world_size: int, cuda_available: bool) -> None:
    """Raise :class:`ConfigError` for any setting that would fail later, before training starts.

    What needs the model or the dataset built (the image size against the patch size, the mask
    ratio against the patch count, an empty or too small image folder) is checked when the
    recipe builds them, still before the first step.
    """
    for check in (_check_values, _check_ranges, _check_paths):
        if problem := check(config):
            raise ConfigError(problem)
    if problem := _check_placement(config, world_size, cuda_available):
        raise ConfigError(problem)


def check_fields(config: Any) -> str | None:
    """Any recipe's dataclass config: choices among the allowed ones and finite numbers."""
    hints = typing.get_type_hints(type(config))
    for spec in dataclasses.fields(config):
        choices = typing.get_args(hints[spec.name])
        value = getattr(config, spec.name)
        if typing.get_origin(hints[spec.name]) is Literal and value not in choices:
            return f"{_flag(spec.name)} {value!r} is not one of {list(choices)}"
        numbers = value if isinstance(value, tuple) else (value,)
        if any(isinstance(number, float) and not math.isfinite(number) for number in numbers):
            return f"{_flag(spec.name)} must be finite, got {value}"
    return None


def _check_values(config: Config) -> str | None:
    """Choices among the allowed ones and finite numbers."""
    if problem := check_fields(config):
        return problem
    if config.model not in MODEL_FACTORIES:
        return f"--model {config.model!r} is not one of {list(MODEL_FACTORIES)}"
    return None


def _check_ranges(config: Config) -> str | None:
    if not 0 < config.mask_ratio < 1:
        return f"--mask-ratio must lie in (0, 1), got {config.mask_ratio}"
    if config.patch_size is not None and (config.patch_size < 1
                                          or config.img_size % config.patch_size):
        return (f"--patch-size {config.patch_size} must be positive and divide --img-size "
                f"{config.img_size}")
    if config.max_scale <= 0:
        return f"--max-scale must be positive, got {config.max_scale}"
    low, high = config.crop_scale
    if not 0 < low <= high <= 1:
        return f"--crop-scale needs 0 < min <= max <= 1, got {low} {high}"
    for name in ("img_size", "num_gaussians", "gaussians_per_token", "batch_size", "accum_steps", "epochs",
                 "samples_per_epoch", "log_every", "keep_checkpoints", "checkpoint_every"):
        if getattr(config, name) < 1:
            return f"{_flag(name)} must be at least 1, got {getattr(config, name)}"
    for name in ("num_workers", "max_steps", "image_every", "num_images", "warmup_epochs",
                 "weight_decay", "clip_grad", "min_lr", "eval_every"):
        if getattr(config, name) < 0:
            return f"{_flag(name)} must be >= 0, got {getattr(config, name)}"
    if config.num_gaussians % config.gaussians_per_token:
        return (f"--num-gaussians {config.num_gaussians} is not divisible by "
                f"--gaussians-per-token {config.gaussians_per_token} (the decoder's queries "
                f"each predict that many Gaussians)")
    if config.probe_lr <= 0:
        return f"--probe-lr must be positive, got {config.probe_lr}"
    if config.learning_rate <= 0:
        return f"learning rate must be positive, got {config.learning_rate} (--lr / --blr)"
    if not all(0 <= beta < 1 for beta in config.betas):
        return f"--betas must lie in [0, 1), got {config.betas}"
    if config.samples_per_epoch < config.batch_size and config.dataset != "imagefolder":
        return (f"--samples-per-epoch {config.samples_per_epoch} is below one --batch-size "
                f"{config.batch_size}")
    return None


def _check_paths(config: Config) -> str | None:
    """The data to read, the checkpoint to resume from, the folder to write to."""
    if config.dataset == "imagefolder":
        if config.data_path is None:
            return ("dataset imagefolder needs --data-path (ImageNet root holding train/), "
                    "or use --dataset photos / --synthetic")
        train = Path(config.data_path) / "train"
        if not train.is_dir():
            return f"--data-path {config.data_path}: expected class folders in {train}/<class>/"
    return check_output(config)


def check_output(config: Any) -> str | None:
    """Any recipe's ``--resume`` file and ``--output-dir``: there, writable, not another run's."""
    if config.resume not in (None, "auto") and not os.path.isfile(config.resume):
        return f"--resume {config.resume}: no such file (use 'auto' or a checkpoint path)"
    if problem := _unwritable(Path(config.output_dir)):
        return f"--output-dir {config.output_dir}: {problem}"
    return foreign_run_problem(Path(config.output_dir), config.resume)


def _check_placement(config: Config, world_size: int, cuda_available: bool) -> str | None:
    """The batch split over ranks and what the devices can do."""
    if problem := check_devices(config, world_size, cuda_available):
        return problem
    if config.render_backend == "gsplat" and not uses_cuda(config, cuda_available):
        return "--render-backend gsplat needs CUDA; use torch (or auto) on CPU"
    if problem := check_gpu_decode(config, cuda_available):
        return problem
    if config.gpu_decode and config.dataset != "imagefolder":
        return (f"--gpu-decode reads JPEG files: it needs --dataset imagefolder, not "
                f"{config.dataset}")
    return None


def check_devices(config: Any, world_size: int, cuda_available: bool) -> str | None:
    """Any recipe's batch split over ranks (``batch_size``, ``accum_steps``) and its
    ``device``, ``backend`` and ``precision`` against what the machine has."""
    per_step = world_size * config.accum_steps
    if config.batch_size % per_step:
        return (f"--batch-size {config.batch_size} is not divisible by world size {world_size} "
                f"x --accum-steps {config.accum_steps}; pick --accum-steps so that "
                f"{config.batch_size} / ({world_size} x accum-steps) is a whole per-GPU batch")
    if config.device == "cuda" and not cuda_available:
        return "--device cuda but CUDA is not available; use --device cpu"
    if config.backend == "nccl" and not uses_cuda(config, cuda_available):
        return "--backend nccl needs CUDA; use --backend gloo (or auto) on CPU"
    if config.precision != "fp32" and not uses_cuda(config, cuda_available):
        return (f"--precision {config.precision} autocasts on CUDA only; use --precision fp32 "
                f"on CPU")
    return None


def uses_cuda(config: Any, cuda_available: bool) -> bool:
    """Whether a recipe's ``device`` setting lands on CUDA on this machine."""
    return config.device == "cuda" or (config.device == "auto" and cuda_available)


def check_gpu_decode(config: Any, cuda_available: bool) -> str | None:
    """A recipe's ``gpu_decode`` against the device it runs on."""
    if config.gpu_decode and not uses_cuda(config, cuda_available):
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


def _argument_type(hint: Any) -> tuple[Any, dict[str, Any]]:
    """argparse ``type`` and extra keywords for one annotated field."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # `X | None`
        (inner,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]

        def optional(text: str) -> Any:
            return None if text.lower() == "none" else inner(text)

        optional.__name__ = inner.__name__
        return optional, {}
    if typing.get_origin(hint) is Literal:
        return str, {"choices": list(typing.get_args(hint))}
    if typing.get_origin(hint) is tuple:
        item_types = typing.get_args(hint)
        return item_types[0], {"nargs": len(item_types), "metavar": ("MIN", "MAX")}
    if hint is bool:
        return None, {"action": argparse.BooleanOptionalAction}
    return hint, {}


def parser_for(presets: dict[str, Any], description: str) -> argparse.ArgumentParser:
    """One ``--flag`` per field of the presets' dataclass (each field's ``help`` metadata, the
    paper preset's value) and ``--preset``; unset flags keep the preset's value."""
    parser = argparse.ArgumentParser(description=description,
                                     argument_default=argparse.SUPPRESS)
    parser.add_argument("--preset", choices=sorted(presets), default="paper",
                        help="starting values: paper (the paper's settings) or demo (laptop CPU)")
    paper = presets["paper"]
    hints = typing.get_type_hints(type(paper))
    for spec in dataclasses.fields(paper):
        arg_type, extra = _argument_type(hints[spec.name])
        if arg_type is not None:
            extra["type"] = arg_type
        parser.add_argument(_flag(spec.name), dest=spec.name,
                            help=f"{spec.metadata['help']} (paper: {getattr(paper, spec.name)})",
                            **extra)
    return parser


def parse_with(parser: argparse.ArgumentParser, presets: dict[str, Any],
               argv: list[str] | None = None) -> Any:
    """The preset named by ``--preset`` with every other flag ``parser`` read applied on top."""
    overrides = vars(parser.parse_args(argv))
    preset = presets[overrides.pop("preset")]
    overrides = {name: tuple(value) if isinstance(value, list) else value
                 for name, value in overrides.items()}
    return dataclasses.replace(preset, **overrides)


def build_parser() -> argparse.ArgumentParser:
    """One ``--flag`` per :class:`Config` field; unset flags keep the preset's value."""
    parser = parser_for(PRESETS, "GMAE pretraining (torchrun for several GPUs or nodes).")
    parser.add_argument("--synthetic", dest="dataset", action="store_const", const="synthetic",
                        help="same as --dataset synthetic")
    return parser


def parse_config(argv: list[str] | None = None) -> Config:
    """The preset named by ``--preset`` with every other given flag applied on top."""
    return parse_with(build_parser(), PRESETS, argv)


def load_config(data: dict[str, Any]) -> Config:
    """A :class:`Config` from its JSON / checkpoint dictionary form."""
    known = {spec.name for spec in dataclasses.fields(Config)}
    return Config(**{name: tuple(value) if isinstance(value, list) else value
                     for name, value in data.items() if name in known})
