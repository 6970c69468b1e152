"""Evaluation while pretraining: online linear probes and reconstruction metrics (fixed masks).

What ``recipes/gmae_imagenet.py`` measures every ``--eval-every`` epochs and at the end
(docs/evaluation.md):

- on labelled data (an ImageFolder of more than one class) with ``<data-path>/val`` holding the
  same classes: :class:`OnlineProbeTraining` trains one ``BatchNorm1d(affine=False) + Linear``
  probe per encoder block on the detached, mean-pooled tokens of every training micro-batch
  (``--probe-view``: the masked training pass's patch tokens, or all tokens of a second pass
  over the whole image), with its own AdamW; the evaluation scores them on ``val/`` (centre crops) beside the
  reconstruction metrics;
- otherwise the reconstruction metrics run on a fixed set: 256 training images held out of
  training (at most a tenth of the folder), or, for the bundled photos, 64 fixed crops of them.

Every evaluated image gets the same mask at every evaluation, drawn from a generator seeded
with the run's seed and the image's index, so evaluations at different steps (and on any number
of ranks) compare. Nothing here draws from the global generators: evaluating does not change
the training run, which therefore resumes bit for bit.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from splathead import GMAE, Gaussians, SplatRenderer
from splathead.health import collapse_warning, gaussian_health
from splathead.metrics import masked_psnr, psnr, ssim
from splathead.probes import BlockFeatures, OnlineProbes, probe_loss
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from splathead_recipes.config import Config, ConfigError, ProbeView
from splathead_recipes.crops import CentreCrop
from splathead_recipes.data import (
    Batch, PhotoCrops, SafeImageFolder, collate, train_crop)
from splathead_recipes.distributed import Runtime
from splathead_recipes.eval_step import evaluate
from splathead_recipes.train_step import Forward, StepResult

log = logging.getLogger("gmae")

HELD_OUT_IMAGES = 256  # training images kept out of training for the metrics, without val/
PHOTO_CROPS = 64  # fixed crops of the bundled photos (8 per photo)
_MASK_SEED = 0x6D61736B  # mixed with --seed: evaluation masks never repeat training's
HEALTH = ("gauss_border", "gauss_invisible", "gauss_coverage")  # splathead.health's shares


@dataclass(frozen=True)
class EvalData:
    """What to train on and what to evaluate on."""

    train: Dataset
    eval: Dataset | None  # None: nothing to evaluate (synthetic noise)
    num_classes: int  # > 1 only where the probes can be trained and scored
    source: str  # for the log: where the evaluated images come from


def split_eval_data(config: Config, train: Dataset) -> EvalData:
    """The training set (less any held-out images) and the set to evaluate on.

    Raises:
        ConfigError: ``<data-path>/val`` exists but holds no image, or other classes than
            ``train/``.
    """
    if config.dataset == "synthetic":
        return EvalData(train, None, 0, "none (synthetic data)")
    if config.dataset == "photos":
        return EvalData(train, PhotoCrops(train_crop(config), length=PHOTO_CROPS), 0,
                        f"{PHOTO_CROPS} fixed crops of the bundled photos")
    assert isinstance(train, SafeImageFolder)
    val = Path(config.data_path) / "val"
    if val.is_dir():
        try:
            eval_set = SafeImageFolder(val, CentreCrop(config.img_size))
        except FileNotFoundError as error:
            raise ConfigError(f"--data-path {config.data_path}: {error}; expected "
                              f"{val}/<class>/<image> (or no val/ folder)") from None
        if eval_set.classes != train.classes:
            raise ConfigError(
                f"--data-path {config.data_path}: val/ holds other classes than train/ "
                f"({_class_difference(train.classes, eval_set.classes)}); the probes need the "
                f"same class folders in both")
        labelled = len(train.classes) > 1
        return EvalData(train, eval_set, len(train.classes) if labelled else 0,
                        f"{len(eval_set)} images of {val} (centre crops)")
    count = min(HELD_OUT_IMAGES, len(train) // 10)
    if count == 0:
        return EvalData(train, None, 0, f"none ({len(train)} training images, no val/)")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(config.seed))
    held_out = set(order[:count].tolist())
    return EvalData(_subset(train, [i for i in range(len(train)) if i not in held_out],
                            train.crop),
                    _subset(train, sorted(held_out), CentreCrop(config.img_size)), 0,
                    f"{count} training images held out of training (centre crops, no val/)")


def _class_difference(train: list[str], val: list[str]) -> str:
    only_train, only_val = sorted(set(train) - set(val)), sorted(set(val) - set(train))
    return f"only in train/: {only_train[:5]}, only in val/: {only_val[:5]}"


def _subset(folder: SafeImageFolder, indices: list[int], crop: Any) -> SafeImageFolder:
    """``folder`` restricted to the files at ``indices``, cropped with ``crop``."""
    subset = copy.copy(folder)
    subset.samples = [folder.samples[i] for i in indices]
    subset.imgs = subset.samples
    subset.targets = [label for _, label in subset.samples]
    subset.crop = crop
    return subset


class OnlineProbeTraining:
    """Trains the online probes on every training micro-batch's detached block features.

    :meth:`collecting` wraps the recipe's forward so that each micro-batch leaves its features
    and labels here; the instance itself is a step hook that, after each optimiser step, takes
    one AdamW step of the probes on all of them (the rank's share of the global batch; under
    torchrun the probes are DDP-wrapped, so their gradients are averaged over ranks). It
    checkpoints as a :class:`~splathead_recipes.checkpoint.Stateful`.

    Args:
        model: the GMAE whose encoder blocks are probed (``model.encoder.blocks``).
        num_classes: classes of the labels.
        lr: the probes' constant learning rate.
        runtime: where the probes live; DDP under torchrun.
        log_every: steps between the probes' training-loss records.
        view: :data:`~splathead_recipes.config.ProbeView`, the features the probes train and are scored on.
    """

    def __init__(self, model: GMAE, *, num_classes: int, lr: float, runtime: Runtime,
                 log_every: int, view: ProbeView = "masked") -> None:
        if view not in ("masked", "full"):
            raise ValueError(f"view must be 'masked' or 'full', got {view!r}")
        encoder = model.encoder
        self.encoder = encoder if view == "full" else None
        self.blocks = BlockFeatures(
            encoder.blocks, num_prefix_tokens=0 if view == "full" else encoder.num_prefix_tokens)
        self.probes = OnlineProbes(embed_dim=encoder.embed_dim, num_classes=num_classes,
                                   num_blocks=len(self.blocks)).to(runtime.device)
        self.optimizer = torch.optim.AdamW(self.probes.parameters(), lr=lr, weight_decay=0.0)
        self.trained: nn.Module = (DistributedDataParallel(self.probes, device_ids=(
            [runtime.local_rank] if runtime.device.type == "cuda" else None))
            if runtime.distributed else self.probes)
        self.log_every = log_every
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []

    def collecting(self, forward: Forward) -> Forward:
        """``forward``, also keeping each micro-batch's block features and labels."""

        def forward_and_collect(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, Any]:
            loss, output = forward(model, batch)
            self._pending.append((self._features(batch.images), batch.labels))
            return loss, output

        return forward_and_collect

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        """``[blocks b d]``: the latest pass's block features, or under the full view those of
        a pass over every patch of ``images``, made here without gradient."""
        if self.encoder is not None:
            with torch.no_grad():
                self.encoder(images)
        return self.blocks.features()

    def __call__(self, step: int, result: StepResult) -> dict[str, float]:
        """One probe step on the features collected since the last one (a step hook)."""
        features = torch.cat([features for features, _ in self._pending], dim=1)
        labels = torch.cat([labels for _, labels in self._pending])
        self._pending.clear()
        self.probes.train()
        loss = probe_loss(self.trained(features), labels) / len(self.blocks)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"probe_loss": loss.item()} if step % self.log_every == 0 else {}

    @torch.no_grad()
    def correct(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``[blocks]``: how many of ``images`` each probe classifies right (the probes in eval
        mode: BatchNorm's running statistics), from the latest forward pass over them, or
        under the full view from a pass over every patch."""
        self.probes.eval()
        logits = self.probes(self._features(images))
        return (logits.argmax(dim=-1) == labels).sum(dim=1)

    def state_dict(self) -> dict[str, Any]:
        return {"probes": self.probes.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.probes.load_state_dict(state["probes"])
        self.optimizer.load_state_dict(state["optimizer"])


class FixedMaskEvaluation:
    """The :data:`~splathead_recipes.loop.Evaluation` of a GMAE: this rank's share of
    ``dataset`` (every ``world_size``-th image), each under its fixed mask.

    Returns, averaged over the images of all ranks: ``psnr_masked`` (dB over the hidden
    patches, RGB in [0, 1]), ``psnr`` (dB, whole image), ``ssim``, the Gaussian health
    ``gauss_border``, ``gauss_invisible``, ``gauss_coverage`` (:mod:`splathead.health`; the
    first evaluation that finds a collapse logs one warning), and with probes
    ``probe_top1`` (percent, best block) and ``probe_top1_blocks`` (percent, per block in
    order). :attr:`first` holds rank 0's first batch and its output, for a picture.

    Args:
        model: the GMAE (not DDP-wrapped: ranks may evaluate different numbers of batches).
        dataset: the images to evaluate, taking ``(index, seed)`` items.
        probes: the online probes to score, or None.
        batch_size, num_workers: of the evaluation loader.
        seed: the run's seed (masks and the crops of the photos follow it).
        autocast: the training's autocast, or None.
    """

    def __init__(self, model: GMAE, dataset: Dataset, *, probes: OnlineProbeTraining | None,
                 runtime: Runtime, batch_size: int, num_workers: int, seed: int,
                 autocast: Any = None) -> None:
        self.model = model
        self.probes = probes
        self.runtime = runtime
        self.autocast = autocast
        indices = range(runtime.rank, len(dataset), runtime.world_size)
        self.noise = torch.stack([
            torch.rand(model.num_patches, generator=torch.Generator().manual_seed(
                seed * 1_000_003 + _MASK_SEED + index)) for index in indices])
        self.loader = DataLoader(
            dataset, batch_size=batch_size, sampler=[(index, seed + index) for index in indices],
            num_workers=num_workers, collate_fn=collate,
            # Its workers' seeds come from here, not from torch's global generator.
            generator=torch.Generator().manual_seed(seed))
        self.first: tuple[torch.Tensor, Any] | None = None
        self.collapse_watch = CollapseWatch()

    def __call__(self, step: int) -> dict[str, Any]:
        seen = 0

        def measure(model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
            nonlocal seen
            count = batch.images.shape[0]
            noise = self.noise[seen: seen + count].to(batch.images.device)
            output = model(batch.images, noise=noise)
            if seen == 0 and self.runtime.is_main:
                self.first = (batch.images, output)
            seen += count
            render = output.image.float().clamp(0, 1)
            target = model.unnormalize(batch.images.float())
            sums = {"psnr_masked": masked_psnr(render, target, output.mask.mask,
                                               model.patch_size).sum(),
                    "psnr": psnr(render, target).sum(), "ssim": ssim(render, target).sum()}
            sums.update(health_sums(output.gaussians, model.renderer))
            if self.probes is not None:
                for index, correct in enumerate(self.probes.correct(batch.images, batch.labels)):
                    sums[f"probe_top1/{index:03d}"] = correct * 100.0
            return sums

        means = evaluate(self.model, self.loader, measure, device=self.runtime.device,
                         autocast=self.autocast)
        results = {name: means[name] for name in ("psnr_masked", "psnr", "ssim", *HEALTH)}
        if self.probes is not None:
            blocks = [means[name] for name in sorted(means) if name.startswith("probe_top1/")]
            results = {"probe_top1": max(blocks), "probe_top1_blocks": blocks, **results}
        log.info("step %d evaluation: %s", step, ", ".join(
            f"{name} {value:.4g}" for name, value in results.items()
            if isinstance(value, float)))
        self.collapse_watch(step, results)
        return results


def health_sums(gaussians: Gaussians, renderer: SplatRenderer) -> dict[str, torch.Tensor]:
    """The :data:`HEALTH` shares (:func:`splathead.health.gaussian_health`) of ``gaussians``'
    images, each summed over them; the render's alpha, which a forward does not return, is
    drawn once more."""
    health = gaussian_health(gaussians, renderer(gaussians).alpha, renderer.camera)
    return {f"gauss_{name}": share.sum() for name, share in health._asdict().items()}


class CollapseWatch:
    """Logs one warning, at the first evaluation whose :data:`HEALTH` shares say the Gaussians
    collapsed (:func:`splathead.health.collapse_warning`)."""

    def __init__(self) -> None:
        self.warned = False

    def __call__(self, step: int, results: dict[str, Any]) -> None:
        warning = collapse_warning(**{name.removeprefix("gauss_"): results[name]
                                      for name in HEALTH})
        if warning and not self.warned:
            log.warning("step %d: %s", step, warning)
            self.warned = True
