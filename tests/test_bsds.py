"""The BSDS boundary benchmark reproduces the official MATLAB scores."""

import os
from pathlib import Path

import numpy as np
import pytest

from splathead_recipes.bsds import (
    bsds_thresholds,
    evaluate_dir,
    evaluate_image,
    load_ground_truth,
    load_prediction,
    summarize,
)

# The BSDS500 copy lives in the shared/ folder beside the checkout (override: SPLATHEAD_BSDS500).
BSDS500 = Path(
    os.environ.get("SPLATHEAD_BSDS500", Path(__file__).parents[2] / "shared/data/bsds500")
)
MINI = BSDS500 / "mini"
needs_mini = pytest.mark.skipif(not MINI.is_dir(), reason="BSDS500 mini example not on disk")


def official_scores(folder: str) -> dict[str, float]:
    """The MATLAB benchmark's ``eval_bdry.txt`` (made with nthresh 5)."""
    values = np.loadtxt(MINI / folder / "eval_bdry.txt")
    return {"ods": values[3], "ois": values[6], "ap": values[7], "ods_threshold": values[0]}


@needs_mini
@pytest.mark.parametrize(("predictions", "reference"), [("png", "test_2"), ("ucm2", "test_1")])
def test_mini_set_reproduces_official_matlab_scores(predictions, reference):
    scores = evaluate_dir(MINI / predictions, MINI / "groundTruth", nthresh=5, progress=False)
    official = official_scores(reference)
    assert scores.ods == pytest.approx(official["ods"], abs=0.005)
    assert scores.ois == pytest.approx(official["ois"], abs=0.005)
    assert scores.ap == pytest.approx(official["ap"], abs=0.005)
    assert scores.ods_threshold == pytest.approx(official["ods_threshold"], abs=1e-4)


@needs_mini
def test_thresholds_are_the_benchmarks():
    official = np.loadtxt(MINI / "test_2" / "eval_bdry_thr.txt")[:, 0]
    np.testing.assert_allclose(bsds_thresholds(5), official, atol=1e-6)


@needs_mini
def test_ucm2_is_read_at_pixel_positions():
    prediction = load_prediction(MINI / "ucm2" / "2018.mat")
    annotation = load_ground_truth(MINI / "groundTruth" / "2018.mat")[0]
    assert prediction.shape == annotation.shape


def test_prediction_equal_to_the_annotation_scores_one():
    annotation = np.zeros((40, 60), dtype=bool)
    annotation[10, 5:50] = True
    annotation[10:35, 30] = True
    counts = evaluate_image(annotation.astype(np.float64), [annotation], nthresh=9)
    scores = summarize([counts])
    # The benchmark's matcher is approximate (random sparse graph): it can drop a few matches.
    assert scores.ods == pytest.approx(1.0, abs=0.05)
    assert scores.ois == pytest.approx(1.0, abs=0.05)


def test_empty_prediction_has_zero_recall():
    annotation = np.zeros((40, 60), dtype=bool)
    annotation[20, :] = True
    counts = evaluate_image(np.zeros((40, 60)), [annotation], nthresh=9)
    assert (counts.count_r == 0).all()
    assert (counts.sum_r == annotation.sum()).all()
    assert summarize([counts]).ods == 0.0


def test_shifted_boundary_matches_within_tolerance_only():
    annotation = np.zeros((100, 100), dtype=bool)
    annotation[50, 10:90] = True
    diagonal = np.hypot(100, 100)  # 0.0075 of it is 1.06 px
    near, far = np.roll(annotation, 1, axis=0), np.roll(annotation, 3, axis=0)
    near_scores = summarize([evaluate_image(near.astype(float), [annotation], nthresh=1)])
    assert near_scores.ods == pytest.approx(1.0, abs=0.05)  # the matcher may drop a few pixels
    assert summarize([evaluate_image(far.astype(float), [annotation], nthresh=1)]).ods == 0.0
    assert 1 < 0.0075 * diagonal < 3


def test_a_pixel_counts_as_correct_if_any_annotator_drew_it():
    first, second = np.zeros((2, 30, 30), dtype=bool)
    first[10, 5:25] = True
    second[20, 5:25] = True
    counts = evaluate_image((first | second).astype(float), [first, second], nthresh=1)
    assert counts.sum_p[0] == counts.sum_r[0] == 40
    # Each annotator drew half the predicted pixels; precision counts both halves.
    assert counts.count_p[0] >= 38
    assert counts.count_r[0] >= 38


def test_prediction_out_of_range_is_rejected():
    with pytest.raises(ValueError, match=r"prediction must be finite and in \[0, 1\]"):
        evaluate_image(np.full((8, 8), 2.0), [np.zeros((8, 8), dtype=bool)], nthresh=3)


def test_missing_prediction_is_an_error(tmp_path):
    (tmp_path / "pred").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no prediction in .* for 1 of 1 images: 2018"):
        evaluate_dir(tmp_path / "pred", MINI / "groundTruth", ids=["2018"], progress=False)


def load_recipe():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "recipes" / "zeroshot_bsds.py"
    spec = importlib.util.spec_from_file_location("zeroshot_bsds", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_mini
def test_score_cli_prints_the_scores_on_its_last_line(tmp_path, capsys):
    import re
    import shutil

    for folder, suffix in (("png", ".png"), ("groundTruth", ".mat")):
        (tmp_path / folder).mkdir()
        shutil.copy(MINI / folder / f"2018{suffix}", tmp_path / folder)
    argv = ["score", "--pred-dir", str(tmp_path / "png"), "--gt-dir", str(tmp_path / "groundTruth")]
    assert load_recipe().main([*argv, "--nthresh", "2"]) == 0
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    match = re.fullmatch(r"ODS=(0\.\d{3}) OIS=(0\.\d{3}) AP=(0\.\d{3})", last_line)
    assert match, last_line
    expected = evaluate_dir(tmp_path / "png", tmp_path / "groundTruth", nthresh=2, progress=False)
    # The benchmark's matcher breaks ties at random, so two runs differ slightly.
    assert float(match[1]) == pytest.approx(expected.ods, abs=0.005)


@needs_mini
def test_run_cli_tabulates_gmae_and_baselines(tmp_path, capsys):
    argv = ["run", "--data-dir", str(MINI), "--checkpoint", "none", "--output-dir", str(tmp_path)]
    argv += ["--limit", "1", "--nthresh", "1", "--num-vis", "1", "--img-size", "32", "--ply"]
    assert load_recipe().main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-5] == "| method | ODS | OIS | AP |"
    assert [line.split("|")[1].strip() for line in lines[-3:]] == ["gmae", "sobel", "canny"]
    assert (tmp_path / "gmae" / "2018.png").is_file() and (tmp_path / "layers.png").is_file()
    plyfile = pytest.importorskip("plyfile")
    # the first shown image's Gaussians: gmae_vit_tiny has 64
    assert plyfile.PlyData.read(str(tmp_path / "ply" / "2018.ply"))["vertex"].count == 64


@pytest.mark.parametrize(
    "flags", [["--num-vis", "0"], ["--methods", "sobel"]], ids=["no-figures", "no-gmae"]
)
def test_run_cli_refuses_ply_without_gmae_figures(tmp_path, capsys, flags):
    argv = ["run", "--data-dir", str(tmp_path), "--checkpoint", "none", "--ply", *flags]
    with pytest.raises(SystemExit) as exit_info:
        load_recipe().main(argv)
    assert exit_info.value.code == 2
    assert "--ply writes the GMAE's Gaussians" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@needs_mini
def test_recipe_loads_a_pretraining_checkpoint(tmp_path, capsys):
    import dataclasses

    import torch

    from splathead_recipes.config import Config
    from splathead_recipes.models import build_model

    recipe = load_recipe()
    config = Config(model="gmae_vit_tiny", img_size=32, num_gaussians=16)
    model = build_model(config)
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": model.state_dict(), "config": dataclasses.asdict(config)}, path)
    loaded = recipe.load_model(str(path), img_size=64, device=torch.device("cpu"))
    assert loaded.img_size == (32, 32)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def write_ground_truth(path: Path, height: int = 6, width: int = 9) -> Path:
    """A BSDS ``groundTruth`` .mat with one annotator and a horizontal boundary."""
    import scipy.io

    boundaries = np.zeros((height, width), dtype=bool)
    boundaries[height // 2] = True
    cell = np.empty((1, 1), dtype=object)
    cell[0, 0] = {"Boundaries": boundaries}
    scipy.io.savemat(path, {"groundTruth": cell})
    return path


def write_png(path: Path, height: int = 6, width: int = 9) -> Path:
    from PIL import Image

    Image.fromarray(np.full((height, width), 128, dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def folders(tmp_path):
    """Empty prediction and annotation folders."""
    (tmp_path / "pred").mkdir()
    (tmp_path / "gt").mkdir()
    return tmp_path / "pred", tmp_path / "gt"


def test_mat_prediction_without_ucm2_names_the_file_and_what_it_holds(tmp_path):
    import scipy.io

    scipy.io.savemat(tmp_path / "1.mat", {"edges": np.zeros((3, 3))})
    with pytest.raises(ValueError, match=r"1\.mat: expected a variable 'ucm2' .* found 'edges'"):
        load_prediction(tmp_path / "1.mat")


@pytest.mark.parametrize("suffix", [".png", ".mat"])
def test_unreadable_prediction_names_the_file(tmp_path, suffix):
    path = tmp_path / f"1{suffix}"
    path.write_bytes(b"not an image")
    with pytest.raises(ValueError, match=rf"1\{suffix}: expected .* cannot be read"):
        load_prediction(path)


def test_ucm2_that_is_not_double_size_is_rejected(tmp_path):
    import scipy.io

    scipy.io.savemat(tmp_path / "1.mat", {"ucm2": np.zeros((6, 9))})
    with pytest.raises(ValueError, match=r"expected ucm2 of shape \[2h\+1 2w\+1\].*found shape \(6, 9\)"):
        load_prediction(tmp_path / "1.mat")


@pytest.mark.parametrize(
    "height, width, found",
    [(6, 10, r"found 6x10$"), (9, 6, r"found 9x6 \(transposed: height and width swapped\)$")],
    ids=["wrong size", "transposed"],
)
def test_prediction_of_another_size_names_file_expected_and_found(folders, height, width, found):
    pred, gt = folders
    write_ground_truth(gt / "1.mat")
    write_png(pred / "1.png", height=height, width=width)
    with pytest.raises(ValueError, match=r"1\.png: expected a 6x9 \(height x width\) map.*" + found):
        evaluate_dir(pred, gt, progress=False)


def test_every_prediction_is_checked_before_scoring_starts(folders, monkeypatch):
    import splathead_recipes.bsds

    pred, gt = folders
    for image_id in ("1", "2", "3"):
        write_ground_truth(gt / f"{image_id}.mat")
    write_png(pred / "1.png")  # good, and scored first if scoring started
    write_png(pred / "2.png", height=9, width=6)
    (pred / "3.png").write_bytes(b"truncated")

    def scoring_started(*args, **kwargs):
        raise AssertionError("scoring started before every input was checked")

    monkeypatch.setattr(splathead_recipes.bsds, "_evaluate_files", scoring_started)
    with pytest.raises(ValueError, match=r"2 of 3 inputs cannot be scored") as error:
        evaluate_dir(pred, gt, progress=False)
    assert "2.png: expected a 6x9" in str(error.value) and "3.png: expected a PNG" in str(error.value)


def test_every_missing_prediction_is_listed(folders):
    pred, gt = folders
    for image_id in ("1", "2", "3"):
        write_ground_truth(gt / f"{image_id}.mat")
    write_png(pred / "2.png")
    with pytest.raises(FileNotFoundError, match=r"for 2 of 3 images: 1, 3$"):
        evaluate_dir(pred, gt, progress=False)


def test_annotation_of_another_size_than_the_prediction_is_named():
    with pytest.raises(ValueError, match=r"prediction is 8x8 .* but annotation 1 is 8x9"):
        evaluate_image(np.zeros((8, 8)), [np.zeros((8, 8), bool), np.zeros((8, 9), bool)], nthresh=1)


@pytest.mark.parametrize("max_dist", [0.0, -0.01, 1.5, float("nan")])
def test_max_dist_must_be_a_positive_fraction_of_the_diagonal(max_dist):
    with pytest.raises(ValueError, match=r"max_dist must be in \(0, 1\]"):
        evaluate_image(np.zeros((8, 8)), [np.zeros((8, 8), bool)], nthresh=1, max_dist=max_dist)


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--max-dist", "0", r"--max-dist must be in \(0, 1\], .* got 0\.0"),
        ("--nthresh", "0", "--nthresh must be >= 1, got 0"),
        ("--workers", "0", "--workers must be >= 1, got 0"),
    ],
)
def test_score_cli_rejects_bad_settings_before_work(folders, capsys, flag, value, message):
    import re

    pred, gt = folders
    with pytest.raises(SystemExit) as exit_info:
        load_recipe().main(["score", "--pred-dir", str(pred), "--gt-dir", str(gt), flag, value])
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def bsds_split(root: Path) -> Path:
    """A two-image BSDS split: ``images/a.jpg``, ``images/b.jpg`` and their ground truth."""
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "groundTruth").mkdir()
    for image_id in ("a", "b"):
        write_ground_truth(root / "groundTruth" / f"{image_id}.mat")
        Image.fromarray(np.full((6, 9, 3), 128, dtype=np.uint8)).save(
            root / "images" / f"{image_id}.jpg")
    return root


@pytest.mark.parametrize(("damage", "message"), [
    (lambda images: (images / "b.jpg").unlink(),
     r"images/b.jpg: no such file \(expected an RGB or grey image\)"),
    (lambda images: (images / "b.jpg").write_bytes((images / "a.jpg").read_bytes()[:40]),
     r"images/b.jpg: expected an RGB or grey image, but it cannot be read"),
], ids=["missing", "corrupt"])
def test_run_names_an_image_it_cannot_read_before_any_work(tmp_path, capsys, monkeypatch, damage,
                                                           message):
    import re

    recipe = load_recipe()
    data = bsds_split(tmp_path / "val")
    damage(data / "images")
    monkeypatch.setattr(recipe, "load_model", lambda *a, **k: pytest.fail("model built"))
    argv = ["run", "--data-dir", str(data), "--checkpoint", "none",
            "--output-dir", str(tmp_path / "out")]
    assert recipe.main(argv) == 2
    error = capsys.readouterr().err
    assert re.search(message, error), error
    assert not (tmp_path / "out").exists()


def test_run_names_a_missing_checkpoint_before_any_work(tmp_path, capsys):
    data = bsds_split(tmp_path / "val")
    argv = ["run", "--data-dir", str(data), "--checkpoint", "missing.pt",
            "--output-dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_info:
        load_recipe().main(argv)
    assert exit_info.value.code == 2
    assert "--checkpoint missing.pt: no such file (expected a gmae_imagenet.py checkpoint" in (
        capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_run_exits_2_naming_a_mask_ratio_that_hides_every_patch(tmp_path, capsys):
    data = bsds_split(tmp_path / "val")
    argv = ["run", "--data-dir", str(data), "--checkpoint", "none", "--img-size", "32",
            "--mask-ratio", "0.99", "--output-dir", str(tmp_path / "out")]
    assert load_recipe().main(argv) == 2
    assert "--mask-ratio 0.99 leaves none of the model's 16 patches visible" in (
        capsys.readouterr().err)
    assert not (tmp_path / "out").exists()
