"""What fine-tuning adds to classification: MAE's protocol, every part of it timm's.

- :func:`build_optimizer`: AdamW on timm's layer-wise lr-decay groups (``lr_scale`` per group,
  which :class:`~splathead_recipes.train_step.TrainStep` applies every step).
- :class:`AugmentedCrop`: the loader workers' training crop, timm's ``create_transform``
  (RandomResizedCrop, flip, RandAugment) handing over uint8, as timm's prefetcher mode does;
  seeded per sample like :class:`~splathead_recipes.crops.TrainCrop`.
- :class:`MixedLoss`: on the device batch, after normalisation, what timm's prefetcher and
  training loop do there: random erasing, Mixup / CutMix with label smoothing, and the
  soft-target cross-entropy.
- :class:`EmaHook`: timm's ``ModelEmaV3`` of the weights, updated after every optimiser step and
  checkpointed beside the model.
"""

from __future__ import annotations

import contextlib
import functools
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import UInt8
from PIL import Image
from timm.data import Mixup, auto_augment, create_transform
from timm.data.random_erasing import RandomErasing
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.utils import ModelEmaV3
from torch import nn
from torchvision.transforms.v2 import functional as F

from splathead.typing import Tensor, typecheck
from splathead_recipes.crops import open_image
from splathead_recipes.data import Batch

__all__ = ["AugmentedCrop", "EmaHook", "MixedLoss", "build_optimizer", "seeded_globals"]


def build_optimizer(model: nn.Module, *, lr: float, weight_decay: float, layer_decay: float,
                    betas: tuple[float, float] = (0.9, 0.999),
                    fused: bool = False) -> torch.optim.AdamW:
    """AdamW over timm's ``param_groups_layer_decay(model, ...)`` (through
    ``create_optimizer_v2``): block ``i`` of ``L`` learns at ``layer_decay ** (L - i)`` times
    ``lr``, the embeddings at ``layer_decay ** (L + 1)``, the final norm and head at ``lr``;
    biases, norms and ``model.no_weight_decay()`` (cls token, positions) are not decayed.

    timm's ``VisionTransformer`` says which parameter is in which block through its
    ``group_matcher``; a model without one gets timm's fallback grouping (and a warning).
    """
    return create_optimizer_v2(model, "adamw", lr=lr, weight_decay=weight_decay,
                               layer_decay=layer_decay, betas=betas, fused=fused or None)


@contextlib.contextmanager
def seeded_globals(seed: int) -> Iterator[None]:
    """Python's, NumPy's and torch's (CPU) global generators seeded with ``seed`` inside, and
    restored on exit: timm's and torchvision's transforms draw from them."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=()):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


@dataclass(frozen=True)
class AugmentedCrop:
    """timm's training transform without its tensor stages: RandomResizedCrop (``scale``,
    bicubic) + horizontal flip (probability ``hflip``) + ``auto_augment`` (e.g. MAE's
    ``rand-m9-mstd0.5-inc1``), as uint8 ``[3 size size]``.

    The same calls as :class:`~splathead_recipes.crops.TrainCrop`, and the same guarantee: the
    output is a function of the image and ``seed`` only (the transforms draw from the global
    generators, seeded per sample and restored after it). Normalisation and random erasing
    happen on the device (:meth:`Batch.to`, :class:`MixedLoss`), as in timm's prefetcher mode.
    """

    size: int
    scale: tuple[float, float] = (0.08, 1.0)
    hflip: float = 0.5
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    interpolation: str = "bicubic"

    @functools.cached_property
    def transform(self) -> Callable[[Image.Image], torch.Tensor | np.ndarray]:
        transform = create_transform(self.size, is_training=True, scale=self.scale,
                                     hflip=self.hflip, auto_augment=self.auto_augment,
                                     interpolation=self.interpolation, use_prefetcher=True)
        for op in _augment_ops(transform):
            if op.aug_fn is auto_augment.posterize:
                op.aug_fn = posterize
        return transform

    def _apply(self, image: Image.Image, seed: int) -> torch.Tensor:
        with seeded_globals(seed):
            # timm 1.0.12 ends prefetcher mode with a NumPy array, timm 1.0.31 with a tensor.
            return torch.as_tensor(self.transform(image))

    @typecheck
    def from_pixels(self, pixels: UInt8[Tensor, "3 h w"], seed: int) -> UInt8[Tensor, "3 s s"]:
        """The augmented crop of a decoded image."""
        return self._apply(F.to_pil_image(pixels), seed)

    @typecheck
    def from_file(self, path: str | Path, seed: int,
                  to_rgb: Callable[[Image.Image], Image.Image]) -> UInt8[Tensor, "3 s s"]:
        """The augmented crop of an image file; ``to_rgb`` converts what PIL decodes to 8-bit
        RGB.

        Raises:
            OSError: the file is unreadable (PIL's error, naming ``path``).
        """
        with open_image(Path(path).read_bytes(), path) as image:
            return self._apply(to_rgb(image), seed)


def posterize(image: Image.Image, bits_to_keep: int, **kwargs: Any) -> Image.Image:
    """timm's posterize op as it ran with Pillow before 13: keeping 0 bits makes the image
    black. Pillow 13 refuses 0 bits (a ValueError), which timm's ``PosterizeIncreasing`` asks
    for at magnitude 10: about 1 image in 650 under ``rand-m9-mstd0.5-inc1``."""
    if bits_to_keep <= 0:
        return Image.new(image.mode, image.size)
    return auto_augment.posterize(image, bits_to_keep, **kwargs)


def _augment_ops(transform: Any) -> Iterator[Any]:
    """The ``AugmentOp`` s of timm's RandAugment / AugMix (``ops``) and AutoAugment
    (``policy``) stages in a ``Compose`` (checked with timm 1.0.31)."""
    for stage in transform.transforms:
        yield from getattr(stage, "ops", ())
        for sub_policy in getattr(stage, "policy", ()):
            yield from sub_policy


class MixedLoss:
    """The fine-tuning loss of one micro-batch (a :data:`~splathead_recipes.train_step.Forward`).

    On the normalised device batch, in timm's order: random erasing (``erase_prob``, per-pixel
    normal noise, one box), Mixup (``mixup`` alpha) / CutMix (``cutmix`` alpha), one of the two
    per batch, with ``label_smoothing`` folded into the soft targets, and the soft-target
    cross-entropy. With both alphas 0: plain cross-entropy, label-smoothed when asked. The
    draws come from the global generators, which the loop seeds per rank and checkpoints.

    Mixup mixes each micro-batch with its reverse, so micro-batches must be even.
    """

    def __init__(self, *, num_classes: int, mixup: float, cutmix: float, label_smoothing: float,
                 erase_prob: float, device: torch.device) -> None:
        self.erase = (RandomErasing(erase_prob, mode="pixel", max_count=1, device=device)
                      if erase_prob > 0 else None)
        self.mixup = (Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix,
                            label_smoothing=label_smoothing, num_classes=num_classes)
                      if mixup > 0 or cutmix > 0 else None)
        if self.mixup is not None:
            self.criterion: nn.Module = SoftTargetCrossEntropy()
        elif label_smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(smoothing=label_smoothing)
        else:
            self.criterion = nn.CrossEntropyLoss()

    def __call__(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        images, targets = batch.images, batch.labels
        if self.erase is not None:
            images = self.erase(images)  # in place, on the batch's own normalised copy
        if self.mixup is not None:
            images, targets = self.mixup(images, targets)
        logits = model(images)
        return self.criterion(logits.float(), targets), logits


class EmaHook:
    """timm's ``ModelEmaV3`` of ``model``: a step hook that updates it after every optimiser
    step, and a :class:`~splathead_recipes.loop.Stateful` the loop checkpoints.

    ``warmup``: timm's decay warmup (``1 - (1 + step) ** (-2/3)``, capped at ``decay``), which
    makes the average of a short run useful; without it every update uses ``decay``. The first
    update copies the weights (timm's decay 0 at step 1).
    """

    def __init__(self, model: nn.Module, *, decay: float, warmup: bool) -> None:
        self.model = model
        self.ema = ModelEmaV3(model, decay=decay, use_warmup=warmup)

    @property
    def module(self) -> nn.Module:
        """The averaged model (eval mode)."""
        return self.ema.module

    def __call__(self, step: int, result: Any) -> dict[str, float]:
        self.ema.update(self.model, step=step)
        return {}

    def state_dict(self) -> dict[str, Any]:
        return self.ema.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> Any:
        return self.ema.load_state_dict(state)
