"""Fine-tuning of a pretrained encoder, MAE's protocol: one process per GPU under torchrun, or CPU.

    python recipes/gmae_finetune.py --preset demo                 # shapes task, CPU, ~1 minute
    torchrun --nproc_per_node 8 recipes/gmae_finetune.py --data-path /imagenet \\
        --checkpoint runs/gmae_vit_base_patch16/checkpoint-00500000.pt
    python recipes/gmae_finetune.py --help                        # every setting

The encoder (``--checkpoint``: a pretraining checkpoint, an exported encoder or ``none``) gets a
head on the mean of its last block's patch tokens (``--global-pool avg``, MAE's: a fresh
LayerNorm, then Linear with weights N(0, 2e-5)) and trains whole. ``--preset paper``: AdamW
(betas 0.9, 0.999; weight decay 0.05) with layer-wise lr decay 0.65 (timm's
``param_groups_layer_decay``), drop path 0.1, batch 1024 (``--accum-steps`` makes any world size
reach it), blr 5e-4 (lr = blr x batch / 256), 100 epochs with 5 of warmup then cosine to 1e-6,
bf16 autocast; RandAugment ``rand-m9-mstd0.5-inc1`` after RandomResizedCrop + flip, random
erasing 0.25, Mixup 0.8 / CutMix 1.0 with label smoothing 0.1 (timm's ``create_transform``,
``RandomErasing``, ``Mixup``, ``SoftTargetCrossEntropy``); ``--model-ema`` keeps timm's
``ModelEmaV3`` of the weights and evaluates it too. val/ in centre crops after every epoch; the
last line is the final epoch's ``top1=XX.XX top5=YY.YY`` (the line before it the best epoch's),
also in ``metrics.jsonl``.
Interrupted runs continue exactly with ``--resume auto``.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

from torch import nn

from splathead_recipes.classify import (
    ClassifyConfig, build_classify_data, fit_classifier, validate_classify,
    write_demo_data, writes_demo_data)
from splathead_recipes.cli import ConfigError, option, parse_with, parser_for
from splathead_recipes.distributed import Runtime
from splathead_recipes.encoders import attach_head, load_encoder
from splathead_recipes.finetune import AugmentedCrop, EmaHook, MixedLoss, build_optimizer
from splathead_recipes.loop import run_recipe, seed_everything

log = logging.getLogger("gmae")


@dataclass(frozen=True)
class FinetuneConfig(ClassifyConfig):
    """Every setting of a fine-tune; the ``paper`` preset is MAE's protocol."""

    layer_decay: float = option(0.65, "layer-wise lr decay: block i of L learns at "
                              "layer_decay^(L - i) x lr (1: none)")
    drop_path: float = option(0.1, "stochastic depth rate of the last block (timm's "
                            "drop_path_rate, linear over the blocks)")
    auto_augment: str | None = option("rand-m9-mstd0.5-inc1", "timm auto-augment policy after "
                                    "the crop and flip (none: off)")
    reprob: float = option(0.25, "random erasing probability (per-pixel noise, one box)")
    mixup: float = option(0.8, "Mixup alpha (0: off)")
    cutmix: float = option(1.0, "CutMix alpha (0: off); with Mixup, one of the two per batch")
    smoothing: float = option(0.1, "label smoothing")
    model_ema: bool = option(False, "keep an exponential moving average of the weights "
                           "(timm's ModelEmaV3) and evaluate it too (ema_top1, ema_top5)")
    model_ema_decay: float = option(0.9998, "EMA decay per step")
    model_ema_warmup: bool = option(False, "timm's EMA decay warmup (for short runs)")


PRESETS: dict[str, FinetuneConfig] = {
    "paper": FinetuneConfig(
        model=None, img_size=224, global_pool="avg", batch_size=1024, blr=5e-4, min_lr=1e-6,
        weight_decay=0.05, warmup_epochs=5.0, epochs=100, clip_grad=0.0, precision="bf16",
        output_dir="runs/finetune", eval_every=1, num_workers=10),
    # The shapes task (4 classes, 2000 + 400 images of 64 px) at 32 px on the tiny GMAE encoder.
    "demo": FinetuneConfig(
        checkpoint="none", model="gmae_vit_tiny", img_size=32, patch_size=4,
        data_path="data/shapes", make_demo_data=True, crop_scale=(0.5, 1.0), batch_size=64, blr=4e-3,
        warmup_epochs=1.0, epochs=8, precision="fp32", device="cpu", num_workers=1,
        output_dir="runs/finetune_demo", eval_every=2, log_every=4, checkpoint_every=1000),
}


def parse_finetune(argv: list[str] | None = None) -> FinetuneConfig:
    parser = parser_for(PRESETS, "Fine-tuning of a pretrained encoder (MAE's protocol).")
    return parse_with(parser, PRESETS, argv)


def validate_finetune(config: FinetuneConfig, *, world_size: int, cuda_available: bool) -> None:
    """:func:`validate_classify` and fine-tuning's own settings; the data folder is not looked
    at when the demo writes it first."""
    for name in ("reprob", "smoothing", "drop_path"):
        if not 0 <= getattr(config, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must lie in [0, 1), got "
                              f"{getattr(config, name)}")
    for name in ("mixup", "cutmix"):
        if getattr(config, name) < 0:
            raise ConfigError(f"--{name} must be >= 0, got {getattr(config, name)}")
    if config.crop_style != "torchvision":
        raise ConfigError(f"--crop-style {config.crop_style}: the fine-tune crops with timm's "
                          f"create_transform, which draws as torchvision does (as the GMAE "
                          f"authors' fine-tune); use --crop-style torchvision")
    if not 0 < config.layer_decay <= 1:
        raise ConfigError(f"--layer-decay must lie in (0, 1], got {config.layer_decay}")
    if not 0 < config.model_ema_decay < 1:
        raise ConfigError(f"--model-ema-decay must lie in (0, 1), got {config.model_ema_decay}")
    if config.auto_augment is not None and not config.auto_augment.startswith(
            ("rand", "augmix", "original", "v0", "3a")):
        raise ConfigError(f"--auto-augment {config.auto_augment!r} is not a timm policy (e.g. "
                          f"rand-m9-mstd0.5-inc1, augmix-m5-w4-d2, original, v0, 3a; none: off)")
    validate_classify(config, world_size=world_size, cuda_available=cuda_available,
                      check_data=not writes_demo_data(config))
    micro_batch = config.batch_size // (world_size * config.accum_steps)
    if (config.mixup or config.cutmix) and micro_batch % 2:
        raise ConfigError(f"Mixup / CutMix mix each micro-batch with its reverse and need it "
                          f"even; --batch-size {config.batch_size} / ({world_size} ranks x "
                          f"--accum-steps {config.accum_steps}) is {micro_batch}")


def build_classifier(config: FinetuneConfig, num_classes: int) -> nn.Module:
    """The encoder with drop path, MAE's head (``attach_head``; Linear weights N(0, 2e-5), bias
    0), every parameter trainable (the fixed sin-cos positions of a GMAE too, as MAE's
    fine-tuning learns them)."""
    vit = load_encoder(config.checkpoint, model=config.model, img_size=config.img_size,
                       patch_size=config.patch_size, drop_path_rate=config.drop_path)
    attach_head(vit, num_classes=num_classes, global_pool=config.global_pool)
    nn.init.trunc_normal_(vit.head.weight, std=2e-5)
    nn.init.zeros_(vit.head.bias)
    return vit.requires_grad_(True)


def train(config: FinetuneConfig, runtime: Runtime) -> int:
    crop = AugmentedCrop(config.img_size, scale=config.crop_scale,
                         hflip=0.5 if config.hflip else 0.0, auto_augment=config.auto_augment)
    write_demo_data(config, runtime)
    data = build_classify_data(config, crop=crop)
    seed_everything(config.seed)  # the same head on every rank
    model = build_classifier(config, data.num_classes).to(runtime.device)
    optimizer = build_optimizer(model, lr=config.learning_rate, weight_decay=config.weight_decay,
                                layer_decay=config.layer_decay,
                                fused=runtime.device.type == "cuda")
    loss = MixedLoss(num_classes=data.num_classes, mixup=config.mixup, cutmix=config.cutmix,
                     label_smoothing=config.smoothing, erase_prob=config.reprob,
                     device=runtime.device)
    ema = (EmaHook(model, decay=config.model_ema_decay, warmup=config.model_ema_warmup)
           if config.model_ema else None)
    log.info("fine-tune: %.2fM parameters, peak lr %.4g, layer decay %g, drop path %g",
             sum(p.numel() for p in model.parameters()) / 1e6, config.learning_rate,
             config.layer_decay, config.drop_path)
    return fit_classifier(config, runtime, model=model, optimizer=optimizer, data=data,
                          report="final", forward=loss, hooks=[ema] if ema else [],
                          extras={"model_ema": ema} if ema else {},
                          also_evaluate={"ema": ema.module} if ema else {})


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 done (or checkpointed on a signal), 1 failed in training, 2 bad settings
    or checkpoint, found before any training step."""
    return run_recipe(parse_finetune(argv), validate=validate_finetune, train=train)


if __name__ == "__main__":
    sys.exit(main())
