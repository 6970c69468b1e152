"""The shared training step, evaluation step and loop, driven by a model other than the GMAE."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from splathead_recipes import distributed
from splathead_recipes.config import PRESETS
from splathead_recipes.data import Batch, build_dataset, build_loader
from splathead_recipes.distributed import Runtime
from splathead_recipes.eval_step import evaluate
from splathead_recipes.loop import fit
from splathead_recipes.train_step import TrainStep
from test_recipe_classify_ddp import two_gloo_ranks

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


def train_one_step(micro_batch: int, accum_steps: int, *, rank: int = 0,
                   world_size: int = 1) -> nn.Module:
    """One plain-SGD step (a gradient scale shows in the update) on 8 images, of which this
    rank takes its contiguous share; a DDP-wrapped model when ``world_size > 1``."""
    images = torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(8) % 5
    share = slice(rank * 8 // world_size, (rank + 1) * 8 // world_size)
    model = classifier()
    wrapped = nn.parallel.DistributedDataParallel(model) if world_size > 1 else model
    step = TrainStep(wrapped, torch.optim.SGD(model.parameters(), lr=0.1), forward=cross_entropy,
                     accum_steps=accum_steps, clip_grad=0, precision="fp32", device=CPU.device)
    result = step(iter(batches(images[share], labels[share], micro_batch)), stop_requested=False)
    assert not result.non_finite and not result.stop
    return model


def _ddp_rank(rank: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE="2")
    distributed.setup("cpu", "gloo")
    try:
        model = train_one_step(2, 2, rank=rank, world_size=2)
        results.put((rank, [p.detach().tolist() for p in model.parameters()]))  # no shared memory
    finally:
        distributed.teardown()


def test_accumulated_micro_batches_step_like_one_whole_batch():
    whole, accumulated = train_one_step(8, 1), train_one_step(4, 2)
    for expected, actual in zip(whole.parameters(), accumulated.parameters()):
        torch.testing.assert_close(actual, expected)


def test_clipping_bounds_the_update_of_a_finite_gradient():
    """SGD with lr 1 moves the parameters by exactly the clipped gradient: norm 0.5, not the
    raw gradient's (clipping after the optimiser's step would let the whole gradient through)."""
    model = classifier()
    before = torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
    step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=1.0),
                     forward=lambda m, b: (100 * m(b.images).square().mean(), None),
                     accum_steps=1, clip_grad=0.5, precision="fp32", device=CPU.device)
    result = step(iter(batches(torch.randn(4, 3, 4, 4), torch.zeros(4, dtype=torch.long), 4)),
                  stop_requested=False)
    assert result.grad_norm > 5  # the gradient was well above the clip
    update = torch.nn.utils.parameters_to_vector(model.parameters()).detach() - before
    assert update.norm().item() == pytest.approx(0.5, rel=1e-5)


def test_two_ddp_ranks_step_like_one_process_on_the_whole_batch():
    """2 gloo ranks x 2 micro-batches of 2 against one process's 2 micro-batches of 4: DDP
    averages the ranks' gradients, so dividing the loss by the world size as well would halve
    the SGD step."""
    single = train_one_step(4, 2)
    parameters = two_gloo_ranks(_ddp_rank)
    for rank in range(2):
        for expected, actual in zip(single.parameters(), parameters[rank]):
            torch.testing.assert_close(torch.tensor(actual), expected.detach())


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
