"""End-to-end behaviour of recipes/gmae_imagenet.py on CPU with a tiny demo configuration."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "recipes" / "gmae_imagenet.py"
# 32 px images, 16 Gaussians, 2 steps of 8 images per epoch: a step takes well under a second.
TINY = ["--preset", "demo", "--img-size", "32", "--num-gaussians", "16", "--batch-size", "8",
        "--samples-per-epoch", "16", "--num-workers", "0", "--log-every", "1",
        "--image-every", "0"]


def _load_recipe():
    spec = importlib.util.spec_from_file_location("gmae_imagenet", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


recipe = _load_recipe()


def run(output_dir: Path, *flags: str) -> int:
    return recipe.main([*TINY, "--output-dir", str(output_dir), *flags])


def losses(output_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return {record["step"]: record["loss"] for record in records if "loss" in record}


def checkpoints(output_dir: Path) -> list[str]:
    return sorted(path.name for path in output_dir.glob("checkpoint-*.pt"))


def test_demo_writes_checkpoint_config_metrics_tensorboard_and_png(tmp_path):
    assert run(tmp_path, "--epochs", "1", "--image-every", "2") == 0
    assert checkpoints(tmp_path) == ["checkpoint-00000002.pt"]
    assert json.loads((tmp_path / "config.json").read_text())["img_size"] == 32
    assert sorted(losses(tmp_path)) == [1, 2]
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert [path.name for path in (tmp_path / "images").iterdir()] == ["step_00000002.png"]


def test_checkpoint_loads_with_weights_only_and_holds_the_position(tmp_path):
    run(tmp_path, "--epochs", "2", "--checkpoint-every", "3", "--keep-checkpoints", "1")
    (newest,) = tmp_path.glob("checkpoint-*.pt")
    state = torch.load(newest, weights_only=True)
    assert (state["step"], state["epoch"], state["step_in_epoch"]) == (4, 2, 0)
    assert {"model", "optimizer", "scaler", "rng", "config"} <= set(state)


def test_loss_decreases_over_a_short_run(tmp_path):
    run(tmp_path, "--epochs", "12", "--lr", "3e-3", "--warmup-epochs", "1",
        "--checkpoint-every", "1000")
    curve = list(losses(tmp_path).values())
    assert sum(curve[-4:]) / 4 < 0.8 * sum(curve[:4]) / 4


def test_resuming_mid_epoch_reproduces_the_uninterrupted_losses_exactly(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run(straight, "--epochs", "3")
    run(resumed, "--epochs", "3", "--max-steps", "3")  # stops inside epoch 2
    assert checkpoints(resumed)[-1] == "checkpoint-00000003.pt"
    run(resumed, "--epochs", "3", "--resume", "auto")
    assert losses(resumed) == losses(straight)
    assert sorted(losses(resumed)) == [1, 2, 3, 4, 5, 6]


def test_resume_auto_skips_a_truncated_checkpoint(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="gmae")
    run(tmp_path, "--epochs", "2", "--checkpoint-every", "1", "--max-steps", "3")
    newest = tmp_path / "checkpoint-00000003.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    run(tmp_path, "--epochs", "2", "--resume", "auto")
    assert "skipping unreadable checkpoint" in caplog.text
    assert "resumed from" in caplog.text and "checkpoint-00000002.pt at step 2" in caplog.text


def test_non_finite_loss_stops_with_the_step_and_writes_no_checkpoint(tmp_path, monkeypatch,
                                                                      caplog):
    build = recipe.build_model

    def poisoned(config):
        model = build(config)
        forward, calls = model.forward, []

        def forward_with_nan_at_third_step(images, **kwargs):
            output = forward(images, **kwargs)
            calls.append(1)
            return output._replace(loss=output.loss * float("nan")) if len(calls) == 3 else output

        model.forward = forward_with_nan_at_third_step
        return model

    monkeypatch.setattr(recipe, "build_model", poisoned)
    assert run(tmp_path, "--epochs", "3", "--checkpoint-every", "1") == 1
    assert "non-finite loss or gradient at step 2" in caplog.text
    assert checkpoints(tmp_path) == ["checkpoint-00000001.pt", "checkpoint-00000002.pt"]


def test_bad_config_fails_before_training_with_the_flag_to_change(tmp_path, capsys):
    assert run(tmp_path, "--batch-size", "6", "--accum-steps", "4") == 2
    assert "--batch-size 6 is not divisible" in capsys.readouterr().err
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def _spawn(*command: str) -> subprocess.Popen:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, *command], cwd=ROOT, env=environment,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_torchrun_two_gloo_ranks_keep_identical_parameters(tmp_path):
    process = _spawn("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                     str(SCRIPT), *TINY, "--epochs", "2", "--accum-steps", "2",
                     "--output-dir", str(tmp_path))
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    (end,) = [record for record in records if record.get("event") == "end"]
    assert len(end["param_checksums"]) == 2
    assert end["param_checksums"][0] == end["param_checksums"][1]
    assert checkpoints(tmp_path) == ["checkpoint-00000002.pt", "checkpoint-00000004.pt"]


def test_sigterm_writes_a_checkpoint_and_exits_cleanly(tmp_path):
    process = _spawn(str(SCRIPT), *TINY, "--samples-per-epoch", "80000", "--epochs", "1",
                     "--output-dir", str(tmp_path))
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.monotonic() + 60
    while not (metrics.exists() and metrics.read_text().strip()):
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    (saved,) = checkpoints(tmp_path)
    step = torch.load(tmp_path / saved, weights_only=True)["step"]
    assert 0 < step < 10_000 and step == max(losses(tmp_path))
