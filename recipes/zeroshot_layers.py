"""A zero-shot benchmark with known answers: dead-leaves scenes, figure-ground and edges scored.

    # 600 training + 50 test scenes, 64 px (seed 0)
    python recipes/zeroshot_layers.py make-data --output-dir data/leaves
    # pretrain on them (any gmae_imagenet.py settings; --preset layers-demo is the measured one)
    python recipes/gmae_imagenet.py --preset layers-demo --data-path data/leaves
    # score a checkpoint against the baselines: one markdown table, then a summary line
    python recipes/zeroshot_layers.py score --checkpoint runs/layers-demo/checkpoint-00004000.pt \\
        --data-dir data/leaves

**Data.** Each scene is a flat background of one random colour with 2 to 5 opaque shapes (discs,
ellipses, rectangles, triangles) of random size, position and rotation painted over it, back to
front, each in a colour far from the background's and from every other shape's (at least
``MIN_COLOUR_DISTANCE`` on some channel). The last shape painted is the front object: it is whole
(nothing covers it) and covers at least ``--min-front-area`` of the image. Written files:

- ``train/leaves/<i>.png``: the training images, an ImageFolder with one class, as
  ``gmae_imagenet.py --dataset imagefolder --data-path DIR`` reads it;
- ``test/images/<i>.png``, ``test/front/<i>.png`` (the front object's mask, 0 / 255) and
  ``test/boundaries/<i>.png`` (occlusion boundaries, 0 / 255: a pixel whose visible surface
  differs from its right or lower neighbour's, so one pixel wide);
- ``meta.json``: the flags that made it.

Every image draws from its own generator (seed, split, index), so the same flags write the same
files and the number of training images never changes the test set. Shapes are drawn without
anti-aliasing, so the masks are exact.

**Score.** See :func:`score`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.draw import ellipse, polygon

SHAPES = ("disc", "ellipse", "rectangle", "triangle")
MIN_COLOUR_DISTANCE = 0.25
"""Least largest-channel difference (colours in [0, 1]) between any two surfaces of a scene."""
_SPLITS = {"train": 0, "test": 1}


@dataclass(frozen=True)
class LeavesSpec:
    """How the dead-leaves scenes are drawn (``make-data``'s flags)."""

    size: int = 64
    min_shapes: int = 2
    max_shapes: int = 5
    min_radius: float = 0.1
    """Smallest shape radius as a fraction of ``size``."""
    max_radius: float = 0.3
    min_front_area: float = 0.03
    """Least fraction of the image the front object covers."""
    seed: int = 0


def _distinct_colour(rng: np.random.Generator, taken: list[np.ndarray]) -> np.ndarray:
    while True:
        colour = rng.uniform(0, 1, size=3)
        if all(np.abs(colour - other).max() >= MIN_COLOUR_DISTANCE for other in taken):
            return colour


def _shape_mask(rng: np.random.Generator, spec: LeavesSpec) -> np.ndarray:
    """``[size size]`` bool: one random shape, possibly cut by the image border."""
    size = spec.size
    kind = SHAPES[rng.integers(len(SHAPES))]
    radius = rng.uniform(spec.min_radius, spec.max_radius) * size
    row, column = rng.uniform(0.1, 0.9, size=2) * size
    angle = rng.uniform(0, math.pi)
    mask = np.zeros((size, size), dtype=bool)
    if kind in ("disc", "ellipse"):
        minor = radius if kind == "disc" else radius * rng.uniform(0.4, 0.8)
        rows, columns = ellipse(row, column, radius, minor, shape=mask.shape, rotation=angle)
    else:
        if kind == "rectangle":
            aspect = rng.uniform(0.4, 1.0)
            corners = [(radius, radius * aspect), (-radius, radius * aspect),
                       (-radius, -radius * aspect), (radius, -radius * aspect)]
        else:
            corners = [(radius * math.cos(a), radius * math.sin(a))
                       for a in (0, 2 * math.pi / 3, 4 * math.pi / 3)]
        cos, sin = math.cos(angle), math.sin(angle)
        rows, columns = polygon([row + cos * y - sin * x for y, x in corners],
                                [column + sin * y + cos * x for y, x in corners], shape=mask.shape)
    mask[rows, columns] = True
    return mask


def draw_scene(rng: np.random.Generator, spec: LeavesSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One scene: ``[h w 3]`` uint8 image, ``[h w]`` bool front mask, ``[h w]`` bool boundaries."""
    while True:
        num_shapes = int(rng.integers(spec.min_shapes, spec.max_shapes + 1))
        colours = [_distinct_colour(rng, [])]
        surface = np.zeros((spec.size, spec.size), dtype=np.int64)  # 0: background
        for index in range(1, num_shapes + 1):
            colours.append(_distinct_colour(rng, colours))
            front = _shape_mask(rng, spec)
            surface[front] = index
        if front.mean() >= spec.min_front_area:
            break
    image = np.round(np.stack(colours)[surface] * 255).astype(np.uint8)
    boundaries = np.zeros_like(front)
    boundaries[:, :-1] |= surface[:, 1:] != surface[:, :-1]
    boundaries[:-1, :] |= surface[1:, :] != surface[:-1, :]
    return image, front, boundaries


def _scene_rng(spec: LeavesSpec, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([spec.seed, _SPLITS[split], index])


def _save_png(path: Path, array: np.ndarray) -> None:
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    Image.fromarray(array).save(path)


def make_data(args: argparse.Namespace) -> int:
    output_dir = Path(args.output_dir)
    spec = LeavesSpec(size=args.size, min_shapes=args.min_shapes, max_shapes=args.max_shapes,
                      min_radius=args.min_radius, max_radius=args.max_radius,
                      min_front_area=args.min_front_area, seed=args.seed)
    folders = {name: output_dir / name for name in
               ("train/leaves", "test/images", "test/front", "test/boundaries")}
    for folder in folders.values():
        folder.mkdir(parents=True)
    for index in range(args.num_train):
        image, _, _ = draw_scene(_scene_rng(spec, "train", index), spec)
        _save_png(folders["train/leaves"] / f"{index:05d}.png", image)
    for index in range(args.num_test):
        image, front, boundaries = draw_scene(_scene_rng(spec, "test", index), spec)
        for name, array in (("images", image), ("front", front), ("boundaries", boundaries)):
            _save_png(folders[f"test/{name}"] / f"{index:05d}.png", array)
    meta = {**asdict(spec), "num_train": args.num_train, "num_test": args.num_test}
    (output_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {args.num_train} training and {args.num_test} test scenes to {output_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    defaults = LeavesSpec()

    making = commands.add_parser("make-data", help="write the dead-leaves training and test sets")
    making.add_argument("--output-dir", required=True, help="a new (or empty) folder")
    making.add_argument("--num-train", type=int, default=600, help="training images")
    making.add_argument("--num-test", type=int, default=50, help="test images")
    making.add_argument("--size", type=int, default=defaults.size, help="image side in pixels")
    making.add_argument("--min-shapes", type=int, default=defaults.min_shapes)
    making.add_argument("--max-shapes", type=int, default=defaults.max_shapes)
    making.add_argument("--min-radius", type=float, default=defaults.min_radius,
                        help="smallest shape radius, fraction of --size")
    making.add_argument("--max-radius", type=float, default=defaults.max_radius,
                        help="largest shape radius, fraction of --size")
    making.add_argument("--min-front-area", type=float, default=defaults.min_front_area,
                        help="least fraction of the image the front object covers")
    making.add_argument("--seed", type=int, default=defaults.seed)
    making.set_defaults(handler=make_data, check=check_make_data)
    return parser


def check_make_data(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit 2 naming the flag when a ``make-data`` setting cannot work, before any file."""
    output_dir = Path(args.output_dir)
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        parser.error(f"--output-dir {output_dir} exists and is not an empty folder; "
                     "make-data never writes over files")
    if args.num_train < 1 or args.num_test < 1:
        parser.error(f"--num-train and --num-test must be >= 1, got {args.num_train} and "
                     f"{args.num_test}")
    if args.size < 8:
        parser.error(f"--size must be >= 8 pixels, got {args.size}")
    if not 1 <= args.min_shapes <= args.max_shapes:
        parser.error(f"need 1 <= --min-shapes <= --max-shapes, got {args.min_shapes} and "
                     f"{args.max_shapes}")
    if args.max_shapes + 1 > 8:  # each surface is MIN_COLOUR_DISTANCE from all others
        parser.error(f"--max-shapes must be <= 7 (distinct colours), got {args.max_shapes}")
    if not 0 < args.min_radius <= args.max_radius <= 1:
        parser.error(f"need 0 < --min-radius <= --max-radius <= 1, got {args.min_radius} and "
                     f"{args.max_radius}")
    largest = math.pi * args.max_radius**2
    if not 0 <= args.min_front_area < largest:
        parser.error(f"--min-front-area must be in [0, {largest:.3f}) (the largest disc's area "
                     f"at --max-radius), got {args.min_front_area}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.check(parser, args)
    return args.handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
