"""recipes/zeroshot_layers.py: the dead-leaves benchmark's data and its scorer, tiny runs."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import gmae_imagenet
import numpy as np
import pytest
import zeroshot_layers
from PIL import Image

TINY_DATA = ["--num-train", "16", "--num-test", "3", "--size", "32"]


def make_data(output_dir: Path, *flags: str) -> int:
    return zeroshot_layers.main(["make-data", "--output-dir", str(output_dir), *TINY_DATA, *flags])


def read(path: Path) -> np.ndarray:
    return np.array(Image.open(path))


def test_make_data_writes_scenes_whose_front_object_is_whole_and_outlined(tmp_path):
    assert make_data(tmp_path / "leaves") == 0
    test = tmp_path / "leaves" / "test"
    assert len(list((tmp_path / "leaves" / "train" / "leaves").glob("*.png"))) == 16
    for index in range(3):
        image, front, boundaries = (read(test / name / f"{index:05d}.png")
                                    for name in ("images", "front", "boundaries"))
        assert image.shape == (32, 32, 3) and front.shape == boundaries.shape == (32, 32)
        front, boundaries = front > 127, boundaries > 127
        assert front.mean() >= zeroshot_layers.LeavesSpec().min_front_area
        # Nothing covers the front object: it is one colour, and its rim is a boundary.
        assert len(np.unique(image[front], axis=0)) == 1
        inside_rim = front[:, :-1] & ~front[:, 1:]
        assert boundaries[:, :-1][inside_rim].all()
        # Every boundary pixel differs in colour from its right or lower neighbour.
        differs = np.zeros_like(boundaries)
        differs[:, :-1] |= (image[:, 1:] != image[:, :-1]).any(-1)
        differs[:-1, :] |= (image[1:, :] != image[:-1, :]).any(-1)
        assert np.array_equal(boundaries, differs)


def test_make_data_is_the_same_for_the_same_seed_and_test_set_independent_of_train(tmp_path):
    make_data(tmp_path / "a")
    zeroshot_layers.main(["make-data", "--output-dir", str(tmp_path / "b"), "--num-train", "5",
                          "--num-test", "3", "--size", "32"])
    make_data(tmp_path / "c", "--seed", "1")
    first = (tmp_path / "a" / "test" / "images" / "00002.png").read_bytes()
    assert first == (tmp_path / "b" / "test" / "images" / "00002.png").read_bytes()
    assert first != (tmp_path / "c" / "test" / "images" / "00002.png").read_bytes()


def test_a_model_trained_on_make_data_is_scored_with_a_table_and_summary(tmp_path, capsys):
    data = tmp_path / "leaves"
    assert make_data(data) == 0
    # gmae_imagenet.py reads the training set as an ImageFolder: one tiny step.
    assert gmae_imagenet.main([
        "--preset", "demo", "--dataset", "imagefolder", "--data-path", str(data),
        "--img-size", "32", "--num-gaussians", "16", "--batch-size", "8", "--num-workers", "0",
        "--epochs", "1", "--max-steps", "1", "--image-every", "0",
        "--output-dir", str(tmp_path / "run"),
    ]) == 0
    checkpoint = next((tmp_path / "run").glob("checkpoint-*.pt"))
    capsys.readouterr()
    argv = ["score", "--checkpoint", str(checkpoint), "--data-dir", str(data), "--nthresh", "3",
            "--layer-counts", "2", "4", "--num-masks", "2", "--output", str(tmp_path / "t.md")]
    assert zeroshot_layers.main(argv) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert re.fullmatch(r"iou=[0-9.]+ iou_shuffled=[0-9.]+ ods=[0-9.]+ ods_shuffled=[0-9.]+",
                        lines[-1])
    table = [line for line in lines if line.startswith("| ")]
    assert [row.split(" | ")[0] for row in table][:6] == [
        "| method", "| everything", "| centre disc (mean front area)", "| Sobel on the input",
        f"| GMAE (auto: {captured.err.split('order auto: ')[1].split()[0]}, ratio 0.75, 2 masks)",
        "| GMAE, shuffled depth (mean of 5)"]
    assert "(0.34 px)" in lines[0]  # 0.0075 of a 32 px image's diagonal
    (gain,) = [line for line in lines if line.startswith("figure-ground IoU gain")]
    mean, low, high = map(float, re.findall(r"[-+][0-9.]+", gain.split(": ", 1)[1]))
    iou, iou_shuffled = map(float, re.findall(r"iou(?:_shuffled)?=([0-9.]+)", lines[-1]))
    assert mean == pytest.approx(iou - iou_shuffled, abs=2e-3) and low <= mean <= high
    everything = float(table[1].split(" | ")[1])
    fronts = (data / "test" / "front").glob("*")
    front_area = np.mean([read(path).mean() / 255 for path in fronts])
    assert everything == pytest.approx(front_area, abs=1e-3)
    assert (tmp_path / "t.md").read_text().strip() == "\n".join(lines[:-1]).strip()
    # Never over another run's file.
    with pytest.raises(SystemExit) as exit_info:
        zeroshot_layers.main(argv)
    assert exit_info.value.code == 2 and "--output" in capsys.readouterr().err


def test_score_rejects_a_folder_without_test_scenes(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        zeroshot_layers.main(["score", "--checkpoint", "none", "--data-dir", str(tmp_path)])
    assert exit_info.value.code == 2 and "make-data" in capsys.readouterr().err


def test_gain_interval_covers_the_mean_gain_and_narrows_with_more_scenes():
    rng = np.random.default_rng(1)
    assert zeroshot_layers.gain_interval(np.full(5, 0.2)) == (0.2, 0.2)
    few, many = rng.normal(0.1, 0.05, 20), rng.normal(0.1, 0.05, 2000)
    (low_few, high_few), (low_many, high_many) = map(zeroshot_layers.gain_interval, (few, many))
    assert low_few < few.mean() < high_few and low_many < 0.1 < high_many
    assert high_many - low_many < (high_few - low_few) / 5


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """A tiny make-data folder that each test copies before damaging it."""
    data = tmp_path_factory.mktemp("scenes") / "leaves"
    assert zeroshot_layers.main(["make-data", "--output-dir", str(data), "--num-train", "2",
                                 "--num-test", "2", "--size", "32"]) == 0
    return data


def resize(path: Path) -> None:
    with Image.open(path) as image:
        image.resize((40, 36)).save(path)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


@pytest.mark.parametrize(("damage", "message"), [
    (lambda test: resize(test / "images" / "00001.png"),
     r"test/images/00001.png: 36x40 pixels \(height x width\), expected 32x32, the size of "
     r".*test/images/00000.png"),
    (lambda test: resize(test / "front" / "00001.png"),
     r"test/front/00001.png: 36x40 pixels \(height x width\), expected 32x32, the size of "
     r".*test/images/00001.png"),
    (lambda test: (test / "front" / "00000.png").unlink(),
     r"test/front/00000.png: no such file \(expected a one-channel 8-bit mask"),
    (lambda test: truncate(test / "images" / "00000.png"),
     r"test/images/00000.png: expected an RGB or grey image, but it cannot be read "
     r"\(OSError: image file is truncated"),
    (lambda test: Image.new("RGB", (32, 32)).save(test / "boundaries" / "00001.png"),
     r"test/boundaries/00001.png: expected a one-channel 8-bit mask \(0 / 255\), found PIL "
     r"mode RGB \(3 channels\)"),
], ids=["image-size", "front-size", "front-missing", "image-corrupt", "mask-rgb"])
def test_score_names_a_test_file_it_cannot_use_before_any_work(scenes, tmp_path, capsys,
                                                               monkeypatch, damage, message):
    data = tmp_path / "leaves"
    shutil.copytree(scenes, data)
    damage(data / "test")
    monkeypatch.setattr(zeroshot_layers, "load_model", lambda *a, **k: pytest.fail("model built"))
    assert zeroshot_layers.main(["score", "--checkpoint", "none", "--data-dir", str(data)]) == 2
    error = capsys.readouterr().err
    assert re.search(message, error), error


def test_transparent_test_images_read_as_the_training_data_does(scenes, tmp_path):
    """RGBA (or grey) files are converted, composited onto white like training images."""
    data = tmp_path / "leaves"
    shutil.copytree(scenes, data)
    path = data / "test" / "images" / "00000.png"
    rgba = np.array(Image.open(path).convert("RGBA"))
    rgba[0, 0, 3] = 0  # one transparent pixel
    Image.fromarray(rgba).save(path)
    Image.open(data / "test" / "images" / "00001.png").convert("L").save(
        data / "test" / "images" / "00001.png")
    ids = ["00000", "00001"]
    images, fronts, _ = zeroshot_layers.read_test_set(data / "test", ids)
    original, _, _ = zeroshot_layers.read_test_set(scenes / "test", ids)
    assert images.shape == original.shape == (2, 32, 32, 3) and fronts.shape == (2, 32, 32)
    assert (images[0, 0, 0] == 255).all()
    assert np.array_equal(images[0].reshape(-1, 3)[1:], original[0].reshape(-1, 3)[1:])
    grey = np.array(Image.fromarray(original[1]).convert("L"))
    assert np.array_equal(images[1], np.repeat(grey[..., None], 3, axis=-1))


def test_score_names_a_missing_checkpoint_before_any_work(scenes, capsys):
    with pytest.raises(SystemExit) as exit_info:
        zeroshot_layers.main(["score", "--checkpoint", "missing.pt", "--data-dir", str(scenes)])
    assert exit_info.value.code == 2
    assert "--checkpoint missing.pt: no such file (expected a gmae_imagenet.py checkpoint" in (
        capsys.readouterr().err)


def test_the_docstrings_pretraining_command_parses_with_real_presets_and_flags():
    import shlex

    from splathead_recipes.config import parse_config

    text = zeroshot_layers.__doc__.replace("\\\n", " ")
    (command,) = [line for line in text.splitlines() if "gmae_imagenet.py" in line
                  and line.strip().startswith("python")]
    argv = shlex.split(command)[2:]
    assert "--preset" in argv
    config = parse_config(argv)
    assert config.data_path == "data/leaves" and config.dataset == "imagefolder"


def test_score_exits_2_naming_a_mask_ratio_that_hides_every_patch(scenes, capsys):
    argv = ["score", "--checkpoint", "none", "--img-size", "32", "--data-dir", str(scenes),
            "--mask-ratio", "0.99"]
    assert zeroshot_layers.main(argv) == 2
    assert "--mask-ratio 0.99 leaves none of the model's 16 patches visible" in (
        capsys.readouterr().err)
