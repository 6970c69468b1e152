"""The procedural labelled task: an ImageFolder that is the same for the same seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision.datasets import ImageFolder

from splathead_recipes import shapes_task


def _write(root: Path, seed: int = 0) -> Path:
    shapes_task.write_shapes_task(root, train_per_class=3, val_per_class=2, img_size=32, seed=seed)
    return root


def test_writes_an_image_folder_with_train_and_val_of_every_class(tmp_path):
    root = _write(tmp_path / "shapes")
    train, val = ImageFolder(root / "train"), ImageFolder(root / "val")
    assert train.classes == val.classes == sorted(shapes_task.CLASSES)
    assert np.bincount(train.targets).tolist() == [3, 3, 3, 3]
    assert np.bincount(val.targets).tolist() == [2, 2, 2, 2]
    image, _ = train[0]
    assert (image.mode, image.size) == ("RGB", (32, 32))


def test_the_same_seed_writes_the_same_bytes(tmp_path):
    first, second = _write(tmp_path / "a"), _write(tmp_path / "b")
    files = sorted(path.relative_to(first) for path in first.rglob("*.png"))
    assert files
    assert all((first / name).read_bytes() == (second / name).read_bytes() for name in files)


def test_another_seed_draws_other_images(tmp_path):
    first, second = _write(tmp_path / "a", seed=0), _write(tmp_path / "b", seed=1)
    name = Path("train/circle/00000.png")
    assert (first / name).read_bytes() != (second / name).read_bytes()


def test_train_and_val_images_differ(tmp_path):
    root = _write(tmp_path / "shapes")
    train = np.asarray(Image.open(root / "train/square/00000.png"))
    val = np.asarray(Image.open(root / "val/square/00000.png"))
    assert not np.array_equal(train, val)


def test_refuses_to_write_into_a_folder_that_holds_files(tmp_path):
    (tmp_path / "run.log").write_text("someone else's file")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        _write(tmp_path)
    assert (tmp_path / "run.log").read_text() == "someone else's file"


def test_command_line_writes_the_task_and_reports_it(tmp_path, capsys):
    assert shapes_task.main(["--output", str(tmp_path / "s"), "--train-per-class", "1",
                             "--val-per-class", "1", "--img-size", "16"]) == 0
    assert len(list((tmp_path / "s").rglob("*.png"))) == 8
    assert "wrote 4 classes" in capsys.readouterr().out
