"""Zero-shot point tracking from a :class:`~splathead.VideoGMAE`'s Gaussians, and the TAP-Vid
metrics that score it.

A Video-GMAE keeps each Gaussian the same one in every frame and moves it, so the motion of the
surface under a pixel is the motion of the Gaussians drawn there. :func:`track_points` renders,
with the model's own renderer, each Gaussian's displacement (in pixels) from the query frame to
every frame as feature channels of the query frame's Gaussians: normalised by the coverage, a
pixel's value is the compositing-weighted mean displacement of the Gaussians it shows, and a query
point moves by the value at it. Its visibility in a frame is the share the query's own Gaussians
keep of the compositing at its tracked position (see :func:`track_points`).

:func:`tapvid_metrics` is the TAP-Vid benchmark's scoring (Doersch et al., "TAP-Vid: A Benchmark
for Tracking Any Point in a Video", NeurIPS 2022 Datasets and Benchmarks), per video.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange, repeat

from splathead.gaussians import Gaussians
from splathead.render import SplatRenderer
from splathead.render.projection import centre_pixels
from splathead.typing import Bool, Float, Real, Tensor, typecheck
from splathead.video_gaussians import VideoGaussians

__all__ = [
    "TAPVID_THRESHOLDS",
    "PointTracks",
    "QueryMode",
    "TapVidMetrics",
    "tapvid_metrics",
    "track_points",
]

TAPVID_THRESHOLDS = (1, 2, 4, 8, 16)
"""Pixel distances below which a predicted point counts as correct (TAP-Vid's, defined on
256 x 256 frames: scale tracks to that raster to compare with published figures)."""
QueryMode = Literal["first", "strided"]
VISIBILITY_THRESHOLD = 0.5
"""Default least carrier share (see :func:`track_points`) of a visible point."""
_COVERAGE_EPS = 1e-6

ArrayOrTensor = Union[np.ndarray, Tensor]


class TapVidMetrics(NamedTuple):
    """TAP-Vid's figures for each of ``v`` videos (arrays ``[v]``, or ``[v k]`` per threshold of
    :data:`TAPVID_THRESHOLDS`); ``nan`` where a video has no evaluated visible point."""

    average_jaccard: np.ndarray
    """AJ: the mean over thresholds of ``jaccard``."""
    average_pts_within_thresh: np.ndarray
    """delta_avg: the mean over thresholds of ``pts_within``."""
    occlusion_accuracy: np.ndarray
    """OA: the fraction of evaluated (point, frame) pairs whose occlusion flag is right."""
    jaccard: np.ndarray
    """``[v k]``: true positives / (visible points + false positives) at each threshold."""
    pts_within: np.ndarray
    """``[v k]``: the fraction of evaluated visible points predicted within each threshold."""


def _numpy(name: str, value: ArrayOrTensor) -> np.ndarray:
    array = value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)
    if array.dtype != bool and not np.isfinite(array).all():
        raise ValueError(f"{name} holds NaN or Inf")
    return array


@typecheck
def tapvid_metrics(
    query_points: Real[ArrayOrTensor, "v q 3"],
    gt_occluded: Bool[ArrayOrTensor, "v q t"],
    gt_tracks: Real[ArrayOrTensor, "v q t 2"],
    pred_occluded: Bool[ArrayOrTensor, "v q t"],
    pred_tracks: Real[ArrayOrTensor, "v q t 2"],
    query_mode: QueryMode = "first",
) -> TapVidMetrics:
    """The TAP-Vid metrics of predicted tracks, per video (numpy arrays or torch tensors).

    Args:
        query_points: ``[v q 3]`` each query as (frame, y, x); the frame is rounded to an index.
        gt_occluded: ``[v q t]`` bool, True where the point is occluded (or out of the frame).
        gt_tracks: ``[v q t 2]`` true positions (x, y) in pixels.
        pred_occluded: ``[v q t]`` bool, the predicted occlusion.
        pred_tracks: ``[v q t 2]`` predicted positions (x, y) in pixels.
        query_mode: which frames are scored for a query: "first", the frames after its query
            frame (TAP-Vid's protocol for queries at a point's first visible frame); "strided",
            every frame but its query frame.

    The definitions (TAP-Vid section 3): over the scored (point, frame) pairs, a prediction is
    within threshold ``d`` where its squared distance to the truth is below ``d**2``;
    ``pts_within`` is the fraction of the pairs visible in the truth that are within;
    ``jaccard`` is ``TP / (visible + FP)`` with TP the visible pairs predicted visible and within,
    and FP the pairs predicted visible that are occluded in the truth or not within;
    ``occlusion_accuracy`` counts every scored pair. Each video is scored on its own (TAP-Vid's
    evaluation scores one video per call; its occlusion accuracy divides by the scored pairs of
    the whole call).

    Raises:
        ValueError: naming the argument, for a query frame outside ``[0, t)``, non-finite
            positions, or an unknown ``query_mode`` (shapes and dtypes are checked on the call).
    """
    if query_mode not in ("first", "strided"):
        raise ValueError(f"query_mode must be 'first' or 'strided', got {query_mode!r}")
    query_points = _numpy("query_points", query_points)
    gt_occluded, pred_occluded = _numpy("gt_occluded", gt_occluded), _numpy(
        "pred_occluded", pred_occluded)
    gt_tracks, pred_tracks = _numpy("gt_tracks", gt_tracks), _numpy("pred_tracks", pred_tracks)
    num_frames = gt_occluded.shape[2]
    query_frame = np.round(query_points[..., 0]).astype(np.int64)
    if query_frame.size and not (0 <= query_frame.min() and query_frame.max() < num_frames):
        raise ValueError(
            f"query_points' frames must round to [0, {num_frames}) for tracks of {num_frames} "
            f"frames, got {query_frame.min()} to {query_frame.max()}")

    frames = np.arange(num_frames)
    scored = (frames > query_frame[..., None] if query_mode == "first"
              else frames != query_frame[..., None])  # [v q t]
    visible, pred_visible = ~gt_occluded, ~pred_occluded
    with np.errstate(invalid="ignore", divide="ignore"):  # 0 / 0 is nan, as TAP-Vid's
        occlusion_accuracy = ((pred_occluded == gt_occluded) & scored).sum((1, 2)) / scored.sum(
            (1, 2))
        squared = ((pred_tracks.astype(np.float64) - gt_tracks) ** 2).sum(-1)
        within = squared[..., None] < np.square(TAPVID_THRESHOLDS)  # [v q t k]
        correct = within & visible[..., None]
        scored_visible = (visible & scored).sum((1, 2))[:, None]  # [v 1]
        pts_within = (correct & scored[..., None]).sum((1, 2)) / scored_visible
        predicted = (pred_visible & scored)[..., None]
        true_positives = (correct & predicted).sum((1, 2))
        false_positives = (~correct & predicted).sum((1, 2))
        jaccard = true_positives / (scored_visible + false_positives)
    return TapVidMetrics(
        average_jaccard=jaccard.mean(1),
        average_pts_within_thresh=pts_within.mean(1),
        occlusion_accuracy=occlusion_accuracy,
        jaccard=jaccard,
        pts_within=pts_within,
    )


class PointTracks(NamedTuple):
    """What :func:`track_points` returns for ``q`` query points of ``b`` videos."""

    tracks: Float[Tensor, "b q t 2"]
    """Position (x, y) in pixels in every frame (the query point itself at its query frame)."""
    occluded: Bool[Tensor, "b q t"]
    """``visibility < visibility_threshold``, or the track outside the image."""
    visibility: Float[Tensor, "b q t"]
    """The query's carrier share at its tracked position, relative to the query frame's."""


def _sample(maps: Float[Tensor, "b c h w"], points: Float[Tensor, "b p 2"]
            ) -> Float[Tensor, "b p c"]:
    """Bilinear values of ``maps`` at ``points`` (x, y) in pixels, a pixel's centre at
    (column + 0.5, row + 0.5); points outside take the border's values."""
    height, width = maps.shape[-2:]
    scale = points.new_tensor([2 / width, 2 / height])
    grid = (points * scale - 1)[:, :, None]  # [b p 1 2]
    values = F.grid_sample(maps, grid, mode="bilinear", padding_mode="border",
                           align_corners=False)
    return rearrange(values, "b c p 1 -> b p c")


def _render_features(renderer: SplatRenderer, gaussians: Gaussians, features: Tensor,
                     *, normalise: bool) -> Tensor:
    """``features [b n c]`` drawn as the colours of ``gaussians`` on a zero background
    (``[b c h w]``), divided by the coverage where ``normalise``."""
    output = renderer(gaussians.replace(colors=features),
                      background=features.new_zeros(features.shape[0], features.shape[2]))
    return output.image / output.alpha.clamp_min(_COVERAGE_EPS) if normalise else output.image


@typecheck
def track_points(
    gaussians: VideoGaussians,
    renderer: SplatRenderer,
    query_points: Real[Tensor, "b q 3"],
    *,
    visibility_threshold: float = VISIBILITY_THRESHOLD,
) -> PointTracks:
    """Track query points through ``b`` videos along their Gaussians' motion.

    Args:
        gaussians: every frame's Gaussians, e.g. ``VideoGMAE(...).gaussians``.
        renderer: the renderer that draws them (``model.decoder.renderer``); its camera gives
            the pixels.
        query_points: ``[b q 3]`` each query as (frame, y, x), positions in pixels (TAP-Vid's
            order); the frame is rounded to an index.
        visibility_threshold: least carrier share of a visible point, in (0, 1].

    Motion: for each query frame ``r``, frame ``r``'s Gaussians are rendered once with, as
    ``2 t`` feature channels, each Gaussian's centre pixel in every frame minus its centre pixel
    in frame ``r`` (:func:`~splathead.render.projection.centre_pixels`). Divided by the coverage,
    a pixel holds the compositing-weighted mean displacement of the Gaussians drawn there; a
    query's track is its position plus the bilinear value at it (0 where nothing covers it).

    Visibility: the query's carriers are the Gaussians' compositing weights at the query point
    in its frame (frame ``r`` rendered with one channel per Gaussian, one-hot), normalised to sum
    to 1. Each frame is rendered with, for every query, a channel holding its carrier weights;
    at the tracked position that channel is the compositing weight the carriers keep there
    (about the carriers' coverage times the transmittance of whatever passes in front of
    them). ``visibility`` is that value divided by its value at the query point in frame ``r``
    (1 there, and everywhere for a query no Gaussian covers); a point is occluded below
    ``visibility_threshold`` or outside the image. Costs
    one render of ``n`` channels per query frame and one of ``q`` channels per frame.

    Raises:
        ValueError: naming the argument, for another number of videos than ``gaussians``
            holds, a query frame outside ``[0, t)``, or a threshold outside (0, 1].
    """
    batch, num_frames = gaussians.batch_size, gaussians.num_frames
    if query_points.shape[0] != batch:
        raise ValueError(f"query_points are for {query_points.shape[0]} videos, gaussians hold "
                         f"{batch}")
    if not 0 < visibility_threshold <= 1:
        raise ValueError(f"visibility_threshold must lie in (0, 1], got {visibility_threshold}")
    query_frames = torch.round(query_points[..., 0]).long()
    if query_frames.numel() and not (
            0 <= int(query_frames.min()) and int(query_frames.max()) < num_frames):
        raise ValueError(
            f"query_points' frames must round to [0, {num_frames}) for {num_frames} frames, got "
            f"{int(query_frames.min())} to {int(query_frames.max())}")
    camera = renderer.camera
    query_xy = query_points[..., [2, 1]].to(gaussians.means.dtype)
    pixels = rearrange(centre_pixels(rearrange(gaussians.means, "b t n d -> (b t) n d"), camera),
                       "(b t) n d -> b t n d", b=batch)
    num_gaussians = gaussians.num_gaussians
    one_hot = repeat(torch.eye(num_gaussians, dtype=pixels.dtype, device=pixels.device),
                     "n m -> b n m", b=batch)

    tracks = query_xy[:, :, None].repeat(1, 1, num_frames, 1)
    carriers = query_xy.new_zeros(batch, query_xy.shape[1], num_gaussians)
    for reference in torch.unique(query_frames).tolist():
        frame = gaussians.frame(reference)
        moves = rearrange(pixels - pixels[:, reference : reference + 1], "b t n d -> b n (t d)")
        flow = _render_features(renderer, frame, moves, normalise=True)
        weights = _render_features(renderer, frame, one_hot, normalise=False)
        here = (query_frames == reference)[..., None]
        displacement = rearrange(_sample(flow, query_xy), "b q (t d) -> b q t d", d=2)
        tracks = torch.where(here[..., None], query_xy[:, :, None] + displacement, tracks)
        carriers = torch.where(here, _sample(weights, query_xy), carriers)
    carriers = carriers / carriers.sum(-1, keepdim=True).clamp_min(_COVERAGE_EPS)

    shares = []
    for index in range(num_frames):
        frame = gaussians.frame(index)
        kept = _render_features(renderer, frame, rearrange(carriers, "b q n -> b n q"),
                                normalise=False)
        # each query's own channel at its own tracked position
        values = _sample(kept, tracks[:, :, index])  # [b q q]
        shares.append(torch.diagonal(values, dim1=1, dim2=2))
    shares = torch.stack(shares, dim=-1)  # [b q t]
    at_query = torch.gather(shares, 2, query_frames[..., None])
    # A query no Gaussian covers has no carriers to hide: it stays visible.
    visibility = torch.where(at_query > _COVERAGE_EPS, shares / at_query.clamp_min(_COVERAGE_EPS),
                             torch.ones_like(shares))
    inside = ((tracks >= 0) & (tracks < tracks.new_tensor([camera.width, camera.height]))).all(-1)
    occluded = (visibility < visibility_threshold) | ~inside
    return PointTracks(tracks=tracks, occluded=occluded, visibility=visibility)
