"""BSDS500 boundary benchmark: ODS, OIS and AP of soft edge maps against human annotations.

The protocol of the official MATLAB benchmark (Arbelaez et al., TPAMI 2011; ``boundaryBench`` /
``evaluation_bdry_image`` / ``collect_eval_bdry``):

1. A prediction in [0, 1] is thresholded at ``nthresh`` levels
   ``linspace(1/(nthresh+1), 1 - 1/(nthresh+1), nthresh)`` (``pred >= t``), and each binary map
   is thinned to one-pixel-wide boundaries (MATLAB ``bwmorph(.., 'thin', inf)``, here
   :func:`skimage.morphology.thin`, the same Guo-Hall algorithm).
2. The thinned map is matched against every human annotation by a minimum-cost bipartite
   correspondence (Goldberg's CSA) that pairs pixels closer than ``max_dist`` times the image
   diagonal. We call the benchmark's own C++ matcher as ported by ``pyedgeeval``
   (``correspondPixels``); the matching is never re-implemented here.
   A predicted pixel counts as correct if it matches a pixel of *any* annotation; recall adds up
   the matched pixels of *every* annotation.
3. ODS: the best F over thresholds of the dataset-wide counts, with R and P linearly interpolated
   between neighbouring thresholds (100 steps, MATLAB's ``linspace(0, 1)``). OIS: F of the counts
   summed at each image's best threshold. AP: the area under the dataset-wide PR curve,
   precision interpolated at recall 0:0.01:1 (the official ``Area_PR``, which papers report as AP).

Predictions are PNG soft maps (``uint8 / 255``, or ``uint16 / 65535``) or ``.mat`` files holding a
double-size ultrametric contour map ``ucm2``, which the benchmark reads as
``ucm2(3:2:end, 3:2:end)`` (its boundary grid lies between pixels). Thinning is on for both, as in
the benchmark's example scripts.

pyedgeeval also has a full pipeline; we use only its matcher because its AP is not the
benchmark's ``Area_PR``, its ODS interpolation takes 101 instead of 100 steps and it has no ucm2
reader. :func:`evaluate_image` evaluates each distinct thinned map once: thresholds that select
the same pixels (common for maps with few grey levels, such as layer votes) share the result.
The matcher is randomised and approximate, as the official one is, so two runs of the same input
differ slightly (about 1e-4 in the dataset scores of the benchmark's 5-image example).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image
from pyEdgeEval._lib import correspond_pixels
from skimage.morphology import thin

from splathead.typing import Bool, Float, Shaped, typecheck

__all__ = [
    "BoundaryCounts",
    "BoundaryScores",
    "bsds_thresholds",
    "check_max_dist",
    "check_prediction",
    "evaluate_dir",
    "evaluate_image",
    "load_ground_truth",
    "load_prediction",
    "summarize",
]

MAX_DIST = 0.0075
NTHRESH = 99
PREDICTION_SUFFIXES = (".png", ".mat")


def bsds_thresholds(nthresh: int = NTHRESH) -> Float[np.ndarray, " t"]:
    """The benchmark's thresholds: ``nthresh`` evenly spaced levels strictly inside (0, 1)."""
    if nthresh < 1:
        raise ValueError(f"nthresh must be >= 1, got {nthresh}")
    return np.linspace(1 / (nthresh + 1), 1 - 1 / (nthresh + 1), nthresh)


@dataclass(frozen=True)
class BoundaryCounts:
    """Per-threshold match counts of one image (the rows of the benchmark's ``*_ev1.txt``).

    Recall is ``count_r / sum_r`` (annotation pixels matched / annotation pixels, summed over
    annotators), precision ``count_p / sum_p`` (predicted pixels matched by any annotator /
    predicted pixels). All arrays are ``[t]`` over :attr:`thresholds`.
    """

    thresholds: np.ndarray
    count_r: np.ndarray
    sum_r: np.ndarray
    count_p: np.ndarray
    sum_p: np.ndarray


@dataclass(frozen=True)
class BoundaryScores:
    """Dataset scores in the layout of the benchmark's ``eval_bdry.txt`` plus the PR curve.

    ``recall``, ``precision``, ``f1`` are ``[t]`` dataset-wide curves over ``thresholds``;
    ``image_f1`` holds each image's best F (``[num_images]``, input order).
    """

    ods: float
    ods_threshold: float
    ods_recall: float
    ods_precision: float
    ois: float
    ois_recall: float
    ois_precision: float
    ap: float
    thresholds: np.ndarray
    recall: np.ndarray
    precision: np.ndarray
    f1: np.ndarray
    image_f1: np.ndarray

    def summary(self) -> str:
        """``ODS=0.xxx OIS=0.xxx AP=0.xxx``."""
        return f"ODS={self.ods:.3f} OIS={self.ois:.3f} AP={self.ap:.3f}"


def _ratio(count: np.ndarray, total: np.ndarray) -> np.ndarray:
    return count / (total + (total == 0))


def _fmeasure(recall: np.ndarray, precision: np.ndarray) -> np.ndarray:
    total = recall + precision
    return 2 * recall * precision / (total + (total == 0))


def check_max_dist(max_dist: float) -> None:
    """Raise ``ValueError`` unless ``0 < max_dist <= 1``: the matcher needs a positive tolerance,
    and a fraction of the image diagonal above 1 matches nothing more than 1 does."""
    if not 0 < max_dist <= 1:
        raise ValueError(
            f"max_dist must be in (0, 1], a fraction of the image diagonal (the benchmark's: "
            f"{MAX_DIST}), got {max_dist}"
        )


def _load_mat(path: Path, variable: str, meaning: str, **options) -> np.ndarray:
    """``variable`` from a .mat file; ``ValueError`` naming the file when it cannot be read or
    lacks the variable."""
    try:
        contents = scipy.io.loadmat(path, **options)
    except Exception as error:  # scipy raises IndexError, OSError, ValueError... on bad files
        raise ValueError(
            f"{path}: expected a MATLAB .mat file holding {variable!r}, but it cannot be read "
            f"({type(error).__name__}: {error})"
        ) from error
    if variable not in contents:
        found = ", ".join(repr(name) for name in contents if not name.startswith("__"))
        raise ValueError(
            f"{path}: expected a variable {variable!r} ({meaning}), found {found or 'none'}"
        )
    return contents[variable]


@typecheck
def load_ground_truth(path: str | os.PathLike) -> list[Bool[np.ndarray, "h w"]]:
    """The ``Boundaries`` of every annotator in a BSDS ``groundTruth`` .mat file."""
    cells = _load_mat(
        Path(path), "groundTruth", "the BSDS annotations", squeeze_me=True,
        struct_as_record=False,
    )
    return [np.asarray(cell.Boundaries, dtype=bool) for cell in np.atleast_1d(cells)]


@typecheck
def load_prediction(path: str | os.PathLike) -> Float[np.ndarray, "h w"]:
    """A soft boundary map in [0, 1]: an 8/16-bit grey PNG, or ``ucm2`` from a .mat file.

    Raises ``ValueError`` naming the file, what was expected and what was found, for a file that
    cannot be read, a .mat without a ``[2h+1 2w+1]`` ``ucm2``, a PNG that is not single-channel
    8/16-bit, or values outside [0, 1].
    """
    path = Path(path)
    if path.suffix == ".mat":
        ucm2 = np.asarray(_load_mat(path, "ucm2", "the double-size ultrametric contour map"))
        if ucm2.ndim != 2 or min(ucm2.shape) < 3 or not all(size % 2 for size in ucm2.shape):
            raise ValueError(
                f"{path}: expected ucm2 of shape [2h+1 2w+1] (odd sizes), found shape "
                f"{ucm2.shape}"
            )
        # ucm2 has boundary cells between pixels: MATLAB's ucm2(3:2:end, 3:2:end).
        prediction = ucm2[2::2, 2::2].astype(np.float64)
    else:
        try:
            with Image.open(path) as image:
                pixels = np.asarray(image)
        except OSError as error:
            raise ValueError(
                f"{path}: expected a PNG soft boundary map, but it cannot be read ({error})"
            ) from error
        if pixels.ndim != 2 or pixels.dtype not in (np.uint8, np.uint16):
            raise ValueError(
                f"{path}: expected a single-channel 8- or 16-bit PNG, found shape "
                f"{pixels.shape} dtype {pixels.dtype}"
            )
        prediction = pixels.astype(np.float64) / np.iinfo(pixels.dtype).max
    if not np.isfinite(prediction).all() or prediction.min() < 0 or prediction.max() > 1:
        raise ValueError(
            f"{path}: expected values in [0, 1], found range "
            f"[{np.nanmin(prediction)}, {np.nanmax(prediction)}]"
            + ("" if np.isfinite(prediction).all() else " with NaN or Inf")
        )
    return prediction


def check_prediction(path: str | os.PathLike, shape: tuple[int, int]) -> None:
    """Raise ``ValueError`` naming ``path`` unless it loads (:func:`load_prediction`) as a map
    of ``shape`` (height, width), the size of its annotations; a transposed map is named so."""
    found = load_prediction(path).shape
    if found != shape:
        transposed = " (transposed: height and width swapped)" if found == shape[::-1] else ""
        raise ValueError(
            f"{path}: expected a {shape[0]}x{shape[1]} (height x width) map, the size of its "
            f"annotations, found {found[0]}x{found[1]}{transposed}"
        )


@typecheck
def evaluate_image(
    prediction: Float[np.ndarray, "h w"],
    ground_truth: Sequence[Shaped[np.ndarray, "_ _"]],
    *,
    nthresh: int = NTHRESH,
    max_dist: float = MAX_DIST,
    thinning: bool = True,
) -> BoundaryCounts:
    """Match counts of one soft boundary map at the benchmark's ``nthresh`` thresholds.

    Args:
        prediction: ``[h w]`` boundary strength in [0, 1].
        ground_truth: one ``[h w]`` binary boundary map per annotator (at least one).
        max_dist: matching tolerance as a fraction of the image diagonal.
        thinning: thin each thresholded map to one-pixel width first (the benchmark's default).
    """
    if not ground_truth:
        raise ValueError("ground_truth must hold at least one annotation")
    check_max_dist(max_dist)
    for index, annotation in enumerate(ground_truth):
        if annotation.shape != prediction.shape:
            raise ValueError(
                f"prediction is {prediction.shape[0]}x{prediction.shape[1]} (height x width) but "
                f"annotation {index} is {annotation.shape[0]}x{annotation.shape[1]}"
            )
    if not np.isfinite(prediction).all() or prediction.min() < 0 or prediction.max() > 1:
        raise ValueError(
            f"prediction must be finite and in [0, 1], got range "
            f"[{np.nanmin(prediction)}, {np.nanmax(prediction)}]"
        )
    annotations = [np.asarray(gt, dtype=bool) for gt in ground_truth]
    thresholds = bsds_thresholds(nthresh)
    counts = np.zeros((4, nthresh))
    annotation_pixels = sum(int(gt.sum()) for gt in annotations)
    # Thresholded maps are nested, so equal pixel counts mean equal maps: match each map once.
    selected = [int((prediction >= t).sum()) for t in thresholds]
    for index, threshold in enumerate(thresholds):
        if index and selected[index] == selected[index - 1]:
            counts[:, index] = counts[:, index - 1]
            continue
        boundary = prediction >= threshold
        if thinning:
            boundary = thin(boundary)
        matched_prediction = np.zeros_like(boundary)
        matched_annotation = 0
        for annotation in annotations:
            match_prediction, match_annotation, _, _ = correspond_pixels(
                boundary, annotation, max_dist=max_dist
            )
            matched_prediction |= match_prediction > 0
            matched_annotation += int((match_annotation > 0).sum())
        counts[:, index] = (
            matched_annotation,
            annotation_pixels,
            matched_prediction.sum(),
            boundary.sum(),
        )
    return BoundaryCounts(thresholds, *counts)


def _interpolated_best_f(
    thresholds: np.ndarray, recall: np.ndarray, precision: np.ndarray
) -> tuple[float, float, float, float]:
    """(threshold, R, P, F) maximising F along the piecewise-linear PR curve (MATLAB ``maxF``)."""
    if len(thresholds) == 1:
        return thresholds[0], recall[0], precision[0], _fmeasure(recall, precision)[0]
    steps = np.linspace(0, 1, 100)[1:, None]  # d = 0 repeats the previous segment's end

    def lerp(values: np.ndarray) -> np.ndarray:
        return np.concatenate([values[:1], (values[:-1] + steps * np.diff(values)).T.ravel()])

    r, p, t = lerp(recall), lerp(precision), lerp(thresholds)
    f = _fmeasure(r, p)
    best = int(np.argmax(f))  # first maximum, as MATLAB's strict '>' scan keeps
    return t[best], r[best], p[best], f[best]


@typecheck
def summarize(counts: Sequence[BoundaryCounts]) -> BoundaryScores:
    """ODS, OIS and AP over images (official ``collect_eval_bdry``)."""
    if not counts:
        raise ValueError("summarize needs at least one image")
    thresholds = counts[0].thresholds
    if any(not np.array_equal(c.thresholds, thresholds) for c in counts):
        raise ValueError("all images must be evaluated at the same thresholds")
    stacked = np.stack([[c.count_r, c.sum_r, c.count_p, c.sum_p] for c in counts])  # [i 4 t]
    count_r, sum_r, count_p, sum_p = stacked.sum(axis=0)
    recall, precision = _ratio(count_r, sum_r), _ratio(count_p, sum_p)
    f1 = _fmeasure(recall, precision)
    ods_threshold, ods_recall, ods_precision, ods = _interpolated_best_f(
        thresholds, recall, precision
    )

    image_f1_curves = _fmeasure(
        _ratio(stacked[:, 0], stacked[:, 1]), _ratio(stacked[:, 2], stacked[:, 3])
    )
    best = image_f1_curves.argmax(axis=1)
    best_counts = stacked[np.arange(len(counts)), :, best].sum(axis=0)
    ois_recall = _ratio(best_counts[0], best_counts[1])
    ois_precision = _ratio(best_counts[2], best_counts[3])

    unique_recall, first = np.unique(recall, return_index=True)
    if len(unique_recall) > 1:
        sampled = np.interp(
            np.linspace(0, 1, 101), unique_recall, precision[first], left=0.0, right=0.0
        )
        ap = float(sampled.sum() * 0.01)
    else:
        ap = 0.0

    return BoundaryScores(
        ods=float(ods),
        ods_threshold=float(ods_threshold),
        ods_recall=float(ods_recall),
        ods_precision=float(ods_precision),
        ois=float(_fmeasure(ois_recall, ois_precision)),
        ois_recall=float(ois_recall),
        ois_precision=float(ois_precision),
        ap=ap,
        thresholds=thresholds,
        recall=recall,
        precision=precision,
        f1=f1,
        image_f1=image_f1_curves.max(axis=1),
    )


def _listed(items: Sequence[str], separator: str = ", ", most: int = 20) -> str:
    """At most ``most`` items joined, and how many more there are."""
    shown = separator.join(items[:most])
    return shown if len(items) <= most else f"{shown}{separator}... and {len(items) - most} more"


def _evaluate_files(
    prediction_path: Path, ground_truth_path: Path, nthresh: int, max_dist: float, thinning: bool
) -> BoundaryCounts:
    return evaluate_image(
        load_prediction(prediction_path),
        load_ground_truth(ground_truth_path),
        nthresh=nthresh,
        max_dist=max_dist,
        thinning=thinning,
    )


def evaluate_dir(
    prediction_dir: str | os.PathLike,
    ground_truth_dir: str | os.PathLike,
    *,
    ids: Sequence[str] | None = None,
    nthresh: int = NTHRESH,
    max_dist: float = MAX_DIST,
    thinning: bool = True,
    workers: int = 1,
    progress: bool = True,
) -> BoundaryScores:
    """Score predictions ``prediction_dir/<id>.png`` (or ``<id>.mat`` holding ``ucm2``) against
    ``ground_truth_dir/<id>.mat``, images spread over ``workers`` processes.

    ``ids=None`` scores every annotation in ``ground_truth_dir`` and, like the official
    benchmark, fails if one has no prediction (a partial run must not pass for a full one);
    pass ``ids`` to score a subset.

    Every input is checked before scoring starts (a second or so per 100 images): the settings,
    then every prediction present (``FileNotFoundError`` listing all missing ones), then each
    annotation and prediction readable and each prediction of its annotations' size
    (:func:`check_prediction`; one ``ValueError`` listing every bad file).
    """
    bsds_thresholds(nthresh)
    check_max_dist(max_dist)
    prediction_dir, ground_truth_dir = Path(prediction_dir), Path(ground_truth_dir)
    if ids is None:
        ids = sorted(path.stem for path in ground_truth_dir.glob("*.mat"))
    if not ids:
        raise FileNotFoundError(f"no ground truth .mat files in {ground_truth_dir}")
    jobs, missing = [], []
    for image_id in ids:
        found = [prediction_dir / f"{image_id}{suffix}" for suffix in PREDICTION_SUFFIXES]
        found = [path for path in found if path.is_file()]
        if not found:
            missing.append(image_id)
            continue
        jobs.append((found[0], ground_truth_dir / f"{image_id}.mat", nthresh, max_dist, thinning))
    if missing:
        raise FileNotFoundError(
            f"no prediction in {prediction_dir} (<id>.png or <id>.mat) for {len(missing)} of "
            f"{len(ids)} images: {_listed(missing)}"
        )
    problems = []
    for prediction_path, ground_truth_path, *_ in jobs:
        try:
            check_prediction(prediction_path, load_ground_truth(ground_truth_path)[0].shape)
        except ValueError as error:
            problems.append(str(error))
    if problems:
        raise ValueError(
            f"{len(problems)} of {len(jobs)} inputs cannot be scored:\n" + _listed(problems, "\n")
        )

    from tqdm.auto import tqdm

    counts: list[BoundaryCounts | None] = [None] * len(jobs)
    with tqdm(total=len(jobs), desc="BSDS images", unit="img", disable=not progress) as bar:
        if workers <= 1:
            for index, job in enumerate(jobs):
                counts[index] = _evaluate_files(*job)
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futures = {pool.submit(_evaluate_files, *job): i for i, job in enumerate(jobs)}
                for future in as_completed(futures):
                    counts[futures[future]] = future.result()
                    bar.update()
    return summarize(counts)
