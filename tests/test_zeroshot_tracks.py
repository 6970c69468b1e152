"""recipes/zeroshot_tracks.py: the tracking benchmark's clips and ground truth, and its scorer,
tiny runs."""

from __future__ import annotations

import re
from pathlib import Path

import gmae_video
import numpy as np
import pytest
import zeroshot_tracks
from PIL import Image

from splathead_recipes.crops import CentreCrop
from splathead_recipes.video_data import ClipFolder, FrameSampling, draw_sprite_clip, frame_files

TINY_DATA = ["--num-train", "6", "--num-test", "3", "--size", "32", "--num-frames", "6",
             "--num-points", "24"]


def make_data(output_dir: Path, *flags: str) -> int:
    return zeroshot_tracks.main(["make-data", "--output-dir", str(output_dir), *TINY_DATA, *flags])


def read_clip(folder: Path) -> np.ndarray:
    return np.stack([np.array(Image.open(path)) for path in frame_files(folder)]).astype(int)


FINE = 9
"""draw_sprite_clip scales the whole scene with its size, so a clip drawn FINE times larger is
the same scene sampled FINE times more densely (a query's pixel centre is a fine pixel's)."""


def test_tracks_land_where_the_query_points_texture_is_drawn(tmp_path):
    data = tmp_path / "tracks"
    assert make_data(data) == 0
    truth = np.load(data / "test" / "tracks.npz")
    tracks = truth["tracks"]
    assert truth["query_points"].shape == (3, 24, 3) and tracks.shape == (3, 24, 6, 2)
    assert (truth["query_points"][..., 0] == 0).all() and not truth["occluded"][:, :, 0].any()
    assert np.array_equal(tracks[:, :, 0], truth["query_points"][..., [2, 1]])
    moving = np.abs(tracks - tracks[:, :, :1]).max(axis=(2, 3)) >= 1
    assert moving.sum() >= 12 and (~moving).sum() >= 24 and truth["occluded"].any()
    spec = zeroshot_tracks.TracksSpec(size=32, num_frames=6, num_points=24)
    checked = 0
    for index in range(3):
        seed = zeroshot_tracks.clip_seed(spec, "test", index)
        coarse = read_clip(data / "test" / "clips" / f"{index:05d}")
        assert np.array_equal(coarse, draw_sprite_clip(seed, num_frames=6, size=32).frames
                              .permute(0, 2, 3, 1).numpy())
        fine = draw_sprite_clip(seed, num_frames=6, size=32 * FINE).frames
        fine = fine.permute(0, 2, 3, 1).numpy().astype(int)
        for (_, y, x), track, occluded, moves in zip(truth["query_points"][index], tracks[index],
                                                    truth["occluded"][index], moving[index]):
            row, column = int(y * FINE), int(x * FINE)
            colour = fine[0, row, column]
            if not (fine[0, row - 1 : row + 2, column - 1 : column + 2] == colour).all():
                continue  # within a fine pixel of a texture edge (or on the smooth background)
            for frame in np.flatnonzero(~occluded):
                # the fine pixel nearest the track (under 0.06 px away) shows the query's texture
                near_x, near_y = np.floor(track[frame] * FINE).astype(int)
                if max(near_x, near_y) < 32 * FINE and min(near_x, near_y) >= 0:
                    assert np.array_equal(fine[frame, near_y, near_x], colour)
                    checked += bool(frame > 0 and moves)
    assert checked >= 50  # (point, frame) pairs that moved


def test_make_data_is_the_same_for_the_same_seed_and_test_set_independent_of_train(tmp_path):
    make_data(tmp_path / "a")
    zeroshot_tracks.main(["make-data", "--output-dir", str(tmp_path / "b"), *TINY_DATA[2:],
                          "--num-train", "2"])
    make_data(tmp_path / "c", "--seed", "1")
    read = {name: (tmp_path / name / "test" / "tracks.npz").read_bytes() for name in "abc"}
    assert read["a"] == read["b"] != read["c"]
    frame = Path("test", "clips", "00002", "003.png")
    assert (tmp_path / "a" / frame).read_bytes() == (tmp_path / "b" / frame).read_bytes()


def test_a_video_model_trained_on_make_data_is_scored_with_tables_and_summary(tmp_path, capsys):
    data = tmp_path / "tracks"
    assert make_data(data) == 0
    clip = ClipFolder(data / "train", sampling=FrameSampling(4, 1), crop=CentreCrop(32))
    assert len(clip) == 6 and clip[(0, 0)].image.shape == (4, 3, 32, 32)
    # gmae_video.py reads the training clips as a clip folder: one tiny step.
    assert gmae_video.main([
        "--preset", "demo", "--dataset", "clips", "--data-path", str(data / "train"),
        "--batch-size", "2", "--num-workers", "0", "--epochs", "1", "--max-steps", "1",
        "--eval-clips", "2", "--image-every", "0", "--output-dir", str(tmp_path / "run"),
    ]) == 0
    checkpoint = next((tmp_path / "run").glob("checkpoint-*.pt"))
    capsys.readouterr()
    argv = ["score", "--checkpoint", str(checkpoint), "--data-dir", str(data), "--limit", "2",
            "--output", str(tmp_path / "t.md")]
    assert zeroshot_tracks.main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"aj=[0-9.]+ delta_avg=[0-9.]+ oa=[0-9.]+ aj_static=[0-9.]+", lines[-1])
    rows = [line.split(" | ") for line in lines if line.startswith("| ")]
    names = [row[0] for row in rows]
    assert names[:4] == ["| method", "| static points (never move, always visible)",
                         f"| GMAE ({checkpoint})",
                         "| GMAE, motion shuffled among its Gaussians (mean of 5)"]
    assert names[4:] == names[:4]  # the moving-points table
    summary = dict(pair.split("=") for pair in lines[-1].split())
    assert rows[2][1:4] == [summary["aj"], summary["delta_avg"], summary["oa"]]
    assert rows[1][1] == summary["aj_static"]
    (gain,) = [line for line in lines if line.startswith("all points: AJ gain over static")]
    mean, low, high = map(float, re.findall(r"[-+][0-9.]+", gain.split(": ", 2)[2]))
    assert mean == pytest.approx(float(summary["aj"]) - float(summary["aj_static"]), abs=2e-3)
    assert low <= mean <= high
    assert (tmp_path / "t.md").read_text().strip() == "\n".join(lines[:-1]).strip()
    with pytest.raises(SystemExit) as exit_info:  # never over another file
        zeroshot_tracks.main(argv)
    assert exit_info.value.code == 2 and "--output" in capsys.readouterr().err


def test_the_static_row_scores_the_truth_of_still_points_perfectly(tmp_path, capsys):
    """The untrained demo model's delta head is zero: its tracks are the static points'."""
    make_data(tmp_path / "tracks")
    assert zeroshot_tracks.main(["score", "--checkpoint", "none", "--data-dir",
                                 str(tmp_path / "tracks"), "--limit", "2"]) == 0
    summary = dict(pair.split("=") for pair in capsys.readouterr().out.splitlines()[-1].split())
    assert summary["aj"] == summary["aj_static"]


def test_score_names_bad_inputs(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        zeroshot_tracks.main(["score", "--checkpoint", "none", "--data-dir", str(tmp_path)])
    assert exit_info.value.code == 2 and "make-data" in capsys.readouterr().err
    make_data(tmp_path / "tracks")
    data = ["--data-dir", str(tmp_path / "tracks")]
    with pytest.raises(SystemExit) as exit_info:
        zeroshot_tracks.main(["score", "--checkpoint", "none", *data,
                              "--visibility-threshold", "0"])
    assert exit_info.value.code == 2 and "--visibility-threshold" in capsys.readouterr().err
    not_a_checkpoint = tmp_path / "weights.pt"
    not_a_checkpoint.write_text("not a checkpoint")
    assert zeroshot_tracks.main(["score", "--checkpoint", str(not_a_checkpoint), *data]) == 2
    assert f"--checkpoint {not_a_checkpoint}" in capsys.readouterr().err


def test_score_names_an_unreadable_frame_or_a_clip_missing_one_before_any_model_work(
        tmp_path, capsys):
    make_data(tmp_path / "tracks")
    argv = ["score", "--checkpoint", "none", "--data-dir", str(tmp_path / "tracks")]
    broken = tmp_path / "tracks" / "test" / "clips" / "00001" / "002.png"
    broken.write_bytes(b"not a png")
    assert zeroshot_tracks.main(argv) == 2
    assert f"{broken}: expected an RGB or grey image" in capsys.readouterr().err
    broken.unlink()
    with pytest.raises(SystemExit, match="00001 has 5 frames, its ground truth 6"):
        zeroshot_tracks.main(argv)
