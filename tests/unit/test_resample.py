"""The metrics on bootstrap resamples (metrics/resample.py): equal to the protocol metrics on the
test set itself and, resample by resample, to the protocol metrics of the drawn images (a
reference loop); stratified draws keep every stratum; undefined resamples are NaN, not errors."""

from __future__ import annotations

import numpy as np
import pytest

from cxrbench.metrics import classification, detection, resample
from cxrbench.metrics.segmentation import dice_from_terms, dice_per_image, dice_terms


def _scores(rng: np.random.Generator, n: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    targets = (rng.random((n, classes)) < 0.3).astype(np.float32)
    targets[0], targets[1] = 1, 0  # every class has positives and negatives
    scores = (targets * 0.4 + rng.random((n, classes))).astype(np.float32)
    scores[5:15] = np.round(scores[5:15], 1)  # ties, within and across labels
    return scores, targets


def _boxes(rng: np.random.Generator, n: int) -> tuple[list[dict], list[dict]]:
    preds, gts = [], []
    for i in range(n):
        gt = rng.uniform(0, 40, (int(rng.integers(0, 3)) if i > 0 else 1, 2))
        gt = np.hstack([gt, gt + rng.uniform(5, 20, gt.shape)])
        near = gt + rng.normal(0, 2, gt.shape)
        near[:, 2:] = np.maximum(near[:, 2:], near[:, :2] + 1)
        far = rng.uniform(0, 40, (int(rng.integers(0, 3)), 2))
        boxes = np.vstack([near, np.hstack([far, far + 10])])
        preds.append({"boxes": boxes, "scores": rng.random(len(boxes))})
        gts.append({"boxes": gt})
    return preds, gts


def test_on_the_test_set_itself_every_metric_equals_the_protocol_metric() -> None:
    rng = np.random.default_rng(0)
    ones = np.ones((1, 60), dtype=np.int64)
    scores, targets = _scores(rng, 60, 3)
    assert resample.macro_auroc(scores, targets, ones)[0] == classification.macro_auroc(
        scores, targets
    )
    onehot = np.eye(3)[rng.integers(0, 3, 60)]
    assert resample.accuracy(scores, onehot, ones)[0] == classification.accuracy(scores, onehot)
    probs, masks = rng.random((60, 8, 8)), rng.random((60, 8, 8)) < 0.2
    masks[:10] = False
    dice = dice_from_terms(*dice_terms(probs, masks))
    np.testing.assert_array_equal(dice, dice_per_image(probs, masks))
    assert resample.weighted_mean(dice, ones)[0] == pytest.approx(dice.mean(), abs=1e-15)
    preds, gts = _boxes(rng, 60)
    for thresholds, positive in ((detection.IOU_THRESHOLDS, False), ([0.5], False),
                                 (detection.IOU_THRESHOLDS, True)):  # fmt: skip
        got = resample.DetectionMatches(preds, gts, thresholds).map(ones, positive)[0]
        want = detection.mean_average_precision(preds, gts, thresholds, positive_only=positive)
        assert got == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("stratified", [False, True])
def test_each_resample_equals_the_protocol_metric_of_the_drawn_images(stratified) -> None:
    """The reference loop: draw, index the arrays, call the protocol metric, resample by
    resample, against the vectorised counts."""
    rng = np.random.default_rng(1)
    n = 40
    scores, targets = _scores(rng, n, 2)
    preds, gts = _boxes(rng, n)
    positive = np.array([len(g["boxes"]) > 0 for g in gts])
    strata = resample.strata_of(targets) if stratified else None
    indices = resample.draw(np.random.default_rng(7), n, 12, strata)
    counts = resample.counts_of(indices, n)
    assert (counts.sum(axis=1) == n).all()
    aurocs = resample.macro_auroc(scores, targets, counts)
    matches = resample.DetectionMatches(preds, gts)
    box_strata = positive.astype(int) if stratified else None
    box_counts = resample.counts_of(resample.draw(np.random.default_rng(8), n, 12, box_strata), n)
    maps = matches.map(box_counts)
    for b, drawn in enumerate(indices):
        try:
            want = classification.macro_auroc(scores[drawn], targets[drawn])
        except classification.MetricError:
            assert np.isnan(aurocs[b]) and not stratified
        else:
            assert aurocs[b] == pytest.approx(want, abs=1e-12)
        picked = np.repeat(np.arange(n), box_counts[b])
        want_map = detection.mean_average_precision([preds[i] for i in picked],
                                                    [gts[i] for i in picked])  # fmt: skip
        assert maps[b] == pytest.approx(want_map, abs=1e-12)


def test_stratified_draws_keep_every_stratum_and_undefined_resamples_are_nan() -> None:
    targets = np.zeros((30, 2))
    targets[0, 0] = 1  # one positive of class 0: plain resamples often lose it
    targets[1:6, 1] = 1
    strata = resample.strata_of(targets)
    indices = resample.draw(np.random.default_rng(0), 30, 200, strata)
    assert (strata[indices] == strata[None, :]).all()
    scores = np.random.default_rng(1).random((30, 2))
    assert np.isfinite(resample.macro_auroc(scores, targets, resample.counts_of(indices, 30))).all()
    plain = resample.counts_of(resample.draw(np.random.default_rng(0), 30, 200), 30)
    values = resample.macro_auroc(scores, targets, plain)
    lost = plain[:, 0] == 0
    assert lost.any() and np.isnan(values[lost]).all() and np.isfinite(values[~lost]).all()
    # mAP: a resample without any ground-truth box is NaN too
    preds = [{"boxes": np.array([[0, 0, 5, 5.0]]), "scores": np.array([0.9])}] * 3
    gts = [{"boxes": np.array([[0, 0, 5, 5.0]])}] + [{"boxes": np.zeros((0, 4))}] * 2
    got = resample.DetectionMatches(preds, gts).map(np.array([[3, 0, 0], [0, 2, 1]]))
    assert got[0] == 1.0 and np.isnan(got[1])


def test_many_resamples_are_chunked_without_changing_values(monkeypatch) -> None:
    rng = np.random.default_rng(2)
    scores, targets = _scores(rng, 50, 2)
    counts = resample.counts_of(resample.draw(rng, 50, 64), 50)
    whole = resample.macro_auroc(scores, targets, counts)
    monkeypatch.setattr(resample, "CHUNK_ENTRIES", 120)  # a few rows at a time
    np.testing.assert_array_equal(resample.macro_auroc(scores, targets, counts), whole)


def test_dice_global_and_dice_pos_resamples_equal_the_metric_of_the_drawn_images() -> None:
    from cxrbench.metrics.segmentation import dice_global, dice_positive

    rng = np.random.default_rng(3)
    n = 30
    probs, masks = rng.random((n, 6, 6)), rng.random((n, 6, 6)) < 0.25
    masks[:12] = False
    inter, pred, true = dice_terms(probs, masks)
    dice = dice_from_terms(inter, pred, true)
    positive = true > 0
    indices = resample.draw(np.random.default_rng(4), n, 15, positive.astype(int))
    counts = resample.counts_of(indices, n)
    got_global = resample.dice_global(inter, pred, true, counts)
    got_pos = resample.weighted_mean(dice[positive], counts[:, positive])
    for b, drawn in enumerate(indices):
        assert got_global[b] == pytest.approx(dice_global(inter[drawn], pred[drawn], true[drawn]))
        assert got_pos[b] == pytest.approx(dice_positive(inter[drawn], pred[drawn], true[drawn]))
