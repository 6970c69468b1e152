"""The training crop for loader workers: RandomResizedCrop + flip, seeded per sample, uint8 out.

It draws exactly what torchvision's ``RandomResizedCrop`` (then ``RandomHorizontalFlip``) draws
(or with ``style="tf"`` the one-draw crop of MAE's code, :func:`tf_crop_box`) from torch's
global generator seeded with the sample's seed, but from a private
:class:`torch.Generator`, so a worker need not save and restore the global state per sample.
Where the time goes instead:

- JPEGs decode with libjpeg-turbo. Where splathead's extension ``splathead_recipes._jpeg`` is built
  (it links the system's libjpeg-turbo) only the crop's rows and columns are decoded, and
  decoding stops below the crop: the same pixels as a whole decode, 15-30% less decoding on
  the recipe's crops. Otherwise ``simplejpeg`` decodes the whole image. ``simplejpeg`` also reads
  the header (about a microsecond). The crop is resized as a channels-last uint8 tensor
  (torchvision's uint8 bicubic with antialiasing: mostly within one level of PIL's, a few
  pixels at strong edges up to about 15 levels away; ``benchmarks/data.py`` measures it).
  What libjpeg-turbo does not decode as it stands (CMYK, unusual subsampling, files with
  warnings) and other formats go through PIL, which decides what is unreadable.
- JPEG draft decoding: when the crop is at least ``2**k`` times the output size on both sides,
  libjpeg decodes at ``1 / 2**k`` of the size (its scaled inverse DCT, ``k <= 3``; the
  extension's crop, or PIL's draft mode) and PIL resizes the crop from there, with the box at
  sub-pixel precision. The pixels change slightly (the DCT-domain downscale stands in for the
  first factor ``2**k`` of the bicubic filter's antialiasing): ``benchmarks/data.py`` measures
  by how much. Smaller crops decode in full.
- uint8 output: the batch crosses processes and the host-device link at a quarter of float32's
  size, and :func:`normalize` turns it into the model's input on the device.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import simplejpeg
import torch
from jaxtyping import UInt8
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from splathead.typing import Float, Tensor, typecheck

try:
    from splathead_recipes._jpeg import decode_region
except ImportError:  # built without libjpeg-turbo's headers: whole images are decoded
    decode_region = None

ASPECT_RATIOS = (3 / 4, 4 / 3)  # torchvision's RandomResizedCrop default, the paper's
JPEG_REDUCTIONS = (8, 4, 2)  # the scales libjpeg decodes at (draft decoding)
JPEG_END = b"\xff\xd9"  # the end-of-image marker
TURBO_COLORSPACES = ("YCbCr", "Gray")  # JPEGs that libjpeg-turbo turns into RGB as PIL does


class CropBox(NamedTuple):
    """A crop in full-image pixels, as torchvision's ``RandomResizedCrop.get_params`` gives it."""

    top: int
    left: int
    height: int
    width: int


def random_crop_box(generator: torch.Generator, *, height: int, width: int,
                    scale: tuple[float, float],
                    ratio: tuple[float, float] = ASPECT_RATIOS) -> CropBox:
    """torchvision's ``RandomResizedCrop.get_params`` drawing from ``generator``.

    The same draws in the same order, so it returns what torchvision returns after
    ``torch.manual_seed(s)`` when ``generator`` is seeded with ``s`` (a test holds that).
    """
    area = height * width
    log_ratio = _log_ratio(ratio)
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1],
                                                  generator=generator).item())
        crop_width = int(round(math.sqrt(target_area * aspect)))
        crop_height = int(round(math.sqrt(target_area / aspect)))
        if 0 < crop_width <= width and 0 < crop_height <= height:
            top = int(torch.randint(0, height - crop_height + 1, size=(1,), generator=generator))
            left = int(torch.randint(0, width - crop_width + 1, size=(1,), generator=generator))
            return CropBox(top, left, crop_height, crop_width)
    # Fallback to a central crop at the nearest allowed aspect ratio.
    in_ratio = width / height
    if in_ratio < min(ratio):
        crop_width, crop_height = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        crop_width, crop_height = int(round(height * max(ratio))), height
    else:
        crop_width, crop_height = width, height
    return CropBox((height - crop_height) // 2, (width - crop_width) // 2, crop_height, crop_width)


def tf_crop_box(generator: torch.Generator, *, height: int, width: int,
                scale: tuple[float, float], ratio: tuple[float, float] = ASPECT_RATIOS) -> CropBox:
    """The TF-style crop of MAE's code and the GMAE authors': one draw of area and aspect ratio
    (torchvision's first try, the same draws in the same order), each side then clipped to the
    image (and kept at least 1 px), no retries and no centre-crop fallback. Where torchvision's
    first try fits, both give the same box; where a side is clipped, the aspect ratio changes.
    """
    area = height * width
    log_ratio = _log_ratio(ratio)
    target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
    aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1],
                                              generator=generator).item())
    crop_width = min(max(1, int(round(math.sqrt(target_area * aspect)))), width)
    crop_height = min(max(1, int(round(math.sqrt(target_area / aspect)))), height)
    top = int(torch.randint(0, height - crop_height + 1, size=(1,), generator=generator))
    left = int(torch.randint(0, width - crop_width + 1, size=(1,), generator=generator))
    return CropBox(top, left, crop_height, crop_width)


CropStyle = Literal["torchvision", "tf"]
"""How a training crop's box is drawn: :func:`random_crop_box` or :func:`tf_crop_box`."""
CROP_BOXES = {"torchvision": random_crop_box, "tf": tf_crop_box}


@functools.cache
def _log_ratio(ratio: tuple[float, float]) -> tuple[float, float]:
    # torchvision's float32 logarithms, computed once per ratio.
    low, high = torch.log(torch.tensor(ratio)).tolist()
    return low, high


def jpeg_reduction(box: CropBox, size: int) -> int:
    """The largest libjpeg scale-down (8, 4, 2 or 1) that keeps ``box`` at least ``size`` px."""
    return next((factor for factor in JPEG_REDUCTIONS
                 if min(box.height, box.width) >= factor * size), 1)


def turbo_jpeg_size(data: bytes) -> tuple[int, int] | None:
    """``(height, width)`` of a JPEG that libjpeg-turbo decodes to RGB by itself, from its header;
    ``None`` for anything else (other formats, CMYK, subsampling it does not name)."""
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    return (height, width) if colorspace in TURBO_COLORSPACES else None


def decode_turbo_jpeg(data: bytes) -> torch.Tensor | None:
    """A JPEG's pixels as uint8 RGB ``[3 h w]`` (a channels-last view), or ``None`` where
    libjpeg-turbo reports any problem, even one it could decode past: PIL then decides."""
    try:
        pixels = simplejpeg.decode_jpeg(data, colorspace="RGB")
    except ValueError:
        return None
    return torch.from_numpy(pixels).permute(2, 0, 1)


@contextlib.contextmanager
def open_image(data: bytes, path: str | Path) -> Iterator[Image.Image]:
    """PIL's image of a file's bytes (the header read, the pixels decoded on first use).

    Raises:
        OSError: PIL cannot read the data (the error names ``path``).
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            yield image
    except OSError as error:
        raise OSError(f"cannot decode {path}: {error}") from error


def decode_rgb(path: str | Path, to_rgb: Callable[[Image.Image], Image.Image]) -> torch.Tensor:
    """An image file as uint8 RGB ``[3 h w]``: libjpeg-turbo for plain JPEGs, otherwise PIL with
    ``to_rgb`` converting to 8-bit RGB."""
    data = Path(path).read_bytes()
    if turbo_jpeg_size(data) is not None and (pixels := decode_turbo_jpeg(data)) is not None:
        return pixels
    with open_image(data, path) as image:
        return F.pil_to_tensor(to_rgb(image))


DecodeStrategy = Callable[["TrainCrop", bytes, tuple[int, int], CropBox, int], "Tensor | None"]
"""``strategy(crop, data, (height, width), box, reduction)``: the unflipped crop of a plain JPEG
(libjpeg-turbo reads it, see :func:`turbo_jpeg_size`) at ``reduction``, or None to pass it on to
the next strategy. Each gives the pixels of its whole-image counterpart."""


def region_decode(crop: TrainCrop, data: bytes, size: tuple[int, int], box: CropBox,
                  reduction: int) -> Tensor | None:
    """The crop from the decoded box alone (``splathead_recipes._jpeg``); None for a file
    without an end marker (a truncated file: the whole decode decides) or where libjpeg refused
    or warned."""
    if data.rfind(JPEG_END, -64) < 0:
        return None
    if reduction == 1:
        if (pixels := decode_region(data, 1, *box)) is None:
            return None
        pixels = torch.frombuffer(pixels, dtype=torch.uint8).view(box.height, box.width, 3)
        return crop.crop(pixels.permute(2, 0, 1), box._replace(top=0, left=0), flip=False)
    # The reduced box with the rows and columns PIL's bicubic filter reaches beyond it
    # (2 px of support at the box's scale, one more for rounding).
    height, width = (-(-side // reduction) for side in size)
    margin = math.ceil(2 * max(box.height, box.width) / reduction / crop.size) + 1
    top, left = box.top / reduction, box.left / reduction
    bottom, right = top + box.height / reduction, left + box.width / reduction
    row0, col0 = max(int(top) - margin, 0), max(int(left) - margin, 0)
    row1, col1 = (min(math.ceil(bottom) + margin, height),
                  min(math.ceil(right) + margin, width))
    if (pixels := decode_region(data, reduction, row0, col0, row1 - row0,
                                col1 - col0)) is None:
        return None
    # Pasted where it lies in the reduced image, so that PIL computes its filter with the
    # same floating-point numbers as on the whole image (outside the region: never read).
    image = Image.new("RGB", (width, height))
    image.paste(Image.frombuffer("RGB", (col1 - col0, row1 - row0), pixels, "raw", "RGB", 0,
                                 1), (col0, row0))
    return crop.reduced_crop(image, box, reduction)


def whole_decode(crop: TrainCrop, data: bytes, size: tuple[int, int], box: CropBox,
                 reduction: int) -> Tensor | None:
    """The crop of the whole image decoded by libjpeg-turbo (``simplejpeg``), at full size only:
    PIL's draft mode decodes the reduced ones."""
    if reduction > 1 or (pixels := decode_turbo_jpeg(data)) is None:
        return None
    return crop.crop(pixels, box, flip=False)


@dataclass(frozen=True)
class TrainCrop:
    """RandomResizedCrop (bicubic) to ``size`` + horizontal flip, as uint8 ``[3 size size]``;
    ``style`` (:data:`CropStyle`) says how the box is drawn.

    A plain JPEG goes through :attr:`strategies` in order, chosen once when the crop is built:
    :func:`region_decode` where ``splathead_recipes._jpeg`` is built (unless
    ``region_decode=False``: the same pixels, more time, for measuring it), then
    :func:`whole_decode`; what none of them takes, and every other file, PIL decodes.
    """

    size: int
    scale: tuple[float, float]
    hflip: bool = True
    style: CropStyle = "torchvision"
    jpeg_draft: bool = True
    region_decode: bool = True
    strategies: tuple[DecodeStrategy, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        use_region = self.region_decode and decode_region is not None
        object.__setattr__(self, "strategies",
                           (region_decode, whole_decode) if use_region else (whole_decode,))

    def draw(self, seed: int, *, height: int, width: int) -> tuple[CropBox, bool]:
        """The crop box and whether to flip, for an image of ``height`` x ``width``."""
        generator = torch.Generator().manual_seed(seed)
        box = CROP_BOXES[self.style](generator, height=height, width=width, scale=self.scale)
        return box, self.hflip and torch.rand(1, generator=generator).item() < 0.5

    @typecheck
    def from_pixels(self, pixels: UInt8[Tensor, "3 h w"], seed: int) -> UInt8[Tensor, "3 s s"]:
        """The crop of a decoded image."""
        box, flip = self.draw(seed, height=pixels.shape[1], width=pixels.shape[2])
        return self.crop(pixels, box, flip)

    @typecheck
    def from_file(self, path: str | Path, seed: int,
                  to_rgb: Callable[[Image.Image], Image.Image]) -> UInt8[Tensor, "3 s s"]:
        """The crop of an image file; ``to_rgb`` converts what PIL decodes to 8-bit RGB.

        Raises:
            OSError: the file is unreadable (PIL's error, naming ``path``).
        """
        data = Path(path).read_bytes()
        if (size := turbo_jpeg_size(data)) is not None:
            box, flip = self.draw(seed, height=size[0], width=size[1])
            reduction = jpeg_reduction(box, self.size) if self.jpeg_draft else 1
            for strategy in self.strategies:
                if (crop := strategy(self, data, size, box, reduction)) is not None:
                    return self._flip(crop, flip)
        return self._pil_crop(data, path, seed, to_rgb)

    def _pil_crop(self, data: bytes, path: str | Path, seed: int,
                  to_rgb: Callable[[Image.Image], Image.Image]) -> Tensor:
        # PIL decodes (in draft mode at a reduction); the box is drawn from its header.
        with open_image(data, path) as image:  # reads the header only
            box, flip = self.draw(seed, height=image.height, width=image.width)
            is_jpeg = image.format == "JPEG"
            reduction = jpeg_reduction(box, self.size) if is_jpeg and self.jpeg_draft else 1
            if reduction > 1:
                image.draft("RGB", (image.width // reduction, image.height // reduction))
                return self._flip(self.reduced_crop(to_rgb(image), box, reduction), flip)
            return self.crop(F.pil_to_tensor(to_rgb(image)), box, flip)

    def reduced_crop(self, image: Image.Image, box: CropBox, reduction: int) -> torch.Tensor:
        """``box`` (full-image pixels) of ``image`` decoded at ``1 / reduction``, resized to the
        output size: the box at sub-pixel precision, PIL samples between the pixels."""
        left, top = box.left / reduction, box.top / reduction
        crop = image.resize((self.size, self.size), Image.Resampling.BICUBIC,
                            box=(left, top, left + box.width / reduction,
                                 top + box.height / reduction))
        return F.pil_to_tensor(crop)

    @typecheck
    def crop(self, pixels: UInt8[Tensor, "3 h w"], box: CropBox,
             flip: bool) -> UInt8[Tensor, "3 s s"]:
        """``box`` of decoded ``pixels`` resized to the output size (bicubic, antialiased) and
        flipped if ``flip``, on the pixels' device (torch resizes uint8 on the CPU only;
        elsewhere the resize runs in float32, rounded back to uint8)."""
        on_cpu = pixels.device.type == "cpu"
        crop = F.crop(pixels, *box)
        # On the CPU, contiguous channels-last: torch's vectorised uint8 resize takes it (the
        # same pixels as from any other layout, in about two thirds of the time).
        crop = crop.permute(1, 2, 0).contiguous().permute(2, 0, 1) if on_cpu else crop.float()
        crop = F.resize(crop, [self.size, self.size], interpolation=InterpolationMode.BICUBIC,
                        antialias=True)
        if not on_cpu:
            crop = crop.round_().clamp_(0, 255).to(torch.uint8)
        return self._flip(crop, flip)

    @staticmethod
    def _flip(pixels: torch.Tensor, flip: bool) -> torch.Tensor:
        return F.horizontal_flip(pixels) if flip else pixels


@dataclass(frozen=True)
class CentreCrop:
    """The evaluation crop (MAE's, timm's): the short side resized to ``size / 0.875``
    (bicubic), then the centre ``size`` x ``size``, as uint8. Same calls as :class:`TrainCrop`;
    the seed is ignored."""

    size: int
    crop_fraction: float = 0.875

    @typecheck
    def from_pixels(self, pixels: UInt8[Tensor, "3 h w"], seed: int) -> UInt8[Tensor, "3 s s"]:
        resized = F.resize(pixels, int(self.size / self.crop_fraction),
                           interpolation=InterpolationMode.BICUBIC, antialias=True)
        return F.center_crop(resized, [self.size, self.size])

    @typecheck
    def from_file(self, path: str | Path, seed: int,
                  to_rgb: Callable[[Image.Image], Image.Image]) -> UInt8[Tensor, "3 s s"]:
        return self.from_pixels(decode_rgb(path, to_rgb), seed)


_MEAN = torch.tensor(IMAGENET_DEFAULT_MEAN)
_STD = torch.tensor(IMAGENET_DEFAULT_STD)


@typecheck
def normalize(images: UInt8[Tensor, "b 3 h w"]) -> Float[Tensor, "b 3 h w"]:
    """uint8 RGB to the ImageNet-normalised float32 the models take, on the images' device,
    contiguous whatever the images' memory layout."""
    # torchvision's ToTensor + Normalize, op for op (in place): the same floats as normalising
    # in workers.
    mean = _MEAN.to(images.device)[:, None, None]
    std = _STD.to(images.device)[:, None, None]
    return images.contiguous().float().div_(255).sub_(mean).div_(std)
