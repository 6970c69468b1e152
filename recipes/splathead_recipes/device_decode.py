"""JPEG decoding on the device (``--gpu-decode``): loader workers read files and draw crops, and
nvJPEG decodes, crops and resizes each batch in the training process.

A worker's share of an image drops from decoding and resizing it (about 1.2 ms of CPU for a
500 x 375 JPEG at 224 px) to reading the file, parsing its header and drawing the crop (about
0.05 ms), so a few workers per GPU keep up. The crop box and flip are :class:`~.crops.TrainCrop`'s
draws for the sample's seed, so data order, augmentation and exact resume are unchanged; the
pixels are nvJPEG's (its inverse DCT and chroma upsampling are not libjpeg-turbo's; a CUDA test
bounds the difference). Files libjpeg-turbo cannot decode by itself (other formats, CMYK) are
still cropped in the worker and travel as pixels, and a file nvJPEG refuses is decoded on the
CPU instead.

A file whose header reads but whose data does not decode shows up here, in the training process,
where the dataset's replace-by-the-next-file policy cannot reach: its crop is replaced by another
crop of the same batch and counted in :attr:`~.data.Batch.num_skipped`, as the workers count
theirs.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from jaxtyping import UInt8
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from splathead.typing import Tensor, typecheck
from splathead_recipes.crops import CropBox, TrainCrop, turbo_jpeg_size

log = logging.getLogger("gmae")


class EncodedCrop(NamedTuple):
    """A JPEG file's bytes and the crop drawn for it, to be decoded on the device."""

    data: torch.Tensor  # [n] uint8: the whole file
    box: CropBox
    flip: bool
    train_crop: TrainCrop  # what resizes it once decoded


@dataclass(frozen=True)
class EncodedTrainCrop:
    """:class:`~.crops.TrainCrop`'s augmentation with the decoding left to the device: same calls
    as ``TrainCrop.from_file``, returning an :class:`EncodedCrop` for plain JPEGs (decoded in
    full on the device: ``jpeg_draft`` applies only to the files cropped here)."""

    train_crop: TrainCrop

    @typecheck
    def from_file(self, path: str | Path, seed: int, to_rgb: Callable[[Image.Image], Image.Image]
                  ) -> EncodedCrop | UInt8[Tensor, "3 s s"]:
        """The file and its crop box, or (other files) the crop as ``TrainCrop`` makes it.

        Raises:
            OSError: a file that is not a plain JPEG is unreadable (PIL's error, naming ``path``).
        """
        data = Path(path).read_bytes()
        if (size := turbo_jpeg_size(data)) is None:
            return self.train_crop.from_file(path, seed, to_rgb)
        box, flip = self.train_crop.draw(seed, height=size[0], width=size[1])
        return EncodedCrop(torch.frombuffer(bytearray(data), dtype=torch.uint8), box, flip,
                           self.train_crop)


class EncodedBatch(NamedTuple):
    """A batch of :class:`EncodedCrop` (files back to back) and crops the workers decoded."""

    files: torch.Tensor  # [total] uint8: the encoded samples' files, concatenated
    ends: torch.Tensor  # [e] int64: where each encoded sample's file ends in ``files``
    boxes: torch.Tensor  # [e 4] int64: top, left, height, width of each encoded sample's crop
    flips: torch.Tensor  # [e] bool
    encoded_at: torch.Tensor  # [e] int64: the encoded samples' places in the batch
    pixels: torch.Tensor  # [b-e 3 s s] uint8: the other samples, cropped by the workers
    pixels_at: torch.Tensor  # [b-e] int64: their places in the batch
    train_crop: TrainCrop

    @classmethod
    @typecheck
    def pack(cls, images: list[EncodedCrop | UInt8[Tensor, "3 s s"]]) -> EncodedBatch:
        """One batch from a collate function's samples: uint8 crops and at least one
        :class:`EncodedCrop`."""
        encoded = [(at, image) for at, image in enumerate(images)
                   if isinstance(image, EncodedCrop)]
        decoded = [(at, image) for at, image in enumerate(images)
                   if not isinstance(image, EncodedCrop)]
        lengths = torch.tensor([len(image.data) for _, image in encoded], dtype=torch.int64)
        train_crop = encoded[0][1].train_crop
        return cls(
            files=torch.cat([image.data for _, image in encoded]),
            ends=lengths.cumsum(0),
            boxes=torch.tensor([tuple(image.box) for _, image in encoded], dtype=torch.int64),
            flips=torch.tensor([image.flip for _, image in encoded], dtype=torch.bool),
            encoded_at=torch.tensor([at for at, _ in encoded], dtype=torch.int64),
            pixels=(torch.stack([image for _, image in decoded]) if decoded
                    else torch.empty(0, 3, train_crop.size, train_crop.size,
                                     dtype=torch.uint8)),
            pixels_at=torch.tensor([at for at, _ in decoded], dtype=torch.int64),
            train_crop=train_crop,
        )

    @property
    def num_images(self) -> int:
        return len(self.encoded_at) + len(self.pixels_at)

    @typecheck
    def decode(self, device: torch.device) -> tuple[UInt8[Tensor, "b 3 s s"], int]:
        """The batch's crops as uint8 on ``device`` (nvJPEG on CUDA, libjpeg-turbo on the
        CPU), and how many undecodable files were replaced by another crop of the batch.

        Raises:
            RuntimeError: no file of the batch decodes and no worker-decoded crop stands in.
        """
        starts = torch.cat([self.ends.new_zeros(1), self.ends[:-1]]).tolist()
        files = [self.files[start:end] for start, end in zip(starts, self.ends.tolist())]
        decoded = zip(self.encoded_at.tolist(), _decode_each(files, device), self.boxes.tolist(),
                      self.flips.tolist())
        size = self.train_crop.size
        out = torch.empty(self.num_images, 3, size, size, dtype=torch.uint8, device=device)
        out[self.pixels_at.to(device)] = self.pixels.to(device)
        good, failed = self.pixels_at.tolist(), []
        for at, pixels, box, flip in decoded:
            if pixels is None:
                failed.append(at)
            else:
                out[at] = self.train_crop.crop(pixels, CropBox(*box), flip)
                good.append(at)
        if failed:
            if not good:
                raise RuntimeError(f"none of the batch's {self.num_images} JPEG files decodes on "
                                   f"{device}; is the dataset intact?")
            log.warning("replacing %d undecodable JPEG file(s) of a batch by other crops of the "
                        "batch", len(failed))
            for number, at in enumerate(failed):
                out[at] = out[good[number % len(good)]]
        return out, len(failed)


def _decode_each(files: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """Every file decoded to RGB on ``device`` (one batched call; file by file, falling back to
    the CPU, when that fails), ``None`` where a file does not decode at all."""
    if not files:
        return []
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its decoders for TorchCodec, whose CUDA builds are not on
        # PyPI; these still work and are the ones torch's own wheels ship with nvJPEG.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision")
        try:
            return list(decode_jpeg(files, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:  # one bad file fails the whole call: find it
            return [_decode_one(file, device) for file in files]


def _decode_one(file: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    # What nvJPEG refuses (some progressive or unusual files) libjpeg-turbo may still read.
    for where in dict.fromkeys([device, torch.device("cpu")]):
        try:
            return decode_jpeg(file, mode=ImageReadMode.RGB, device=where).to(device)
        except RuntimeError:
            continue
    return None
