"""The shared training step, evaluation step and loop, driven by a model other than the GMAE."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from splathead_recipes.config import PRESETS
from splathead_recipes.data import Batch, build_dataset, build_loader
from splathead_recipes.distributed import Runtime
from splathead_recipes.eval_step import evaluate
from splathead_recipes.loop import fit
from splathead_recipes.train_step import TrainStep

CPU = Runtime(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


def classifier() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))


def cross_entropy(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    logits = model(batch.images)
    return F.cross_entropy(logits, batch.labels), logits


def batches(images: torch.Tensor, labels: torch.Tensor, size: int) -> list[Batch]:
    return [Batch(images[i : i + size], labels[i : i + size], 0)
            for i in range(0, len(images), size)]


def train_one_step(micro_batch: int, accum_steps: int) -> nn.Module:
    images = torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(8) % 5
    model = classifier()
    step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.1), forward=cross_entropy,
                     accum_steps=accum_steps, clip_grad=0, precision="fp32", device=CPU.device)
    result = step(iter(batches(images, labels, micro_batch)), stop_requested=False)
    assert not result.non_finite and not result.stop
    return model


def test_accumulated_micro_batches_step_like_one_whole_batch():
    whole, accumulated = train_one_step(8, 1), train_one_step(4, 2)
    for expected, actual in zip(whole.parameters(), accumulated.parameters()):
        torch.testing.assert_close(actual, expected)


def test_a_non_finite_loss_is_reported_and_not_stepped_on():
    model = classifier()
    before = [p.detach().clone() for p in model.parameters()]
    step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.1),
                     forward=lambda m, b: (m(b.images).sum() * float("nan"), None),
                     accum_steps=1, clip_grad=1.0, precision="fp32", device=CPU.device)
    result = step(iter(batches(torch.randn(4, 3, 4, 4), torch.zeros(4, dtype=torch.long), 4)),
                  stop_requested=False)
    assert result.non_finite
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_learning_rate_follows_each_groups_lr_scale():
    model = classifier()
    optimizer = torch.optim.SGD([{"params": model[1].weight, "lr_scale": 0.25},
                                 {"params": model[1].bias}], lr=1.0)
    step = TrainStep(model, optimizer, forward=cross_entropy, accum_steps=1, clip_grad=0,
                     precision="fp32", device=CPU.device)
    step.set_learning_rate(0.4)
    assert [group["lr"] for group in optimizer.param_groups] == [0.1, 0.4]


def test_evaluate_averages_per_image_over_batches_and_restores_training_mode():
    model = classifier().train()
    images, labels = torch.randn(10, 3, 4, 4), torch.arange(10) % 5

    def accuracy(m: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        assert not m.training
        return {"accuracy": (m(batch.images).argmax(1) == batch.labels).sum()}

    metrics = evaluate(model, batches(images, labels, 4), accuracy, device=CPU.device)
    with torch.no_grad():
        expected = (model(images).argmax(1) == labels).float().mean().item()
    assert metrics == {"accuracy": pytest.approx(expected)} and model.training


def test_fit_trains_a_classifier_and_logs_its_hook_metrics(tmp_path):
    settings = dataclasses.replace(PRESETS["demo"], img_size=16, batch_size=8,
                                   samples_per_epoch=32, num_workers=0, epochs=2, log_every=1,
                                   checkpoint_every=100, output_dir=str(tmp_path))
    loader, sampler = build_loader(settings, build_dataset(settings), rank=0, world_size=1,
                                   pin_memory=False)
    torch.manual_seed(0)
    model = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, 8))
    seen = []

    def hook(step, result):
        seen.append(result.output.shape)
        return {"val/accuracy": 0.5} if step % 4 == 0 else {}

    status = fit(settings, CPU, model=model, optimizer=torch.optim.SGD(model.parameters(), 0.1),
                 forward=cross_entropy, loader=loader, sampler=sampler,
                 schedule=lambda step: 0.1, hooks=[hook])
    assert status == 0 and seen == [torch.Size([8, 8])] * 8
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "val/accuracy" in r] == [4, 8]
    assert sorted(path.name for path in tmp_path.glob("checkpoint-*.pt")) == [
        "checkpoint-00000004.pt", "checkpoint-00000008.pt"]
