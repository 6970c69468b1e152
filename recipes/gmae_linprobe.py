"""Linear probe of a frozen encoder, MAE's protocol: one process per GPU under torchrun, or CPU.

    python recipes/gmae_linprobe.py --preset demo                 # shapes task, CPU, minutes
    torchrun --nproc_per_node 8 recipes/gmae_linprobe.py --data-path /imagenet \\
        --checkpoint runs/gmae_vit_base_patch16/checkpoint-00500400.pt --accum-steps 4
    python recipes/gmae_linprobe.py --help                        # every setting

The encoder (``--checkpoint``: a pretraining checkpoint, an exported encoder or ``none``) stays
frozen; only the head learns: BatchNorm1d without affine parameters + Linear (weights
N(0, 0.01)), on the mean of the patch tokens after the pretrained final norm (``--global-pool
avg_after_norm``, the GMAE authors', the paper preset's), the cls token after the final norm
(``token``, MAE's ViT-B probe) or the mean with a fresh LayerNorm (``avg``). ``--preset paper``:
timm's LARS (momentum 0.9, trust ratio on the weight matrix),
batch 16384 (``--accum-steps`` makes any world size reach it), blr 0.1 (lr = blr x batch / 256),
no weight decay, 90 epochs with 10 of warmup then cosine, RandomResizedCrop + flip; val/ in centre
crops after every epoch; ``--gpu-decode`` decodes the training JPEGs on the GPU (nvJPEG), the
workers only reading files and drawing crops. The last line is the best epoch's
``top1=XX.XX top5=YY.YY``, also in ``metrics.jsonl``. Interrupted runs continue exactly with
``--resume auto``.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

from timm.optim import Lars
from torch import nn

from splathead_recipes.classify import (
    ClassifyConfig, build_classify_data, fit_classifier, validate_classify,
    write_demo_data, writes_demo_data)
from splathead_recipes.cli import ConfigError, option, parse_with, parser_for
from splathead_recipes.data import train_crop
from splathead_recipes.device_decode import EncodedTrainCrop
from splathead_recipes.distributed import Runtime
from splathead_recipes.encoders import attach_head, load_encoder
from splathead_recipes.loop import run_recipe, seed_everything
from splathead_recipes.settings import GPU_DECODE_HELP, check_gpu_decode

log = logging.getLogger("gmae")

DEMO_DATA = "data/shapes"


@dataclass(frozen=True)
class LinprobeConfig(ClassifyConfig):
    """Every setting of a linear probe; the ``paper`` preset is MAE's protocol."""

    momentum: float = option(0.9, "LARS momentum")
    gpu_decode: bool = option(False, GPU_DECODE_HELP)


PRESETS: dict[str, LinprobeConfig] = {
    "paper": LinprobeConfig(
        model=None, img_size=224, global_pool="avg_after_norm", batch_size=16384, blr=0.1,
        weight_decay=0.0, warmup_epochs=10.0, epochs=90, clip_grad=0.0, precision="bf16",
        output_dir="runs/linprobe", eval_every=1, num_workers=10),
    # The shapes task (4 classes, 2000 + 400 images of 64 px) at 32 px on the tiny GMAE encoder.
    "demo": LinprobeConfig(
        checkpoint="none", model="gmae_vit_tiny", img_size=32, patch_size=4,
        data_path=DEMO_DATA, make_demo_data=True, crop_scale=(0.5, 1.0), batch_size=256,
        # The paper's absolute lr: LARS steps are lr x 0.001 of the weights' norm whatever the
        # batch, and the demo has 56 steps where ImageNet has 7000 (docs/evaluation.md).
        lr=6.4, weight_decay=0.0, warmup_epochs=1.0, epochs=8, precision="fp32", device="cpu",
        num_workers=1, output_dir="runs/linprobe_demo", eval_every=2, log_every=4,
        checkpoint_every=1000),
}


def parse_linprobe(argv: list[str] | None = None) -> LinprobeConfig:
    parser = parser_for(PRESETS, "Linear probe of a frozen encoder (MAE's protocol).")
    return parse_with(parser, PRESETS, argv)


def validate_linprobe(config: LinprobeConfig, *, world_size: int, cuda_available: bool) -> None:
    """:func:`validate_classify`, the momentum and ``--gpu-decode``; the data folder is not
    looked at when the demo writes it first."""
    if not 0 <= config.momentum < 1:
        raise ConfigError(f"--momentum must lie in [0, 1), got {config.momentum}")
    if problem := check_gpu_decode(config.gpu_decode, config, cuda_available):
        raise ConfigError(problem)
    validate_classify(config, world_size=world_size, cuda_available=cuda_available,
                      check_data=not writes_demo_data(config))


def build_probe(config: LinprobeConfig, num_classes: int) -> nn.Module:
    """The frozen encoder with MAE's probe head: ``BatchNorm1d(affine=False, eps=1e-6)`` then
    ``Linear`` (weights N(0, 0.01) truncated at 2 std, bias 0); only the head trains."""
    vit = load_encoder(config.checkpoint, model=config.model, img_size=config.img_size,
                       patch_size=config.patch_size)
    attach_head(vit, num_classes=num_classes, global_pool=config.global_pool)
    nn.init.trunc_normal_(vit.head.weight, std=0.01)
    nn.init.zeros_(vit.head.bias)
    vit.head = nn.Sequential(nn.BatchNorm1d(vit.embed_dim, affine=False, eps=1e-6), vit.head)
    for name, parameter in vit.named_parameters():
        parameter.requires_grad = name.startswith("head.")
    return vit


def build_lars(probe: nn.Module, config: LinprobeConfig) -> Lars:
    """timm's LARS as MAE's: the trust ratio scales the weight matrix's step, not the bias's
    (MAE's LARS leaves 1-D parameters out), no weight decay by default."""
    head = [p for p in probe.parameters() if p.requires_grad]
    matrices, vectors = [p for p in head if p.ndim > 1], [p for p in head if p.ndim <= 1]
    return Lars([{"params": matrices, "always_adapt": True},
                 {"params": vectors, "always_adapt": False}],
                lr=config.learning_rate, momentum=config.momentum,
                weight_decay=config.weight_decay)


def train(config: LinprobeConfig, runtime: Runtime) -> int:
    write_demo_data(config, runtime)
    # --gpu-decode: the workers send JPEG files, Batch.to decodes them on the GPU.
    data = build_classify_data(
        config, crop=EncodedTrainCrop(train_crop(config)) if config.gpu_decode else None)
    seed_everything(config.seed)  # the same head on every rank
    probe = build_probe(config, data.num_classes).to(runtime.device)
    trainable = sum(p.numel() for p in probe.parameters() if p.requires_grad)
    log.info("linear probe: %d trainable parameters, peak lr %.4g", trainable,
             config.learning_rate)
    return fit_classifier(config, runtime, model=probe, optimizer=build_lars(probe, config),
                          data=data, report="best")


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 done (or checkpointed on a signal), 1 failed in training, 2 bad settings
    or checkpoint, found before any training step."""
    return run_recipe(parse_linprobe(argv), validate=validate_linprobe, train=train)


if __name__ == "__main__":
    sys.exit(main())
