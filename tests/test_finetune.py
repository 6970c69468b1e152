"""Fine-tuning's parts: layer-decay groups, the RandAugment crop, Mixup / erasing loss, EMA."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import Mixup, create_transform
from timm.data.random_erasing import RandomErasing
from timm.loss import SoftTargetCrossEntropy
from timm.models.vision_transformer import VisionTransformer
from timm.optim import param_groups_layer_decay
from torch.nn import functional as F

from splathead_recipes.crops import normalize
from splathead_recipes.data import Batch, to_rgb
from splathead_recipes.finetune import (
    AugmentedCrop, EmaHook, MixedLoss, build_optimizer, seeded_globals)


def _tiny_vit(**kwargs) -> VisionTransformer:
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2,
                             num_classes=4, global_pool="avg", **kwargs)


def _mae_layer_id(name: str, num_layers: int) -> int:
    """MAE's ``util/lr_decay.py`` rule: embeddings 0, block i at i + 1, the rest on top."""
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
        return 0
    if match := re.match(r"blocks\.(\d+)\.", name):
        return int(match.group(1)) + 1
    return num_layers


def _group_of(optimizer: torch.optim.Optimizer) -> dict[int, dict]:
    return {id(param): group for group in optimizer.param_groups for param in group["params"]}


def test_layer_decay_groups_follow_maes_rule_and_timms_function():
    vit = _tiny_vit()
    decay, weight_decay = 0.65, 0.05
    optimizer = build_optimizer(vit, lr=1e-3, weight_decay=weight_decay, layer_decay=decay)
    groups = _group_of(optimizer)
    num_layers = len(vit.blocks) + 1
    skip = vit.no_weight_decay()
    assert {"cls_token", "pos_embed"} <= skip
    names = dict(vit.named_parameters())
    assert {id(p) for p in names.values()} == set(groups)
    for name, param in names.items():
        group = groups[id(param)]
        expected = decay ** (num_layers - _mae_layer_id(name, num_layers))
        assert group["lr_scale"] == pytest.approx(expected, rel=1e-12), name
        undecayed = param.ndim <= 1 or name in skip
        assert group["weight_decay"] == (0.0 if undecayed else weight_decay), name
    assert groups[id(vit.head.weight)]["lr_scale"] == 1.0
    assert groups[id(vit.patch_embed.proj.weight)]["lr_scale"] == pytest.approx(decay ** 4)
    # the same partition as timm's function called directly
    reference = param_groups_layer_decay(vit, weight_decay, no_weight_decay_list=skip,
                                         layer_decay=decay)
    ours = [(group["lr_scale"], group["weight_decay"], [id(p) for p in group["params"]])
            for group in optimizer.param_groups]
    assert ours == [(group["lr_scale"], group["weight_decay"], [id(p) for p in group["params"]])
                    for group in reference]
    assert all(group["betas"] == (0.9, 0.999) for group in optimizer.param_groups)


def _photo(seed: int = 0, size: int = 48) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size + 8, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _global_states():
    return random.getstate(), np.random.get_state()[1].tolist(), torch.get_rng_state()


def test_augmented_crop_is_a_function_of_the_seed_and_leaves_global_generators_alone():
    crop = AugmentedCrop(32)
    pixels = torch.from_numpy(np.array(_photo())).permute(2, 0, 1).contiguous()
    before = _global_states()
    first, again, other = (crop.from_pixels(pixels, seed) for seed in (7, 7, 8))
    after = _global_states()
    assert before[0] == after[0] and before[1] == after[1] and torch.equal(before[2], after[2])
    assert first.dtype == torch.uint8 and first.shape == (3, 32, 32)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_augmented_crop_normalised_is_timms_whole_training_transform(tmp_path):
    """The uint8 crop, normalised as :meth:`Batch.to` does, is timm's transform with its own
    ToTensor + Normalize (random erasing, on the device here, aside)."""
    path = tmp_path / "photo.png"
    _photo(3).save(path)
    crop = AugmentedCrop(32, scale=(0.3, 1.0))
    timm_transform = create_transform(32, is_training=True, scale=(0.3, 1.0),
                                      auto_augment="rand-m9-mstd0.5-inc1",
                                      interpolation="bicubic")
    for seed in range(4):
        ours = normalize(crop.from_file(path, seed, to_rgb)[None])[0]
        with seeded_globals(seed), Image.open(path) as image:
            reference = timm_transform(image.convert("RGB"))
        torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)


def _batch(size: int = 8, classes: int = 4) -> Batch:
    generator = torch.Generator().manual_seed(0)
    return Batch(torch.randn(size, 3, 32, 32, generator=generator),
                 torch.arange(size) % classes, 0)


def test_mixed_loss_is_timms_erasing_then_mixup_then_soft_target_cross_entropy():
    model = _tiny_vit()
    loss_fn = MixedLoss(num_classes=4, mixup=0.8, cutmix=1.0, label_smoothing=0.1,
                        erase_prob=0.25, device=torch.device("cpu"))
    batch = _batch()
    with seeded_globals(5):
        loss, logits = loss_fn(model, batch._replace(images=batch.images.clone()))
    with seeded_globals(5):
        images = RandomErasing(0.25, mode="pixel", max_count=1, device="cpu")(
            batch.images.clone())
        images, targets = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1,
                                num_classes=4)(images, batch.labels)
        expected = SoftTargetCrossEntropy()(model(images), targets)
    torch.testing.assert_close(loss, expected, rtol=0, atol=0)
    assert targets.min() >= 0.1 / 4 - 1e-6 and not torch.equal(images, batch.images)


def test_mixed_loss_without_mixing_is_cross_entropy():
    model = _tiny_vit()
    batch = _batch()
    plain = MixedLoss(num_classes=4, mixup=0, cutmix=0, label_smoothing=0, erase_prob=0,
                      device=torch.device("cpu"))
    loss, logits = plain(model, batch)
    torch.testing.assert_close(loss, F.cross_entropy(model(batch.images), batch.labels))
    smoothed = MixedLoss(num_classes=4, mixup=0, cutmix=0, label_smoothing=0.1, erase_prob=0,
                         device=torch.device("cpu"))
    torch.testing.assert_close(smoothed(model, batch)[0],
                               F.cross_entropy(logits, batch.labels, label_smoothing=0.1))


def test_ema_hook_averages_after_each_step_and_round_trips():
    model = torch.nn.Linear(3, 2)
    hook = EmaHook(model, decay=0.5, warmup=False)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    hook(1, None)  # timm's first update copies the weights
    torch.testing.assert_close(hook.module.weight, start + 1.0)
    with torch.no_grad():
        model.weight.add_(2.0)
    assert hook(2, None) == {}
    torch.testing.assert_close(hook.module.weight, start + 2.0)  # halfway between +1 and +3
    restored = EmaHook(torch.nn.Linear(3, 2), decay=0.5, warmup=False)
    restored.load_state_dict(hook.state_dict())
    torch.testing.assert_close(restored.module.weight, hook.module.weight)


def test_augmented_crop_runs_randaugment_at_full_magnitude_where_pillow_refuses_posterize():
    """Magnitude 10 asks PosterizeIncreasing for 0 bits, which Pillow 13 refuses; the crop
    gives the black image older Pillows gave."""
    pixels = torch.from_numpy(np.array(_photo(1))).permute(2, 0, 1).contiguous()
    policy = "rand-m10-n2-mstd0-inc1"
    crop = AugmentedCrop(32, auto_augment=policy)
    crops = [crop.from_pixels(pixels, seed) for seed in range(64)]
    assert all(image.shape == (3, 32, 32) for image in crops)
    (op,) = [op for op in crop.transform.transforms[2].ops if op.name == "PosterizeIncreasing"]
    assert op.level_fn(10, op.hparams) == (0,)
    assert np.array(op.aug_fn(_photo(1), 0)).max() == 0
    assert np.array_equal(np.array(op.aug_fn(_photo(1), 4)), np.array(_photo(1)) & 0xF0)
