"""Datasets and the loader: ImageNet folders, scikit-image photos, synthetic tensors.

Every random choice of the input pipeline is a pure function of ``(seed, epoch, sample index)``:
the sampler hands the dataset ``(index, sample_seed)`` pairs and the dataset seeds its
augmentation with that seed. Data order and augmentation therefore do not depend on the number of
loader workers or on where a run was interrupted, which is what makes resuming exact.

Workers hand over uint8 crops (:mod:`.crops`); :meth:`Batch.to` normalises them on the device.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate
from torchvision import datasets

from splathead_recipes.cli import ConfigError
from splathead_recipes.config import Config
from splathead_recipes.crops import TrainCrop, normalize
from splathead_recipes.device_decode import EncodedBatch, EncodedCrop, EncodedTrainCrop
from splathead_recipes.settings import RunConfig

log = logging.getLogger("gmae")

# scikit-image's bundled colour photographs (no download needed).
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
          "immunohistochemistry", "retina", "cat")
_MAX_SUBSTITUTES = 32


class Sample(NamedTuple):
    image: torch.Tensor | EncodedCrop  # [3 h w] uint8 RGB, or a JPEG to decode on the device
    label: int
    substituted: bool  # the file at the sampled index was unreadable; a neighbour stands in


class Crop(Protocol):
    """What :class:`SafeImageFolder` asks of its crop (:class:`~.crops.TrainCrop`,
    :class:`~.crops.CentreCrop`, :class:`~.finetune.AugmentedCrop`,
    :class:`~.device_decode.EncodedTrainCrop`): a sample of an image file, a function of the
    file and ``seed`` only."""

    def from_file(self, path: str | Path, seed: int,
                  to_rgb: Callable[[Image.Image], Image.Image]) -> torch.Tensor | EncodedCrop:
        """uint8 ``[3 s s]`` (or a JPEG to decode on the device); ``to_rgb`` converts what PIL
        decodes to 8-bit RGB. Raises ``OSError`` (naming ``path``) for an unreadable file."""
        ...


class Batch(NamedTuple):
    # [b 3 h w]: uint8 RGB from the loader (or JPEGs, --gpu-decode), ImageNet-normalised after to()
    images: torch.Tensor | EncodedBatch
    labels: torch.Tensor  # [b] class indices (ImageFolder's; the photo index; 0 for noise)
    num_skipped: int  # samples whose file was unreadable (replaced by a neighbour)

    def to(self, device: torch.device) -> Batch:
        """On ``device``, uint8 images normalised there (timm's PrefetchLoader pattern), JPEGs
        decoded there first."""
        images, skipped = self.images, 0
        if isinstance(images, EncodedBatch):
            images, skipped = images.decode(device)
        images = images.to(device, non_blocking=True)
        return Batch(normalize(images) if images.dtype == torch.uint8 else images,
                     self.labels.to(device, non_blocking=True), self.num_skipped + skipped)


def train_crop(config: RunConfig) -> TrainCrop:
    """The paper's augmentation: RandomResizedCrop (bicubic) + horizontal flip."""
    return TrainCrop(config.img_size, config.crop_scale, hflip=config.hflip,
                     style=config.crop_style, jpeg_draft=config.jpeg_draft)


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB: 16-bit grey scaled down (PIL would clip it at 255), transparency composited
    onto white (the render background), everything else through PIL's own conversion."""
    if image.mode.startswith("I"):  # "I;16*" and "I": 16-bit grey as PNG and TIFF store it
        grey = np.round(np.asarray(image, dtype=np.float64) / 257).clip(0, 255)
        return Image.fromarray(grey.astype(np.uint8)).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def load_rgb(path: str) -> Image.Image:
    with Image.open(path) as image:
        return to_rgb(image)


class SafeImageFolder(datasets.ImageFolder):
    """torchvision's ImageFolder in which an unreadable file is replaced by the next readable one.

    Replacing (rather than dropping) keeps every batch full, so shapes stay static under
    ``torch.compile`` and the global batch is exactly what the config says. Each replacement is
    logged once per file (per worker) and counted in :attr:`Batch.num_skipped`.
    """

    def __init__(self, root: str | Path, crop: Crop) -> None:
        super().__init__(str(root))
        self.crop = crop
        self._warned: set[str] = set()

    def __getitem__(self, item: tuple[int, int]) -> Sample:
        index, seed = item
        for skipped in range(_MAX_SUBSTITUTES):
            path, label = self.samples[(index + skipped) % len(self)]
            try:
                crop = self.crop.from_file(path, seed, to_rgb)
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
                if path not in self._warned:
                    self._warned.add(path)
                    log.warning("skipping unreadable image %s (%s)", path, error)
                continue
            return Sample(crop, label, skipped > 0)
        raise RuntimeError(f"{_MAX_SUBSTITUTES} consecutive unreadable images from "
                           f"{self.samples[index][0]} on; is the dataset intact?")


class PhotoCrops(Dataset):
    """Random crops of scikit-image's bundled photos: a dataset for demos and tests."""

    def __init__(self, crop: TrainCrop, *, length: int) -> None:
        import skimage.data

        self.photos = [torch.from_numpy(getattr(skimage.data, name)()[..., :3]).permute(2, 0, 1)
                       .contiguous() for name in PHOTOS]
        self.crop = crop
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, item: tuple[int, int]) -> Sample:
        index, seed = item
        label = index % len(self.photos)
        return Sample(self.crop.from_pixels(self.photos[label], seed), label, False)


class SyntheticImages(Dataset):
    """Noise images: measures the model, not the input pipeline."""

    def __init__(self, img_size: int, *, length: int) -> None:
        self.img_size = img_size
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, item: tuple[int, int]) -> Sample:
        generator = torch.Generator().manual_seed(item[1])
        noise = torch.randint(256, (3, self.img_size, self.img_size), generator=generator)
        return Sample(noise.to(torch.uint8), 0, False)


class ResumableSampler(DistributedSampler):
    """A :class:`DistributedSampler` that yields ``(index, sample_seed)`` and can start mid-epoch.

    Each epoch is a seeded permutation cut to whole global batches; global step ``s`` consumes
    positions ``[s * batch, (s + 1) * batch)`` of it, and rank ``r`` of ``w`` takes every ``w``-th
    of those. :meth:`set_epoch` chooses the permutation, :meth:`set_start_step` skips the steps a
    resumed run has already done (without reading their images).
    """

    def __init__(self, dataset: Dataset, *, global_batch: int, num_replicas: int, rank: int,
                 seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed,
                         drop_last=True)
        self.global_batch = global_batch
        self.start_step = 0

    @property
    def steps_per_epoch(self) -> int:
        return len(self.dataset) // self.global_batch

    def set_start_step(self, step: int) -> None:
        self.start_step = step

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.global_batch // self.num_replicas

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.dataset), generator=generator)
        # One augmentation seed per (epoch, position), independent of the permutation's draw.
        seeds = torch.randint(2**62, (len(order),), generator=generator)
        begin, end = self.start_step * self.global_batch, self.steps_per_epoch * self.global_batch
        positions = range(begin + self.rank, end, self.num_replicas)
        return iter([(int(order[p]), int(seeds[p])) for p in positions])


def _ignore_stop_signals(worker_id: int) -> None:
    # The main process checkpoints on SIGTERM / SIGUSR1; workers must not die of them first
    # (SLURM signals every process of a job step).
    for signum in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, signal.SIG_IGN)


def collate(samples: list[Sample]) -> Batch:
    """Samples into one :class:`Batch` (the loaders' ``collate_fn``)."""
    images, labels, substituted = zip(*samples)
    if any(isinstance(image, EncodedCrop) for image in images):
        return Batch(EncodedBatch.pack(list(images)), torch.tensor(labels), sum(substituted))
    # default_collate stacks straight into shared memory in a worker (one copy fewer). Stacked
    # as [b h w 3]: a memcpy per crop (TrainCrop's are channels-last), the batch a channels-last
    # view that normalize() makes contiguous on the device.
    stacked = default_collate([image.permute(1, 2, 0) for image in images])
    return Batch(stacked.permute(0, 3, 1, 2), torch.tensor(labels), sum(substituted))


def build_dataset(config: Config) -> Dataset:
    if config.dataset == "synthetic":
        return SyntheticImages(config.img_size, length=config.samples_per_epoch)
    if config.dataset == "photos":
        return PhotoCrops(train_crop(config), length=config.samples_per_epoch)
    root = Path(config.data_path) / "train"
    crop = EncodedTrainCrop(train_crop(config)) if config.gpu_decode else train_crop(config)
    try:
        return SafeImageFolder(root, crop)
    except FileNotFoundError as error:  # no class folder, or no image file in any of them
        raise ConfigError(f"--data-path {config.data_path}: {error}; expected "
                          f"{root}/<class>/<image>") from None


def build_loader(config: RunConfig, dataset: Dataset, *, rank: int, world_size: int,
                 pin_memory: bool, collate_fn: Callable[[list[Sample]], Any] = collate
                 ) -> tuple[DataLoader, ResumableSampler]:
    """Per-rank loader of micro-batches (``batch_size / (world_size * accum_steps)`` samples),
    put together by ``collate_fn`` (:func:`collate`: images into a :class:`Batch`)."""
    sampler = ResumableSampler(dataset, global_batch=config.batch_size, num_replicas=world_size,
                               rank=rank, seed=config.seed)
    if sampler.steps_per_epoch == 0:
        raise ConfigError(f"the dataset has {len(dataset)} images, fewer than one --batch-size "
                          f"{config.batch_size}; lower --batch-size or add images")
    workers = config.num_workers
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size // (world_size * config.accum_steps),
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
        drop_last=True,
        persistent_workers=workers > 0,
        worker_init_fn=_ignore_stop_signals,
        prefetch_factor=4 if workers > 0 else None,
        # The loader draws its worker seeds from here, not from torch's global generator.
        generator=torch.Generator().manual_seed(config.seed),
    )
    return loader, sampler


def stop_workers(loader: DataLoader) -> None:
    """End ``loader``'s worker processes now, whatever state they are in.

    The workers ignore SIGTERM (see ``_ignore_stop_signals``), so Python's exit handlers, which
    terminate and then join them, would wait forever after an error left them running.
    """
    # DataLoader keeps the iterator of persistent workers in `_iterator`, and the iterator its
    # processes in `_workers` (checked with torch 2.14).
    iterator, loader._iterator = getattr(loader, "_iterator", None), None
    if iterator is None or not hasattr(iterator, "_workers"):
        return
    iterator._shutdown_workers()
    for worker in iterator._workers:
        if worker.is_alive():
            worker.kill()
            worker.join()  # reaped before this returns; SIGKILL cannot be ignored

