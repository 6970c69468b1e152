"""The pretraining recipe's config, presets, validation, optimiser groups and schedule."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
import torch
from torch import nn

from splathead import gmae_vit_tiny
from splathead.head import GaussianHead
from splathead_recipes.config import (
    PRESETS, Config, ConfigError, load_config, parse_config, validate)
from splathead_recipes.models import build_model
from splathead_recipes.optim import (
    build_optimizer, learning_rate, param_groups, per_epoch_learning_rate)


def check(config: Config, world_size: int = 1, *, cuda: bool = False) -> None:
    validate(config, world_size=world_size, cuda_available=cuda)


def test_paper_preset_holds_the_papers_settings():
    config = parse_config(["--preset", "paper", "--data-path", "/imagenet"])
    assert config.model == "gmae_vit_base_patch16"
    assert (config.img_size, config.num_gaussians) == (224, 256)
    assert (config.mask_ratio, config.max_scale, config.crop_scale) == (0.75, 1 / 8, (0.08, 1.0))
    assert (config.batch_size, config.epochs, config.warmup_epochs) == (1024, 400, 5)
    assert config.learning_rate == pytest.approx(1e-4 * 1024 / 256)
    assert (config.betas, config.weight_decay, config.clip_grad) == ((0.9, 0.95), 0.05, 2.0)


def test_every_field_is_a_flag_that_overrides_the_preset():
    config = parse_config(["--preset", "demo", "--lr", "1e-3", "--epochs", "2",
                           "--crop-scale", "0.5", "1", "--no-hflip", "--resume", "none"])
    assert (config.lr, config.epochs, config.crop_scale) == (1e-3, 2, (0.5, 1.0))
    assert config.hflip is False
    assert config.resume is None
    assert config.img_size == PRESETS["demo"].img_size
    assert parse_config(["--synthetic"]).dataset == "synthetic"


def test_patch_size_overrides_the_models_own():
    config = dataclasses.replace(PRESETS["demo"], img_size=32, patch_size=4)
    assert build_model(config).patch_size == (4, 4)


def test_gaussians_per_token_keeps_the_gaussians_and_divides_the_queries():
    from splathead_recipes.models import build_model

    assert PRESETS["paper"].gaussians_per_token == 1
    config = parse_config(["--preset", "demo", "--num-gaussians", "64",
                           "--gaussians-per-token", "4"])
    check(config)
    decoder = build_model(config).decoder
    assert decoder.query_decoder.num_queries == 16
    assert decoder.num_gaussians == 64


def test_norm_pix_loss_flag_reaches_the_model_and_is_off_by_default():
    from splathead_recipes.models import build_model

    assert PRESETS["paper"].norm_pix_loss is False
    config = parse_config(["--preset", "demo", "--norm-pix-loss"])
    check(config)
    assert build_model(config).norm_pix_loss is True
    assert build_model(PRESETS["demo"]).norm_pix_loss is False


def test_config_round_trips_through_json():
    config = PRESETS["demo"]
    assert load_config(dataclasses.asdict(config)) == config


def test_demo_preset_is_valid_on_cpu():
    check(PRESETS["demo"])


@pytest.mark.parametrize(
    ("overrides", "world_size", "cuda", "message"),
    [
        ({}, 1, True, "needs --data-path"),
        ({"data_path": "/nonexistent"}, 1, True, "expected class folders"),
        ({"dataset": "synthetic"}, 3, True, "not divisible by world size 3"),
        ({"mask_ratio": 1.0, "dataset": "synthetic"}, 1, True, "--mask-ratio must lie in (0, 1)"),
        ({"backend": "mpi", "dataset": "synthetic"}, 1, True, "--backend 'mpi' is not one of"),
        ({"crop_scale": (0.9, 0.1), "dataset": "synthetic"}, 1, True, "--crop-scale"),
        ({"patch_size": 12, "dataset": "synthetic"}, 1, True, "--patch-size 12 must be"),
        ({"resume": "/no/such.pt", "dataset": "synthetic"}, 1, True, "no such file"),
        ({"model": "nope", "dataset": "synthetic"}, 1, True, "--model 'nope' is not one of"),
        ({"lr": float("nan"), "dataset": "synthetic"}, 1, True, "--lr must be finite"),
        ({"blr": float("inf"), "dataset": "synthetic"}, 1, True, "--blr must be finite"),
        ({"clip_grad": float("nan"), "dataset": "synthetic"}, 1, True, "--clip-grad must be"),
        ({"max_scale": float("inf"), "dataset": "synthetic"}, 1, True, "--max-scale must be"),
        ({"betas": (0.9, float("nan")), "dataset": "synthetic"}, 1, True, "--betas must be"),
        ({"model": "GMAE", "dataset": "synthetic"}, 1, True, "--model 'GMAE' is not one of"),
        ({"precision": "fp16", "dataset": "synthetic"}, 1, False,
         "--precision fp16 (autocast with a grad scaler) runs on CUDA only"),
        ({"backend": "nccl", "precision": "fp32", "dataset": "synthetic"}, 1, False,
         "nccl needs CUDA"),
        ({"device": "cuda", "dataset": "synthetic"}, 1, False, "CUDA is not available"),
        ({"render_backend": "numba", "dataset": "synthetic"}, 1, True,
         "--render-backend numba renders on the CPU"),
        ({"gaussians_per_token": 0, "dataset": "synthetic"}, 1, True,
         "--gaussians-per-token must be at least 1, got 0"),
        ({"gaussians_per_token": 3, "dataset": "synthetic"}, 1, True,
         "--num-gaussians 256 is not divisible by --gaussians-per-token 3"),
        ({"footprint": "pinhole", "dataset": "synthetic"}, 1, True,
         "--footprint 'pinhole' is not one of"),
        ({"probe_view": "all", "dataset": "synthetic"}, 1, True,
         "--probe-view 'all' is not one of"),
        ({"footprint": "authors", "render_backend": "gsplat", "dataset": "synthetic"}, 1, True,
         "--footprint authors: gsplat cannot render the authors' footprint"),
    ],
)
def test_validation_names_the_setting_to_change(overrides, world_size, cuda, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        check(dataclasses.replace(PRESETS["paper"], **overrides), world_size, cuda=cuda)


def test_global_batch_splits_over_any_world_size_with_accumulation():
    config = dataclasses.replace(PRESETS["paper"], dataset="synthetic", precision="fp32",
                                 accum_steps=4)
    for world_size in (1, 2, 8, 64):
        check(config, world_size)


def test_schedule_warms_up_linearly_then_follows_a_cosine_to_min_lr():
    config = dataclasses.replace(PRESETS["paper"], epochs=10, warmup_epochs=2, min_lr=1e-6)
    lr = [learning_rate(step, config=config, steps_per_epoch=100) for step in range(1001)]
    peak = config.learning_rate
    assert lr[0] == 0 and lr[100] == pytest.approx(peak / 2) and lr[200] == pytest.approx(peak)
    assert lr[600] == pytest.approx(1e-6 + (peak - 1e-6) * 0.5 * (1 + math.cos(math.pi / 2)))
    assert lr[1000] == pytest.approx(1e-6)


def test_weight_decay_skips_biases_norms_tokens_and_embeddings_of_the_gmae():
    model = gmae_vit_tiny(img_size=32, num_queries=8)
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    # The split by name that the recipe used before timm's param_groups_weight_decay.
    undecayed = {name for name, p in model.named_parameters() if p.requires_grad and (
        p.ndim <= 1 or name.endswith(("token", "_embed")))}
    names = {id(p): name for name, p in model.named_parameters()}
    assert {names[id(p)] for p in no_decay["params"]} == undecayed
    assert {names[id(p)] for p in decay["params"]} == {
        name for name, p in model.named_parameters() if p.requires_grad} - undecayed


def test_the_recipes_adamw_decays_the_weight_matrices_only():
    """The optimiser the recipe builds, stepped on zero gradients: Adam's step is 0, so only
    AdamW's decay moves a parameter, by exactly ``lr * weight_decay`` of it."""
    model = gmae_vit_tiny(img_size=32, num_queries=8)
    config = dataclasses.replace(PRESETS["demo"], weight_decay=0.05)
    optimizer = build_optimizer(model, config, decay_groups=config.decay_groups, fused=False)
    assert optimizer.defaults["betas"] == config.betas
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    shrink = 1 - config.learning_rate * 0.05
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if parameter.ndim <= 1 or name.endswith(("token", "_embed")):
            assert torch.equal(parameter, before[name]), f"{name} was decayed"
        else:
            torch.testing.assert_close(parameter, before[name] * shrink, msg=name)


def test_schedule_agrees_with_timms_cosine_scheduler_to_rounding():
    from timm.scheduler import CosineLRScheduler

    config = dataclasses.replace(PRESETS["paper"], epochs=10, warmup_epochs=2, min_lr=1e-6)
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=config.learning_rate)
    timm_schedule = CosineLRScheduler(optimizer, t_initial=800, lr_min=1e-6, warmup_t=200,
                                      warmup_prefix=True, t_in_epochs=False)
    for step in range(1001):
        timm_schedule.step_update(step)
        assert learning_rate(step, config=config, steps_per_epoch=100) == pytest.approx(
            optimizer.param_groups[0]["lr"], rel=1e-13, abs=0)


def test_resuming_a_checkpoint_from_elsewhere_into_another_runs_folder_is_refused(tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "metrics.jsonl").write_text("")
    config = dataclasses.replace(PRESETS["demo"], output_dir=str(tmp_path / "other"),
                                 resume=str(tmp_path / "checkpoint-00000004.pt"))
    (tmp_path / "checkpoint-00000004.pt").write_bytes(b"")
    with pytest.raises(ConfigError, match="holds another run's files"):
        check(config)
    check(dataclasses.replace(config, resume="auto"))



def test_footprint_flag_reaches_the_models_camera():
    config = dataclasses.replace(PRESETS["demo"], footprint="authors")
    assert build_model(config).decoder.camera.footprint_depth == 8.0
    assert build_model(PRESETS["demo"]).decoder.camera.footprint_depth is None


def test_paper_preset_takes_the_authors_head_init_decay_groups_schedule_probes_and_crop():
    paper = PRESETS["paper"]
    assert (paper.head_init, paper.decay_groups, paper.lr_schedule, paper.probe_view,
            paper.crop_style) == ("torch", "mae", "per-epoch", "full", "tf")
    assert (Config().probe_view, Config().crop_style) == ("masked", "torchvision")


def test_per_epoch_schedule_starts_at_a_fifth_and_ends_at_min_lr_in_the_last_epoch():
    config = dataclasses.replace(PRESETS["paper"], epochs=400, warmup_epochs=5)
    peak, steps = config.learning_rate, 7
    lr = [per_epoch_learning_rate(step, config=config, steps_per_epoch=steps)
          for step in range(400 * steps)]
    assert all(len(set(lr[e * steps:(e + 1) * steps])) == 1 for e in range(400))
    assert [lr[e * steps] for e in range(5)] == pytest.approx([peak * k / 5 for k in (1, 2, 3, 4, 5)])
    assert lr[5 * steps] == pytest.approx(peak * 0.5 * (1 + math.cos(math.pi / 395)))
    assert lr[-1] == pytest.approx(0.0, abs=1e-12) and lr[-steps - 1] > 0


def test_mae_decay_groups_decay_the_tokens_and_embeddings_timm_leaves_out():
    model = gmae_vit_tiny(img_size=32, num_queries=8)
    names = {id(p): name for name, p in model.named_parameters()}
    decayed = {split: {names[id(p)] for p in param_groups(model, 0.05, split=split)[0]["params"]}
               for split in ("timm", "mae")}
    tokens = {name for name, p in model.named_parameters()
              if p.requires_grad and p.ndim > 1 and name.endswith(("token", "_embed"))}
    assert tokens and decayed["mae"] == decayed["timm"] | tokens
    assert not tokens & decayed["timm"]
    undecayed = {names[id(p)] for p in param_groups(model, 0.05, split="mae")[1]["params"]}
    assert all(model.get_parameter(name).ndim <= 1 for name in undecayed)


def test_torch_head_init_is_nn_linears_own():
    torch.manual_seed(3)
    head = GaussianHead(64, init="torch")
    torch.manual_seed(3)
    linear = nn.Linear(64, 14, bias=False)
    assert torch.equal(head.proj.weight, linear.weight)
    torch.manual_seed(3)
    assert not torch.equal(GaussianHead(64).proj.weight, linear.weight)
    config = dataclasses.replace(PRESETS["demo"], head_init="torch")
    assert build_model(config).decoder.settings.head_init == "torch"
