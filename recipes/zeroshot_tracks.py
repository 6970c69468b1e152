"""A zero-shot tracking benchmark with known answers: textured sprites moving over a textured
background, scored with the TAP-Vid metrics.

    # 512 training + 32 test clips of 8 frames, 32 px (seed 0)
    python recipes/zeroshot_tracks.py make-data --output-dir data/tracks
    # pretrain on them (any gmae_video.py settings; these are docs/zeroshot.md's measured run)
    python recipes/gmae_video.py --preset demo --dataset clips --data-path data/tracks/train \\
        --crop-scale 1.0 1.0 --max-step 0.125 --gaussians-per-token 1 --lr 2e-3 \\
        --eval-clips 32 --epochs 60 --eval-every 10 --checkpoint-every 64 --output-dir runs/tracks
    # score a checkpoint against the baselines: tables, then a summary line
    python recipes/zeroshot_tracks.py score --checkpoint runs/tracks/checkpoint-00001920.pt \\
        --data-dir data/tracks

**Data.** Every clip is :func:`splathead_recipes.video_data.draw_sprite_clip` (the video demo's
clips): ``--num-sprites`` textured discs and squares moving on straight paths at constant
velocity, each drawn over the ones before it, over a static two-colour wave background. Each
clip draws from its own seed (seed, split, index), so the same flags write the same files and
the number of training clips never changes the test set. Written files:

- ``train/<i>/<f>.png``: the training clips, one folder of frames per clip, as
  ``gmae_video.py --dataset clips --data-path DIR/train`` reads them;
- ``test/clips/<i>/<f>.png``: the test clips;
- ``test/tracks.npz``: the TAP-Vid ground truth of ``--num-points`` query points per test clip,
  half on sprites and half on the background, all chosen at frame 0 among pixels at least one
  pixel away from every sprite's rim (so the texture under them is not an anti-aliased edge):
  ``query_points [n q 3]`` as (t, y, x), ``tracks [n q t 2]`` as (x, y) and ``occluded [n q t]``
  (bool). A sprite point moves with its sprite; a background point stays. A point is occluded
  where a sprite drawn after its own (any sprite, for the background) covers it (the point lies
  inside that sprite's rim), or where it has left the image. Coordinates are in pixels of the
  clip, a pixel's centre at (column + 0.5, row + 0.5);
- ``meta.json``: the flags that made it.

**Score.** ``score`` reads ``DIR/test``, takes each clip's first ``num_frames`` frames (the
model's), runs the checkpoint's VideoGMAE on every clip at ``--mask-ratio`` (0 by default: every
tubelet seen, as tracking at test time sees the whole clip) and tracks every query point with
:func:`splathead.tracking.track_points`, then prints one markdown table of the TAP-Vid metrics
(:func:`splathead.tracking.tapvid_metrics`, mean over clips, ``--query-mode``):

- the model's tracks and visibility;
- static points: every query stays where it is, always visible (no model);
- the control: the model's own Gaussians with their motion shuffled among them (each Gaussian
  keeps its frame-0 centre, shape, opacity and colours and takes another Gaussian's
  displacements; ``NUM_SHUFFLES`` shuffles, mean), which keeps the first-frame layout and the
  set of motions and destroys only which Gaussian moves how;

then the model's average Jaccard gain over static points and over the control, paired per clip,
each with a 95% confidence interval (scipy's BCa bootstrap of the mean over clips, seeded, as
``zeroshot_layers.py``). The last line is ``aj=X delta_avg=Y oa=Z aj_static=W``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import gmae_video
import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from PIL import Image
from zeroshot_layers import check_data_folder, gain_interval

from splathead import VideoGaussians, VideoGMAE
from splathead.tracking import (
    TAPVID_THRESHOLDS, VISIBILITY_THRESHOLD, TapVidMetrics, tapvid_metrics, track_points)
from splathead_recipes import checkpoint
from splathead_recipes.cli import ConfigError, from_dict
from splathead_recipes.crops import normalize
from splathead_recipes.image_files import read_rgb, same_size
from splathead_recipes.models import run_checkpoint_command
from splathead_recipes.video_data import SpriteClip, draw_sprite_clip, frame_files

NUM_SHUFFLES = 5
RIM_MARGIN = 1.0
"""Least distance in pixels between a query point and any sprite's rim at the query frame."""
MOVING_PIXELS = 1.0
"""Least largest move (pixels, either axis) of a true track for the moving-points table."""
_SPLITS = {"train": 0, "test": 1}


@dataclass(frozen=True)
class TracksSpec:
    """How the clips are drawn (``make-data``'s flags)."""

    size: int = 32
    num_frames: int = 8
    num_sprites: int = 3
    num_points: int = 32
    """Query points per test clip (half on sprites where there are enough such pixels)."""
    seed: int = 0


def clip_seed(spec: TracksSpec, split: str, index: int) -> int:
    """The seed of clip ``index`` of ``split``: a function of (seed, split, index) only."""
    return int(np.random.SeedSequence([spec.seed, _SPLITS[split], index]).generate_state(1)[0])


def sprite_distances(clip: SpriteClip, points: np.ndarray, frame: int) -> np.ndarray:
    """``[k ...]``: each sprite's distance (Chebyshev for squares, Euclidean for discs, pixels)
    from ``points [... 2]`` (x, y) at ``frame``; a point is inside sprite ``i`` where it is below
    ``clip.radii[i]`` (``draw_sprite_clip`` draws coverage ``radius - distance + 0.5``)."""
    offsets = points[None] - clip.centres[:, frame].numpy().reshape(-1, *[1] * (points.ndim - 1), 2)
    squares = clip.squares.numpy().reshape(-1, *[1] * (points.ndim - 1))
    return np.where(squares, np.abs(offsets).max(-1), np.hypot(offsets[..., 0], offsets[..., 1]))


def ground_truth(clip: SpriteClip, rng: np.random.Generator, num_points: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Query points at frame 0 and their TAP-Vid ground truth (module docstring):
    ``query_points [q 3]`` (t, y, x), ``tracks [q t 2]`` (x, y), ``occluded [q t]``."""
    size, num_frames = clip.frames.shape[-1], clip.frames.shape[0]
    radii = clip.radii.numpy().reshape(-1, 1, 1)
    centres = np.arange(size) + 0.5
    grid = np.stack(np.meshgrid(centres, centres, indexing="xy"), axis=-1)  # [h w 2] (x, y)
    distances = sprite_distances(clip, grid, 0)  # [k h w]
    inside = distances < radii
    front = np.where(inside.any(0), len(radii) - 1 - inside[::-1].argmax(0), -1)  # [h w]
    clear = (np.abs(distances - radii) >= RIM_MARGIN).all(0)  # no rim within the margin
    candidates = {"sprite": np.flatnonzero(clear & (front >= 0)),
                  "background": np.flatnonzero(clear & (front < 0))}
    on_sprites = min(num_points // 2, len(candidates["sprite"]))
    chosen = np.concatenate([
        rng.choice(candidates["sprite"], on_sprites, replace=False),
        rng.choice(candidates["background"], num_points - on_sprites, replace=False)])
    points = grid.reshape(-1, 2)[chosen]  # [q 2] (x, y)
    owners = front.reshape(-1)[chosen]  # [q]: sprite index, -1 for the background
    motion = (clip.centres - clip.centres[:, :1]).numpy()  # [k t 2]
    moves = np.where(owners[:, None, None] >= 0, motion[owners], 0.0)  # [q t 2]
    tracks = points[:, None] + moves
    occluded = np.zeros(tracks.shape[:2], dtype=bool)
    for frame in range(num_frames):
        inside = sprite_distances(clip, tracks[:, frame], frame) < radii[..., 0]  # [k q]
        in_front = np.arange(len(radii))[:, None] > owners[None]
        occluded[:, frame] = (inside & in_front).any(0)
    occluded |= ((tracks < 0) | (tracks >= size)).any(-1)
    query_points = np.concatenate([np.zeros((num_points, 1)), points[:, ::-1]], axis=1)
    return query_points, tracks, occluded


def _save_clip(folder: Path, frames: torch.Tensor) -> None:
    folder.mkdir(parents=True)
    for index, frame in enumerate(frames.permute(0, 2, 3, 1).numpy()):
        Image.fromarray(frame).save(folder / f"{index:03d}.png")


def make_data(args: argparse.Namespace) -> int:
    output_dir = Path(args.output_dir)
    spec = TracksSpec(size=args.size, num_frames=args.num_frames, num_sprites=args.num_sprites,
                      num_points=args.num_points, seed=args.seed)
    output_dir.mkdir(parents=True, exist_ok=True)

    def draw(split: str, index: int) -> SpriteClip:
        return draw_sprite_clip(clip_seed(spec, split, index), num_frames=spec.num_frames,
                                size=spec.size, num_sprites=spec.num_sprites)

    for index in range(args.num_train):
        _save_clip(output_dir / "train" / f"{index:05d}", draw("train", index).frames)
    truths = []
    for index in range(args.num_test):
        clip = draw("test", index)
        _save_clip(output_dir / "test" / "clips" / f"{index:05d}", clip.frames)
        rng = np.random.default_rng([spec.seed, _SPLITS["test"], index])
        truths.append(ground_truth(clip, rng, spec.num_points))
    query_points, tracks, occluded = (np.stack(arrays) for arrays in zip(*truths))
    np.savez(output_dir / "test" / "tracks.npz", query_points=query_points.astype(np.float32),
             tracks=tracks.astype(np.float32), occluded=occluded)
    meta = {**asdict(spec), "num_train": args.num_train, "num_test": args.num_test}
    (output_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {args.num_train} training and {args.num_test} test clips of {spec.num_frames} "
          f"frames ({spec.size} px, {spec.num_points} query points each) to {output_dir}")
    return 0


def load_video_model(path: str, *, img_size: int) -> VideoGMAE:
    """The VideoGMAE of a ``gmae_video.py`` checkpoint, rebuilt from the config saved in it, or
    the demo preset's untrained model at ``img_size`` for ``none``; in eval mode on the CPU.

    Raises :class:`~splathead_recipes.checkpoint.CheckpointError` naming the file for anything
    else (unreadable, another recipe's, weights that do not fit)."""
    if path == "none":
        print(f"--checkpoint none: the untrained demo VideoGMAE at {img_size} px", file=sys.stderr)
        config = replace(gmae_video.PRESETS["demo"], img_size=img_size)
        torch.manual_seed(config.seed)
        return gmae_video.build_model(config).eval()
    state = checkpoint.load(Path(path))
    checkpoint.require_keys(state, Path(path), {"model", "config"}, "recipes/gmae_video.py")
    try:
        config = from_dict(gmae_video.VideoConfig, state["config"])
        model = gmae_video.build_model(config)
        model.load_state_dict(state["model"])
    except (TypeError, ConfigError, RuntimeError) as error:
        raise checkpoint.CheckpointError(
            f"{path}: not a VideoGMAE checkpoint of recipes/gmae_video.py whose weights fit its "
            f"config ({str(error).strip().splitlines()[-1].strip()})") from None
    return model.eval()


def read_test_set(data_dir: Path, limit: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """uint8 clips ``[n t h w 3]`` and the ground truth arrays of ``DIR/test`` (first ``limit``
    clips; all for 0), read whole before any model work:
    :class:`~splathead_recipes.image_files.ImageFileError` names a frame
    that is unreadable or of another size than the first; ``SystemExit`` names ``--data-dir``
    where the clips and the ground truth disagree."""
    folders = sorted(path for path in (data_dir / "test" / "clips").iterdir() if path.is_dir())
    folders = folders[:limit] if limit else folders
    with np.load(data_dir / "test" / "tracks.npz") as stored:
        truth = {name: stored[name][: len(folders)] for name in stored.files}
    if not folders or len(truth["query_points"]) != len(folders):
        raise SystemExit(f"error: --data-dir {data_dir}: {len(folders)} test clips but ground "
                         f"truth for {len(truth['query_points'])} (write it with make-data)")
    num_frames = truth["tracks"].shape[2]
    paths = []
    for folder in folders:
        frames = frame_files(folder)
        if len(frames) != num_frames:
            raise SystemExit(f"error: --data-dir {data_dir}: clip {folder} has {len(frames)} "
                             f"frames, its ground truth {num_frames} (write it with make-data)")
        paths += frames
    pixels = same_size([read_rgb(path) for path in paths], paths)
    return pixels.reshape(len(folders), num_frames, *pixels.shape[1:]), truth


def shuffle_motion(gaussians: VideoGaussians, generator: torch.Generator) -> VideoGaussians:
    """The control: every Gaussian keeps its frame-0 centre (and shape, opacity, colours) and
    takes the displacements of another Gaussian of its video (a random permutation per video)."""
    batch, _, count, _ = gaussians.means.shape
    permutation = torch.argsort(torch.rand(batch, count, generator=generator), dim=1)
    moves = gaussians.displacements()
    shuffled = torch.gather(moves, 2, permutation[:, None, :, None].expand_as(moves))
    return replace(gaussians, means=gaussians.means[:, :1] + shuffled)


@torch.no_grad()
def model_tracks(model: VideoGMAE, clips: np.ndarray, queries: np.ndarray, args,
                 shuffle_seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Tracks ``[n q t 2]`` (clip pixels) and occlusion ``[n q t]`` of ``queries [n q 3]`` (clip
    pixels) in ``clips [n t h w 3]`` (already ``model.num_frames`` long): every tubelet seen,
    clips resized (bicubic) to the model's input and the tracks scaled back."""
    height, width = clips.shape[2:4]
    model_height, model_width = model.img_size
    to_model = np.array([1.0, model_height / height, model_width / width])
    generator = None if shuffle_seed is None else torch.Generator().manual_seed(shuffle_seed)
    tracks, occluded = [], []
    for start in range(0, len(clips), args.batch_size):
        frames = torch.from_numpy(clips[start : start + args.batch_size])
        count = frames.shape[0]
        frames = rearrange(frames, "b t h w c -> (b t) c h w").float()
        frames = F.interpolate(frames, model.img_size, mode="bicubic", antialias=True)
        frames = frames.round().clamp(0, 255).to(torch.uint8)
        videos = rearrange(normalize(frames), "(b t) c h w -> b t c h w", b=count)
        ids_keep = torch.arange(model.num_patches).expand(count, -1)
        gaussians = model.decode(model.encode(videos, ids_keep), ids_keep)
        if generator is not None:
            gaussians = shuffle_motion(gaussians, generator)
        points = torch.from_numpy(queries[start : start + count] * to_model).float()
        result = track_points(gaussians, model.decoder.renderer, points,
                              visibility_threshold=args.visibility_threshold)
        scale = torch.tensor([width / model_width, height / model_height])
        tracks.append((result.tracks * scale).numpy())
        occluded.append(result.occluded.numpy())
    return np.concatenate(tracks), np.concatenate(occluded)


def score(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir)
    clips, truth = read_test_set(data_dir, args.limit)
    model = load_video_model(args.checkpoint, img_size=args.img_size)
    frames = model.num_frames
    if clips.shape[1] < frames:
        raise SystemExit(f"error: --data-dir {data_dir}: test clips have {clips.shape[1]} frames, "
                         f"fewer than the model's {frames} (--checkpoint {args.checkpoint})")
    clips = clips[:, :frames]
    queries = truth["query_points"]
    gt_tracks, gt_occluded = truth["tracks"][:, :, :frames], truth["occluded"][:, :, :frames]

    # points whose true track moves at least MOVING_PIXELS from the query: static points score
    # the others perfectly, so they are also scored apart
    moving = (np.abs(gt_tracks - queries[:, :, None, [2, 1]]).max(axis=(2, 3))
              >= MOVING_PIXELS)

    def metrics(tracks: np.ndarray, occluded: np.ndarray, subset: bool) -> TapVidMetrics:
        arrays = (queries, gt_occluded, gt_tracks, occluded, tracks)
        if not subset:
            return tapvid_metrics(*arrays, query_mode=args.query_mode)
        clips = [tapvid_metrics(*(a[i : i + 1, moving[i]] for a in arrays),
                                query_mode=args.query_mode) for i in range(len(queries))]
        return TapVidMetrics(*(np.concatenate([getattr(c, name) for c in clips])
                               for name in TapVidMetrics._fields))

    static_name, model_name = "static points (never move, always visible)", f"GMAE ({args.checkpoint})"
    predictions = {
        static_name: (np.broadcast_to(queries[:, :, None, [2, 1]], gt_tracks.shape),
                      np.zeros_like(gt_occluded)),
        model_name: model_tracks(model, clips, queries, args)}
    shuffled = [model_tracks(model, clips, queries, args, shuffle_seed=seed)
                for seed in range(NUM_SHUFFLES)]
    control = f"GMAE, motion shuffled among its Gaussians (mean of {NUM_SHUFFLES})"
    blocks = {}
    for subset in (False, True):
        rows = {name: metrics(*prediction, subset) for name, prediction in predictions.items()}
        controls = [metrics(*prediction, subset) for prediction in shuffled]
        rows[control] = TapVidMetrics(*(np.mean([getattr(c, name) for c in controls], axis=0)
                                        for name in TapVidMetrics._fields))
        blocks[subset] = rows
    static, ours = blocks[False][static_name], blocks[False][model_name]
    height, width = clips.shape[2:4]
    table = [
        f"{len(clips)} test clips of {data_dir}, first {frames} frames, {width}x{height} px, "
        f"{queries.shape[1]} query points each ({moving.sum()} of {moving.size} move >= "
        f"{MOVING_PIXELS:g} px), query mode {args.query_mode}; thresholds "
        f"{', '.join(map(str, TAPVID_THRESHOLDS))} px; visibility threshold "
        f"{args.visibility_threshold:g}; means over the clips with a scored visible point",
    ]
    for subset, rows in blocks.items():
        scored = ~np.isnan(rows[model_name].average_jaccard)

        def mean(values: np.ndarray) -> float:
            return float(values[scored].mean())

        def gain(other: TapVidMetrics) -> str:
            gains = (rows[model_name].average_jaccard - other.average_jaccard)[scored]
            return "{:+.3f} (95% CI {:+.3f} to {:+.3f})".format(gains.mean(),
                                                                *gain_interval(gains))

        title = "moving points only" if subset else "all points"
        table += [
            "",
            f"{title} ({scored.sum()} clips)",
            "",
            "| method | AJ | delta_avg | OA | "
            + " | ".join(f"delta_{d}" for d in TAPVID_THRESHOLDS) + " |",
            "|---|---|---|---|" + "---|" * len(TAPVID_THRESHOLDS),
            *(f"| {name} | {mean(m.average_jaccard):.3f} | "
              f"{mean(m.average_pts_within_thresh):.3f} | {mean(m.occlusion_accuracy):.3f} | "
              + " | ".join(f"{mean(m.pts_within[:, k]):.3f}"
                           for k in range(len(TAPVID_THRESHOLDS))) + " |"
              for name, m in rows.items()),
            "",
            f"{title}: AJ gain over static points, paired per clip: "
            f"{gain(rows[static_name])}",
            f"{title}: AJ gain over the shuffled-motion control, paired per clip: "
            f"{gain(rows[control])}",
        ]
    scored = ~np.isnan(ours.average_jaccard)
    summary = (f"aj={ours.average_jaccard[scored].mean():.3f} "
               f"delta_avg={ours.average_pts_within_thresh[scored].mean():.3f} "
               f"oa={ours.occlusion_accuracy[scored].mean():.3f} "
               f"aj_static={static.average_jaccard[scored].mean():.3f}")
    text = "\n".join(table)
    if args.output:
        Path(args.output).write_text(text + "\n")
    print(text)
    print(summary)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    defaults = TracksSpec()

    making = commands.add_parser("make-data", help="write the sprite training and test clips")
    making.add_argument("--output-dir", required=True, help="a new (or empty) folder")
    making.add_argument("--num-train", type=int, default=512, help="training clips")
    making.add_argument("--num-test", type=int, default=32, help="test clips")
    making.add_argument("--size", type=int, default=defaults.size, help="frame side in pixels")
    making.add_argument("--num-frames", type=int, default=defaults.num_frames,
                        help="frames per clip")
    making.add_argument("--num-sprites", type=int, default=defaults.num_sprites,
                        help="sprites per clip")
    making.add_argument("--num-points", type=int, default=defaults.num_points,
                        help="query points per test clip")
    making.add_argument("--seed", type=int, default=defaults.seed)
    making.set_defaults(handler=make_data, check=check_make_data)

    scoring = commands.add_parser("score", help="score a checkpoint's tracks on the test clips")
    scoring.add_argument("--checkpoint", required=True,
                         help="gmae_video.py checkpoint, or 'none' (the untrained demo model)")
    scoring.add_argument("--data-dir", required=True, help="a make-data folder")
    scoring.add_argument("--output", default=None,
                         help="also write the table to this new markdown file")
    scoring.add_argument("--limit", type=int, default=0, help="first N test clips only (0: all)")
    scoring.add_argument("--img-size", type=int, default=32, help="input size of --checkpoint none")
    scoring.add_argument("--batch-size", type=int, default=8, help="clips per model call")
    scoring.add_argument("--query-mode", choices=("first", "strided"), default="first",
                         help="TAP-Vid's scored frames: after the query frame, or all but it")
    scoring.add_argument("--visibility-threshold", type=float, default=VISIBILITY_THRESHOLD,
                         help="least carrier share of a visible point (splathead.tracking)")
    scoring.set_defaults(handler=score, check=check_score)
    return parser


def check_score(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit 2 naming the flag when a ``score`` setting cannot work, before any work."""
    data_dir = Path(args.data_dir)
    for name in ("test/clips", "test/tracks.npz"):
        if not (data_dir / name).exists():
            parser.error(f"--data-dir {data_dir} has no {name} (write it with make-data)")
    if args.checkpoint != "none" and not Path(args.checkpoint).is_file():
        parser.error(f"--checkpoint {args.checkpoint} is not a file")
    if args.output and Path(args.output).exists():
        parser.error(f"--output {args.output} exists; score never writes over a file")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.limit < 0:
        parser.error(f"--limit must be >= 0, got {args.limit}")
    if args.img_size < 8:
        parser.error(f"--img-size must be >= 8 pixels, got {args.img_size}")
    if not 0 < args.visibility_threshold <= 1:
        parser.error(f"--visibility-threshold must lie in (0, 1], got {args.visibility_threshold}")


def check_make_data(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit 2 naming the flag when a ``make-data`` setting cannot work, before any file."""
    check_data_folder(parser, args)
    if args.size < 16:
        parser.error(f"--size must be >= 16 pixels, got {args.size}")
    if args.num_frames < 2:
        parser.error(f"--num-frames must be >= 2 (a track needs a later frame), got "
                     f"{args.num_frames}")
    if args.num_sprites < 1:
        parser.error(f"--num-sprites must be >= 1, got {args.num_sprites}")
    # background points need clear pixels: at most a quarter of the frame's
    if not 2 <= args.num_points <= args.size**2 // 4:
        parser.error(f"--num-points must lie in [2, {args.size**2 // 4}] (a quarter of the "
                     f"{args.size}x{args.size} pixels), got {args.num_points}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.check(parser, args)
    return run_checkpoint_command(args)


if __name__ == "__main__":
    raise SystemExit(main())
