"""A zero-shot benchmark with known answers: dead-leaves scenes, figure-ground and edges scored.

    # 600 training + 50 test scenes, 64 px (seed 0)
    python recipes/zeroshot_layers.py make-data --output-dir data/leaves
    # pretrain on them (any gmae_imagenet.py settings; these are docs/zeroshot.md's run C)
    python recipes/gmae_imagenet.py --preset demo --dataset imagefolder --data-path data/leaves \\
        --epochs 600 --eval-every 100 --output-dir runs/leaves
    # score a checkpoint against the baselines: one markdown table, then a summary line
    python recipes/zeroshot_layers.py score --checkpoint runs/leaves/checkpoint-00009600.pt \\
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

**Score.** ``score`` reads ``DIR/test``, reconstructs every test image with the checkpoint's GMAE
the way it was trained (``--num-masks`` reconstructions at ``--mask-ratio``, the checkpoint's
own by default, whose masks together show every patch; see ``recipes/zeroshot_bsds.py``) and
prints one markdown table:

- figure-ground IoU (mean over images) of :func:`splathead.zeroshot.figure_ground` (the front
  ``1/--num-layers`` of the depth order, alpha > 0.5, voted over the masks) with the front object;
- edge ODS of the averaged :func:`splathead.zeroshot.soft_edges` against the occlusion boundaries
  (:mod:`splathead_recipes.bsds`, ``--max-dist`` of the diagonal, also stated in pixels);
- render MSE of the reconstructions (model size, [0, 1] RGB);
- baselines: "everything" (the whole image is figure), "centre disc" (a centred disc of the test
  set's mean front-object area), Sobel on the input (edges), and the control: the same Gaussians
  with their depths shuffled among them (5 shuffles, mean), which keeps every 2D footprint and
  colour and destroys only the depth order;
- comparison rows: the other fixed order, and all patches at once (``--mask-ratio 0``);

then the figure-ground IoU gain of the depth order over the control, paired per scene, with a 95%
confidence interval (scipy's bootstrap of the mean, seeded).

The order is ``--order auto`` by default: :func:`splathead.zeroshot.choose_order` on the first
``--batch-size`` *training* images (no labels), logged and named in the table. The last line is
``iou=X iou_shuffled=Y ods=Z ods_shuffled=W`` for the default settings. Images are resized
(bicubic) to the model's input and the maps back (bilinear) to the data's size. The test set is
read whole before the model is loaded: a missing or unreadable file, or one of another size,
ends ``score`` with exit status 2 naming it (:mod:`splathead_recipes.image_files`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.stats import bootstrap
from skimage.draw import disk, ellipse, polygon
from zeroshot_bsds import load_model, model_input, model_options, sobel_edges

from splathead_recipes.bsds import MAX_DIST, NTHRESH, check_max_dist, evaluate_image, summarize
from splathead_recipes.cli import ConfigError
from splathead_recipes.image_files import read_mask, read_rgb, same_size
from splathead.gaussians import Gaussians
from splathead.zeroshot import choose_order, figure_ground, masked_reconstructions, soft_edges
from splathead_recipes.models import (
    check_checkpoint_flag,
    check_mask_ratio,
    run_checkpoint_command,
)

SHAPES = ("disc", "ellipse", "rectangle", "triangle")
NUM_SHUFFLES = 5
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


def read_test_set(test_dir: Path, ids: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images ``[n h w 3]`` uint8, front masks and boundaries ``[n h w]`` bool of ``ids``, all of
    one size; :class:`~splathead_recipes.image_files.ImageFileError` names a file that is
    missing, unreadable or of another size."""
    image_paths = [test_dir / "images" / f"{image_id}.png" for image_id in ids]
    images = [read_rgb(path) for path in image_paths]
    stacked = [same_size(images, image_paths)]
    for folder in ("front", "boundaries"):
        paths = [test_dir / folder / f"{image_id}.png" for image_id in ids]
        stacked.append(same_size([read_mask(path) for path in paths], paths, like=images,
                                 like_paths=image_paths))
    return tuple(stacked)


@dataclass
class Analysis:
    """What one way of reading the model gives on the test set."""

    figure: np.ndarray  # [n h w] bool, the data's size
    edges: np.ndarray  # [n h w] in [0, 1]
    mse: float


def shuffle_depths(gaussians: Gaussians, generator: torch.Generator) -> Gaussians:
    """The same Gaussians with their centres' depths (z) permuted within each image: under the
    default orthographic camera every 2D footprint and colour stays and only the depth order
    changes (with the authors' footprint, ``Camera.footprint_depth``, each footprint is also
    resized by its new depth)."""
    batch, count = gaussians.means.shape[:2]
    permutation = torch.argsort(torch.rand(batch, count, generator=generator), dim=1)
    depths = torch.gather(gaussians.means[..., 2], 1, permutation.to(gaussians.means.device))
    return gaussians.replace(means=torch.cat([gaussians.means[..., :2], depths[..., None]], -1))


@torch.no_grad()
def analyse(model, images: np.ndarray, args, *, order: str, mask_ratio: float | None,
            shuffle_seed: int | None = None) -> Analysis:
    """Figure-ground, soft edges and render MSE of ``images`` (uint8 ``[n h w 3]``)."""
    size = images.shape[1:3]
    figures, edges, errors = [], [], []
    generator = None if shuffle_seed is None else torch.Generator().manual_seed(shuffle_seed)
    for start in range(0, len(images), args.batch_size):
        batch = model_input(list(images[start : start + args.batch_size]), model.img_size)
        outputs = masked_reconstructions(model, (batch - model.mean) / model.std,
                                         mask_ratio=mask_ratio, num_masks=args.num_masks,
                                         seed=args.mask_seed)
        votes, soft = [], []
        for output in outputs:
            gaussians = output.gaussians.to(torch.float32)
            if generator is not None:
                gaussians = shuffle_depths(gaussians, generator)
            votes.append(figure_ground(gaussians, model.renderer, num_layers=args.num_layers,
                                       order=order).float())
            soft.append(soft_edges(gaussians, model.renderer, layer_counts=args.layer_counts,
                                   order=order, threshold=args.threshold))
            errors.append(((output.image - batch) ** 2).mean(dim=(1, 2, 3)))
        vote = F.interpolate(torch.stack(votes).mean(0)[:, None], size, mode="bilinear")
        soft_map = F.interpolate(torch.stack(soft).mean(0)[:, None], size, mode="bilinear")
        figures.append(vote[:, 0] > 0.5)
        edges.append(soft_map[:, 0].clamp(0, 1))
    return Analysis(figure=torch.cat(figures).numpy(), edges=torch.cat(edges).numpy(),
                    mse=float(torch.cat(errors).mean()))


def image_ious(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """``[n]``: |P & T| / |P | T| per image (``[n h w]`` bool; T is never empty)."""
    intersection = (predicted & truth).sum(axis=(1, 2))
    union = (predicted | truth).sum(axis=(1, 2))
    return intersection / np.maximum(union, 1)


def mean_iou(predicted: np.ndarray, truth: np.ndarray) -> float:
    return float(image_ious(predicted, truth).mean())


def gain_interval(gains: np.ndarray) -> tuple[float, float]:
    """95% confidence interval of the mean of per-image ``gains`` (scipy's BCa bootstrap, seeded);
    the mean itself where the gains cannot vary."""
    if len(gains) < 2 or np.ptp(gains) == 0:
        return float(gains.mean()), float(gains.mean())
    interval = bootstrap((gains,), np.mean, confidence_level=0.95,
                         random_state=np.random.default_rng(0)).confidence_interval
    return float(interval.low), float(interval.high)


def edge_ods(edges: np.ndarray, boundaries: np.ndarray, args) -> float:
    counts = [evaluate_image(edge_map.astype(np.float64), [truth], nthresh=args.nthresh,
                             max_dist=args.max_dist)
              for edge_map, truth in zip(edges, boundaries)]
    return summarize(counts).ods


def centre_disc(shape: tuple[int, int], area: float) -> np.ndarray:
    """``[h w]`` bool: a disc at the image centre covering ``area`` (a fraction) of the image."""
    height, width = shape
    mask = np.zeros(shape, dtype=bool)
    rows, columns = disk(((height - 1) / 2, (width - 1) / 2),
                         math.sqrt(area * height * width / math.pi), shape=shape)
    mask[rows, columns] = True
    return mask


def score(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir)
    ids = sorted(path.stem for path in (data_dir / "test" / "images").glob("*.png"))
    ids = ids[: args.limit] if args.limit else ids
    train_paths = sorted((data_dir / "train").glob("*/*.png"))[: args.batch_size]
    if not ids or not train_paths:
        raise ConfigError(f"--data-dir {data_dir}: no test/images/*.png or train/*/*.png "
                          "(write it with make-data)")
    images, fronts, boundaries = read_test_set(data_dir / "test", ids)
    train = [read_rgb(path) for path in train_paths] if args.order == "auto" else []
    model = load_model(args.checkpoint, img_size=args.img_size, device=torch.device("cpu"))
    ratio = model.mask_ratio if args.mask_ratio is None else args.mask_ratio
    check_mask_ratio(model, ratio)
    order = args.order
    if order == "auto":
        with torch.no_grad():
            batch = model_input(train, model.img_size)
            output = masked_reconstructions(model, (batch - model.mean) / model.std,
                                            mask_ratio=ratio, seed=args.mask_seed)[0]
            choice = choose_order(output.gaussians.to(torch.float32), model.renderer)
        order = choice.order
        print(f"order auto: {order} (background score: far {choice.far_score:.3f}, near "
              f"{choice.near_score:.3f}; {len(train)} training images)", file=sys.stderr)
    other = "front_to_back" if order == "back_to_front" else "back_to_front"

    regime = f"ratio {ratio:g}, {args.num_masks} masks" if ratio else "all patches"
    default = analyse(model, images, args, order=order, mask_ratio=ratio)
    shuffled = [analyse(model, images, args, order=order, mask_ratio=ratio, shuffle_seed=seed)
                for seed in range(NUM_SHUFFLES)]
    iou, ods = mean_iou(default.figure, fronts), edge_ods(default.edges, boundaries, args)
    shuffled_ious = np.mean([image_ious(result.figure, fronts) for result in shuffled], axis=0)
    iou_shuffled = float(shuffled_ious.mean())
    gains = image_ious(default.figure, fronts) - shuffled_ious
    ods_shuffled = float(np.mean([edge_ods(result.edges, boundaries, args)
                                  for result in shuffled]))
    disc = centre_disc(fronts.shape[1:], float(fronts.mean()))
    label = f"{args.order}: {order}" if args.order == "auto" else order
    rows = [
        ("everything", mean_iou(np.ones_like(fronts), fronts), None, None),
        ("centre disc (mean front area)", mean_iou(np.broadcast_to(disc, fronts.shape), fronts),
         None, None),
        ("Sobel on the input", None, edge_ods(np.stack([sobel_edges(i) for i in images]),
                                              boundaries, args), None),
        (f"GMAE ({label}, {regime})", iou, ods, default.mse),
        (f"GMAE, shuffled depth (mean of {NUM_SHUFFLES})", iou_shuffled, ods_shuffled,
         default.mse),
    ]
    comparisons = [(f"GMAE ({other}, {regime})", other, ratio)]
    if ratio:
        comparisons.append((f"GMAE ({label}, all patches)", order, 0.0))
    for name, row_order, row_ratio in comparisons:
        result = analyse(model, images, args, order=row_order, mask_ratio=row_ratio)
        rows.append((name, mean_iou(result.figure, fronts),
                     edge_ods(result.edges, boundaries, args), result.mse))

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    height, width = images.shape[1:3]
    tolerance = args.max_dist * math.hypot(height, width)
    table = [
        f"{len(ids)} test scenes of {data_dir}, {height}x{width} px; GMAE {args.checkpoint}; "
        f"figure = front {1}/{args.num_layers} of the depth order; edge ODS at max-dist "
        f"{args.max_dist:g} of the diagonal ({tolerance:.2f} px), nthresh {args.nthresh}",
        "",
        "| method | figure-ground IoU | edge ODS | render MSE |",
        "|---|---|---|---|",
        *(f"| {name} | {cell(a)} | {cell(b)} | {cell(c)} |" for name, a, b, c in rows),
        "",
        "figure-ground IoU gain of the depth order over the shuffled control, paired per scene: "
        "{:+.3f} (95% CI {:+.3f} to {:+.3f})".format(gains.mean(), *gain_interval(gains)),
    ]
    text = "\n".join(table)
    if args.output:
        Path(args.output).write_text(text + "\n")
    print(text)
    print(f"iou={iou:.3f} iou_shuffled={iou_shuffled:.3f} ods={ods:.3f} "
          f"ods_shuffled={ods_shuffled:.3f}")
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

    scoring = commands.add_parser("score", help="score a checkpoint's layers on the test scenes")
    scoring.add_argument("--checkpoint", required=True,
                         help="gmae_imagenet.py checkpoint, or 'none' (untrained tiny)")
    scoring.add_argument("--data-dir", required=True, help="a make-data folder")
    scoring.add_argument("--output", default=None,
                         help="also write the table to this new markdown file")
    scoring.add_argument("--limit", type=int, default=0, help="first N test scenes only (0: all)")
    scoring.add_argument("--img-size", type=int, default=64, help="input size of --checkpoint none")
    scoring.add_argument("--num-layers", type=int, default=4,
                         help="depth layers for figure-ground; the front one is the figure")
    scoring.add_argument("--batch-size", type=int, default=16, help="images per GMAE call")
    scoring.add_argument("--nthresh", type=int, default=NTHRESH, help="edge thresholds")
    scoring.add_argument("--max-dist", type=float, default=MAX_DIST,
                         help="edge match tolerance, fraction of the image diagonal")
    model_options(scoring)
    scoring.set_defaults(handler=score, check=check_score)
    return parser


def check_score(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit 2 naming the flag when a ``score`` setting cannot work, before any work."""
    data_dir = Path(args.data_dir)
    for folder in ("test/images", "test/front", "test/boundaries", "train"):
        if not (data_dir / folder).is_dir():
            parser.error(f"--data-dir {data_dir} has no {folder}/ (write it with make-data)")
    check_checkpoint_flag(parser, args.checkpoint)
    if args.output and Path(args.output).exists():
        parser.error(f"--output {args.output} exists; score never writes over a file")
    try:
        check_max_dist(args.max_dist)
    except ValueError as error:
        parser.error(f"--max-dist {str(error).removeprefix('max_dist ')}")
    checks = {"--nthresh": args.nthresh >= 1, "--batch-size": args.batch_size >= 1,
              "--num-masks": args.num_masks >= 1, "--limit": args.limit >= 0,
              "--num-layers": args.num_layers >= 1, "--mask-seed": args.mask_seed >= 0}
    for flag, ok in checks.items():
        if not ok:
            parser.error(f"{flag} must be >= {0 if flag in ('--limit', '--mask-seed') else 1}")
    if args.mask_ratio is not None and not 0 <= args.mask_ratio < 1:
        parser.error(f"--mask-ratio must lie in [0, 1), got {args.mask_ratio}")
    if not args.layer_counts or min(args.layer_counts) < 1:
        parser.error(f"--layer-counts must be positive, got {args.layer_counts}")


def check_data_folder(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit 2 unless ``--output-dir`` is new or an empty folder and ``--num-train`` and
    ``--num-test`` are positive (any ``make-data``)."""
    output_dir = Path(args.output_dir)
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        parser.error(f"--output-dir {output_dir} exists and is not an empty folder; "
                     "make-data never writes over files")
    if args.num_train < 1 or args.num_test < 1:
        parser.error(f"--num-train and --num-test must be >= 1, got {args.num_train} and "
                     f"{args.num_test}")


def check_make_data(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit 2 naming the flag when a ``make-data`` setting cannot work, before any file."""
    check_data_folder(parser, args)
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
    return run_checkpoint_command(args)


if __name__ == "__main__":
    raise SystemExit(main())
