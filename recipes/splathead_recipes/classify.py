"""Supervised classification on an ImageFolder: what the linear-probe and fine-tune recipes share.

``recipes/gmae_linprobe.py`` and ``recipes/gmae_finetune.py`` each build a classifier (the
encoder of :mod:`.encoders` with a head), its optimiser and the loss of a micro-batch; this
module gives both the rest, on top of pretraining's :func:`~splathead_recipes.loop.fit`:

- :class:`ClassifyConfig`: the settings both have (a recipe's config subclasses it);
  :func:`validate_classify` checks them before any work;
- :func:`build_classify_data`: ``<data-path>/train`` (RandomResizedCrop + flip) and
  ``<data-path>/val`` (centre crops), the same classes in both;
- :class:`TopKEvaluation`: top-1 / top-5 percent on ``val/`` summed over ranks, with the best so
  far checkpointed;
- :func:`fit_classifier`: epochs with gradient accumulation to ``--batch-size`` at any world size,
  warmup + cosine per step, checkpoints and ``--resume auto``, an evaluation every
  ``--eval-every`` epochs and at the end, and the last line ``top1=XX.XX top5=YY.YY``, also
  written to ``metrics.jsonl`` as ``{"event": "result", ...}``.

Validation, process group and exit status come from :func:`~splathead_recipes.loop.run_recipe`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from splathead_recipes import distributed
from splathead_recipes.cli import ConfigError, check_fields, option
from splathead_recipes.crops import CentreCrop
from splathead_recipes.data import (
    Batch, Crop, SafeImageFolder, build_loader, collate, stop_workers, train_crop)
from splathead_recipes.distributed import Runtime
from splathead_recipes.encoders import GlobalPool, known_model
from splathead_recipes.eval_step import evaluate
from splathead_recipes.checkpoint import Stateful
from splathead_recipes.loop import StepHook, fit
from splathead_recipes.optim import learning_rate
from splathead_recipes.settings import RunConfig, check_devices, check_output, check_ranges
from splathead_recipes.shapes_task import write_shapes_task
from splathead_recipes.train_step import AUTOCAST_DTYPES, Forward

log = logging.getLogger("gmae")


@dataclass(frozen=True)
class ClassifyConfig(RunConfig):
    """The settings every classification recipe has: :class:`RunConfig`'s (with other defaults
    where classification differs) and the encoder's; each recipe's presets replace the
    placeholders."""

    # Encoder (splathead_recipes.encoders).
    checkpoint: str = option("none", "the encoder: a checkpoint-*.pt of gmae_imagenet.py, an "
                             "export_timm *.safetensors, or none (random init of --model)")
    model: str | None = option(None, "architecture: a splathead factory (gmae_vit_base_patch16, "
                               "...) or a timm model name; none: the pretraining checkpoint's")
    global_pool: GlobalPool = option("avg", "avg: mean of the patch tokens, then a fresh "
                                     "LayerNorm (MAE's fine-tuning); token: the cls token after "
                                     "the final norm (MAE's ViT-B linear probe); avg_after_norm: "
                                     "mean of the patch tokens after the pretrained final norm "
                                     "(the GMAE authors')")

    # Data.
    data_path: str | None = option(None, "ImageFolder root holding train/<class>/ and "
                                   "val/<class>/")
    make_demo_data: bool = option(False, "write the shapes task (recipes/shapes_task.py) to "
                                  "--data-path first when that folder does not exist")

    # Optimisation, system, evaluation: classification's defaults.
    blr: float = option(1e-3, "base learning rate; lr = blr x batch_size / 256")
    epochs: int = option(100, "training length in epochs")
    weight_decay: float = option(0.0, "weight decay")
    clip_grad: float = option(0.0, "gradient-norm clip (0 turns it off)")
    seed: int = option(0, "seed for the head's initialisation, data order and augmentation")
    output_dir: str = option("runs/classify", "checkpoints and metrics")
    eval_every: int = option(1, "epochs between evaluations on val/ (and one at the end); 0: at "
                             "the end only")


def _check_sources(config: ClassifyConfig, check_data: bool) -> str | None:
    if config.model is not None and not known_model(config.model):
        return f"--model {config.model!r} is neither a splathead factory nor a timm model"
    if config.checkpoint == "none" and config.model is None:
        return "--checkpoint none needs --model (the architecture to initialise)"
    if config.checkpoint != "none" and not Path(config.checkpoint).is_file():
        return (f"--checkpoint {config.checkpoint}: no such file (a checkpoint-*.pt of "
                f"gmae_imagenet.py, an export_timm *.safetensors, or none)")
    if not check_data:
        return None
    if config.data_path is None:
        return "--data-path is needed: an ImageFolder root holding train/ and val/"
    for split in ("train", "val"):
        if not (Path(config.data_path) / split).is_dir():
            return (f"--data-path {config.data_path}: expected class folders in "
                    f"{Path(config.data_path) / split}/<class>/")
    return None


def validate_classify(config: ClassifyConfig, *, world_size: int, cuda_available: bool,
                      check_data: bool = True) -> None:
    """Raise :class:`ConfigError` for any shared setting that would fail later; what needs the
    encoder or the images loaded is checked when they are, still before the first step.
    ``check_data=False`` leaves out ``--data-path`` (a recipe that writes it first)."""
    if problem := (check_fields(config) or check_ranges(config)
                   or _check_sources(config, check_data) or check_output(config)
                   or check_devices(config, world_size, cuda_available)):
        raise ConfigError(problem)


def writes_demo_data(config: ClassifyConfig) -> bool:
    """Whether the run writes the shapes task to ``--data-path`` before it starts."""
    return (config.make_demo_data and config.data_path is not None
            and not Path(config.data_path).exists())


def write_demo_data(config: ClassifyConfig, runtime: Runtime) -> None:
    """Rank 0 writes the shapes task to ``--data-path`` when :func:`writes_demo_data`; every
    rank waits for it. Collective."""
    if writes_demo_data(config):
        if runtime.is_main:
            log.info("writing the shapes task to %s/ (recipes/shapes_task.py)", config.data_path)
            write_shapes_task(Path(config.data_path))
        distributed.barrier()


@dataclass(frozen=True)
class ClassifyData:
    train: SafeImageFolder  # (index, seed) items: RandomResizedCrop + flip
    val: SafeImageFolder  # centre crops
    num_classes: int


def build_classify_data(config: ClassifyConfig, *, crop: Crop | None = None) -> ClassifyData:
    """``train/`` and ``val/`` of ``--data-path``; :class:`ConfigError` for an empty folder or
    other classes in ``val/`` than in ``train/``. ``crop``: the training images' crop (None:
    :class:`~splathead_recipes.crops.TrainCrop` from the config)."""
    root = Path(config.data_path)
    try:
        train = SafeImageFolder(root / "train", crop or train_crop(config))
        val = SafeImageFolder(root / "val", CentreCrop(config.img_size))
    except FileNotFoundError as error:
        raise ConfigError(f"--data-path {config.data_path}: {error}; expected "
                          f"{root}/{{train,val}}/<class>/<image>") from None
    if train.classes != val.classes:
        only_train = sorted(set(train.classes) - set(val.classes))[:5]
        only_val = sorted(set(val.classes) - set(train.classes))[:5]
        raise ConfigError(f"--data-path {config.data_path}: val/ holds other classes than train/ "
                          f"(only in train/: {only_train}, only in val/: {only_val})")
    if len(train.classes) < 2:
        raise ConfigError(f"--data-path {config.data_path}: {len(train.classes)} class; a "
                          f"classifier needs at least 2")
    log.info("%d classes, %d training and %d validation images", len(train.classes), len(train),
             len(val))
    return ClassifyData(train, val, len(train.classes))


def cross_entropy(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The :data:`~splathead_recipes.train_step.Forward` of plain classification: the mean
    cross-entropy of the logits against the labels; the output is the logits."""
    logits = model(batch.images)
    return F.cross_entropy(logits, batch.labels), logits


class TopKEvaluation:
    """The :data:`~splathead_recipes.loop.Evaluation` of a classifier on ``val/``, and the
    :class:`~splathead_recipes.loop.Stateful` that remembers the best and latest results.

    Each rank scores every ``world_size``-th image (nothing padded or repeated), the counts are
    summed over ranks. Returns ``top1``, ``top5`` (percent; top-k with k = min(5, classes)) and
    ``best_top1`` / ``best_top5`` (the epoch-end evaluation with the best top-1 so far; one
    mid-epoch, where ``--max-steps`` stops a run, is recorded but not a candidate, so that a
    resumed run reports what an uninterrupted one does).

    Args:
        model: the classifier (not DDP-wrapped: ranks may evaluate different numbers of images).
        steps_per_epoch: optimiser steps per epoch (which evaluations end an epoch).
        name: what the log line calls the classifier ("" for the one being trained).
    """

    def __init__(self, model: nn.Module, dataset: SafeImageFolder, *, runtime: Runtime,
                 batch_size: int, num_workers: int, seed: int, steps_per_epoch: int,
                 autocast: Any = None, name: str = "") -> None:
        self.model = model
        self.name = name
        self.steps_per_epoch = steps_per_epoch
        self.runtime = runtime
        self.autocast = autocast
        self.k = min(5, len(dataset.classes))
        indices = range(runtime.rank, len(dataset), runtime.world_size)
        self.loader = DataLoader(dataset, batch_size=batch_size,
                                 sampler=[(index, 0) for index in indices],
                                 num_workers=num_workers, collate_fn=collate,
                                 persistent_workers=num_workers > 0,
                                 generator=torch.Generator().manual_seed(seed))
        self.best: dict[str, float] = {}
        self.last: dict[str, float] = {}

    def __call__(self, step: int) -> dict[str, float]:
        def measure(model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
            top = model(batch.images).topk(self.k, dim=1).indices
            hits = top == batch.labels[:, None]
            return {"top1": hits[:, 0].sum() * 100.0, "top5": hits.any(dim=1).sum() * 100.0}

        means = evaluate(self.model, self.loader, measure, device=self.runtime.device,
                         autocast=self.autocast)
        self.last = {"top1": means["top1"], "top5": means["top5"], "step": step}
        if step % self.steps_per_epoch == 0 and (
                not self.best or self.last["top1"] > self.best["top1"]):
            self.best = dict(self.last)
        best = self.best or self.last
        log.info("step %d evaluation%s: top-1 %.2f%%, top-5 %.2f%% (best top-1 %.2f%% at step "
                 "%d)", step, f" of {self.name}" if self.name else "", self.last["top1"], self.last["top5"], best["top1"], best["step"])
        return {"top1": self.last["top1"], "top5": self.last["top5"],
                "best_top1": best["top1"], "best_top5": best["top5"]}

    def state_dict(self) -> dict[str, Any]:
        return {"best": dict(self.best), "last": dict(self.last)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.last = dict(state["best"]), dict(state["last"])


def fit_classifier(config: ClassifyConfig, runtime: Runtime, *, model: nn.Module,
                   optimizer: torch.optim.Optimizer, data: ClassifyData,
                   report: Literal["best", "final"], forward: Forward = cross_entropy,
                   hooks: Sequence[StepHook] = (),
                   extras: Mapping[str, Stateful] = {},
                   also_evaluate: Mapping[str, nn.Module] = {}) -> int:
    """Train ``model`` on ``data.train`` with :func:`~splathead_recipes.loop.fit`, evaluate it
    on ``data.val``, print ``top1=XX.XX top5=YY.YY`` (the ``report`` evaluation) last.

    Args:
        model: the classifier on ``runtime.device``, not DDP-wrapped; parameters without
            ``requires_grad`` stay as they are.
        optimizer: over its trainable parameters; each group's ``lr`` is set every step from
            the warmup + cosine schedule (times the group's ``lr_scale``, if any).
        report: "best" (the linear probe's convention) or "final" (fine-tuning's).
        forward: the loss of one micro-batch; plain cross-entropy by default.
        hooks, extras: more step hooks and checkpointed state, as :func:`fit` takes them.
        also_evaluate: more classifiers scored on ``val/`` at each evaluation (e.g. an average
            of the weights), by name: their results join the same records as
            ``<name>_top1``, ``<name>_top5``, ``<name>_best_top1``...

    Returns 0; raises what :func:`fit` raises.
    """
    loader, sampler = build_loader(config, data.train, rank=runtime.rank,
                                   world_size=runtime.world_size,
                                   pin_memory=config.pin_memory and runtime.device.type == "cuda")
    autocast = (torch.autocast(runtime.device.type, dtype=AUTOCAST_DTYPES[config.precision])
                if config.precision in AUTOCAST_DTYPES else None)
    def scorer(classifier: nn.Module, name: str = "") -> TopKEvaluation:
        return TopKEvaluation(classifier, data.val, runtime=runtime,
                              batch_size=loader.batch_size,
                              num_workers=min(config.num_workers, 2), seed=config.seed,
                              steps_per_epoch=sampler.steps_per_epoch, autocast=autocast,
                              name=name)

    evaluation = scorer(model)
    others = {name: scorer(classifier, name) for name, classifier in also_evaluate.items()}

    def evaluate_all(step: int) -> dict[str, float]:
        results = evaluation(step)
        for name, other in others.items():
            results.update({f"{name}_{key}": value for key, value in other(step).items()})
        return results

    def schedule(step: int) -> float:
        return learning_rate(step, config=config, steps_per_epoch=sampler.steps_per_epoch)

    try:
        status = fit(config, runtime, model=model, optimizer=optimizer, forward=forward,
                     loader=loader, sampler=sampler, schedule=schedule, hooks=hooks,
                     evaluation=evaluate_all,
                     eval_interval=config.eval_every * sampler.steps_per_epoch,
                     extras={"evaluation": evaluation,
                             **{f"evaluation_{name}": other for name, other in others.items()},
                             **extras})
    finally:
        for scored in (evaluation, *others.values()):
            stop_workers(scored.loader)
    results = (evaluation.best or evaluation.last) if report == "best" else evaluation.last
    if runtime.is_main and results:
        best = evaluation.best if report == "final" else None
        write_result(Path(config.output_dir), results, report, best=best)
    return status


def write_result(output_dir: Path, results: dict[str, float], report: str, *,
                 best: dict[str, float] | None = None) -> None:
    """Append ``{"event": "result", ...}`` to ``metrics.jsonl`` and print the last line; with
    ``best`` (a final report), also the best epoch's numbers (MAE's fine-tune prints those as
    its "max accuracy"): in the record as ``best_step``, ``best_top1``, ``best_top5`` and
    printed on the line before."""
    line = f"top1={results['top1']:.2f} top5={results['top5']:.2f}"
    record = {"event": "result", "step": results["step"], "top1": results["top1"],
              "top5": results["top5"], "report": report, "line": line}
    if best:
        record.update(best_step=best["step"], best_top1=best["top1"], best_top5=best["top5"])
    with open(output_dir / "metrics.jsonl", "a") as handle:
        handle.write(json.dumps(record) + "\n")
    if best:
        print(f"best epoch (step {best['step']}): top1={best['top1']:.2f} "
              f"top5={best['top5']:.2f}; final epoch:", flush=True)
    print(line, flush=True)
