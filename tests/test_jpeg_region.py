"""splathead_recipes._jpeg: a JPEG region decoded alone is the region of the whole decode."""

from __future__ import annotations

import io

import numpy as np
import pytest
import simplejpeg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from photos import photo
from PIL import Image

from splathead_recipes.crops import TrainCrop
from splathead_recipes.data import to_rgb


decode_region = pytest.importorskip("splathead_recipes._jpeg").decode_region


def encode(pixels: np.ndarray, *, grey: bool, subsampling: int, progressive: bool) -> bytes:
    image = Image.fromarray(pixels[..., 0] if grey else pixels)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90, subsampling=subsampling, progressive=progressive)
    return buffer.getvalue()


def whole_decode(data: bytes, reduction: int) -> np.ndarray:
    """What the loader decodes without the extension: simplejpeg at full size, PIL's draft mode
    at a reduction."""
    if reduction == 1:
        return simplejpeg.decode_jpeg(data, colorspace="RGB")
    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (image.width // reduction, image.height // reduction))
        return np.asarray(image.convert("RGB"))


@settings(max_examples=60, deadline=None)
@given(height=st.integers(8, 90), width=st.integers(8, 90), seed=st.integers(0, 99),
       grey=st.booleans(), subsampling=st.sampled_from([0, 1, 2]), progressive=st.booleans(),
       reduction=st.sampled_from([1, 2, 4, 8]), corners=st.tuples(*[st.floats(0, 1)] * 4))
def test_region_equals_the_whole_decode_there(height, width, seed, grey, subsampling,
                                              progressive, reduction, corners):
    data = encode(photo(height, width, seed), grey=grey, subsampling=subsampling,
                  progressive=progressive)
    whole = whole_decode(data, reduction)
    full_height, full_width = whole.shape[:2]
    top, bottom = sorted(round(c * full_height) for c in corners[:2])
    left, right = sorted(round(c * full_width) for c in corners[2:])
    top, left = min(top, full_height - 1), min(left, full_width - 1)
    bottom, right = max(bottom, top + 1), max(right, left + 1)

    pixels = decode_region(data, reduction, top, left, bottom - top, right - left)
    region = np.frombuffer(pixels, np.uint8).reshape(bottom - top, right - left, 3)
    np.testing.assert_array_equal(region, whole[top:bottom, left:right])


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), size=st.sampled_from([8, 16, 40]),
       shape=st.tuples(st.integers(40, 300), st.integers(40, 300)), hflip=st.booleans(),
       subsampling=st.sampled_from([0, 1, 2]))
def test_train_crop_is_the_same_with_and_without_region_decoding(tmp_path_factory, seed, size,
                                                                 shape, hflip, subsampling):
    # Small outputs of large photos take every draft reduction (8, 4, 2 and 1).
    path = tmp_path_factory.mktemp("jpeg") / "a.jpg"
    path.write_bytes(encode(photo(*shape, seed % 7), grey=False, subsampling=subsampling,
                            progressive=False))
    region = TrainCrop(size, (0.08, 1.0), hflip=hflip)
    whole = TrainCrop(size, (0.08, 1.0), hflip=hflip, region_decode=False)
    assert torch.equal(region.from_file(path, seed, to_rgb), whole.from_file(path, seed, to_rgb))


@settings(max_examples=60, deadline=None)
@given(edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255),
                                st.sampled_from(["set", "cut", "insert"])), min_size=1, max_size=8),
       progressive=st.booleans(), reduction=st.sampled_from([1, 2, 4, 8]))
def test_damaged_files_give_none_a_value_error_or_the_region(edits, progressive, reduction):
    # A worker must never crash on a bad file: whatever the bytes, the call returns.
    data = bytearray(encode(photo(48, 40), grey=False, subsampling=2, progressive=progressive))
    for where, value, edit in edits:
        at = int(where * len(data))
        if edit == "set":
            data[at] = value
        elif edit == "cut":
            del data[at:at + value % 32 + 1]
        else:
            data[at:at] = bytes([value]) * (value % 8 + 1)
    try:
        pixels = decode_region(bytes(data), reduction, 1, 1, 4, 4)
    except ValueError as error:  # the damaged header gives a smaller image
        assert "lie outside" in str(error)
        return
    assert pixels is None or len(pixels) == 4 * 4 * 3


def test_unreadable_data_and_other_colour_spaces_are_none():
    assert decode_region(b"not a jpeg", 1, 0, 0, 1, 1) is None
    cmyk = io.BytesIO()
    Image.fromarray(photo(16, 16)).convert("CMYK").save(cmyk, "JPEG")
    assert decode_region(cmyk.getvalue(), 1, 0, 0, 16, 16) is None


def test_a_warning_in_the_rows_read_is_none():
    data = encode(photo(64, 64), grey=False, subsampling=2, progressive=False)
    scan = data.index(b"\xff\xda")  # the scan header; its entropy-coded data follows
    broken = data[:scan + 200] + b"\xff\xd0" + data[scan + 200:]  # a restart marker out of place
    assert decode_region(data, 1, 0, 0, 64, 64) is not None
    assert decode_region(broken, 1, 0, 0, 64, 64) is None


@pytest.mark.parametrize(("arguments", "message"), [
    ((3, 0, 0, 4, 4), "reduction must be 1, 2, 4 or 8, got 3"),
    ((1, -1, 0, 4, 4), "top=-1"),
    ((1, 0, 0, 0, 4), "height=0"),
    ((1, 10, 0, 7, 4), "rows 10:17, columns 0:4 lie outside the 16x16 image"),
    ((2, 0, 6, 2, 4), "columns 6:10 lie outside the 8x8 image"),
])
def test_bad_regions_are_value_errors_that_say_what(arguments, message):
    data = encode(photo(16, 16), grey=False, subsampling=2, progressive=False)
    with pytest.raises(ValueError, match=message):
        decode_region(data, *arguments)


def test_a_truncated_file_is_still_refused_whatever_the_crop(tmp_path):
    # Decoding stops below the crop, so a cut file is caught by its missing end marker instead.
    data = encode(photo(256, 256), grey=False, subsampling=2, progressive=False)
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) * 3 // 4])
    for seed in range(4):
        with pytest.raises(OSError, match="cut.jpg"):
            TrainCrop(32, (0.08, 1.0)).from_file(tmp_path / "cut.jpg", seed, to_rgb)
