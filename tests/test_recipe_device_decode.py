"""--gpu-decode: workers send JPEG files and crop boxes, the training process decodes them."""

from __future__ import annotations

import dataclasses
import json
import math

import gmae_imagenet as recipe
import gmae_linprobe
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from photos import photo
from PIL import Image

from splathead_recipes.config import PRESETS, ConfigError, validate
from splathead_recipes.crops import TrainCrop
from splathead_recipes.data import build_dataset, build_loader, to_rgb
from splathead_recipes.device_decode import EncodedBatch, EncodedCrop, EncodedTrainCrop


def image_folder(root, count: int = 6):
    """``root/train/a/``: plain JPEGs of several sizes, one CMYK JPEG and one PNG (the last two
    are cropped by the workers even with --gpu-decode)."""
    folder = root / "train" / "a"
    folder.mkdir(parents=True)
    for index in range(count):
        Image.fromarray(photo(70 + 9 * index, 90 + 5 * index, index)).save(
            folder / f"{index}.jpg", quality=95)
    Image.fromarray(photo(80, 100, 7)).convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    Image.fromarray(photo(80, 100, 8)).save(folder / "png.png")
    return folder


def loader_images(config, workers: int = 2) -> tuple[torch.Tensor, int]:
    """Every crop of one epoch, moved to (decoded on) the CPU, and the number replaced."""
    config = dataclasses.replace(config, num_workers=workers)
    loader, _ = build_loader(config, build_dataset(config), rank=0, world_size=1,
                             pin_memory=False)
    batches = [batch.to(torch.device("cpu")) for batch in loader]
    return torch.cat([batch.images for batch in batches]), sum(b.num_skipped for b in batches)


@pytest.fixture
def config(tmp_path):
    image_folder(tmp_path)
    return dataclasses.replace(PRESETS["demo"], dataset="imagefolder", data_path=str(tmp_path),
                               img_size=32, batch_size=4, jpeg_draft=False)


def test_device_decoded_batches_equal_the_workers_crops(config):
    # On the CPU the device decoder is libjpeg-turbo too, so the pixels must match exactly:
    # the same files, boxes, flips and resize, whichever process decodes.
    decoded, skipped = loader_images(dataclasses.replace(config, gpu_decode=True))
    expected, _ = loader_images(config)
    assert skipped == 0
    assert torch.equal(decoded, expected)


def test_batches_carry_files_for_plain_jpegs_and_pixels_for_the_rest(config):
    dataset = build_dataset(dataclasses.replace(config, gpu_decode=True))
    samples = {path.rsplit("/", 1)[-1]: dataset[(index, 0)].image
               for index, (path, _) in enumerate(dataset.samples)}
    assert isinstance(samples["0.jpg"], EncodedCrop)
    with open(f"{dataset.root}/a/0.jpg", "rb") as file:
        assert bytes(samples["0.jpg"].data.numpy()) == file.read()
    for name in ("cmyk.jpg", "png.png"):
        assert samples[name].dtype == torch.uint8 and samples[name].shape == (3, 32, 32)


@pytest.fixture(scope="module")
def jpeg_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("jpegs")
    for index in range(3):
        Image.fromarray(photo(40 + 8 * index, 56, index)).save(folder / f"{index}.jpg", quality=90)
    return sorted(folder.glob("*.jpg"))


@settings(max_examples=25, deadline=None)
@given(picks=st.lists(st.tuples(st.booleans(), st.integers(0, 2), st.integers(0, 2**31)),
                      min_size=1, max_size=6).filter(lambda picks: any(p[0] for p in picks)))
def test_a_decoded_batch_holds_every_sample_at_its_place(jpeg_files, picks):
    # Any mix of files sent encoded and crops the workers made comes back in batch order, each
    # crop what TrainCrop makes of its file and seed (decoded in full: no draft on the device).
    crop = TrainCrop(16, (0.08, 1.0), jpeg_draft=False)
    encoder = EncodedTrainCrop(crop)
    samples = [encoder.from_file(jpeg_files[file], seed, to_rgb) if encoded
               else crop.from_file(jpeg_files[file], seed, to_rgb)
               for encoded, file, seed in picks]
    images, replaced = EncodedBatch.pack(samples).decode(torch.device("cpu"))
    expected = torch.stack([crop.from_file(jpeg_files[file], seed, to_rgb)
                            for _, file, seed in picks])
    assert replaced == 0 and torch.equal(images, expected)


def test_an_undecodable_jpeg_is_replaced_by_another_crop_and_counted(tmp_path, caplog):
    crop = TrainCrop(32, (0.08, 1.0))
    for index in range(3):
        Image.fromarray(photo(60, 80, index)).save(tmp_path / f"{index}.jpg", quality=95)
    data = (tmp_path / "1.jpg").read_bytes()
    (tmp_path / "1.jpg").write_bytes(data[: len(data) // 2])  # the header reads, the data ends
    encoder = EncodedTrainCrop(crop)
    samples = [encoder.from_file(tmp_path / f"{index}.jpg", index, to_rgb) for index in range(3)]
    images, replaced = EncodedBatch.pack(samples).decode(torch.device("cpu"))
    assert replaced == 1 and "undecodable" in caplog.text
    assert torch.equal(images[0], crop.from_file(tmp_path / "0.jpg", 0, to_rgb))
    assert torch.equal(images[2], crop.from_file(tmp_path / "2.jpg", 2, to_rgb))
    assert any(torch.equal(images[1], images[other]) for other in (0, 2))


def test_a_batch_of_undecodable_jpegs_is_an_error(tmp_path):
    Image.fromarray(photo(60, 80)).save(tmp_path / "a.jpg", quality=95)
    data = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "a.jpg").write_bytes(data[: len(data) // 2])
    sample = EncodedTrainCrop(TrainCrop(32, (0.08, 1.0))).from_file(tmp_path / "a.jpg", 0, to_rgb)
    with pytest.raises(RuntimeError, match="none of the batch's 1 JPEG files decodes"):
        EncodedBatch.pack([sample]).decode(torch.device("cpu"))


@pytest.mark.parametrize(("changes", "message"), [
    ({"device": "cpu"}, "--gpu-decode needs CUDA"),
    ({"device": "auto"}, "--gpu-decode needs CUDA"),
])
def test_gpu_decode_needs_cuda(config, changes, message):
    with pytest.raises(ConfigError, match=message):
        validate(dataclasses.replace(config, gpu_decode=True, **changes), world_size=1,
                 cuda_available=False)


def test_gpu_decode_needs_an_image_folder(config):
    with pytest.raises(ConfigError, match="--gpu-decode reads JPEG files"):
        validate(dataclasses.replace(config, gpu_decode=True, dataset="photos", device="cuda"),
                 world_size=1, cuda_available=True)


@pytest.mark.cuda
def test_nvjpeg_crops_are_within_a_few_levels_of_the_workers(config):
    dataset = build_dataset(dataclasses.replace(config, gpu_decode=True))
    samples = [dataset[(index, index)].image for index in range(len(dataset))]
    images, replaced = EncodedBatch.pack(samples).decode(torch.device("cuda"))
    expected, _ = EncodedBatch.pack(samples).decode(torch.device("cpu"))
    assert replaced == 0 and images.device.type == "cuda" and images.dtype == torch.uint8
    difference = (images.cpu().float() - expected.float()).abs()
    mse = difference.pow(2).mean().item()
    assert difference.mean() < 2 and (mse == 0 or 10 * math.log10(255**2 / mse) > 35)


# The pretraining recipe at 32 px with 16 Gaussians on ``image_folder``'s eight files.
TINY = ["--preset", "demo", "--img-size", "32", "--num-gaussians", "16", "--batch-size", "4",
        "--dataset", "imagefolder", "--log-every", "1", "--image-every", "0", "--eval-every", "0",
        "--gpu-decode"]


def test_the_recipe_refuses_gpu_decode_on_cpu_before_training(tmp_path, capsys, caplog):
    image_folder(tmp_path / "data")
    output = tmp_path / "out"
    assert recipe.main([*TINY, "--data-path", str(tmp_path / "data"), "--device", "cpu",
                        "--output-dir", str(output)]) == 2
    assert "--gpu-decode needs CUDA" in capsys.readouterr().err + caplog.text
    assert not output.exists() or not any(output.iterdir())


@pytest.mark.cuda
def test_the_recipe_pretrains_on_gpu_decoded_batches(tmp_path):
    image_folder(tmp_path / "data")
    assert recipe.main([*TINY, "--data-path", str(tmp_path / "data"), "--device", "cuda",
                        "--num-workers", "2", "--epochs", "2",
                        "--output-dir", str(tmp_path / "out")]) == 0
    records = [json.loads(line) for line in
               (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    losses = [record["loss"] for record in records if "loss" in record]
    assert len(losses) == 4 and all(math.isfinite(loss) for loss in losses)


def jpeg_copy(task, root):
    """``task``'s ImageFolder (PNG files) again as JPEG files under ``root``."""
    for png in task.rglob("*.png"):
        jpeg = root / png.relative_to(task).with_suffix(".jpg")
        jpeg.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(png) as image:
            image.convert("RGB").save(jpeg, quality=95)
    return root


def probe_flags(data, output_dir, *more):
    return ["--preset", "demo", "--data-path", str(data), "--model", "gmae_vit_tiny",
            "--patch-size", "8", "--batch-size", "8", "--num-workers", "2", "--epochs", "2",
            "--warmup-epochs", "1", "--output-dir", str(output_dir), "--gpu-decode", *more]


def test_the_linear_probe_refuses_gpu_decode_on_cpu_before_work(tiny_task, tmp_path, capsys):
    assert gmae_linprobe.main(probe_flags(tiny_task, tmp_path / "out", "--device", "cpu")) == 2
    assert "--gpu-decode needs CUDA" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.cuda
def test_the_linear_probe_trains_on_gpu_decoded_batches(tiny_task, tmp_path, capsys):
    data = jpeg_copy(tiny_task, tmp_path / "jpegs")
    assert gmae_linprobe.main(probe_flags(data, tmp_path / "out", "--device", "cuda",
                                          "--precision", "bf16")) == 0
    assert "top1=" in capsys.readouterr().out
