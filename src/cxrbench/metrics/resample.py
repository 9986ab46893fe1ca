"""The protocol metrics on bootstrap resamples of a test set, many resamples at once (numpy).

A resample of ``N`` test images is written as a row of **counts**: how many times each image was
drawn (``counts[b, i]``, summing to ``N``). Every metric here takes a ``(B, N)`` count matrix and
returns the ``B`` metric values; a row of ones is the test set itself, and there each function
equals the metric of ``metrics/classification.py``, ``segmentation.py`` or ``detection.py``
exactly (the unit tests check this, and against a loop that evaluates the drawn images one
resample at a time). A resample on which a metric is undefined (AUROC of a class without
positives or negatives, mAP without a ground-truth box) gives NaN here; the caller
(:mod:`cxrbench.report.compare`) drops and counts such resamples, so no NaN reaches a result.

* :func:`draw` makes the resamples: ``B`` draws of ``N`` images with replacement, or, with
  ``strata``, of each stratum's own size from within the stratum (a stratified bootstrap: every
  resample keeps the test set's number of positives of every label pattern, so AUROC and mAP are
  defined on every resample).
* AUROC with counts is the Mann–Whitney statistic with each image weighted by its count (a tie
  counts one half), computed once per tie group of the sorted scores, so one class over
  ``B × N`` counts costs a gather, a segment sum and a cumulative sum.
* mAP with counts: predictions are matched to ground truth per image once
  (:func:`cxrbench.metrics.detection.class_matches`; matching never looks at other images); each
  resample re-ranks all detections, with each image's true and false positives weighted by its
  count (an image drawn twice counts twice), and takes COCO's 101-point AP from that curve.
  Equal scores of different images rank in test-set order (the reference ranks a resample's
  images in drawing order; the two differ only on exact score ties between images).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from cxrbench.metrics.detection import (
    IOU_THRESHOLDS,
    RECALL_POINTS,
    Boxes,
    class_matches,
    parse_images,
)

#: at most this many count entries (rows × images) are worked on at once
CHUNK_ENTRIES = 1 << 21


def draw(
    rng: np.random.Generator, n: int, size: int, strata: np.ndarray | None = None
) -> np.ndarray:
    """Indices ``(size, n)`` of ``size`` bootstrap resamples of ``n`` images.

    ``strata`` (N,) integer labels: each resample draws, for each stratum, as many images as the
    stratum holds from within it (columns keep their stratum's positions, so resample ``b`` holds
    exactly the test set's stratum sizes)."""
    if strata is None:
        return rng.integers(0, n, size=(size, n))
    strata = np.asarray(strata)
    if strata.shape != (n,):
        raise ValueError(f"strata must have shape ({n},); got {strata.shape}")
    out = np.empty((size, n), dtype=np.int64)
    for value in np.unique(strata):
        members = np.flatnonzero(strata == value)
        out[:, members] = members[rng.integers(0, len(members), size=(size, len(members)))]
    return out


def counts_of(indices: np.ndarray, n: int) -> np.ndarray:
    """``(B, n)`` counts of how often each image appears in each row of ``indices``."""
    rows = indices.shape[0]
    flat = (indices + n * np.arange(rows)[:, None]).ravel()
    return np.bincount(flat, minlength=rows * n).reshape(rows, n)


def strata_of(targets: np.ndarray) -> np.ndarray:
    """Stratum of each image: its label pattern (the unique row of ``targets``, or the value of
    a 1-d array). Binary: positives and negatives; one-hot: the class; multi-label: the
    combination of labels, so every class keeps its positives and negatives."""
    t = np.asarray(targets)
    rows = t.reshape(len(t), -1)
    _, inverse = np.unique(rows, axis=0, return_inverse=True)
    return np.asarray(inverse).reshape(-1)


def _chunked(counts: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    counts = np.atleast_2d(counts)
    step = max(1, CHUNK_ENTRIES // max(1, counts.shape[1]))
    return np.concatenate(
        [fn(counts[i : i + step]) for i in range(0, len(counts), step)] or [np.zeros(0)]
    )


# --------------------------------------------------------------------------- classification


def auroc(scores: np.ndarray, targets: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """AUROC (B,) of one class on each resample; NaN where it lacks positives or negatives."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    t = np.asarray(targets).reshape(-1).astype(bool)
    order = np.argsort(s, kind="stable")
    s, t = s[order], t[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # tie groups of the sorted scores

    def one(c: np.ndarray) -> np.ndarray:
        w = c[:, order].astype(np.float64)
        pos = np.add.reduceat(np.where(t, w, 0.0), starts, axis=1)
        neg = np.add.reduceat(np.where(t, 0.0, w), starts, axis=1)
        below = np.cumsum(neg, axis=1) - neg  # negatives in lower tie groups
        twice = (pos * (2.0 * below + neg)).sum(axis=1)  # 2 × (wins + ties / 2): exact
        n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            value = twice / (2.0 * n_pos * n_neg)
        return np.where((n_pos > 0) & (n_neg > 0), value, np.nan)

    if len(s) == 0:
        return np.full(np.atleast_2d(counts).shape[0], np.nan)
    return _chunked(counts, one)


def macro_auroc(scores: np.ndarray, targets: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Mean over classes of :func:`auroc` (B,); NaN where any class is undefined (as the
    protocol metric, which is an error then)."""
    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(targets)
    s, t = (s[:, None], t[:, None]) if s.ndim == 1 else (s, t)
    per_class = [auroc(s[:, c], t[:, c], counts) for c in range(s.shape[1])]
    return np.mean(per_class, axis=0)


def weighted_mean(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The mean of per-image ``values`` (N,) on each resample (B,): Dice, accuracy."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)

    def one(c: np.ndarray) -> np.ndarray:
        total = c.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, (c @ v) / total, np.nan)

    return _chunked(counts, one)


def dice_global(
    intersection: np.ndarray, predicted: np.ndarray, target: np.ndarray, counts: np.ndarray
) -> np.ndarray:
    """Dataset-level Dice 2·ΣTP / (ΣP + ΣT) (B,) on each resample from the per-image pixel
    counts (``metrics/segmentation.py``; 1.0 where a resample has no predicted or target pixel)."""
    tp = np.asarray(intersection, dtype=np.float64).reshape(-1)
    total = np.asarray(predicted, dtype=np.float64).reshape(-1) + np.asarray(
        target, dtype=np.float64
    ).reshape(-1)

    def one(c: np.ndarray) -> np.ndarray:
        cf = c.astype(np.float64)
        num, den = 2.0 * (cf @ tp), cf @ total
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / den, 1.0)

    return _chunked(counts, one)


def accuracy(scores: np.ndarray, targets: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Top-1 accuracy (B,) on each resample; ``targets`` one-hot (N, C) or indices (N,)."""
    t = np.asarray(targets)
    labels = t.argmax(axis=1) if t.ndim == 2 else t.astype(int)
    correct = (np.asarray(scores).argmax(axis=1) == labels).astype(np.float64)
    return weighted_mean(correct, counts)


# -------------------------------------------------------------------------------- detection


class DetectionMatches:
    """The matches of a test set's predictions (:func:`class_matches`, per class), made once;
    :meth:`map` is the mAP of any number of resamples of its images."""

    def __init__(
        self,
        predictions: Sequence[Boxes],
        ground_truths: Sequence[Boxes],
        iou_thresholds: Sequence[float] | np.ndarray = IOU_THRESHOLDS,
    ) -> None:
        images = parse_images(predictions, ground_truths)
        self.n = len(images)
        self.thresholds = np.asarray(iou_thresholds, dtype=np.float64).reshape(-1)
        labels = [im.gt_labels for im in images]
        self.classes = np.unique(np.concatenate(labels or [np.zeros(0, np.int64)]))
        self.positive = np.array([len(im.gt_boxes) > 0 for im in images], dtype=bool)
        self._per_class = []
        for label in self.classes:
            scores, flags, n_gt = class_matches(images, int(label), self.thresholds)
            image = np.concatenate(
                [np.full(len(s), i, dtype=np.int64) for i, s in enumerate(scores)]
                or [np.zeros(0, np.int64)]
            )
            rank = np.argsort(-np.concatenate(scores or [np.zeros(0)]), kind="stable")
            tp = np.concatenate(flags, axis=1)[:, rank] if flags else np.zeros((0, 0), bool)
            self._per_class.append((image[rank], tp, n_gt))

    def map(self, counts: np.ndarray, positive_only: bool = False) -> np.ndarray:
        """mAP (B,) over the thresholds and the classes with a ground-truth box in each resample
        (NaN: none has one). ``positive_only``: the images without ground truth are left out
        (``map_mgca``)."""
        counts = np.atleast_2d(counts)
        if positive_only:
            counts = counts * self.positive[None, :]
        if not self._per_class:
            return np.full(len(counts), np.nan)
        per_class = np.stack([self._class_map(counts, k) for k in range(len(self._per_class))])
        defined = ~np.isnan(per_class)
        total = np.where(defined, per_class, 0.0).sum(axis=0)
        n = defined.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 0, total / np.maximum(n, 1), np.nan)

    def _class_map(self, counts: np.ndarray, k: int) -> np.ndarray:
        """Mean over thresholds of class ``k``'s AP (B,), in chunks of resamples."""
        size = len(self.thresholds) * max(1, self._per_class[k][1].shape[1], counts.shape[1])
        step = max(1, CHUNK_ENTRIES // size)
        chunks = range(0, len(counts), step)
        return np.concatenate([self._ap(counts[i : i + step], k).mean(axis=1) for i in chunks])

    def _ap(self, counts: np.ndarray, k: int) -> np.ndarray:
        """AP (B, T) of class ``k``: NaN where the resample holds no ground-truth box of it."""
        image, tp, n_gt_image = self._per_class[k]
        n_gt = counts @ n_gt_image.astype(np.float64)  # (B,)
        out = np.zeros((len(counts), len(self.thresholds)))
        n_det = tp.shape[1]
        if n_det:
            w = counts[:, image].astype(np.float64)[:, None, :]  # (B, 1, D): image counts
            tp_sum = np.cumsum(w * tp[None], axis=2)  # (B, T, D)
            seen = np.cumsum(np.broadcast_to(w, tp_sum.shape), axis=2)
            with np.errstate(invalid="ignore", divide="ignore"):
                recall = tp_sum / n_gt[:, None, None]
                # a zero-weight detection repeats the previous point (first: one of recall 0,
                # precision 0); neither changes the interpolated precision
                precision = np.where(seen > 0, tp_sum / seen, 0.0)
            precision = np.maximum.accumulate(precision[:, :, ::-1], axis=2)[:, :, ::-1]
            last = n_det - 1
            for b in np.flatnonzero(n_gt > 0):
                idx = np.stack([np.searchsorted(r, RECALL_POINTS, side="left") for r in recall[b]])
                picked = np.take_along_axis(precision[b], np.minimum(idx, last), axis=1)
                out[b] = np.where(idx <= last, picked, 0.0).mean(axis=1)
        out[n_gt <= 0] = np.nan
        return out
