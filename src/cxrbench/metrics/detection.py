"""Detection metric of the mgca protocol: COCO-style mAP averaged over IoU 0.40, 0.45, …, 0.75.

Inputs, one entry per image and in the same order: ``predictions[i] = {"boxes": (K, 4),
"scores": (K,)}`` and ``ground_truths[i] = {"boxes": (M, 4)}``, both optionally with ``"labels"``
(ints); numpy arrays or torch tensors. Boxes are absolute pixel corners (x1, y1, x2, y2) with
x2 ≥ x1 and y2 ≥ y1. Without labels every box is one class.

Definitions, identical to pycocotools' ``COCOeval`` (bbox, area range 'all', ``maxDets=100``, no
crowd boxes; the unit tests compare against it):

* **IoU** = |A ∩ B| / (|A| + |B| − |A ∩ B|) with width x2 − x1 and height y2 − y1 (no +1, as COCO
  for [x, y, w, h] boxes); boxes that do not overlap with positive area have IoU 0.
* **Per image and class**: predictions are sorted by descending score (stable sort: equal scores
  keep their input order) and only the first 100 are kept (COCO's ``maxDets``). Each prediction in
  turn is matched to the not yet matched ground-truth box with the highest IoU ≥ the threshold
  (equal IoUs: the later ground-truth box, as COCO's loop); matched = true positive, else false
  positive. Predictions on images without ground truth are false positives.
* **AP of one class at one threshold**: all kept predictions of all images are ranked by score
  (stable: ties keep image order, then the per-image order); precision = TP/(TP+FP) and recall =
  TP/(number of ground-truth boxes) at each rank; precision is made monotone (each value becomes the
  maximum of the precisions at its rank and after); AP is the mean of the precision at the 101
  recall points 0, 0.01, …, 1, where the precision at recall r is the one at the first rank whose
  recall is ≥ r, and 0 if no rank reaches r. COCO divides by TP+FP+2.2e-16; we divide by TP+FP
  (never 0 there), so a perfect result is exactly 1.0 (differences ≤ 1e-15).
* **mAP** = mean over IoU thresholds of the mean over classes with at least one ground-truth box of
  the class AP. A set without any ground-truth box has no AP (COCO reports −1): that is a
  :class:`MetricError`. Predictions of classes absent from the ground truth do not count.

Two variants are recorded (PROTOCOLS.md §1): ``map`` over all test images (standard: false
positives on healthy images count) and ``map_mgca`` over the images with at least one ground-truth
box, as MGCA evaluated (torchmetrics ``MeanAveragePrecision`` fed GT-positive images only).
Remaining deviation from MGCA: MGCA also skipped images for which its post-processing kept no box
(``if out is None: continue``), which drops those images' ground truth from the recall; we keep them
(their boxes count as misses), so ``map_mgca`` is ≤ MGCA's number on the same predictions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cxrbench.metrics.classification import MetricError

ArrayLike = np.ndarray | torch.Tensor
Boxes = Mapping[str, ArrayLike]

IOU_THRESHOLDS = np.round(np.arange(0.40, 0.751, 0.05), 2)  # 0.40, 0.45, …, 0.75 (8 values)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)  # COCO's recThrs
MAX_DETECTIONS = 100  # COCO's maxDets, per image and class


def _to_numpy(values: ArrayLike, dtype: type) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        target = torch.float64 if dtype is np.float64 else torch.int64
        return values.detach().cpu().to(target).numpy().copy()
    return np.array(values, dtype=dtype)


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """IoU matrix (A, B) of corner boxes (A, 4) and (B, 4), COCO convention (no +1)."""
    a, b = np.asarray(boxes_a, dtype=np.float64), np.asarray(boxes_b, dtype=np.float64)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    width = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    height = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    overlap = (width > 0) & (height > 0)
    inter = np.where(overlap, width * height, 0.0)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=overlap)


@dataclass(frozen=True)
class _Image:
    pred_boxes: np.ndarray  # (K, 4) float64
    scores: np.ndarray  # (K,) float64
    pred_labels: np.ndarray  # (K,) int64
    gt_boxes: np.ndarray  # (M, 4) float64
    gt_labels: np.ndarray  # (M,) int64


def _boxes(entry: Boxes, what: str) -> np.ndarray:
    if "boxes" not in entry:
        raise MetricError(f"{what} has no 'boxes' (keys: {sorted(entry)})")
    boxes = _to_numpy(entry["boxes"], np.float64)
    if boxes.size == 0:
        return boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise MetricError(f"{what}: boxes must have shape (K, 4); got {boxes.shape}")
    if not np.isfinite(boxes).all():
        raise MetricError(f"{what}: boxes hold NaN or inf")
    bad = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if bad.any():
        raise MetricError(
            f"{what}: boxes must be (x1, y1, x2, y2) with x2 >= x1 and y2 >= y1; got "
            f"{boxes[bad][0].tolist()}"
        )
    return boxes


def _labels(entry: Boxes, count: int, labelled: bool, what: str) -> np.ndarray:
    if not labelled or (count == 0 and "labels" not in entry):
        return np.zeros(count, dtype=np.int64)
    if "labels" not in entry:
        raise MetricError(f"{what} has no 'labels' while other images carry labels")
    labels = _to_numpy(entry["labels"], np.int64).reshape(-1)
    if labels.shape != (count,):
        raise MetricError(f"{what}: {count} boxes but labels of shape {labels.shape}")
    return labels


def _parse(predictions: Sequence[Boxes], ground_truths: Sequence[Boxes]) -> list[_Image]:
    if len(predictions) != len(ground_truths):
        raise MetricError(
            f"mAP needs one prediction entry per image: {len(predictions)} predictions for "
            f"{len(ground_truths)} ground-truth images"
        )
    labelled = any("labels" in e for e in (*predictions, *ground_truths))
    images = []
    for i, (pred, gt) in enumerate(zip(predictions, ground_truths, strict=True)):
        pred_boxes = _boxes(pred, f"prediction of image {i}")
        if "scores" not in pred:
            raise MetricError(f"prediction of image {i} has no 'scores' (keys: {sorted(pred)})")
        scores = _to_numpy(pred["scores"], np.float64).reshape(-1)
        if scores.shape != (len(pred_boxes),) or not np.isfinite(scores).all():
            raise MetricError(
                f"prediction of image {i}: {len(pred_boxes)} boxes need as many finite scores; "
                f"got {scores.tolist()[:10]}"
            )
        gt_boxes = _boxes(gt, f"ground truth of image {i}")
        images.append(
            _Image(
                pred_boxes,
                scores,
                _labels(pred, len(pred_boxes), labelled, f"prediction of image {i}"),
                gt_boxes,
                _labels(gt, len(gt_boxes), labelled, f"ground truth of image {i}"),
            )
        )
    return images


def _match(iou: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """True-positive flags (T, D) of predictions in score order against (D, G) IoUs."""
    n_det, n_gt = iou.shape
    tp = np.zeros((len(thresholds), n_det), dtype=bool)
    if n_det == 0 or n_gt == 0:
        return tp
    limits = np.minimum(thresholds, 1 - 1e-10)[:, None]  # as COCO
    taken = np.zeros((len(thresholds), n_gt), dtype=bool)
    for d in range(n_det):
        candidates = ~taken & (iou[d][None, :] >= limits)
        rows = np.flatnonzero(candidates.any(axis=1))
        if rows.size == 0:
            continue
        masked = np.where(candidates[rows], iou[d][None, :], -np.inf)
        best = n_gt - 1 - np.argmax(masked[:, ::-1], axis=1)  # ties: the last ground truth
        taken[rows, best] = True
        tp[rows, d] = True
    return tp


def class_matches(
    images: Sequence[_Image], label: int, thresholds: np.ndarray
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Per image, for one class: the kept prediction scores (K_i,) in score order (first 100),
    their true-positive flags (T, K_i) at each threshold, and the ground-truth box counts (N,).

    Matching is within an image, so these do not depend on which other images are evaluated:
    the bootstrap (``metrics/resample.py``) matches once and re-ranks per resample."""
    scores, flags, n_gt = [], [], np.zeros(len(images), dtype=np.int64)
    for i, image in enumerate(images):
        gt = image.gt_boxes[image.gt_labels == label]
        keep = np.flatnonzero(image.pred_labels == label)
        order = keep[np.argsort(-image.scores[keep], kind="stable")][:MAX_DETECTIONS]
        scores.append(image.scores[order])
        flags.append(_match(box_iou(image.pred_boxes[order], gt), thresholds))
        n_gt[i] = len(gt)
    return scores, flags, n_gt


def _class_ap(images: Sequence[_Image], label: int, thresholds: np.ndarray) -> np.ndarray:
    """AP (T,) of one class over the images; MetricError if it has no ground-truth box."""
    scores, flags, counts = class_matches(images, label, thresholds)
    n_gt = int(counts.sum())
    if n_gt == 0:
        raise MetricError(f"AP is undefined for class {label}: no ground-truth box in the set")
    rank = np.argsort(-np.concatenate(scores), kind="stable")
    tp = np.concatenate(flags, axis=1)[:, rank]
    n_det = tp.shape[1]
    if n_det == 0:
        return np.zeros(len(thresholds))
    tp_sum = np.cumsum(tp, axis=1, dtype=np.float64)
    fp_sum = np.cumsum(~tp, axis=1, dtype=np.float64)
    recall = tp_sum / n_gt
    precision = tp_sum / (tp_sum + fp_sum)
    precision = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    aps = np.empty(len(thresholds))
    for t in range(len(thresholds)):
        idx = np.searchsorted(recall[t], RECALL_POINTS, side="left")
        sampled = np.where(idx < n_det, precision[t, np.minimum(idx, n_det - 1)], 0.0)
        aps[t] = sampled.mean()
    return aps


def _select(images: list[_Image], positive_only: bool) -> list[_Image]:
    return [im for im in images if len(im.gt_boxes)] if positive_only else images


def average_precision(
    predictions: Sequence[Boxes],
    ground_truths: Sequence[Boxes],
    iou_threshold: float,
    label: int | None = None,
) -> float:
    """COCO AP of one class at one IoU threshold (module docstring for the definition).

    ``label=None`` treats every box as one class; then labels, if given, must hold one value.
    """
    images = _parse(predictions, ground_truths)
    if label is None:
        present = {int(v) for im in images for v in (*im.pred_labels, *im.gt_labels)}
        if len(present) > 1:
            raise MetricError(
                f"average_precision without label= needs one class; the boxes carry labels "
                f"{sorted(present)} (pass label= or use mean_average_precision)"
            )
        label = present.pop() if present else 0
    return float(_class_ap(images, label, np.array([iou_threshold], dtype=np.float64))[0])


def mean_average_precision(
    predictions: Sequence[Boxes],
    ground_truths: Sequence[Boxes],
    iou_thresholds: Sequence[float] | np.ndarray = IOU_THRESHOLDS,
    positive_only: bool = False,
) -> float:
    """Mean over thresholds of the mean over ground-truth classes of the COCO AP.

    ``positive_only=True`` evaluates only the images with at least one ground-truth box (the
    ``map_mgca`` variant).
    """
    thresholds = np.asarray(iou_thresholds, dtype=np.float64).reshape(-1)
    images = _select(_parse(predictions, ground_truths), positive_only)
    classes = np.unique(np.concatenate([im.gt_labels for im in images] or [np.zeros(0)]))
    if classes.size == 0:
        raise MetricError(
            f"mAP is undefined: no ground-truth box in the {len(images)} evaluated images"
        )
    per_class = np.stack([_class_ap(images, int(c), thresholds) for c in classes])  # (K, T)
    return float(per_class.mean(axis=0).mean())


class DetectionAccumulator:
    """Collects per-image predictions and ground truth over batches; :meth:`compute` gives
    ``{"map": …, "map_mgca": …, "map50": …}`` (``map50``: AP at IoU 0.5 on all images).

    Arrays are copied to the CPU on :meth:`update`, so later in-place changes of the caller's
    tensors do not leak into the metric.
    """

    def __init__(self) -> None:
        self._preds: list[dict[str, np.ndarray]] = []
        self._gts: list[dict[str, np.ndarray]] = []

    @staticmethod
    def _copy(entry: Boxes) -> dict[str, np.ndarray]:
        return {
            key: _to_numpy(value, np.int64 if key == "labels" else np.float64)
            for key, value in entry.items()
            if key in ("boxes", "scores", "labels")
        }

    def update(self, preds: Sequence[Boxes], gts: Sequence[Boxes]) -> None:
        if len(preds) != len(gts):
            raise MetricError(f"update got {len(preds)} predictions for {len(gts)} images")
        self._preds.extend(self._copy(p) for p in preds)
        self._gts.extend(self._copy(g) for g in gts)

    @property
    def count(self) -> int:
        """Number of images seen so far."""
        return len(self._gts)

    def compute(self) -> dict[str, float]:
        return {
            "map": mean_average_precision(self._preds, self._gts),
            "map_mgca": mean_average_precision(self._preds, self._gts, positive_only=True),
            "map50": mean_average_precision(self._preds, self._gts, iou_thresholds=[0.5]),
        }

    def per_image(self) -> dict[str, np.ndarray]:
        """Every image seen, in order, as flat arrays (:func:`pack_boxes`)."""
        return pack_boxes(self._preds, self._gts)

    def reset(self) -> None:
        self._preds, self._gts = [], []


def pack_boxes(
    predictions: Sequence[Boxes], ground_truths: Sequence[Boxes]
) -> dict[str, np.ndarray]:
    """Per-image boxes as flat arrays: ``pred_boxes`` (K, 4), ``pred_scores`` (K,),
    ``pred_labels`` (K,) and ``pred_count`` (N,: boxes of each image, in image order), and the
    same ``gt_boxes``, ``gt_labels``, ``gt_count`` of the ground truth (no scores)."""
    images = _parse(predictions, ground_truths)
    return {
        "pred_boxes": np.concatenate([im.pred_boxes for im in images] or [np.zeros((0, 4))]),
        "pred_scores": np.concatenate([im.scores for im in images] or [np.zeros(0)]),
        "pred_labels": np.concatenate([im.pred_labels for im in images] or [np.zeros(0, np.int64)]),
        "pred_count": np.array([len(im.scores) for im in images], dtype=np.int64),
        "gt_boxes": np.concatenate([im.gt_boxes for im in images] or [np.zeros((0, 4))]),
        "gt_labels": np.concatenate([im.gt_labels for im in images] or [np.zeros(0, np.int64)]),
        "gt_count": np.array([len(im.gt_boxes) for im in images], dtype=np.int64),
    }


def unpack_boxes(arrays: Mapping[str, np.ndarray]) -> tuple[list[Boxes], list[Boxes]]:
    """The per-image ``predictions`` and ``ground_truths`` lists of :func:`pack_boxes`' arrays."""
    preds: list[Boxes] = []
    gts: list[Boxes] = []
    p_end = np.cumsum(arrays["pred_count"])
    g_end = np.cumsum(arrays["gt_count"])
    for i in range(len(p_end)):
        p = slice(int(p_end[i] - arrays["pred_count"][i]), int(p_end[i]))
        g = slice(int(g_end[i] - arrays["gt_count"][i]), int(g_end[i]))
        preds.append({"boxes": arrays["pred_boxes"][p], "scores": arrays["pred_scores"][p],
                      "labels": arrays["pred_labels"][p]})  # fmt: skip
        gts.append({"boxes": arrays["gt_boxes"][g], "labels": arrays["gt_labels"][g]})
    return preds, gts


def parse_images(predictions: Sequence[Boxes], ground_truths: Sequence[Boxes]) -> list[_Image]:
    """The checked per-image form the metrics (and the bootstrap) work on."""
    return _parse(predictions, ground_truths)
