"""A laptop-sized labelled task, drawn in code: four shapes on striped backgrounds.

    python recipes/shapes_task.py --output data/shapes          # 2000 train + 400 val, 64 px

writes an ImageFolder (``train/<class>/*.png``, ``val/<class>/*.png``) for the evaluation
recipes' ``--preset demo``, for tests and for pretraining without labels. Classes: circle,
square, triangle, cross. Each image has a random size, position, rotation and colour of the
shape and a random stripe pattern behind it, so the class is in the outline only: neither the
mean colour nor the texture gives it away. The same ``--seed`` writes the same files, byte for
byte; every image draws from its own generator, so one split never shifts the other.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle", "cross")
_SUPERSAMPLE = 4  # draw 4x larger, then downsample: anti-aliased edges
_SPLITS = {"train": 0, "val": 1}


def _random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(value) for value in rng.integers(0, 256, size=3))


def _stripes(rng: np.random.Generator, size: int) -> Image.Image:
    """Two-colour stripes of random angle, period and phase."""
    rows, columns = np.mgrid[0:size, 0:size].astype(np.float64)
    angle = rng.uniform(0, math.pi)
    period = rng.uniform(0.1, 0.5) * size
    phase = rng.uniform(0, 2 * math.pi)
    wave = np.sin(2 * math.pi * (columns * math.cos(angle) + rows * math.sin(angle)) / period
                  + phase)
    weight = (0.5 + 0.5 * wave)[..., None]
    first, second = np.array(_random_colour(rng)), np.array(_random_colour(rng))
    return Image.fromarray((weight * first + (1 - weight) * second).astype(np.uint8))


def _outline(label: str, radius: float) -> list[tuple[float, float]]:
    """The shape's polygon around the origin, before rotation (the circle is drawn apart)."""
    if label == "square":
        half = radius / math.sqrt(2)
        return [(-half, -half), (half, -half), (half, half), (-half, half)]
    if label == "triangle":
        return [(radius * math.cos(a), radius * math.sin(a))
                for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if label == "cross":
        arm = radius / 3
        return [(-arm, -radius), (arm, -radius), (arm, -arm), (radius, -arm), (radius, arm),
                (arm, arm), (arm, radius), (-arm, radius), (-arm, arm), (-radius, arm),
                (-radius, -arm), (-arm, -arm)]
    raise ValueError(f"unknown shape {label!r}; expected one of {CLASSES}")


def draw_shape(label: str, *, img_size: int, rng: np.random.Generator) -> Image.Image:
    """One ``img_size`` x ``img_size`` RGB image of the shape ``label`` on random stripes."""
    size = img_size * _SUPERSAMPLE
    image = _stripes(rng, size)
    radius = rng.uniform(0.2, 0.4) * size
    centre = rng.uniform(radius, size - radius, size=2)
    colour = _random_colour(rng)
    draw = ImageDraw.Draw(image)
    if label == "circle":
        x, y = centre
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour)
    else:
        angle = rng.uniform(0, 2 * math.pi)
        cos, sin = math.cos(angle), math.sin(angle)
        points = [(centre[0] + cos * px - sin * py, centre[1] + sin * px + cos * py)
                  for px, py in _outline(label, radius)]
        draw.polygon(points, fill=colour)
    return image.resize((img_size, img_size), Image.Resampling.LANCZOS)


def write_shapes_task(output: Path, *, train_per_class: int = 500, val_per_class: int = 100,
                      img_size: int = 64, seed: int = 0) -> None:
    """Write ``output/{train,val}/<class>/<index>.png``; ``output`` must be new or empty."""
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise FileExistsError(f"{output} exists and is not an empty folder; pick a new --output")
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        for class_index, label in enumerate(CLASSES):
            folder = output / split / label
            folder.mkdir(parents=True)
            for index in range(per_class):
                rng = np.random.default_rng([seed, _SPLITS[split], class_index, index])
                draw_shape(label, img_size=img_size, rng=rng).save(folder / f"{index:05d}.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, required=True, help="new or empty folder")
    parser.add_argument("--train-per-class", type=int, default=500)
    parser.add_argument("--val-per-class", type=int, default=100)
    parser.add_argument("--img-size", type=int, default=64, help="pixels (square)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("train_per_class", "val_per_class", "img_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    try:
        write_shapes_task(args.output, train_per_class=args.train_per_class,
                          val_per_class=args.val_per_class, img_size=args.img_size,
                          seed=args.seed)
    except FileExistsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {len(CLASSES)} classes x ({args.train_per_class} train + {args.val_per_class} "
          f"val) images of {args.img_size} px to {args.output}/")
    return 0
