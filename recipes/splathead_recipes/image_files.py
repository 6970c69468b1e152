"""The zero-shot recipes' input images and masks, read with errors that name the file.

A test set is read whole before any model work: :func:`read_rgb` and :func:`read_mask` raise
:class:`ImageFileError` naming the file, what it holds and what was expected (missing,
unreadable, a mask that is not one channel), and :func:`same_size` names a file whose size
differs from the one it must match. Transparent images are composited onto white, as the
training data is (:func:`splathead_recipes.data.to_rgb`), so a test image reads as the model
saw its training images.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from splathead_recipes.data import to_rgb


class ImageFileError(ValueError):
    """An input image or mask that cannot be used; the message names the file."""


def _open(path: Path, meaning: str) -> Image.Image:
    """``path`` decoded in full (a truncated file fails here, not later)."""
    if not path.is_file():
        raise ImageFileError(f"{path}: no such file (expected {meaning})")
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImageFileError(f"{path}: expected {meaning}, but it cannot be read "
                             f"({type(error).__name__}: {error})") from error


def read_rgb(path: Path) -> np.ndarray:
    """``[h w 3]`` uint8 RGB of an image file (transparency composited onto white)."""
    return np.array(to_rgb(_open(path, "an RGB or grey image")))


def read_mask(path: Path) -> np.ndarray:
    """``[h w]`` bool of a one-channel 8-bit mask file (0 / 255; above 127 is inside)."""
    image = _open(path, "a one-channel 8-bit mask (0 / 255)")
    if image.mode not in ("L", "1"):
        raise ImageFileError(f"{path}: expected a one-channel 8-bit mask (0 / 255), found "
                             f"PIL mode {image.mode} ({len(image.getbands())} channels)")
    return np.asarray(image.convert("L")) > 127


def same_size(arrays: Sequence[np.ndarray], paths: Sequence[Path], *,
              like: Sequence[np.ndarray] | None = None,
              like_paths: Sequence[Path] | None = None) -> np.ndarray:
    """``arrays`` stacked: ``[n h w ...]``. Each must have the height and width of the first, or
    with ``like``, of the array at its index there (a mask and its image);
    :class:`ImageFileError` names the first file that does not, both sizes and the file it
    should match."""
    references = like if like is not None else [arrays[0]] * len(arrays)
    reference_paths = like_paths if like_paths is not None else [paths[0]] * len(paths)
    for array, path, reference, reference_path in zip(arrays, paths, references,
                                                      reference_paths, strict=True):
        if array.shape[:2] != reference.shape[:2]:
            raise ImageFileError(
                f"{path}: {array.shape[0]}x{array.shape[1]} pixels (height x width), expected "
                f"{reference.shape[0]}x{reference.shape[1]}, the size of {reference_path}")
    return np.stack(arrays)
