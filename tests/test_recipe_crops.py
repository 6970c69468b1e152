"""The training crop: torchvision's augmentation drawn per sample, JPEG draft decoding, uint8."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from photos import photo
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision import transforms
from torchvision.transforms import InterpolationMode, RandomResizedCrop, v2

from splathead_recipes.config import PRESETS
from splathead_recipes import crops
from splathead_recipes.crops import (CentreCrop, CropBox, TrainCrop, decode_rgb, jpeg_reduction,
                                     normalize, random_crop_box, region_decode, tf_crop_box,
                                     whole_decode)
from splathead_recipes.data import build_dataset, build_loader, to_rgb, train_crop


def any_image_and_scale(test):
    """``test(seed, height, width, scale)`` over images up to 600 px and any crop scale."""
    return settings(max_examples=60, deadline=None)(given(
        seed=st.integers(0, 2**62), height=st.integers(1, 600), width=st.integers(1, 600),
        scale=st.tuples(st.floats(0.01, 1.0), st.floats(0.0, 1.0)).map(
            lambda low_span: (low_span[0], low_span[0] + low_span[1] * (1 - low_span[0]))))(test))


@any_image_and_scale
def test_crop_box_is_torchvisions_for_the_same_seed(seed, height, width, scale):
    box = random_crop_box(torch.Generator().manual_seed(seed), height=height, width=width,
                          scale=scale)
    assert tuple(box) == torchvision_box(seed, height, width, scale)


def torchvision_box(seed: int, height: int, width: int, scale: tuple[float, float]) -> tuple:
    """torchvision's RandomResizedCrop box after ``torch.manual_seed(seed)``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return tuple(RandomResizedCrop.get_params(torch.empty(3, height, width), scale,
                                                  [3 / 4, 4 / 3]))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**62), height=st.integers(60, 600), aspect=st.floats(0.75, 4 / 3),
       low=st.floats(0.01, 0.5), span=st.floats(0.0, 1.0))
def test_tf_crop_box_is_torchvisions_where_its_first_draw_fits(seed, height, aspect, low, span):
    """Scales up to a half on images of aspect 3/4 to 4/3: every drawn side fits the image, so
    torchvision accepts its first draw, and the TF-style crop must give the same box."""
    width = int(round(height * aspect))
    scale = (low, low + span * (0.5 - low))
    box = tf_crop_box(torch.Generator().manual_seed(seed), height=height, width=width,
                      scale=scale)
    assert tuple(box) == torchvision_box(seed, height, width, scale)


@any_image_and_scale
def test_tf_crop_box_clips_its_one_draw_to_the_image(seed, height, width, scale):
    box = tf_crop_box(torch.Generator().manual_seed(seed), height=height, width=width,
                      scale=scale)
    assert 1 <= box.height <= height and 1 <= box.width <= width
    assert 0 <= box.top <= height - box.height and 0 <= box.left <= width - box.width


def test_a_tf_style_train_crop_clips_where_torchvisions_falls_back_to_the_centre():
    """The whole area on a 400 x 100 image: no draw fits (every width is at least
    sqrt(40000 x 3/4) = 173); torchvision's fallback is the centre crop at aspect 3/4
    (133 x 100), the TF-style crop keeps the image's width and the drawn height
    sqrt(40000 / aspect), 173 to 231."""
    crops = {style: TrainCrop(48, (1.0, 1.0), hflip=False, style=style)
             for style in ("torchvision", "tf")}
    for seed in range(4):
        boxes = {style: crop.draw(seed, height=400, width=100)[0] for style, crop in crops.items()}
        assert boxes["torchvision"] == (133, 0, 133, 100)
        assert boxes["tf"].width == 100 and 173 <= boxes["tf"].height <= 231
    assert train_crop(PRESETS["paper"]).style == "tf"


@pytest.mark.parametrize("seed", range(8))
def test_crop_of_pixels_equals_torchvision_v2_transforms_seeded_globally(seed):
    pixels = torch.from_numpy(photo(120, 90)).permute(2, 0, 1).contiguous()
    reference = v2.Compose([
        v2.RandomResizedCrop(48, scale=(0.08, 1.0), interpolation=InterpolationMode.BICUBIC,
                             antialias=True),
        v2.RandomHorizontalFlip(),
    ])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        expected = reference(pixels)
    assert torch.equal(TrainCrop(48, (0.08, 1.0)).from_pixels(pixels, seed), expected)


def test_normalize_equals_totensor_and_normalize():
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    expected = v2.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)(images.float() / 255)
    assert torch.equal(normalize(images), expected)


def test_normalize_rejects_float_images():
    with pytest.raises(Exception, match="images"):
        normalize(torch.zeros(1, 3, 4, 4))


@given(height=st.integers(1, 4000), width=st.integers(1, 4000), size=st.integers(1, 512))
def test_jpeg_reduction_is_the_largest_that_keeps_the_crop_at_least_the_output_size(
        height, width, size):
    reduction = jpeg_reduction(CropBox(0, 0, height, width), size)
    assert reduction in (1, 2, 4, 8)
    assert reduction == 1 or min(height, width) >= reduction * size
    assert reduction == 8 or min(height, width) < 2 * reduction * size


def save_jpeg(path, pixels: np.ndarray) -> None:
    Image.fromarray(pixels).save(path, quality=95)


def test_jpeg_crop_without_draft_decodes_as_pil_does(tmp_path):
    save_jpeg(tmp_path / "a.jpg", photo())
    crop = TrainCrop(64, (0.5, 1.0), jpeg_draft=False)
    with Image.open(tmp_path / "a.jpg") as image:
        pixels = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(crop.from_file(tmp_path / "a.jpg", 3, to_rgb),
                       crop.from_pixels(pixels.contiguous(), 3))


def test_draft_decoding_changes_large_crops_only_slightly(tmp_path):
    save_jpeg(tmp_path / "a.jpg", photo())
    draft, full = TrainCrop(48, (0.5, 1.0)), TrainCrop(48, (0.5, 1.0), jpeg_draft=False)
    for seed in range(4):
        # Crops of half the image or more are >= 4x the output size: decoded at 1/4 or less.
        with_draft = draft.from_file(tmp_path / "a.jpg", seed, to_rgb).float()
        without = full.from_file(tmp_path / "a.jpg", seed, to_rgb).float()
        mse = (with_draft - without).pow(2).mean().item()
        assert 0 < mse and 10 * math.log10(255**2 / mse) > 30


def pil_pixels(path) -> torch.Tensor:
    with Image.open(path) as image:
        return torch.from_numpy(np.array(to_rgb(image))).permute(2, 0, 1).contiguous()


@pytest.mark.parametrize("kind", ["grey", "cmyk", "warning"])
def test_jpegs_off_the_plain_path_are_cropped_from_pils_pixels(tmp_path, kind):
    # Grey decodes in libjpeg-turbo, CMYK goes to PIL, and so does a file libjpeg-turbo warns
    # about (bytes before the end marker) that PIL decodes all the same.
    pixels = photo(90, 120)
    image = {"grey": Image.fromarray(pixels[..., 0]), "cmyk": Image.fromarray(pixels).convert(
        "CMYK"), "warning": Image.fromarray(pixels)}[kind]
    image.save(tmp_path / "a.jpg", quality=95)
    if kind == "warning":
        data = (tmp_path / "a.jpg").read_bytes()
        (tmp_path / "a.jpg").write_bytes(data[:-2] + bytes(5) + data[-2:])
    crop = TrainCrop(32, (0.08, 1.0), jpeg_draft=False)
    for seed in range(3):
        assert torch.equal(crop.from_file(tmp_path / "a.jpg", seed, to_rgb),
                           crop.from_pixels(pil_pixels(tmp_path / "a.jpg"), seed))
    assert torch.equal(decode_rgb(tmp_path / "a.jpg", to_rgb), pil_pixels(tmp_path / "a.jpg"))


def test_png_files_are_cropped_like_their_pixels(tmp_path):
    pixels = photo(100, 120)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    crop = TrainCrop(32, (0.08, 1.0))
    expected = crop.from_pixels(torch.from_numpy(pixels).permute(2, 0, 1).contiguous(), 5)
    assert torch.equal(crop.from_file(tmp_path / "a.png", 5, to_rgb), expected)


def test_truncated_jpeg_data_is_an_os_error(tmp_path):
    save_jpeg(tmp_path / "a.jpg", photo())
    data = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError, match="cut.jpg"):
        TrainCrop(32, (0.08, 1.0), jpeg_draft=False).from_file(tmp_path / "cut.jpg", 0, to_rgb)


def test_image_folder_batches_are_uint8_until_moved_to_the_device(tmp_path):
    folder = tmp_path / "train" / "a"
    folder.mkdir(parents=True)
    for index in range(4):
        save_jpeg(folder / f"{index}.jpg", photo(60 + index, 80))
    config = dataclasses.replace(PRESETS["demo"], dataset="imagefolder",
                                 data_path=str(tmp_path), img_size=32, batch_size=4)
    loader, _ = build_loader(config, build_dataset(config), rank=0, world_size=1,
                             pin_memory=False)
    (batch,) = list(loader)
    assert batch.images.dtype == torch.uint8 and batch.images.shape == (4, 3, 32, 32)
    moved = batch.to(torch.device("cpu"))
    assert moved.images.dtype == torch.float32
    assert torch.equal(moved.images, normalize(batch.images))


def test_image_folder_crops_are_the_same_with_and_without_workers(tmp_path):
    folder = tmp_path / "train" / "a"
    folder.mkdir(parents=True)
    for index in range(8):
        save_jpeg(folder / f"{index}.jpg", photo(300, 400 + index))
    config = dataclasses.replace(PRESETS["demo"], dataset="imagefolder",
                                 data_path=str(tmp_path), img_size=32, batch_size=4)
    dataset = build_dataset(config)
    crops = {}
    for workers in (0, 2):
        loader, _ = build_loader(dataclasses.replace(config, num_workers=workers), dataset,
                                 rank=0, world_size=1, pin_memory=False)
        crops[workers] = torch.cat([batch.images for batch in loader])
    assert torch.equal(crops[0], crops[2])


def test_centre_crop_is_maes_evaluation_crop_within_two_levels(tmp_path):
    pixels = photo(90, 120)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    reference = transforms.Compose([
        transforms.Resize(int(40 / 0.875), interpolation=InterpolationMode.BICUBIC),
        transforms.CenterCrop(40),
        transforms.PILToTensor(),
    ])(Image.fromarray(pixels))
    crop = CentreCrop(40).from_file(tmp_path / "a.png", 0, to_rgb)
    assert crop.shape == (3, 40, 40)
    assert (crop.int() - reference.int()).abs().max() <= 2


def test_decode_strategies_are_chosen_once_in_order(monkeypatch):
    # The extension's region decode first where it is built and wanted, libjpeg-turbo's whole
    # decode always; a crop built without the extension never tries it.
    assert TrainCrop(32, (0.5, 1.0), region_decode=False).strategies == (whole_decode,)
    monkeypatch.setattr(crops, "decode_region", None)
    assert TrainCrop(32, (0.5, 1.0)).strategies == (whole_decode,)
    monkeypatch.setattr(crops, "decode_region", lambda *args: None)
    assert TrainCrop(32, (0.5, 1.0)).strategies == (region_decode, whole_decode)
