"""End-to-end behaviour of recipes/gmae_video.py on CPU: tiny clips, a few steps."""

from __future__ import annotations

import json
from pathlib import Path

import gmae_video as recipe
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from splathead_recipes.pretrain_eval import HEALTH
from splathead_recipes.video_data import FrameSampling
from test_recipe_run_lock import hold_in_another_process

pytest.importorskip("transformers")

# 32 px, 4 frames, 16 Gaussians, 2 steps of 4 clips per epoch, 4 evaluation clips.
TINY = ["--preset", "demo", "--img-size", "32", "--num-frames", "4", "--num-gaussians", "16",
        "--decoder-depth", "1", "--batch-size", "4", "--samples-per-epoch", "8",
        "--eval-clips", "4", "--num-workers", "0", "--log-every", "1", "--image-every", "0"]


def run(output_dir: Path, *flags: str) -> int:
    return recipe.main([*TINY, "--output-dir", str(output_dir), *flags])


def losses(output_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return {record["step"]: record["loss"] for record in records if "loss" in record}


def clip_folder(root: Path, frames_per_clip: list[int], size: int = 40) -> Path:
    """Clip folders of random PNG frames."""
    rng = np.random.default_rng(0)
    for clip, count in enumerate(frames_per_clip):
        folder = root / f"clip{clip:02d}"
        folder.mkdir(parents=True)
        for frame in range(count):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{frame:05d}.png")
    return root


def video_files(root: Path, frames_per_clip: list[int], size: int = 40) -> Path:
    """Video files (MPEG-4 in .mp4, written with PyAV) of random frames."""
    av = pytest.importorskip("av")
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for clip, count in enumerate(frames_per_clip):
        with av.open(str(root / f"clip{clip:02d}.mp4"), "w") as container:
            stream = container.add_stream("mpeg4", rate=10)
            stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
            for _ in range(count):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
            container.mux(stream.encode())
    return root


def test_sprites_run_writes_checkpoint_metrics_strips_and_the_psnr_line(tmp_path, capsys):
    assert run(tmp_path, "--epochs", "1", "--image-every", "2") == 0
    assert sorted(path.name for path in tmp_path.glob("checkpoint-*.pt")) == [
        "checkpoint-00000002.pt"]
    assert sorted(losses(tmp_path)) == [1, 2]
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    strip = tmp_path / "images" / "eval_00000002.png"
    # 4 rows (input, masked, render, Gaussians) per video, 2 videos; one column per frame;
    # 32 px panels enlarged to 128 px, 2 px padding
    assert Image.open(strip).size == (4 * 130 + 2, 8 * 130 + 2)
    evaluation = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text()
                  .splitlines() if '"eval"' in line][-1]
    assert {"psnr_masked", "psnr", "ssim"} <= set(evaluation)
    assert all(0 <= evaluation[name] <= 1 for name in HEALTH)  # the image recipe's health
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert f"psnr_masked={evaluation['psnr_masked']:.2f}" in last


def test_resuming_mid_epoch_reproduces_the_uninterrupted_losses_exactly(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run(straight, "--epochs", "2") == 0
    assert run(resumed, "--epochs", "2", "--max-steps", "3") == 0  # stops inside epoch 2
    assert run(resumed, "--epochs", "2", "--resume", "auto") == 0
    assert losses(resumed) == losses(straight)
    assert sorted(losses(resumed)) == [1, 2, 3, 4]


def test_a_folder_in_use_by_another_run_is_refused_with_exit_2_naming_its_pid(tmp_path, capsys):
    holder = hold_in_another_process(tmp_path)
    try:
        assert run(tmp_path, "--epochs", "1") == 2
        assert f"is in use by a running run (process {holder.pid})" in capsys.readouterr().err
        assert not list(tmp_path.glob("checkpoint-*.pt"))
    finally:
        holder.kill()
        holder.wait()


def test_a_folder_of_clips_trains_with_stride_sampling(tmp_path):
    data = clip_folder(tmp_path / "clips", [9, 8, 12, 8])
    assert run(tmp_path / "out", "--dataset", "clips", "--data-path", str(data),
               "--frame-stride", "2", "--epochs", "1", "--crop-scale", "0.5", "1.0",
               "--crop-style", "tf") == 0
    assert sorted(losses(tmp_path / "out")) == [1]


def test_video_files_are_clips_with_the_sampled_frames(tmp_path):
    import av
    import torch
    from splathead_recipes.crops import CentreCrop
    from splathead_recipes.video_data import ClipFolder

    data = video_files(tmp_path / "videos", [9, 8])
    folder = ClipFolder(data, sampling=FrameSampling(4, 2), crop=CentreCrop(32))
    clip, _, substituted = folder[(0, 5)]
    assert clip.shape == (4, 3, 32, 32) and not substituted
    with av.open(str(data / "clip00.mp4")) as container:
        decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    expected = [CentreCrop(32).from_pixels(torch.from_numpy(decoded[index]).permute(2, 0, 1), 5)
                for index in FrameSampling(4, 2).indices(9, 5)]
    assert (clip == np.stack(expected)).all()
    assert run(tmp_path / "out", "--dataset", "clips", "--data-path", str(data),
               "--epochs", "1", "--batch-size", "2") == 0


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--num-frames", "3"], "--num-frames 3 is not a multiple of --tubelet-size 2"),
        (["--dataset", "clips", "--data-path", "SHORT", "--frame-stride", "2"],
         "has 6 frames, fewer than the 4 frames x stride 2 = 8"),
        (["--dataset", "clips", "--data-path", "BROKEN"], "frame 00002.png is unreadable"),
        (["--dataset", "clips"], "dataset clips needs --data-path"),
        (["--dataset", "clips", "--data-path", "BADVIDEO"], "clip00.mp4 is unreadable"),
        (["--mask-ratio", "0.99"], "leaves no visible tubelet"),
        (["--decoder-dim", "40"], "--decoder-dim 40 must be a multiple of 16"),
        (["--encoder-weights", "MISSING"], "--encoder-weights"),
    ],
)
def test_bad_inputs_exit_2_before_training_naming_what_to_change(tmp_path, flags, named, capsys,
                                                                  caplog):
    clip_folder(tmp_path / "SHORT", [8, 6])
    clip_folder(tmp_path / "BROKEN", [4, 4])
    (tmp_path / "BROKEN" / "clip01" / "00002.png").write_bytes(b"not a png")
    (tmp_path / "BADVIDEO").mkdir()
    (tmp_path / "BADVIDEO" / "clip00.mp4").write_bytes(b"not a video")
    flags = [flag.replace("SHORT", str(tmp_path / "SHORT")).replace(
        "BROKEN", str(tmp_path / "BROKEN")).replace("MISSING", str(tmp_path / "MISSING")).replace(
        "BADVIDEO", str(tmp_path / "BADVIDEO"))
        for flag in flags]
    output = tmp_path / "out"
    assert recipe.main([*TINY, "--output-dir", str(output), *flags]) == 2
    assert named in capsys.readouterr().err + caplog.text
    assert not output.exists() or not any(output.iterdir())


def test_a_fixed_set_of_sprite_clips_is_cycled_and_evaluated_on():
    import torch
    from splathead_recipes.video_data import MovingSprites

    fixed = MovingSprites(num_frames=4, size=32, length=8, clips=3)
    assert torch.equal(fixed[(1, 11)].image, fixed[(4, 99)].image)  # index, not seed, decides
    assert not torch.equal(fixed[(1, 11)].image, fixed[(2, 11)].image)
    fresh = MovingSprites(num_frames=4, size=32, length=8)
    assert torch.equal(fresh[(1, 11)].image, fresh[(5, 11)].image)  # the seed decides
    config = recipe.parse_config([*TINY, "--sprite-clips", "3", "--eval-clips", "3"])
    evaluated = recipe.eval_clips(config)
    assert all(torch.equal(evaluated[(index, 0)].image, fixed[(index, 5)].image)
               for index in range(3))


def test_paper_preset_is_the_authors_setting():
    paper = recipe.PRESETS["paper"]
    assert paper == recipe.VideoConfig()  # the defaults are the authors' run
    assert (paper.num_frames, paper.frame_stride, paper.mask_ratio, paper.masking) == (
        12, 1, 0.9, "random")
    assert (paper.img_size, paper.patch_size, paper.num_gaussians, paper.encoder) == (
        224, 16, 512, "videomae_large")
    assert paper.learning_rate == 4e-4 * 512 / 256


@given(frames=st.integers(1, 8), stride=st.integers(1, 4), extra=st.integers(0, 10),
       seed=st.integers(0, 2**31 - 1))
def test_frame_sampling_is_videomaes_for_one_segment(frames, stride, extra, seed):
    """VideoMAE's train sampling with one segment: an offset in [0, n - frames * stride], then
    every stride-th frame from it (skip_length = frames * stride)."""
    sampling = FrameSampling(frames, stride)
    length = frames * stride + extra
    indices = sampling.indices(length, seed)
    assert 0 <= indices[0] <= length - frames * stride
    assert indices == list(range(indices[0], indices[0] + frames * stride, stride))
    assert indices == sampling.indices(length, seed)  # a pure function of the seed
