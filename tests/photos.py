"""Test images that JPEG-compress like photos."""

from __future__ import annotations

import numpy as np
from PIL import Image


def photo(height: int = 480, width: int = 640, seed: int = 0) -> np.ndarray:
    """A smooth colour image, uint8 ``[height width 3]``."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return np.array(Image.fromarray(small).resize((width, height), Image.BICUBIC))
