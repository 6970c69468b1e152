"""Zero-shot GMAE edges on BSDS500, scored by the boundary benchmark beside classic baselines.

    # score soft edge maps (<id>.png, or <id>.mat holding ucm2) against BSDS annotations
    python recipes/zeroshot_bsds.py score --pred-dir runs/bsds/sobel \\
        --gt-dir ../shared/data/bsds500/val/groundTruth --workers 2

    # predict with a GMAE checkpoint and the Sobel / Canny baselines, score all, print a table
    python recipes/zeroshot_bsds.py run --data-dir ../shared/data/bsds500/val \\
        --checkpoint runs/gmae/checkpoint-00010000.pt --output-dir runs/bsds

``score`` prints ``ODS=0.xxx OIS=0.xxx AP=0.xxx`` on its last line; ``run`` prints one markdown
table (method, ODS, OIS, AP) last and also writes it to ``<output-dir>/results.md``. The benchmark
is the official protocol (:mod:`splathead_recipes.bsds`): 99 thresholds by default, maxDist 0.0075,
thinning. It costs 0.1-0.5 s of one CPU core per threshold and annotator (about 30 s per image
at 99 thresholds), so ``--workers``, ``--nthresh`` and ``--limit`` trade time for completeness.

GMAE edges: each image is resized (bicubic, aspect ratio not kept) to the model's square input
and reconstructed as in training: ``--num-masks`` reconstructions at ``--mask-ratio`` (the
checkpoint's own by default) whose masks together show every patch; ``--mask-ratio 0`` shows all
patches at once. :func:`splathead.zeroshot.soft_edges` votes over depth layer counts, the edge maps
of the reconstructions are averaged and resized back to the image's size bilinearly. ``--order
auto`` (default) picks the model's background end of the depth order once, from the first
``--batch-size`` images (:func:`splathead.zeroshot.choose_order`), and logs it. ``--checkpoint none``
builds an untrained ``gmae_vit_tiny`` (a smoke test of the pipeline, not a result). ``--ply``
also writes the ``--num-vis`` images' Gaussians as ``<output-dir>/ply/<id>.ply``, which 3D
Gaussian-splatting viewers open (:func:`splathead.export_ply`).
Checkpoints are those of ``recipes/gmae_imagenet.py``: ``{"model": state_dict, "config": {...}}``;
the model is rebuilt from that config by the recipes' shared ``splathead_recipes.models``.

Baselines on the grey image at full size: Sobel gradient magnitude (``skimage.filters.sobel``)
scaled to a maximum of 1 per image, and a soft Canny: the fraction of 20 ``skimage.feature.canny``
settings (5 smoothing sigmas x 4 quantile hysteresis thresholds) that mark the pixel.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from skimage.color import rgb2gray
from skimage.feature import canny
from skimage.filters import sobel
from tqdm.auto import tqdm

from splathead import export_ply, gmae_vit_tiny
from splathead.viz import MIN_PANEL_SIZE, draw_gaussians, save_grid, save_layer_grid
from splathead.zeroshot import (
    CHANGE_THRESHOLD,
    EDGE_LAYER_COUNTS,
    choose_order,
    figure_ground,
    masked_reconstructions,
    render_layers,
    soft_edges,
)

from splathead_recipes.bsds import MAX_DIST, NTHRESH, check_max_dist, evaluate_dir
from splathead_recipes.cli import ConfigError
from splathead_recipes.image_files import read_rgb
from splathead_recipes.models import (
    check_checkpoint_flag,
    check_mask_ratio,
    load_pretrained,
    run_checkpoint_command,
)

log = logging.getLogger("zeroshot_bsds")

METHODS = ("gmae", "sobel", "canny")
CANNY_SIGMAS = (1.0, 1.5, 2.0, 3.0, 4.0)
CANNY_QUANTILES = (0.7, 0.8, 0.9, 0.95)  # high hysteresis threshold; the low one is 0.5x


def sobel_edges(image: np.ndarray) -> np.ndarray:
    """Gradient magnitude of the grey image, scaled to [0, 1] per image."""
    magnitude = sobel(rgb2gray(image))
    return magnitude / max(float(magnitude.max()), 1e-12)


def canny_edges(image: np.ndarray) -> np.ndarray:
    """Fraction of the Canny settings (sigmas x quantile thresholds) that find an edge."""
    grey = rgb2gray(image)
    votes = [
        canny(grey, sigma=sigma, low_threshold=0.5 * q, high_threshold=q, use_quantiles=True)
        for sigma in CANNY_SIGMAS
        for q in CANNY_QUANTILES
    ]
    return np.mean(votes, axis=0)


def save_edge_png(path: Path, edges: np.ndarray) -> None:
    """A soft map in [0, 1] as the 8-bit PNG the benchmark reads (value / 255)."""
    Image.fromarray(np.round(np.clip(edges, 0, 1) * 255).astype(np.uint8)).save(path)


def model_input(images: list[np.ndarray], size: tuple[int, int]) -> torch.Tensor:
    """``[b 3 h w]`` in [0, 1]: each image resized (bicubic, antialiased) to the model's size."""
    resized = [
        F.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255, size,
                      mode="bicubic", antialias=True)
        for image in images
    ]
    return torch.cat(resized).clamp(0, 1)


def load_model(checkpoint: str, *, img_size: int, device: torch.device) -> torch.nn.Module:
    """A GMAE from a pretraining checkpoint, or an untrained ``gmae_vit_tiny`` for ``none``."""
    if checkpoint == "none":
        log.warning("--checkpoint none: untrained gmae_vit_tiny(img_size=%d)", img_size)
        model = gmae_vit_tiny(img_size=img_size)
    else:
        model = load_pretrained(Path(checkpoint))
    return model.to(device).eval()


@torch.no_grad()
def reconstruct(model, images: list[np.ndarray], args, device: torch.device):
    """Model-size inputs ``[b 3 h w]`` in [0, 1] and the model's ``--num-masks``
    reconstructions of them at ``--mask-ratio``."""
    batch = model_input(images, model.img_size).to(device)
    outputs = masked_reconstructions(model, (batch - model.mean) / model.std,
                                     mask_ratio=args.mask_ratio, num_masks=args.num_masks,
                                     seed=args.mask_seed)
    return batch, outputs


@torch.no_grad()
def resolve_order(model, images: list[np.ndarray], args, device: torch.device) -> None:
    """Replace ``--order auto`` by the order :func:`choose_order` reads from ``images``."""
    if args.order != "auto":
        return
    _, outputs = reconstruct(model, images, args, device)
    choice = choose_order(outputs[0].gaussians.to(torch.float32), model.renderer)
    log.info("order auto: %s (background score far %.3f, near %.3f, from %d images)",
             choice.order, choice.far_score, choice.near_score, len(images))
    args.order = choice.order


@torch.no_grad()
def gmae_edges(model, images: list[np.ndarray], args, device) -> list[np.ndarray]:
    """Soft edge maps of ``images`` (uint8 ``[h w 3]``, any sizes) at their own sizes, averaged
    over the masked reconstructions."""
    _, outputs = reconstruct(model, images, args, device)
    edges = torch.stack([
        soft_edges(output.gaussians.to(torch.float32), model.renderer,
                   layer_counts=args.layer_counts, order=args.order, threshold=args.threshold)
        for output in outputs
    ]).mean(dim=0)
    resized = [
        F.interpolate(edge_map[None, None], image.shape[:2], mode="bilinear")[0, 0]
        for image, edge_map in zip(images, edges)
    ]
    return [edge_map.clamp(0, 1).cpu().numpy() for edge_map in resized]


@torch.no_grad()
def save_figures(model, ids: list[str], images: list[np.ndarray], output_dir: Path, args,
                 device) -> None:
    """Overview (input | render | Gaussians | edges | figure-ground) and depth-layer grids of
    the first masked reconstruction; with ``--ply`` its Gaussians as ``ply/<id>.ply``."""
    batch, outputs = reconstruct(model, images, args, device)
    output = outputs[0]
    gaussians, renderer = output.gaussians.to(torch.float32), model.renderer
    if args.ply:
        (output_dir / "ply").mkdir(parents=True, exist_ok=True)
        for index, image_id in enumerate(ids):
            export_ply(gaussians, output_dir / "ply" / f"{image_id}.ply", index=index)
        log.info("wrote %d PLY files to %s", len(ids), output_dir / "ply")
    edges = soft_edges(gaussians, renderer, layer_counts=args.layer_counts, order=args.order,
                       threshold=args.threshold)
    figure = figure_ground(gaussians, renderer, order=args.order)
    ellipses = draw_gaussians(gaussians, renderer.camera, min_panel_size=MIN_PANEL_SIZE)
    panels = [batch, output.image, ellipses, edges[:, None], figure[:, None].float()]
    save_grid(output_dir / "overview.png", panels)
    layers = render_layers(gaussians, renderer, num_layers=args.vis_layers, order=args.order)
    save_layer_grid(output_dir / "layers.png", batch, layers, edges=edges, figure=figure,
                    max_images=len(images))
    log.info("wrote %s and %s", output_dir / "overview.png", output_dir / "layers.png")


def predict(args, ids: list[str], images: list[np.ndarray], model, device: torch.device) -> None:
    """Write ``<output-dir>/<method>/<id>.png`` for every method and image."""
    output_dir = Path(args.output_dir)
    predictors = {
        "gmae": lambda images: gmae_edges(model, images, args, device),
        "sobel": lambda images: [sobel_edges(image) for image in images],
        "canny": lambda images: [canny_edges(image) for image in images],
    }
    seconds = dict.fromkeys(args.methods, 0.0)
    for method in args.methods:
        (output_dir / method).mkdir(parents=True, exist_ok=True)
    for start in tqdm(range(0, len(ids), args.batch_size), desc="predicting", unit="batch"):
        batch_ids = ids[start : start + args.batch_size]
        for method in args.methods:
            began = time.perf_counter()
            edge_maps = predictors[method](images[start : start + args.batch_size])
            seconds[method] += time.perf_counter() - began
            for image_id, edge_map in zip(batch_ids, edge_maps):
                save_edge_png(output_dir / method / f"{image_id}.png", edge_map)
    for method, total in seconds.items():
        log.info("%s: %.3f s per image to predict", method, total / len(ids))


def run(args: argparse.Namespace) -> int:
    data_dir, output_dir = Path(args.data_dir), Path(args.output_dir)
    ids = sorted(path.stem for path in (data_dir / "groundTruth").glob("*.mat"))
    ids = ids[: args.limit] if args.limit else ids
    if not ids:
        raise ConfigError(f"--data-dir {data_dir}: no groundTruth/*.mat (expected a BSDS split "
                          "with images/ and groundTruth/)")
    # Every image is read before any work, so a missing or unreadable one is named up front.
    images = [read_rgb(data_dir / "images" / f"{image_id}.jpg") for image_id in ids]
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    model = None
    if "gmae" in args.methods:
        model = load_model(args.checkpoint, img_size=args.img_size, device=device)
        check_mask_ratio(model, args.mask_ratio)
        resolve_order(model, images[: args.batch_size], args, device)
    predict(args, ids, images, model, device)
    if model is not None and args.num_vis:
        save_figures(model, ids[: args.num_vis], images[: args.num_vis], output_dir, args,
                     device)

    rows = []
    for method in args.methods:
        began = time.perf_counter()
        scores = evaluate_dir(
            output_dir / method,
            data_dir / "groundTruth",
            ids=ids,
            nthresh=args.nthresh,
            max_dist=args.max_dist,
            workers=args.workers,
        )
        elapsed = time.perf_counter() - began
        log.info("%s: %s, scored in %.1f s (%.1f s per image, nthresh %d, %d workers)", method,
                 scores.summary(), elapsed, elapsed / len(ids), args.nthresh, args.workers)
        rows.append(f"| {method} | {scores.ods:.3f} | {scores.ois:.3f} | {scores.ap:.3f} |")
    gmae = "untrained gmae_vit_tiny" if args.checkpoint == "none" else args.checkpoint
    header = f"BSDS500 {data_dir.name}: {len(ids)} images, nthresh {args.nthresh}, GMAE: {gmae}"
    table = "\n".join([header, "", "| method | ODS | OIS | AP |", "|---|---|---|---|", *rows])
    (output_dir / "results.md").write_text(table + "\n")
    print(table)
    return 0


def score(args: argparse.Namespace) -> int:
    began = time.perf_counter()
    scores = evaluate_dir(args.pred_dir, args.gt_dir, nthresh=args.nthresh,
                          max_dist=args.max_dist, workers=args.workers)
    elapsed, count = time.perf_counter() - began, len(scores.image_f1)
    log.info("scored %d images in %.1f s (%.2f s per image, nthresh %d, %d workers)", count,
             elapsed, elapsed / count, args.nthresh, args.workers)
    print(scores.summary())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def benchmark_options(command: argparse.ArgumentParser) -> None:
        command.add_argument("--nthresh", type=int, default=NTHRESH,
                             help="thresholds (official: 99)")
        command.add_argument("--max-dist", type=float, default=MAX_DIST,
                             help="match tolerance, fraction of the image diagonal")
        command.add_argument("--workers", type=int, default=1, help="scoring processes")

    scoring = commands.add_parser("score", help="score a folder of soft edge maps")
    scoring.add_argument("--pred-dir", required=True, help="<id>.png soft maps or <id>.mat ucm2")
    scoring.add_argument("--gt-dir", required=True, help="BSDS groundTruth folder of <id>.mat")
    benchmark_options(scoring)
    scoring.set_defaults(handler=score)

    running = commands.add_parser("run", help="predict GMAE and baseline edges, score, tabulate")
    running.add_argument("--data-dir", required=True,
                         help="BSDS split with images/ and groundTruth/")
    running.add_argument("--checkpoint", required=True,
                         help="gmae_imagenet.py checkpoint, or 'none' (untrained tiny)")
    running.add_argument("--output-dir", default="runs/zeroshot_bsds")
    running.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    running.add_argument("--limit", type=int, default=0, help="first N images only (0: all)")
    running.add_argument("--img-size", type=int, default=64, help="input size of --checkpoint none")
    model_options(running)
    running.add_argument("--batch-size", type=int, default=4, help="images per GMAE call")
    running.add_argument("--vis-layers", type=int, default=4, help="depth layers in layers.png")
    running.add_argument("--num-vis", type=int, default=4, help="images in the figures (0: none)")
    running.add_argument("--ply", action="store_true",
                         help="also write the --num-vis images' Gaussians as <output-dir>/ply/"
                         "<id>.ply for 3D Gaussian-splatting viewers (needs splathead[ply])")
    running.add_argument("--device", default="auto", help="auto, cpu or cuda")
    benchmark_options(running)
    running.set_defaults(handler=run)
    return parser


def model_options(command: argparse.ArgumentParser) -> None:
    """How a GMAE is read: mask regime, depth order, layer settings."""
    command.add_argument("--mask-ratio", type=float, default=None,
                         help="patches hidden per reconstruction (default: the checkpoint's "
                         "training ratio; 0: all patches seen at once)")
    command.add_argument("--num-masks", type=int, default=4,
                         help="reconstructions per image whose masks together show every patch "
                         "(4 at ratio 0.75); their edges are averaged")
    command.add_argument("--mask-seed", type=int, default=0, help="seed of the masks")
    command.add_argument("--order", choices=("auto", "back_to_front", "front_to_back"),
                         default="auto", help="depth order of the layers; auto: the model's "
                         "background end first (splathead.zeroshot.choose_order)")
    command.add_argument("--layer-counts", type=int, nargs="+", default=list(EDGE_LAYER_COUNTS))
    command.add_argument("--threshold", type=float, default=CHANGE_THRESHOLD,
                         help="colour change that makes a layer own a pixel")


def check_model_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit 2 naming the flag when the checkpoint, a mask or output setting is unusable, before
    any work."""
    if "gmae" in args.methods:
        check_checkpoint_flag(parser, args.checkpoint)
    if args.num_masks < 1:
        parser.error(f"--num-masks must be >= 1, got {args.num_masks}")
    if args.mask_ratio is not None and not 0 <= args.mask_ratio < 1:
        parser.error(f"--mask-ratio must lie in [0, 1), got {args.mask_ratio}")
    if args.ply and ("gmae" not in args.methods or args.num_vis < 1):
        parser.error("--ply writes the GMAE's Gaussians of the --num-vis images: it needs "
                     f"gmae in --methods and --num-vis >= 1, got --methods {' '.join(args.methods)}"
                     f" --num-vis {args.num_vis}")
    if args.ply and importlib.util.find_spec("plyfile") is None:
        parser.error("--ply needs plyfile: pip install 'splathead[ply]'")


def check_benchmark_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit 2 naming the flag when a benchmark setting is out of range, before any work."""
    try:
        check_max_dist(args.max_dist)
    except ValueError as error:
        parser.error(f"--max-dist {str(error).removeprefix('max_dist ')}")
    if args.nthresh < 1:
        parser.error(f"--nthresh must be >= 1, got {args.nthresh}")
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    check_benchmark_options(parser, args)
    if args.command == "run":
        check_model_flags(parser, args)
    return run_checkpoint_command(args)


if __name__ == "__main__":
    raise SystemExit(main())
