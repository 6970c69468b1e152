"""The pretraining configuration: :class:`Config` (the shared :class:`RunConfig` and the GMAE's
own settings), two presets, validation and the command line."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from splathead.camera import Footprint
from splathead.factories import ENCODERS
from splathead.head import HeadInit
from splathead.render.renderer import BackendName

from splathead_recipes.cli import (
    ConfigError, check_fields, from_dict, option, parse_with, parser_for)
from splathead_recipes.settings import (
    GPU_DECODE_HELP, RunConfig, check_devices, check_gpu_decode, check_output, check_ranges,
    uses_cuda)

IMAGENET_TRAIN_SIZE = 1_281_167

ProbeView = Literal["masked", "full"]
"""What the online probes read: ``masked``, the training pass's visible patch tokens (no extra
encoder cost); ``full``, the GMAE authors' view: a second encoder pass over every patch, without
gradient, pooled over all tokens, cls included."""

# The splathead factories ``--model`` may name (splathead_recipes.models maps them to the
# functions).
MODEL_NAMES = tuple(ENCODERS)


@dataclass(frozen=True)
class Config(RunConfig):
    """Every setting of a pretraining run: :class:`RunConfig`'s and the GMAE's, the dataset's,
    the AdamW betas, the online probes' and the image grids'. Defaults are the GMAE paper's
    ViT-B/16 pretraining; ``PRESETS["paper"]`` also takes the authors' head init, weight-decay
    groups, per-epoch schedule, online-probe view and TF-style crop (defaults kept as before, so older runs resume unchanged)."""

    # Model.
    model: str = option("gmae_vit_base_patch16", f"one of {', '.join(MODEL_NAMES)}")
    num_gaussians: int = option(256, "Gaussians per image")
    gaussians_per_token: int = option(1, "Gaussians each decoder query predicts; the decoder has "
                                    "num-gaussians / gaussians-per-token queries")
    max_scale: float = option(0.125, "largest Gaussian std in scene units (paper c = 1: 1/8)")
    mask_ratio: float = option(0.75, "fraction of patches hidden from the encoder, in (0, 1)")
    norm_pix_loss: bool = option(False, "MAE's normalised-pixel target: render and input patches "
                                 "normalised by the input patch's mean and variance (paper: off)")
    render_backend: BackendName = option("auto", "splatting backend")
    footprint: Footprint = option("ortho", "Gaussian footprints: ortho (independent of depth) or "
                                  "authors (sized by depth 8 / (8 + z) as in the GMAE authors' "
                                  "renderer; torch backend only)")
    head_init: HeadInit = option("xavier", "the Gaussian head's initial weight: xavier (MAE's "
                                 "decoder) or torch (PyTorch's default Linear init, the GMAE "
                                 "authors')")

    # Data.
    data_path: str | None = option(None, "ImageNet root holding train/ (dataset imagefolder)")
    dataset: Literal["imagefolder", "photos", "synthetic"] = option(
        "imagefolder",
        "imagefolder: <data-path>/train/<class>/*.JPEG; photos: scikit-image's bundled photos; "
        "synthetic: random tensors (throughput runs)",
    )
    samples_per_epoch: int = option(
        IMAGENET_TRAIN_SIZE, "epoch length for the photos and synthetic datasets"
    )
    gpu_decode: bool = option(False, GPU_DECODE_HELP)

    # Optimisation.
    betas: tuple[float, float] = option((0.9, 0.95), "AdamW betas")
    decay_groups: Literal["timm", "mae"] = option(
        "timm", "undecayed parameters: timm (biases, 1-D parameters and the model's "
        "no_weight_decay() tokens and embeddings) or mae (biases and 1-D parameters only, as "
        "MAE's and the GMAE authors' pretraining)")
    lr_schedule: Literal["per-step", "per-epoch"] = option(
        "per-step", "per-step: warmup from 0, cosine per step (MAE); per-epoch: the GMAE "
        "authors', constant within an epoch, epoch e of the warmup at (e + 1) / warmup-epochs")

    # Evaluation (docs/evaluation.md).
    probes: bool = option(True, "online linear probes on every encoder block (labelled "
                        "imagefolder data with <data-path>/val only)")
    probe_lr: float = option(1e-3, "AdamW learning rate of the online probes (constant, no "
                           "weight decay)")
    probe_view: ProbeView = option(
        "masked", "what the online probes read: masked (the training pass's visible patch "
        "tokens) or full (the GMAE authors': a second encoder pass over every patch, without "
        "gradient, all tokens pooled, cls included)")

    # Logging.
    image_every: int = option(1000, "steps between PNG grids (0: never)")
    num_images: int = option(8, "images per PNG grid")


PRESETS: dict[str, Config] = {
    # The authors' code where it differs from MAE's and the difference can change results
    # (docs/pretraining.md, "Paper settings").
    "paper": Config(head_init="torch", decay_groups="mae", lr_schedule="per-epoch",
                    probe_view="full", crop_style="tf"),
    # A tiny ViT on scikit-image's photos: a laptop CPU runs it in under 3 minutes (numba renderer).
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
        epochs=128,  # 1024 steps: 19.2 dB masked PSNR (48 epochs: 18.5 dB; 48 px, 64: 18.4)
        precision="fp32",
        device="cpu",
        output_dir="runs/demo",
        eval_every=16,
        checkpoint_every=96,
        log_every=4,
        image_every=96,
    ),
}


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


def _check_values(config: Config) -> str | None:
    """Choices among the allowed ones and finite numbers."""
    if problem := check_fields(config):
        return problem
    if config.model not in MODEL_NAMES:
        return f"--model {config.model!r} is not one of {list(MODEL_NAMES)}"
    return None


def _check_ranges(config: Config) -> str | None:
    if not 0 < config.mask_ratio < 1:
        return f"--mask-ratio must lie in (0, 1), got {config.mask_ratio}"
    if config.max_scale <= 0:
        return f"--max-scale must be positive, got {config.max_scale}"
    if problem := check_ranges(config,
                               at_least_one=("num_gaussians", "gaussians_per_token",
                                             "samples_per_epoch"),
                               non_negative=("image_every", "num_images")):
        return problem
    if config.num_gaussians % config.gaussians_per_token:
        return (f"--num-gaussians {config.num_gaussians} is not divisible by "
                f"--gaussians-per-token {config.gaussians_per_token} (the decoder's queries "
                f"each predict that many Gaussians)")
    if config.probe_lr <= 0:
        return f"--probe-lr must be positive, got {config.probe_lr}"
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


def _check_placement(config: Config, world_size: int, cuda_available: bool) -> str | None:
    """The batch split over ranks and what the devices can do."""
    if problem := check_devices(config, world_size, cuda_available):
        return problem
    if config.render_backend == "gsplat" and not uses_cuda(config, cuda_available):
        return "--render-backend gsplat needs CUDA; use torch (or auto) on CPU"
    if config.render_backend == "gsplat" and config.footprint == "authors":
        return ("--footprint authors: gsplat cannot render the authors' footprint; use "
                "--render-backend torch (or auto)")
    if config.render_backend == "numba" and uses_cuda(config, cuda_available):
        return "--render-backend numba renders on the CPU; use gsplat or torch (or auto) on CUDA"
    if problem := check_gpu_decode(config.gpu_decode, config, cuda_available):
        return problem
    if config.gpu_decode and config.dataset != "imagefolder":
        return (f"--gpu-decode reads JPEG files: it needs --dataset imagefolder, not "
                f"{config.dataset}")
    return None


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
    return from_dict(Config, data)
