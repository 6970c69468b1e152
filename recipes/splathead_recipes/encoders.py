"""The encoder both evaluation recipes (``gmae_linprobe.py``, ``gmae_finetune.py``) start from.

``--checkpoint`` names one of three sources, and :func:`load_encoder` returns the timm
``VisionTransformer`` (no head, ``num_classes=0``) it describes:

- a pretraining checkpoint of ``recipes/gmae_imagenet.py`` (``checkpoint-*.pt``): the encoder is
  rebuilt from the run's stored config (model, image and patch size) and given the run's
  ``encoder.vit.*`` weights;
- an encoder exported with :func:`splathead.adapters.export_timm` (``*.safetensors``): the
  architecture is ``--model`` at ``--img-size`` / ``--patch-size``; a head in the file is left out;
- ``none``: ``--model`` with random weights (the baseline): a splathead factory name
  (``gmae_vit_tiny``, ``gmae_vit_base_patch16``...: MAE's initialisation) or any timm model name.

:func:`attach_head` then gives it a classifier with the chosen pooling.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Literal

import timm
from safetensors import SafetensorError
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from splathead.factories import ENCODERS, gmae_encoder

from splathead_recipes import checkpoint
from splathead_recipes.cli import ConfigError
from splathead_recipes.config import load_config

log = logging.getLogger("gmae")

_ENCODER_PREFIX = "encoder.vit."
GlobalPool = Literal["avg", "token", "avg_after_norm"]
"""The classifier's features, see :func:`attach_head`."""


def known_model(name: str) -> bool:
    """Whether ``--model name`` is a splathead factory or a timm model."""
    return name in ENCODERS or timm.is_model(name)


def build_architecture(model: str, *, img_size: int, patch_size: int | None,
                       **vit_kwargs: Any) -> VisionTransformer:
    """``model``'s ViT at ``img_size`` without a head, randomly initialised.

    Args:
        model: a splathead factory name (that GMAE's encoder alone,
            :func:`splathead.factories.gmae_encoder`: MAE's initialisation) or a timm model name
            (timm's initialisation).
        patch_size: None for the model's own.
        vit_kwargs: more keywords of timm's ``VisionTransformer`` (e.g. ``drop_path_rate``).
    """
    patch = {} if patch_size is None else {"patch_size": patch_size}
    try:
        if model in ENCODERS:
            vit = gmae_encoder(model, img_size=img_size, **patch, **vit_kwargs).vit
        elif timm.is_model(model):
            vit = timm.create_model(model, pretrained=False, num_classes=0, img_size=img_size,
                                    **patch, **vit_kwargs)
        else:
            raise ConfigError(f"--model {model!r} is neither a splathead model "
                              f"({', '.join(ENCODERS)}) nor a timm model")
    except (ValueError, TypeError, AssertionError) as error:
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(f"--model {model} --img-size {img_size} --patch-size {patch_size}: "
                          f"{error}") from None
    if not isinstance(vit, VisionTransformer):
        raise ConfigError(f"--model {model} is a {type(vit).__name__}, not a timm "
                          f"VisionTransformer")
    return vit


def load_encoder(source: str, *, model: str | None, img_size: int, patch_size: int | None,
                 **vit_kwargs: Any) -> VisionTransformer:
    """The encoder ``--checkpoint source`` describes (module docstring), on the CPU.

    Args:
        source: "none", a pretraining checkpoint or an exported ``*.safetensors`` file.
        model: the architecture name; for a pretraining checkpoint, None takes the run's and
            another name than the run's is refused.
        img_size, patch_size: must match a pretraining checkpoint's (patch size None: its own).
        vit_kwargs: more keywords of timm's ``VisionTransformer`` (e.g. ``drop_path_rate``).

    Raises:
        ConfigError: a flag that does not fit (missing file, other architecture), naming it.
        CheckpointError: a file that is not a readable checkpoint.
    """
    if source == "none":
        if model is None:
            raise ConfigError("--checkpoint none needs --model (the architecture to initialise)")
        return build_architecture(model, img_size=img_size, patch_size=patch_size, **vit_kwargs)
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"--checkpoint {source}: no such file (a checkpoint-*.pt of "
                          f"gmae_imagenet.py, an export_timm *.safetensors, or none)")
    if path.suffix == ".safetensors":
        return _load_export(path, model=model, img_size=img_size, patch_size=patch_size,
                            **vit_kwargs)
    return _load_pretraining(path, model=model, img_size=img_size, patch_size=patch_size,
                             **vit_kwargs)


def _load_pretraining(path: Path, *, model: str | None, img_size: int, patch_size: int | None,
                      **vit_kwargs: Any) -> VisionTransformer:
    state = checkpoint.load(path)
    checkpoint.require_keys(state, path, {"model", "config"}, "recipes/gmae_imagenet.py")
    run = load_config(state["config"])
    for flag, wanted, pretrained in (("--model", model, run.model),
                                     ("--img-size", img_size, run.img_size),
                                     ("--patch-size", patch_size, run.patch_size)):
        if wanted is not None and wanted != pretrained:
            raise ConfigError(f"{flag} {wanted}, but --checkpoint {path} was pretrained with "
                              f"{flag} {pretrained}; drop {flag} or set it to {pretrained}")
    vit = build_architecture(run.model, img_size=run.img_size, patch_size=run.patch_size,
                             **vit_kwargs)
    weights = {name.removeprefix(_ENCODER_PREFIX): tensor
               for name, tensor in state["model"].items() if name.startswith(_ENCODER_PREFIX)}
    _load_weights(vit, weights, path, f"--model {run.model} --img-size {run.img_size}")
    log.info("encoder: %s of %s (step %s)", run.model, path, state.get("step", "?"))
    return vit


def _load_export(path: Path, *, model: str | None, img_size: int, patch_size: int | None,
                 **vit_kwargs: Any) -> VisionTransformer:
    if model is None:
        raise ConfigError(f"--checkpoint {path} (an exported encoder) needs --model: the "
                          f"architecture it was exported from")
    try:
        weights = load_file(path)
    except (SafetensorError, OSError) as error:
        raise checkpoint.CheckpointError(f"{path}: not a readable safetensors file, "
                                         f"{error}") from None
    vit = build_architecture(model, img_size=img_size, patch_size=patch_size, **vit_kwargs)
    weights = {name: tensor for name, tensor in weights.items() if not name.startswith("head.")}
    _load_weights(vit, weights, path, f"--model {model} --img-size {img_size} --patch-size "
                                      f"{patch_size}")
    log.info("encoder: %s from %s", model, path)
    return vit


def _load_weights(vit: VisionTransformer, weights: dict, path: Path, settings: str) -> None:
    if not weights:
        raise ConfigError(f"--checkpoint {path}: holds no encoder weights")
    try:
        vit.load_state_dict(weights)
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).strip().splitlines()[1:] if line.strip()]
        raise ConfigError(f"--checkpoint {path}: its encoder does not fit {settings}: "
                          f"{'; '.join(lines[:3])}") from None


def attach_head(vit: VisionTransformer, *, num_classes: int,
                global_pool: GlobalPool) -> VisionTransformer:
    """Give ``vit`` a ``Linear(embed_dim, num_classes)`` head (timm's ``reset_classifier``).

    ``"avg"`` is MAE's global pooling for fine-tuning: the mean of the patch tokens of the last
    block, then a new LayerNorm (``fc_norm``, weight 1, bias 0): the encoder's final norm is
    dropped, as MAE's evaluation models do. ``"token"``: the cls token after the encoder's final
    norm (MAE's linear probe of ViT-B). ``"avg_after_norm"``: the mean of the patch tokens after
    the encoder's own final norm, no fresh LayerNorm (the GMAE authors' probe and fine-tune).
    Returns ``vit``, changed in place.
    """
    if global_pool == "token" and not vit.has_class_token:
        raise ConfigError("--global-pool token needs a cls token; this encoder has none")
    if global_pool == "avg" and isinstance(vit.fc_norm, nn.Identity):
        fresh = copy.deepcopy(vit.norm)
        if hasattr(fresh, "reset_parameters"):
            fresh.reset_parameters()
        vit.fc_norm, vit.norm = fresh, nn.Identity()
    vit.reset_classifier(num_classes, "avg" if global_pool == "avg_after_norm" else global_pool)
    return vit
