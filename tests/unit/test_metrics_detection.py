"""COCO-style mAP against pycocotools' COCOeval (bbox, area 'all', maxDets 100) and by hand."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cxrbench.metrics.classification import MetricError
from cxrbench.metrics.detection import (
    IOU_THRESHOLDS,
    DetectionAccumulator,
    average_precision,
    box_iou,
    mean_average_precision,
)

Entry = dict[str, np.ndarray]


def _xywh(box: np.ndarray) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def _labels(entry: Entry) -> np.ndarray:
    return entry.get("labels", np.zeros(len(entry["boxes"]), dtype=np.int64))


def _coco_map(
    preds: Sequence[Entry],
    gts: Sequence[Entry],
    thresholds: Sequence[float] | np.ndarray = IOU_THRESHOLDS,
    positive_only: bool = False,
) -> float:
    """The summarize-style mean of COCOeval's precision entries > -1 (image i has id i + 1)."""
    images = [{"id": i + 1, "width": 1024, "height": 1024} for i in range(len(gts))]
    annotations, detections, classes = [], [], set()
    for i, (pred, gt) in enumerate(zip(preds, gts, strict=True)):
        for box, label in zip(gt["boxes"], _labels(gt), strict=True):
            x, y, w, h = _xywh(box)
            annotations.append(
                {"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(label) + 1,
                 "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0}
            )  # fmt: skip
            classes.add(int(label))
        for box, score, label in zip(pred["boxes"], pred["scores"], _labels(pred), strict=True):
            detections.append(
                {"image_id": i + 1, "category_id": int(label) + 1, "bbox": _xywh(box),
                 "score": float(score)}
            )  # fmt: skip
            classes.add(int(label))
    categories = [{"id": c + 1, "name": f"c{c}"} for c in sorted(classes)]
    dataset = {"images": images, "annotations": annotations, "categories": categories}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = dataset
        coco_gt.createIndex()
        if detections:
            coco_dt = coco_gt.loadRes(detections)
        else:
            coco_dt = COCO()
            coco_dt.dataset = {**dataset, "annotations": []}
            coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.params.iouThrs = np.asarray(thresholds, dtype=np.float64)
        evaluator.params.areaRng = [[0, 1e10]]
        evaluator.params.areaRngLbl = ["all"]
        evaluator.params.maxDets = [100]
        if positive_only:
            evaluator.params.imgIds = [i + 1 for i, gt in enumerate(gts) if len(gt["boxes"])]
        evaluator.evaluate()
        evaluator.accumulate()
    precision = evaluator.eval["precision"]
    return float(np.mean(precision[precision > -1]))


def _pred(boxes: list[list[float]], scores: list[float], **extra: Any) -> Entry:
    return {
        "boxes": np.array(boxes, dtype=np.float64).reshape(-1, 4),
        "scores": np.array(scores, dtype=np.float64),
        **{k: np.asarray(v) for k, v in extra.items()},
    }


def _gt(boxes: list[list[float]], **extra: Any) -> Entry:
    return {
        "boxes": np.array(boxes, dtype=np.float64).reshape(-1, 4),
        **{k: np.asarray(v) for k, v in extra.items()},
    }


def _hand_made() -> tuple[list[Entry], list[Entry]]:
    preds = [
        # a match, a duplicate on the same GT, the second GT missed
        _pred([[12, 12, 50, 52], [10, 10, 48, 50]], [0.9, 0.8]),
        _pred([[0, 0, 20, 20], [30, 30, 40, 40]], [0.85, 0.3]),  # false positives, no GT
        _pred([], []),  # GT without prediction
        _pred([[6, 4, 31, 29], [100, 100, 120, 120]], [0.8, 0.8]),  # score ties
        _pred([], []),  # no GT, no prediction
        # a prediction with IoU exactly 0.5 with both GT boxes (tie → the later GT), then one
        # that only fits the first GT; the two orders of the GT list give different matches
        _pred([[0, 0, 20, 10], [0, 0, 10, 10]], [0.9, 0.7]),
        _pred([[0, 0, 20, 10], [0, 0, 10, 10]], [0.9, 0.7]),
        # IoU 0.45 with a high score, IoU 0.6 with a lower one: thresholds matter
        _pred([[0, 0, 100, 45], [0, 0, 100, 60]], [0.95, 0.6]),
    ]
    gts = [
        _gt([[10, 10, 50, 50], [60, 60, 100, 100]]),
        _gt([]),
        _gt([[20, 20, 60, 80]]),
        _gt([[5, 5, 30, 30]]),
        _gt([]),
        _gt([[0, 0, 10, 10], [10, 0, 20, 10]]),
        _gt([[10, 0, 20, 10], [0, 0, 10, 10]]),
        _gt([[0, 0, 100, 100]]),
    ]
    return preds, gts


def _random_case(seed: int, n_images: int = 20, n_classes: int = 1) -> tuple[list, list]:
    rng = np.random.default_rng(seed)
    preds, gts = [], []
    for i in range(n_images):
        n_gt = 0 if i % 4 == 0 else int(rng.integers(1, 4))
        xy = rng.uniform(0, 800, (n_gt, 2))
        gt_boxes = np.concatenate([xy, xy + rng.uniform(20, 200, (n_gt, 2))], axis=1)
        gt_labels = rng.integers(0, n_classes, n_gt)
        hits = gt_boxes[rng.random(n_gt) < 0.8]
        hit_labels = gt_labels[: len(hits)] if n_classes > 1 else np.zeros(len(hits), int)
        jitter = hits + rng.normal(0, 12, hits.shape)
        jitter[:, 2:] = np.maximum(jitter[:, 2:], jitter[:, :2] + 1)
        n_fp = int(rng.integers(0, 3))
        fp_xy = rng.uniform(0, 800, (n_fp, 2))
        fp = np.concatenate([fp_xy, fp_xy + rng.uniform(10, 150, (n_fp, 2))], axis=1)
        boxes = np.concatenate([jitter, jitter[:1] + 3, fp])  # + a near-duplicate
        labels = np.concatenate([hit_labels, hit_labels[:1], rng.integers(0, n_classes, n_fp)])
        scores = np.round(rng.random(len(boxes)), 1)  # many ties
        pred: Entry = {"boxes": boxes, "scores": scores}
        gt: Entry = {"boxes": gt_boxes}
        if n_classes > 1:
            pred["labels"], gt["labels"] = labels, gt_labels
        preds.append(pred)
        gts.append(gt)
    return preds, gts


def test_box_iou_matches_pycocotools() -> None:
    rng = np.random.default_rng(0)
    a = np.concatenate([xy := rng.uniform(0, 50, (7, 2)), xy + rng.uniform(0, 40, (7, 2))], 1)
    b = np.concatenate([xy := rng.uniform(0, 50, (5, 2)), xy + rng.uniform(0, 40, (5, 2))], 1)
    b[0] = [10, 10, 10, 30]  # zero width
    reference = mask_utils.iou([_xywh(x) for x in a], [_xywh(x) for x in b], [0] * len(b))
    assert np.allclose(box_iou(a, b), reference, atol=1e-12)
    assert box_iou(np.array([[0, 0, 10, 10]]), np.array([[5, 0, 15, 10]]))[0, 0] == 50 / 150


def test_hand_computed_ap() -> None:
    # one GT; a false positive ranked above the true positive: precision 0, then 1/2 at recall 1;
    # the envelope makes it 1/2 at every recall point
    preds = [_pred([[50, 50, 60, 60], [0, 0, 10, 10]], [0.9, 0.8])]
    gts = [_gt([[0, 0, 10, 10]])]
    assert average_precision(preds, gts, 0.5) == 0.5
    # two GTs, only one found (rank 1): precision 1 up to recall 0.5, 0 beyond → 51/101
    preds = [_pred([[0, 0, 10, 10]], [0.9]), _pred([], [])]
    gts = [_gt([[0, 0, 10, 10]]), _gt([[0, 0, 10, 10]])]
    assert average_precision(preds, gts, 0.5) == pytest.approx(51 / 101, abs=1e-15)


def test_hand_made_case_matches_coco() -> None:
    preds, gts = _hand_made()
    ours = mean_average_precision(preds, gts)
    assert ours == pytest.approx(_coco_map(preds, gts), abs=1e-6)
    for t in (0.4, 0.5, 0.65, 0.75):
        assert average_precision(preds, gts, t) == pytest.approx(
            _coco_map(preds, gts, [t]), abs=1e-6
        )
    positive = mean_average_precision(preds, gts, positive_only=True)
    assert positive == pytest.approx(_coco_map(preds, gts, positive_only=True), abs=1e-6)
    assert positive > ours  # the false positives on the GT-free image no longer count


def test_gt_order_decides_ties_like_coco() -> None:
    preds, gts = _hand_made()
    for i in (5, 6):  # the two orders of one GT pair
        sub_preds, sub_gts = preds[i : i + 1], gts[i : i + 1]
        assert average_precision(sub_preds, sub_gts, 0.5) == pytest.approx(
            _coco_map(sub_preds, sub_gts, [0.5]), abs=1e-6
        )
    # [0,0,10,10] listed second: the IoU-0.5 box takes it and the exact box finds no partner
    assert average_precision(preds[6:7], gts[6:7], 0.5) < average_precision(
        preds[5:6], gts[5:6], 0.5
    )


@pytest.mark.parametrize("seed", range(4))
def test_random_case_matches_coco(seed: int) -> None:
    preds, gts = _random_case(seed)
    assert mean_average_precision(preds, gts) == pytest.approx(_coco_map(preds, gts), abs=1e-6)
    assert mean_average_precision(preds, gts, positive_only=True) == pytest.approx(
        _coco_map(preds, gts, positive_only=True), abs=1e-6
    )


def test_more_than_100_detections_per_image_like_coco() -> None:
    preds, gts = _random_case(11)
    rng = np.random.default_rng(5)
    xy = rng.uniform(0, 900, (150, 2))
    extra = np.concatenate([xy, xy + 30], axis=1)
    extra[-1] = gts[1]["boxes"][0]  # a perfect hit that only counts if kept (low score)
    scores = np.concatenate([rng.uniform(0.2, 1.0, 149), [0.1]])
    preds[1] = {"boxes": np.concatenate([preds[1]["boxes"], extra]),
                "scores": np.concatenate([preds[1]["scores"], scores])}  # fmt: skip
    assert mean_average_precision(preds, gts) == pytest.approx(_coco_map(preds, gts), abs=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_multi_class_matches_coco(seed: int) -> None:
    preds, gts = _random_case(100 + seed, n_images=24, n_classes=3)
    preds[0]["boxes"] = np.concatenate([preds[0]["boxes"], [[1, 1, 50, 50]]])
    preds[0]["scores"] = np.concatenate([preds[0]["scores"], [0.99]])
    preds[0]["labels"] = np.concatenate([preds[0]["labels"], [7]])  # a class without GT
    assert mean_average_precision(preds, gts) == pytest.approx(_coco_map(preds, gts), abs=1e-6)
    assert mean_average_precision(preds, gts, positive_only=True) == pytest.approx(
        _coco_map(preds, gts, positive_only=True), abs=1e-6
    )
    for label in (0, 1, 2):  # one class at a time equals COCO on that class's boxes only
        keep_p = [{k: v[e["labels"] == label] for k, v in e.items()} for e in preds]
        keep_g = [{k: v[e["labels"] == label] for k, v in e.items()} for e in gts]
        if sum(len(g["boxes"]) for g in keep_g):
            assert average_precision(preds, gts, 0.5, label=label) == pytest.approx(
                _coco_map(keep_p, keep_g, [0.5]), abs=1e-6
            )


def test_perfect_prediction_is_one() -> None:
    _, gts = _random_case(3)
    preds = [_pred(g["boxes"].tolist(), [0.9] * len(g["boxes"])) for g in gts]
    assert mean_average_precision(preds, gts) == 1.0
    assert mean_average_precision(preds, gts, positive_only=True) == 1.0


def test_no_ground_truth_is_an_error() -> None:
    preds = [_pred([[0, 0, 10, 10]], [0.5]), _pred([], [])]
    gts = [_gt([]), _gt([])]
    with pytest.raises(MetricError, match="no ground-truth box"):
        mean_average_precision(preds, gts)
    with pytest.raises(MetricError, match="no ground-truth box"):
        average_precision(preds, gts, 0.5)
    with pytest.raises(MetricError, match="no ground-truth box"):
        DetectionAccumulator().compute()


def test_malformed_inputs_are_errors() -> None:
    gts = [_gt([[0, 0, 10, 10]])]
    with pytest.raises(MetricError, match="1 predictions for 2"):
        mean_average_precision([_pred([], [])], [*gts, *gts])
    with pytest.raises(MetricError, match="x2 >= x1"):
        mean_average_precision([_pred([[10, 0, 0, 10]], [0.5])], gts)
    with pytest.raises(MetricError, match="finite scores"):
        mean_average_precision([_pred([[0, 0, 10, 10]], [0.5, 0.4])], gts)
    with pytest.raises(MetricError, match="no 'labels'"):
        mean_average_precision([_pred([[0, 0, 10, 10]], [0.5], labels=[1])], gts)
    two_classes = [_gt([[0, 0, 10, 10], [5, 5, 9, 9]], labels=[0, 1])]
    with pytest.raises(MetricError, match="one class"):
        average_precision([_pred([], [])], two_classes, 0.5)


def test_accumulator_with_torch_batches_matches_coco() -> None:
    preds, gts = _random_case(21, n_images=23)
    acc = DetectionAccumulator()
    for lo, hi in ((0, 7), (7, 16), (16, 23)):
        acc.update(
            [{k: torch.from_numpy(v).float() for k, v in p.items()} for p in preds[lo:hi]],
            [{k: torch.from_numpy(v) for k, v in g.items()} for g in gts[lo:hi]],
        )
    assert acc.count == 23
    result = acc.compute()
    f32 = [{k: v.astype(np.float32).astype(np.float64) for k, v in p.items()} for p in preds]
    assert result["map"] == pytest.approx(_coco_map(f32, gts), abs=1e-6)
    assert result["map_mgca"] == pytest.approx(_coco_map(f32, gts, positive_only=True), abs=1e-6)
    assert result["map50"] == pytest.approx(_coco_map(f32, gts, [0.5]), abs=1e-6)
    assert IOU_THRESHOLDS.tolist() == [0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75]
