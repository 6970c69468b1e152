"""splathead.tracking: the TAP-Vid metrics against cases worked by hand, and point tracks along
Gaussians whose motion and depth order are set by hand."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from splathead import Camera, SplatRenderer, VideoGaussians
from splathead.tracking import tapvid_metrics, track_points

FRAMES, SIZE = 5, 32


def still_tracks(num_points=2, num_frames=FRAMES, query_frame=0):
    """Query points at (8, 8) and (20, 12) (x, y) that never move, visible throughout."""
    xy = np.array([[8.0, 8.0], [20.0, 12.0]])[:num_points]
    queries = np.concatenate([np.full((num_points, 1), query_frame), xy[:, ::-1]], axis=1)[None]
    tracks = np.repeat(xy[:, None], num_frames, axis=1)[None]
    return queries, np.zeros(tracks.shape[:3], dtype=bool), tracks


def test_perfect_predictions_score_one_in_both_query_modes():
    queries, occluded, tracks = still_tracks()
    occluded[0, 1, 3] = True
    for mode in ("first", "strided"):
        metrics = tapvid_metrics(queries, occluded, tracks, occluded, tracks, query_mode=mode)
        assert metrics.average_jaccard.tolist() == [1.0]
        assert metrics.average_pts_within_thresh.tolist() == [1.0]
        assert metrics.occlusion_accuracy.tolist() == [1.0]


def test_all_predicted_occluded_has_no_true_positive():
    queries, occluded, tracks = still_tracks(num_points=1)
    occluded[0, 0, 3] = True  # frames 1..4 scored, frame 3 occluded in the truth
    metrics = tapvid_metrics(queries, occluded, tracks, np.ones_like(occluded), tracks)
    assert metrics.average_jaccard.tolist() == [0.0]
    # Positions are right on the 3 visible scored frames, whatever the predicted occlusion.
    assert metrics.average_pts_within_thresh.tolist() == [1.0]
    assert metrics.occlusion_accuracy.tolist() == [0.25]  # only frame 3 of 4


def test_a_point_off_by_three_pixels_counts_at_4_8_16_only():
    queries, occluded, tracks = still_tracks()
    predicted = tracks.copy()
    predicted[0, 1, 1:, 0] += 3.0  # the second point, 3 px right after its query frame
    metrics = tapvid_metrics(queries, occluded, tracks, occluded, predicted)
    # per threshold 1, 2, 4, 8, 16: the first point is always right (4 scored frames)
    assert metrics.pts_within.tolist() == [[0.5, 0.5, 1.0, 1.0, 1.0]]
    # at 1 and 2 px: TP 4, visible 8, FP 4 (predicted visible, not within)
    assert metrics.jaccard.tolist() == [[4 / 12, 4 / 12, 1.0, 1.0, 1.0]]
    assert metrics.average_pts_within_thresh.tolist() == [pytest.approx(0.8)]
    assert metrics.average_jaccard.tolist() == [pytest.approx((2 * 4 / 12 + 3) / 5)]
    alone = tapvid_metrics(queries[:, 1:], occluded[:, 1:], tracks[:, 1:], occluded[:, 1:],
                           predicted[:, 1:])
    assert alone.pts_within.tolist() == [[0.0, 0.0, 1.0, 1.0, 1.0]]
    assert alone.average_jaccard.tolist() == [pytest.approx(0.6)]


def test_query_modes_score_the_frames_after_or_around_the_query_frame():
    queries, occluded, tracks = still_tracks(num_points=1, query_frame=2)
    predicted = tracks.copy()
    predicted[0, 0, 0] += 100.0  # wrong before the query frame only
    first = tapvid_metrics(queries, occluded, tracks, occluded, predicted, query_mode="first")
    strided = tapvid_metrics(queries, occluded, tracks, occluded, predicted, query_mode="strided")
    assert first.average_pts_within_thresh.tolist() == [1.0]  # frames 3, 4
    assert strided.average_pts_within_thresh.tolist() == [0.75]  # frames 0, 1, 3, 4
    assert strided.average_jaccard.tolist() == [pytest.approx(3 / 5)]  # TP 3 / (4 + FP 1)


def test_videos_are_scored_apart_and_torch_equals_numpy():
    queries, occluded, tracks = still_tracks()
    predicted = tracks.copy()
    predicted[..., 1] += 1.5
    two = [np.concatenate([a, a]) for a in (queries, occluded, tracks, occluded)]
    predicted = np.concatenate([tracks, predicted])
    numpy = tapvid_metrics(*two, predicted)
    assert numpy.average_pts_within_thresh.tolist() == [1.0, 0.8]
    as_torch = tapvid_metrics(*(torch.from_numpy(a) for a in (*two, predicted)))
    for name in numpy._fields:
        np.testing.assert_array_equal(getattr(as_torch, name), getattr(numpy, name))


@given(gt_occluded=arrays(bool, (2, 3, 4)), pred_occluded=arrays(bool, (2, 3, 4)),
       errors=arrays(np.float64, (2, 3, 4, 2), elements=st.floats(-20, 20)),
       query_frames=arrays(np.int64, (2, 3), elements=st.integers(0, 3)),
       mode=st.sampled_from(["first", "strided"]))
def test_metrics_are_fractions_and_jaccard_never_exceeds_pts_within(
        gt_occluded, pred_occluded, errors, query_frames, mode):
    tracks = np.zeros((2, 3, 4, 2))
    queries = np.concatenate([query_frames[..., None], np.zeros((2, 3, 2))], axis=-1)
    metrics = tapvid_metrics(queries, gt_occluded, tracks, pred_occluded, errors, query_mode=mode)
    defined = ~np.isnan(metrics.pts_within)
    assert not np.isnan(metrics.jaccard[defined]).any()  # (0 / FP where nothing is visible)
    assert ((metrics.jaccard[defined] >= 0) & (metrics.jaccard[defined] <= 1)).all()
    assert (metrics.jaccard[defined] <= metrics.pts_within[defined]).all()
    scored = metrics.occlusion_accuracy[~np.isnan(metrics.occlusion_accuracy)]
    assert ((scored >= 0) & (scored <= 1)).all()
    perfect = tapvid_metrics(queries, gt_occluded, tracks, gt_occluded, tracks, query_mode=mode)
    assert (perfect.average_jaccard[defined.all(1)] == 1).all()


def test_bad_inputs_are_named():
    queries, occluded, tracks = still_tracks()
    late = queries.copy()
    late[..., 0] = FRAMES
    with pytest.raises(ValueError, match=r"query_points.*\[0, 5\)"):
        tapvid_metrics(late, occluded, tracks, occluded, tracks)
    broken = tracks.copy()
    broken[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="pred_tracks holds NaN"):
        tapvid_metrics(queries, occluded, tracks, occluded, broken)
    with pytest.raises(TypeError, match="gt_tracks"):
        tapvid_metrics(queries, occluded, tracks[..., :1], occluded, tracks)
    with pytest.raises(TypeError, match="gt_occluded"):
        tapvid_metrics(queries, occluded.astype(np.float32), tracks, occluded, tracks)
    with pytest.raises((TypeError, ValueError), match="query_mode"):
        tapvid_metrics(queries, occluded, tracks, occluded, tracks, query_mode="last")


# Gaussians set by hand: scene x, y in (-1, 1) span the 32-pixel frame (16 px per unit); the
# camera looks along +z, so a smaller z is nearer.
PIXELS_PER_UNIT = SIZE / 2


def scene(pixels_x: float, pixels_y: float, depth: float) -> list[float]:
    return [pixels_x / PIXELS_PER_UNIT - 1, pixels_y / PIXELS_PER_UNIT - 1, depth]


def video_gaussians(paths: list[list[list[float]]], stds_px: list[float]) -> VideoGaussians:
    """One video: Gaussian ``i`` at ``paths[i][f]`` (scene) in frame ``f``, round, opaque."""
    means = torch.tensor(paths, dtype=torch.float32).transpose(0, 1)[None]  # [1 t n 3]
    count = means.shape[2]
    stds = torch.tensor(stds_px)[:, None].expand(count, 3) / PIXELS_PER_UNIT
    return VideoGaussians(
        means=means, colors=torch.full((1, means.shape[1], count, 3), 0.5),
        scales=stds[None].contiguous(), quats=torch.tensor([[[1.0, 0, 0, 0]] * count]),
        opacities=torch.full((1, count), 0.99))


@pytest.fixture
def renderer():
    return SplatRenderer(Camera.gmae(SIZE, SIZE), backend="torch", background=0.0)


def test_a_query_moves_with_the_gaussians_under_it(renderer):
    steps = [0.0, 4.0, 8.0, 12.0]  # pixels right per frame, and half as many down
    gaussians = video_gaussians(
        [[scene(12 + dx, 14 + dx / 2, 0.0) for dx in steps],
         [scene(15 + dx, 12 + dx / 2, 0.5) for dx in steps]], [6.0, 9.0])
    queries = torch.tensor([[[0.0, 13.0, 11.0], [2.0, 18.0, 20.0]]])  # (t, y, x)
    result = track_points(gaussians, renderer, queries)
    expected_first = torch.tensor([[11 + dx, 13 + dx / 2] for dx in steps])
    torch.testing.assert_close(result.tracks[0, 0], expected_first)
    expected_second = torch.tensor([[20 + dx - 8, 18 + (dx - 8) / 2] for dx in steps])
    torch.testing.assert_close(result.tracks[0, 1], expected_second)
    assert not result.occluded.any()
    torch.testing.assert_close(result.visibility, torch.ones(1, 2, 4))


def test_a_gaussian_passing_in_front_occludes_the_point_and_leaving_the_image_too(renderer):
    background = [scene(16, 16, 1.0)] * 4  # large, far, still
    front = [scene(28, 16, -1.0), scene(28, 16, -1.0), scene(8, 16, -1.0), scene(28, 16, -1.0)]
    mover = [scene(26, 26, 0.0), scene(30, 26, 0.0), scene(34, 26, 0.0), scene(38, 26, 0.0)]
    gaussians = video_gaussians([background, front, mover], [40.0, 3.0, 4.0])
    queries = torch.tensor([[[0.0, 16.0, 8.0], [0.0, 26.0, 26.0]]])
    result = track_points(gaussians, renderer, queries)
    torch.testing.assert_close(result.tracks[0, 0], torch.tensor([[8.0, 16.0]] * 4))
    assert result.occluded[0, 0].tolist() == [False, False, True, False]
    assert result.visibility[0, 0, 2] < 0.05
    # the mover's point leaves the 32-pixel frame after frame 1 (x = 26, 30, 34, 38; the far
    # background's share of the point, still, holds it back a little)
    assert result.tracks[0, 1, :, 0].tolist() == pytest.approx([26.0, 30.0, 34.0, 38.0],
                                                               abs=0.5)
    assert result.occluded[0, 1].tolist() == [False, False, True, True]


def test_track_points_names_bad_queries(renderer):
    gaussians = video_gaussians([[scene(16, 16, 0.0)] * 4], [6.0])
    with pytest.raises(ValueError, match=r"query_points are for 2 videos, gaussians hold 1"):
        track_points(gaussians, renderer, torch.zeros(2, 1, 3))
    with pytest.raises(ValueError, match=r"query_points' frames must round to \[0, 4\)"):
        track_points(gaussians, renderer, torch.tensor([[[4.0, 1.0, 1.0]]]))
    with pytest.raises(ValueError, match="visibility_threshold"):
        track_points(gaussians, renderer, torch.zeros(1, 1, 3), visibility_threshold=0.0)
    with pytest.raises(TypeError, match="query_points"):
        track_points(gaussians, renderer, torch.zeros(1, 1, 2))
