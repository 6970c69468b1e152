"""Input pipeline speed: the recipe's loader against the torchvision pipeline it replaced.

    python benchmarks/data.py --images ../shared/data/bsds500/val/images
    python benchmarks/data.py --images DIR --img-size 112 --workers 1 2 4 --device cuda

The pipelines read the same files through the same sampler and DataLoader settings:

- torchvision (the recipe's pipeline before uint8 batches): full PIL decode, RandomResizedCrop
  (bicubic) + flip + ToTensor + Normalize in the worker under ``torch.random.fork_rng``, float32
  batches;
- recipe: :class:`~splathead_recipes.crops.TrainCrop` (private generator, JPEG draft decoding,
  only the crop's region decoded, uint8 batches), plus the normalisation on ``--device`` in the
  main process, timed with it;
- recipe, whole-image decode: the same, decoding JPEGs whole (as without the compiled
  ``splathead_recipes._jpeg``): the same pixels;
- recipe, no draft: the same with ``--no-jpeg-draft``: the torchvision pipeline's crop boxes
  and flips; the pixels differ only by the resize (torch's uint8 bicubic against PIL's), which
  this script measures on every file;
- recipe, --gpu-decode: the workers send JPEG files and crop boxes, and the main process
  decodes, crops and normalises them on ``--device`` (nvJPEG on CUDA; on the CPU its main
  process column shows what the workers were spared).

Each pipeline is measured ``--rounds`` times, the pipelines taking turns, and the table gives the
median and the range (single runs on a shared machine scatter by a third). Per worker means per
second of the worker processes' CPU time (user + system, from ``getrusage`` once they have
exited): the rate a worker reaches with a core to itself. Wall-clock images/s are printed
beside it (on a shared machine they mostly measure what else is running), and the main
process's CPU time per image (receiving batches and what it does on ``--device``). Below the
table: what the recipe's pipeline and its draft decoding change in the pixels. The last line is
``speedup=X.XX``: recipe over torchvision, median images/s per worker, with the first
``--workers`` count.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import math
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import DataLoader
from torchvision import datasets, transforms
from torchvision.transforms import InterpolationMode

# recipes/ is not installed; a script there finds splathead_recipes beside itself.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
from splathead_recipes.config import Config  # noqa: E402
from splathead_recipes.crops import decode_region  # noqa: E402
from splathead_recipes.data import (Batch, ResumableSampler, SafeImageFolder, Sample,  # noqa: E402
                                    build_dataset, build_loader, to_rgb, train_crop)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


class TorchvisionCrops(datasets.ImageFolder):
    """The baseline: torchvision transforms on fully decoded images, normalised float32 out."""

    def __init__(self, root: Path, config: Config) -> None:
        super().__init__(str(root))
        self.transform = transforms.Compose([
            transforms.RandomResizedCrop(config.img_size, scale=config.crop_scale,
                                         interpolation=InterpolationMode.BICUBIC),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
        ])

    def __getitem__(self, item: tuple[int, int]) -> Sample:
        index, seed = item
        path, label = self.samples[index]
        with Image.open(path) as image:
            rgb = to_rgb(image)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return Sample(self.transform(rgb), label, False)


def stack(samples: list[Sample]) -> Batch:
    images, labels, _ = zip(*samples)
    return Batch(torch.stack(images), torch.tensor(labels), 0)


def torchvision_loader(config: Config, dataset: TorchvisionCrops) -> DataLoader:
    """The recipe's DataLoader settings around the baseline dataset."""
    sampler = ResumableSampler(dataset, global_batch=config.batch_size, num_replicas=1, rank=0,
                               seed=config.seed)
    workers = config.num_workers
    return DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=stack, drop_last=True, persistent_workers=workers > 0,
                      prefetch_factor=4 if workers > 0 else None)


def cpu_seconds(who: int) -> float:
    """CPU time of this process (``RUSAGE_SELF``) or of its exited children (``RUSAGE_CHILDREN``)."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


class Rates(NamedTuple):
    wall: float  # images per wall-clock second
    worker_cpu: float  # images per second of worker CPU time
    main_ms: float  # main-process CPU milliseconds per image


def measure(loader: DataLoader, device: torch.device) -> Rates:
    """One epoch with normalised batches on ``device``, worker start-up and shutdown included."""
    start_wall = time.perf_counter()
    start_main, start_workers = (cpu_seconds(resource.RUSAGE_SELF),
                                 cpu_seconds(resource.RUSAGE_CHILDREN))
    batches = iter(loader)
    count = sum(batch.to(device).images.shape[0] for batch in batches)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - start_wall
    main = cpu_seconds(resource.RUSAGE_SELF) - start_main
    del batches
    # Persistent workers outlive the epoch: drop the iterator so that they exit and are reaped
    # (DataLoader's attribute, checked with torch 2.14).
    loader._iterator = None
    gc.collect()
    workers = cpu_seconds(resource.RUSAGE_CHILDREN) - start_workers
    return Rates(count / wall, count / workers, 1e3 * main / count)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.float() - b.float()).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def pixel_differences(config: Config, root: Path, count: int) -> str:
    """What the recipe changed in the first ``count`` crops: against the torchvision pipeline
    without draft decoding, and what draft decoding changed on top."""
    draft = build_dataset(config)
    full = build_dataset(dataclasses.replace(config, jpeg_draft=False))
    baseline = TorchvisionCrops(root, config)
    tensor_errors, draft_scores, draft_errors = [], [], []
    for index in range(count):
        item = (index, index)
        full_crop = full[item].image
        reference = baseline[item].image  # normalised floats: back to uint8 levels
        levels = reference * torch.tensor(IMAGENET_DEFAULT_STD)[:, None, None] + torch.tensor(
            IMAGENET_DEFAULT_MEAN)[:, None, None]
        tensor_errors.append((levels * 255 - full_crop.float()).abs())
        draft_crop = draft[item].image
        if not torch.equal(draft_crop, full_crop):
            draft_scores.append(psnr(draft_crop, full_crop))
            draft_errors.append((draft_crop.int() - full_crop.int()).abs().max().item())
    errors = torch.stack(tensor_errors)
    lines = [f"recipe without draft against torchvision over {count} crops: mean difference "
             f"{errors.mean():.3f} / 255, {(errors > 1.01).float().mean():.2%} of values more than "
             f"one level apart, largest {errors.max():.0f} / 255",
             f"draft decoding applied to {len(draft_scores)} of {count} crops"]
    if draft_scores:
        lines[-1] += (f": PSNR against the full decode {min(draft_scores):.1f} to "
                      f"{max(draft_scores):.1f} dB (median "
                      f"{sorted(draft_scores)[len(draft_scores) // 2]:.1f}), largest difference "
                      f"{max(draft_errors)} / 255")
    return "\n".join(lines)


def linked_folder(images: Path, root: Path, min_samples: int) -> tuple[Path, int]:
    """``root/train/all/`` with links to ``images``' files, repeated to ``min_samples``, and
    the number of distinct files."""
    files = sorted(path for path in images.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SystemExit(f"--images {images}: no .jpg, .jpeg or .png files")
    folder = root / "train" / "all"
    folder.mkdir(parents=True)
    for copy in range(math.ceil(min_samples / len(files))):
        for index, path in enumerate(files):
            (folder / f"{copy:03d}_{index:06d}{path.suffix}").symlink_to(path.resolve())
    return folder, len(files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, required=True, help="folder of JPEG / PNG files")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        choices=range(1, 65), metavar="N")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--samples", type=int, default=1024, help="images per measurement")
    parser.add_argument("--rounds", type=int, default=3, choices=range(1, 100), metavar="N",
                        help="measurements per pipeline (median reported), taking turns")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="where batches are normalised (and --gpu-decode decodes)")
    args = parser.parse_args()
    if not args.images.is_dir():
        raise SystemExit(f"--images {args.images}: not a folder")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    device = torch.device(args.device)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder, num_files = linked_folder(args.images, root, args.samples)
        config = Config(data_path=str(root), img_size=args.img_size, batch_size=args.batch_size)
        pipelines = {
            "torchvision": lambda c: torchvision_loader(c, TorchvisionCrops(folder.parent, c)),
            "recipe, no draft": lambda c: build_loader(
                dataclasses.replace(c, jpeg_draft=False),
                build_dataset(dataclasses.replace(c, jpeg_draft=False)),
                rank=0, world_size=1, pin_memory=False)[0],
            "recipe, whole-image decode": lambda c: build_loader(
                c, SafeImageFolder(folder.parent, dataclasses.replace(train_crop(c),
                                                                      region_decode=False)),
                rank=0, world_size=1, pin_memory=False)[0],
            "recipe": lambda c: build_loader(c, build_dataset(c), rank=0, world_size=1,
                                             pin_memory=False)[0],
            f"recipe, --gpu-decode on {device.type}": lambda c: build_loader(
                dataclasses.replace(c, gpu_decode=True),
                build_dataset(dataclasses.replace(c, gpu_decode=True)),
                rank=0, world_size=1, pin_memory=device.type == "cuda")[0],
        }
        print(f"\n{num_files} files from {args.images} (each read "
              f"{math.ceil(args.samples / num_files)} times), {args.img_size} px crops, batch "
              f"{args.batch_size}, torch threads {torch.get_num_threads()}, splathead_recipes._jpeg "
              f"{'built' if decode_region else 'missing (whole-image decodes only)'}; medians of "
              f"{args.rounds} rounds in which the pipelines take turns\n")
        print("| pipeline | workers | images / s per worker (CPU time) | range over rounds "
              "| images / s (wall clock) | main process ms / image |\n"
              "|---|---:|---:|---:|---:|---:|")
        per_worker = {}
        for workers in args.workers:
            runs: dict[str, list[Rates]] = {name: [] for name in pipelines}
            for _ in range(args.rounds):
                for name, make in pipelines.items():
                    runs[name].append(measure(make(dataclasses.replace(
                        config, num_workers=workers)), device))
            for name, rates in runs.items():
                worker_cpu = sorted(rate.worker_cpu for rate in rates)
                per_worker[name, workers] = statistics.median(worker_cpu)
                print(f"| {name} | {workers} | {per_worker[name, workers]:.0f} | "
                      f"{worker_cpu[0]:.0f}-{worker_cpu[-1]:.0f} | "
                      f"{statistics.median(rate.wall for rate in rates):.0f} | "
                      f"{statistics.median(rate.main_ms for rate in rates):.2f} |")
        print(f"\n{pixel_differences(config, folder.parent, num_files)}")
        first = args.workers[0]
        print(f"speedup={per_worker['recipe', first] / per_worker['torchvision', first]:.2f}")


if __name__ == "__main__":
    main()
