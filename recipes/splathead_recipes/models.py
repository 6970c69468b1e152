"""The models a recipe may build, by name, and a model rebuilt from a pretraining checkpoint."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import splathead
from splathead import GMAE

from splathead_recipes import checkpoint
from splathead_recipes.cli import ConfigError
from splathead_recipes.config import MODEL_NAMES, Config, load_config
from splathead_recipes.image_files import ImageFileError

# The factories exported at the package top level, by the names ``--model`` takes (checked in
# validation).
MODEL_FACTORIES: dict[str, Callable[..., GMAE]] = {
    name: getattr(splathead, name) for name in MODEL_NAMES}


def build_model(config: Config) -> GMAE:
    """An untrained GMAE with the config's architecture (random weights, MAE's initialisation)."""
    factory = MODEL_FACTORIES[config.model]
    patch = {} if config.patch_size is None else {"patch_size": config.patch_size}
    return factory(img_size=config.img_size,
                   num_queries=config.num_gaussians // config.gaussians_per_token,
                   gaussians_per_token=config.gaussians_per_token,
                   max_scale=config.max_scale, mask_ratio=config.mask_ratio,
                   norm_pix_loss=config.norm_pix_loss, backend=config.render_backend,
                   footprint=config.footprint, head_init=config.head_init, **patch)


def load_pretrained(path: Path) -> GMAE:
    """The GMAE saved in a pretraining checkpoint, rebuilt from the config stored beside it.

    Raises :class:`~splathead_recipes.checkpoint.CheckpointError`, naming the file and what is
    wrong, for anything else: an unreadable file, a bare state dict, weights that do not fit.
    """
    return model_from_state(checkpoint.load(path), path)


def model_from_state(state: dict[str, Any], path: Path) -> GMAE:
    """:func:`load_pretrained` of a checkpoint already loaded from ``path`` (named in errors)."""
    checkpoint.require_keys(state, path, {"model", "config"}, "recipes/gmae_imagenet.py")
    config = load_config(state["config"])
    if config.model not in MODEL_FACTORIES:
        raise checkpoint.CheckpointError(f"{path}: its model {config.model!r} is not one of "
                                         f"{list(MODEL_FACTORIES)}")
    model = build_model(config)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        raise checkpoint.CheckpointError(
            f"{path}: its weights do not fit the model its config describes (--model "
            f"{config.model} --img-size {config.img_size} --num-gaussians "
            f"{config.num_gaussians} --gaussians-per-token {config.gaussians_per_token}): "
            f"{str(error).strip().splitlines()[-1].strip()}") from None
    return model


def check_checkpoint_flag(parser: argparse.ArgumentParser, path: str) -> None:
    """Exit 2 naming ``--checkpoint`` unless it is ``none`` (an untrained model) or a file."""
    if path != "none" and not Path(path).is_file():
        parser.error(f"--checkpoint {path}: no such file (expected a gmae_imagenet.py "
                     "checkpoint, or 'none' for an untrained gmae_vit_tiny)")


def check_mask_ratio(model: GMAE, mask_ratio: float) -> None:
    """:class:`ConfigError` naming ``--mask-ratio`` when it leaves none of ``model``'s patches
    visible (0 shows them all)."""
    if mask_ratio and int(model.num_patches * (1 - mask_ratio)) < 1:
        raise ConfigError(f"--mask-ratio {mask_ratio} leaves none of the model's "
                          f"{model.num_patches} patches visible")


def run_checkpoint_command(args: argparse.Namespace) -> int:
    """``args.handler(args)`` of a command that reads ``--checkpoint`` and input images: a
    checkpoint, an image file or a setting (:class:`ConfigError`) that cannot be used ends it
    with exit status 2 and one message naming the flag or the file."""
    try:
        return args.handler(args)
    except checkpoint.CheckpointError as error:
        print(f"error: --checkpoint {error}", file=sys.stderr)
        return 2
    except (ImageFileError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
