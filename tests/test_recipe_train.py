"""End-to-end behaviour of recipes/gmae_imagenet.py on CPU with a tiny demo configuration."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import gmae_imagenet as recipe
import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "recipes" / "gmae_imagenet.py"
# 32 px images, 16 Gaussians, 2 steps of 8 images per epoch: a step takes well under a second.
TINY = ["--preset", "demo", "--img-size", "32", "--num-gaussians", "16", "--batch-size", "8",
        "--samples-per-epoch", "16", "--num-workers", "0", "--log-every", "1",
        "--image-every", "0"]


def run(output_dir: Path, *flags: str) -> int:
    return recipe.main([*TINY, "--output-dir", str(output_dir), *flags])


def losses(output_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return {record["step"]: record["loss"] for record in records if "loss" in record}


def checkpoints(output_dir: Path) -> list[str]:
    return sorted(path.name for path in output_dir.glob("checkpoint-*.pt"))


def test_demo_writes_checkpoint_config_metrics_tensorboard_and_pngs(tmp_path):
    assert run(tmp_path, "--epochs", "1", "--image-every", "2") == 0
    assert checkpoints(tmp_path) == ["checkpoint-00000002.pt"]
    assert json.loads((tmp_path / "config.json").read_text())["img_size"] == 32
    assert sorted(losses(tmp_path)) == [1, 2]
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(path.name for path in (tmp_path / "images").iterdir()) == [
        "eval_00000002.png", "step_00000002.png"]


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


def test_a_diverging_learning_rate_stops_naming_the_step_and_the_last_good_checkpoint(
        tmp_path, caplog):
    """--lr 1e30: the update after step 0 leaves huge finite weights (checkpointed), whose
    forward gives NaN Gaussians; the checkpoint holding those weights is not the good one."""
    assert run(tmp_path, "--lr", "1e30", "--epochs", "3", "--checkpoint-every", "1") == 1
    match = re.search(r"non-finite model at step (\d+) \(epoch \d+\): its weights give "
                      r"invalid Gaussians: means holds NaN or Inf.*\(learning rate .*"
                      r"Last good checkpoint: \S+/checkpoint-(\d+)\.pt", caplog.text)
    assert match, caplog.text
    failed_at, good = int(match[1]), int(match[2])
    assert good == failed_at - 1 and f"checkpoint-{failed_at:08d}.pt" in checkpoints(tmp_path)


def test_a_full_disk_ends_the_run_with_exit_1_naming_the_file_and_keeps_the_checkpoints(
        tmp_path, monkeypatch, caplog):
    """torch.save's own error on a full disk at the third checkpoint: exit 1 naming the file
    and the free space, no temporary file; after space is freed the run resumes bit-exact."""
    save, saves = torch.save, []

    def fills_the_disk(state, handle, *args, **kwargs):
        saves.append(1)
        if len(saves) == 3:
            handle.write(bytes(100))
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")
        return save(state, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", fills_the_disk)
    assert run(tmp_path / "full", "--epochs", "3", "--checkpoint-every", "1") == 1
    assert re.search(r"could not write \S+/checkpoint-00000003\.pt: .* MiB free", caplog.text)
    assert checkpoints(tmp_path / "full") == ["checkpoint-00000001.pt", "checkpoint-00000002.pt"]
    assert not [path for path in (tmp_path / "full").iterdir() if path.suffix == ".tmp"]
    monkeypatch.setattr(torch, "save", save)
    assert run(tmp_path / "full", "--epochs", "3", "--checkpoint-every", "1",
               "--resume", "auto") == 0
    assert run(tmp_path / "straight", "--epochs", "3", "--checkpoint-every", "1") == 0
    assert losses(tmp_path / "full") == losses(tmp_path / "straight")


def test_bad_config_fails_before_training_with_the_flag_to_change(tmp_path, capsys):
    assert run(tmp_path, "--batch-size", "6", "--accum-steps", "4") == 2
    assert "--batch-size 6 is not divisible" in capsys.readouterr().err
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def _spawn(*command: str) -> subprocess.Popen:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, *command], cwd=ROOT, env=environment,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _output(process: subprocess.Popen, timeout: float) -> str:
    """The process's output once it exits; past ``timeout`` its whole group is killed (a
    failing test leaves nothing running) and the test fails with what it printed."""
    try:
        return process.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail(f"still running after {timeout} s:\n{process.communicate()[0]}")


def test_torchrun_two_gloo_ranks_keep_identical_parameters(tmp_path):
    process = _spawn("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                     str(SCRIPT), *TINY, "--epochs", "2", "--accum-steps", "2",
                     "--output-dir", str(tmp_path))
    output = _output(process, timeout=120)
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
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().strip()):
        if time.monotonic() > deadline:
            _output(process, timeout=0)  # kills it and fails with its output
        assert process.poll() is None, _output(process, timeout=0)
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    output = _output(process, timeout=60)
    assert process.returncode == 0, output
    (saved,) = checkpoints(tmp_path)
    step = torch.load(tmp_path / saved, weights_only=True)["step"]
    assert 0 < step < 10_000 and step == max(losses(tmp_path))


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def test_a_fresh_run_refuses_a_folder_holding_another_runs_files_and_changes_nothing(
        tmp_path, capsys):
    assert run(tmp_path, "--epochs", "2", "--checkpoint-every", "1") == 0
    before = files_of(tmp_path)
    assert run(tmp_path, "--epochs", "2", "--max-steps", "1") == 2
    error = capsys.readouterr().err
    assert f"--output-dir {tmp_path} holds another run's files" in error
    assert "--resume auto" in error and "another --output-dir" in error
    assert files_of(tmp_path) == before


def test_resume_auto_refuses_when_no_checkpoint_loads_and_lists_them(tmp_path, caplog):
    run(tmp_path, "--epochs", "1", "--checkpoint-every", "1")
    for path in tmp_path.glob("checkpoint-*.pt"):
        path.write_bytes(path.read_bytes()[:200])
    before = files_of(tmp_path)
    assert run(tmp_path, "--epochs", "1", "--resume", "auto") == 2
    assert "none of the 2 checkpoints" in caplog.text
    assert "checkpoint-00000001.pt" in caplog.text and "checkpoint-00000002.pt" in caplog.text
    assert files_of(tmp_path) == before


@pytest.mark.parametrize("torn", [b'{"step": 3, "epoch": 1.5, "lo', b'{"step": 3, "note": "\xc3'],
                         ids=["ascii", "inside-a-utf8-character"])
def test_a_torn_last_metrics_line_is_dropped_with_a_warning_on_resume(tmp_path, caplog, torn):
    run(tmp_path, "--epochs", "2", "--max-steps", "2")
    with open(tmp_path / "metrics.jsonl", "ab") as metrics:
        metrics.write(torn)
    assert run(tmp_path, "--epochs", "2", "--resume", "auto") == 0
    assert "is not a complete record" in caplog.text
    assert sorted(losses(tmp_path)) == [1, 2, 3, 4]


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_an_output_dir_that_cannot_be_created_exits_2_before_the_model_is_built(
        monkeypatch, capsys, caplog):
    """/proc takes no new folder, not even from root (whom the permission check lets pass)."""
    monkeypatch.setattr(recipe, "build_model_for", lambda config: pytest.fail("model built"))
    assert recipe.main([*TINY, "--output-dir", "/proc/out"]) == 2
    assert re.search(r"--output-dir /proc/out: (cannot create /proc/out|/proc is not writable)",
                     capsys.readouterr().err + caplog.text)


def test_no_checkpoint_holds_a_non_finite_tensor(tmp_path, monkeypatch, caplog):
    # A NaN learning rate makes AdamW write NaN weights while step 1's loss and gradients are
    # finite: the guard on the loss cannot see it, the one on the saved state must.
    monkeypatch.setattr(recipe, "learning_rate", lambda step, **_: float("nan"))
    assert run(tmp_path, "--epochs", "2", "--checkpoint-every", "1") == 1
    assert "non-finite parameters or optimiser state after step 1; not checkpointed" in caplog.text
    assert checkpoints(tmp_path) == []


def image_folder(root: Path, count: int, *, readable: bool = True) -> Path:
    folder = root / "train" / "class_0"
    folder.mkdir(parents=True)
    for index in range(count):
        path = folder / f"{index}.png"
        if readable:
            Image.fromarray(np.full((8, 8, 3), index, np.uint8)).save(path)
        else:
            path.write_bytes(b"not an image")
    return root


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--img-size", "62"], "--img-size 62"),
        (["--img-size", "4"], "--img-size 4"),
        (["--mask-ratio", "0.99"], "--mask-ratio 0.99 leaves no visible patch"),
        (["--max-scale", "nan"], "--max-scale must be finite"),
        (["--clip-grad", "nan"], "--clip-grad must be finite"),
        (["--model", "nope"], "--model 'nope' is not one of"),
        (["--dataset", "imagefolder", "--data-path", "EMPTY"], "--data-path"),
        (["--dataset", "imagefolder", "--data-path", "SEVEN"], "fewer than one --batch-size 8"),
        (["--output-dir", "FILE/run"], "is a file, not a folder"),
    ],
)
def test_bad_settings_exit_2_before_training_naming_the_flag(tmp_path, flags, named, capsys,
                                                             caplog):
    (tmp_path / "EMPTY" / "train").mkdir(parents=True)
    image_folder(tmp_path / "SEVEN", 7)
    (tmp_path / "FILE").write_text("")
    flags = [flag.replace("EMPTY", str(tmp_path / "EMPTY")).replace(
        "SEVEN", str(tmp_path / "SEVEN")).replace("FILE", str(tmp_path / "FILE"))
        for flag in flags]
    output = tmp_path / "out"
    assert recipe.main([*TINY, "--output-dir", str(output), *flags]) == 2
    assert named in capsys.readouterr().err + caplog.text
    assert not output.exists() or not any(output.iterdir())


def checkpoint_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Bad ``--resume`` / ``--checkpoint`` files and what their error must say."""
    run(tmp_path / "run", "--epochs", "1", "--num-gaussians", "8")
    good = tmp_path / "run" / "checkpoint-00000002.pt"
    state = torch.load(good, weights_only=True)
    files = {name: tmp_path / f"{name}.pt" for name in ("empty", "bare", "truncated", "pickle")}
    files["empty"].write_bytes(b"")
    torch.save(state["model"], files["bare"])
    files["truncated"].write_bytes(good.read_bytes()[:1000])

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'exploited'}",))

    torch.save({"model": Exploit()}, files["pickle"])
    return {"empty": (files["empty"], "the file is empty"),
            "bare": (files["bare"], "looks like a bare state dict"),
            "truncated": (files["truncated"], "not a readable checkpoint"),
            "pickle": (files["pickle"], "refused to load"),
            "other size": (good, "num_gaussians: 8 there, 16 here")}


def test_unusable_resume_files_give_one_error_naming_the_file_and_the_problem(tmp_path,
                                                                             caplog):
    for name, (path, message) in checkpoint_files(tmp_path).items():
        caplog.clear()
        output = tmp_path / f"resume_{name.replace(' ', '_')}"
        assert run(output, "--epochs", "1", "--resume", str(path)) == 2, name
        assert str(path) in caplog.text and message in caplog.text, (name, caplog.text)
        assert "Traceback" not in caplog.text
    assert not (tmp_path / "exploited").exists()


def test_zeroshot_run_gives_the_same_errors_for_unusable_checkpoints(tmp_path, capsys):
    import zeroshot_bsds

    data = tmp_path / "bsds"
    (data / "groundTruth").mkdir(parents=True)
    (data / "groundTruth" / "1.mat").write_bytes(b"")
    (data / "images").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(data / "images" / "1.jpg")
    files = checkpoint_files(tmp_path)
    state = torch.load(files["other size"][0], weights_only=True)
    state["config"]["num_gaussians"] = 16  # the config of another model than the weights
    torch.save(state, files["other size"][0])
    files["other size"] = (files["other size"][0], "do not fit the model its config describes")
    for name, (path, message) in files.items():
        argv = ["run", "--data-dir", str(data), "--checkpoint", str(path), "--methods", "gmae",
                "--output-dir", str(tmp_path / "zeroshot")]
        assert zeroshot_bsds.main(argv) == 2, name
        error = capsys.readouterr().err
        assert str(path) in error and message in error, (name, error)
    assert not (tmp_path / "exploited").exists()


def test_an_error_in_a_loader_worker_ends_the_run_and_its_workers(tmp_path):
    import multiprocessing

    data = image_folder(tmp_path / "data", 40, readable=False)
    # Loader workers of earlier in-process runs may await garbage collection; only this run's count.
    before = set(multiprocessing.active_children())
    with pytest.raises(RuntimeError, match="32 consecutive unreadable images"):
        run(tmp_path / "out", "--dataset", "imagefolder", "--data-path", str(data),
            "--batch-size", "4", "--num-workers", "1")
    assert set(multiprocessing.active_children()) - before == set()


@pytest.mark.parametrize("ranks", [1, 2])
def test_an_error_exits_promptly_with_a_non_zero_status(tmp_path, ranks):
    data = image_folder(tmp_path / "data", 40, readable=False)
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)]
    process = _spawn(*(launcher if ranks > 1 else []), str(SCRIPT), *TINY, "--dataset",
                     "imagefolder", "--data-path", str(data), "--batch-size", "4",
                     "--num-workers", "1", "--output-dir", str(tmp_path / "out"))
    output = _output(process, timeout=90)
    assert process.returncode not in (0, None), output
    assert "consecutive unreadable images" in output, output
