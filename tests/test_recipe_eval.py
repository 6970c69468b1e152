"""Evaluation while pretraining (recipes/gmae_imagenet.py): online probes, fixed-mask metrics."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import gmae_imagenet as recipe
import pytest
import torch
from splathead_recipes.shapes_task import CLASSES, write_shapes_task
from splathead import gmae_vit_tiny
from splathead_recipes.data import Batch
from splathead_recipes.distributed import Runtime
from splathead_recipes.pretrain_eval import OnlineProbeTraining

from test_recipe_train import SCRIPT, TINY, _output, _spawn, losses

CPU = Runtime(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """4 classes x (8 train + 2 val) images of 32 px: 4 steps of 8 images per epoch."""
    root = tmp_path_factory.mktemp("shapes") / "data"
    write_shapes_task(root, train_per_class=8, val_per_class=2, img_size=32)
    return root


def run_on(data: Path, output_dir: Path, *flags: str) -> int:
    return recipe.main([*TINY, "--dataset", "imagefolder", "--data-path", str(data),
                        "--output-dir", str(output_dir), *flags])


def records(output_dir: Path, event: str) -> list[dict]:
    lines = (output_dir / "metrics.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if record.get("event") == event]


def test_eval_records_every_eval_every_epochs_and_at_the_end_are_finite(shapes, tmp_path,
                                                                        capsys):
    assert run_on(shapes, tmp_path, "--epochs", "3", "--eval-every", "2") == 0
    evals = records(tmp_path, "eval")
    assert [record["step"] for record in evals] == [8, 12]
    depth = len(gmae_vit_tiny().encoder.vit.blocks)
    for record in evals:
        assert set(record) == {"event", "step", "probe_top1", "probe_top1_blocks",
                               "psnr_masked", "psnr", "ssim", "gauss_border",
                               "gauss_invisible", "gauss_coverage"}
        assert all(0 <= record[f"gauss_{name}"] <= 1
                   for name in ("border", "invisible", "coverage"))
        assert len(record["probe_top1_blocks"]) == depth
        assert record["probe_top1"] == max(record["probe_top1_blocks"])
        assert all(0 <= top1 <= 100 for top1 in record["probe_top1_blocks"])
        assert all(math.isfinite(record[name]) for name in ("psnr_masked", "psnr", "ssim"))
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert f"psnr_masked={evals[-1]['psnr_masked']:.2f} dB" in last_line
    assert str(tmp_path / "metrics.jsonl") in last_line
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = EventAccumulator(str(tmp_path / "tensorboard")).Reload().Tags()["scalars"]
    assert {"eval/psnr_masked", "eval/probe_top1", f"eval/probe_top1_blocks/{depth - 1}",
            "train/probe_loss", "eval/gauss_border", "eval/gauss_invisible",
            "eval/gauss_coverage"} <= set(tags)


def _probe_step(model, probes: OnlineProbeTraining, images, labels, noise):
    """One micro-batch through the probed forward and its backward, then the probe step."""
    forward = probes.collecting(lambda m, batch: (m(batch.images, noise=noise).loss, None))
    loss, _ = forward(model, Batch(images, labels, 0))
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.encoder.named_parameters()
             if p.grad is not None}
    weights = {name: p.detach().clone() for name, p in model.encoder.named_parameters()}
    probes_before = [p.detach().clone() for p in probes.probes.parameters()]
    probes(1, None)
    return grads, weights, probes_before


def test_the_probe_step_changes_the_probes_and_never_the_encoders_weights_or_gradients():
    torch.manual_seed(0)
    model = gmae_vit_tiny(img_size=32, num_queries=16)
    probes = OnlineProbeTraining(model, num_classes=4, lr=0.1, runtime=CPU, log_every=1)
    images, labels = torch.randn(8, 3, 32, 32), torch.arange(8) % 4
    noise = torch.rand(8, model.num_patches)
    grads, weights, probes_before = _probe_step(model, probes, images, labels, noise)

    assert grads and all(torch.equal(p.grad, grads[name])
                         for name, p in model.encoder.named_parameters() if name in grads)
    assert all(torch.equal(p, weights[name]) for name, p in model.encoder.named_parameters())
    assert all(not torch.equal(p, q) for p, q in zip(probes.probes.parameters(), probes_before)
               if p.dim() == 2)
    # The encoder's gradient is the GMAE loss's alone: the same without probes.
    model.zero_grad()
    model(images, noise=noise).loss.backward()
    assert all(torch.equal(p.grad, grads[name])
               for name, p in model.encoder.named_parameters() if name in grads)


def test_the_full_view_probes_read_every_token_of_a_pass_over_the_whole_image():
    """The authors' view: whatever the training mask, each block's mean over all tokens (cls
    included) of timm's own unmasked forward; the encoder's gradient stays the GMAE loss's."""
    torch.manual_seed(0)
    model = gmae_vit_tiny(img_size=32, num_queries=16)
    probes = OnlineProbeTraining(model, num_classes=4, lr=0.1, runtime=CPU, log_every=1,
                                 view="full")
    images, labels = torch.randn(8, 3, 32, 32), torch.arange(8) % 4
    noise = torch.rand(8, model.num_patches)
    forward = probes.collecting(lambda m, batch: (m(batch.images, noise=noise).loss, None))
    loss, _ = forward(model, Batch(images, labels, 0))
    loss.backward()
    collected, _ = probes._pending[0]
    intermediates = model.encoder.vit.forward_intermediates(
        images, norm=False, output_fmt="NLC", intermediates_only=True,
        return_prefix_tokens=True)  # [(patch tokens, prefix tokens)] per block
    expected = torch.stack([torch.cat([prefix, patches], dim=1).mean(dim=1)
                            for patches, prefix in intermediates])
    torch.testing.assert_close(collected, expected)
    assert not collected.requires_grad
    grads = {name: p.grad.clone() for name, p in model.encoder.named_parameters()
             if p.grad is not None}
    model.zero_grad()
    model(images, noise=noise).loss.backward()
    assert grads and all(torch.equal(p.grad, grads[name])
                         for name, p in model.encoder.named_parameters() if name in grads)
    probes(1, None)
    # Scoring runs its own full pass: the count is the same after any masked pass.
    model(images, noise=noise)
    first = probes.correct(images, labels)
    model(images[:2], noise=noise[:2])
    assert torch.equal(probes.correct(images, labels), first)


def test_the_probe_view_is_masked_or_full():
    with pytest.raises(ValueError, match="view must be 'masked' or 'full', got 'all'"):
        OnlineProbeTraining(gmae_vit_tiny(img_size=32, num_queries=16), num_classes=4, lr=0.1,
                            runtime=CPU, log_every=1, view="all")


def test_a_run_with_the_full_probe_view_trains_and_scores_the_probes(shapes, tmp_path):
    assert run_on(shapes, tmp_path, "--epochs", "1", "--probe-view", "full") == 0
    assert json.loads((tmp_path / "config.json").read_text())["probe_view"] == "full"
    (record,) = records(tmp_path, "eval")
    assert 0 <= record["probe_top1"] <= 100
    lines = map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())
    assert any(math.isfinite(line.get("probe_loss", math.nan)) for line in lines)


def test_resuming_with_probes_reproduces_losses_evaluations_and_probe_state_exactly(shapes,
                                                                                    tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run_on(shapes, straight, "--epochs", "2", "--eval-every", "1") == 0
    assert run_on(shapes, resumed, "--epochs", "2", "--eval-every", "1", "--max-steps",
                  "6") == 0  # stops inside epoch 2, after the evaluation at step 4
    assert run_on(shapes, resumed, "--epochs", "2", "--eval-every", "1", "--resume",
                  "auto") == 0
    assert losses(resumed) == losses(straight)
    # The first slice also evaluated at its end (step 6), without changing what followed.
    assert [record["step"] for record in records(resumed, "eval")] == [4, 6, 8]
    assert [record for record in records(resumed, "eval") if record["step"] != 6] == records(
        straight, "eval")
    final = [torch.load(run / "checkpoint-00000008.pt", weights_only=True)["extras"]
             for run in (straight, resumed)]
    for name, tensor in final[0]["online_probes"]["probes"].items():
        assert torch.equal(tensor, final[1]["online_probes"]["probes"][name]), name
    assert final[0]["online_probes"]["optimizer"]["state"][0]["step"] == 8


def test_without_val_the_metrics_run_on_held_out_training_images_and_no_probe_trains(
        shapes, tmp_path):
    data = tmp_path / "no_val"
    shutil.copytree(shapes / "train", data / "train")
    assert run_on(data, tmp_path / "run", "--epochs", "1") == 0
    (evaluation,) = records(tmp_path / "run", "eval")
    assert set(evaluation) == {"event", "step", "psnr_masked", "psnr", "ssim", "gauss_border",
                               "gauss_invisible", "gauss_coverage"}
    # 32 images, 3 held out: 29 left, 3 steps of 8.
    assert evaluation["step"] == 3


def test_the_demo_photos_get_reconstruction_metrics_only(tmp_path):
    assert recipe.main([*TINY, "--epochs", "1", "--output-dir", str(tmp_path)]) == 0
    (evaluation,) = records(tmp_path, "eval")
    assert set(evaluation) == {"event", "step", "psnr_masked", "psnr", "ssim", "gauss_border",
                               "gauss_invisible", "gauss_coverage"}


def test_a_collapsed_run_warns_once_naming_the_figures_and_the_cause(tmp_path, monkeypatch,
                                                                     caplog):
    build = recipe.build_model

    def stranded_on_the_border(config):  # the collapse of docs/pretraining.md, made at once
        model = build(config)
        with torch.no_grad():
            model.decoder.head.proj.weight[:2] *= 1000  # centre x, y saturate at +-1
        return model

    monkeypatch.setattr(recipe, "build_model", stranded_on_the_border)
    assert recipe.main([*TINY, "--epochs", "2", "--eval-every", "1", "--lr", "1e-9",
                        "--output-dir", str(tmp_path)]) == 0
    evaluations = records(tmp_path, "eval")
    assert len(evaluations) == 2 and all(e["gauss_border"] == 1.0 for e in evaluations)
    warnings = [r.getMessage() for r in caplog.records if "have collapsed" in r.getMessage()]
    assert len(warnings) == 1
    assert "100% of the centres on the image border" in warnings[0]
    assert "learning rate" in warnings[0] and "warmup" in warnings[0]


@pytest.mark.parametrize(("flags", "named"), [
    (["--eval-every", "-1"], "--eval-every must be >= 0, got -1"),
    (["--probe-lr", "0"], "--probe-lr must be positive"),
    (["--img-size", "8", "--patch-size", "4"], "--img-size 8: the evaluation's SSIM"),
])
def test_bad_evaluation_settings_exit_2_naming_the_flag(tmp_path, flags, named, capsys, caplog):
    assert recipe.main([*TINY, "--output-dir", str(tmp_path / "out"), *flags]) == 2
    assert named in capsys.readouterr().err + caplog.text
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_val_folder_with_other_classes_exits_2_naming_them(shapes, tmp_path, caplog):
    data = tmp_path / "data"
    shutil.copytree(shapes, data)
    (data / "val" / CLASSES[0]).rename(data / "val" / "ellipse")
    assert run_on(data, tmp_path / "out", "--epochs", "1") == 2
    assert "val/ holds other classes than train/" in caplog.text and "ellipse" in caplog.text


def test_torchrun_two_gloo_ranks_train_and_score_the_probes(shapes, tmp_path):
    process = _spawn("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                     str(SCRIPT), *TINY, "--dataset", "imagefolder", "--data-path",
                     str(shapes), "--epochs", "1", "--accum-steps", "2",
                     "--output-dir", str(tmp_path))
    output = _output(process, timeout=120)
    assert process.returncode == 0, output
    (evaluation,) = records(tmp_path, "eval")
    assert evaluation["step"] == 4 and 0 <= evaluation["probe_top1"] <= 100
    (end,) = records(tmp_path, "end")
    assert end["param_checksums"][0] == end["param_checksums"][1]
