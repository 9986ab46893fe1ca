"""Per-image foreground Dice: hand-computed cases, a naive pixel loop, image (not batch) means."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrbench.metrics.classification import MetricError
from cxrbench.metrics.segmentation import (
    DiceAccumulator,
    dice_global,
    dice_per_image,
    dice_positive,
    dice_summary,
    dice_terms,
    mean_dice,
)


def _mask(rows: list[str]) -> np.ndarray:
    return np.array([[c == "#" for c in row] for row in rows], dtype=np.float64)


def _naive_dice(probs: np.ndarray, targets: np.ndarray, threshold: float = 0.5) -> list[float]:
    out = []
    for p_img, t_img in zip(probs, targets, strict=True):
        inter = n_pred = n_true = 0
        for p, t in zip(p_img.ravel().tolist(), t_img.ravel().tolist(), strict=True):
            pred, true = p > threshold, t == 1
            inter += pred and true
            n_pred += pred
            n_true += true
        if n_true == 0:
            out.append(1.0 if n_pred == 0 else 0.0)
        else:
            out.append(2 * inter / (n_pred + n_true))
    return out


def test_hand_computed_4x4() -> None:
    pred = _mask(["##..", "#...", "....", "...."])  # 3 pixels
    true = _mask(["#...", "##..", "....", "...."])  # 3 pixels, 2 shared
    assert dice_per_image(pred[None], true[None]).tolist() == [2 * 2 / (3 + 3)]
    pred2 = _mask(["####", "....", "....", "...."])  # 4 pixels, 1 shared with `true`
    dice = dice_per_image(np.stack([pred, pred2]), np.stack([true, true]))
    assert dice == pytest.approx([4 / 6, 2 / 7], abs=1e-15)
    assert mean_dice(np.stack([pred, pred2]), np.stack([true, true])) == pytest.approx(
        (4 / 6 + 2 / 7) / 2, abs=1e-15
    )


def test_empty_cases() -> None:
    empty, some = np.zeros((1, 4, 4)), np.zeros((1, 4, 4))
    some[0, 1, 1] = 1.0
    assert dice_per_image(empty, empty).tolist() == [1.0]  # empty target, empty prediction
    assert dice_per_image(some, empty).tolist() == [0.0]  # empty target, non-empty prediction
    assert dice_per_image(empty, some).tolist() == [0.0]  # non-empty target, empty prediction
    assert dice_per_image(some, some).tolist() == [1.0]


def test_threshold_is_strict() -> None:
    target = np.ones((1, 2, 2))
    assert dice_per_image(np.full((1, 2, 2), 0.5), target).tolist() == [0.0]
    assert dice_per_image(np.full((1, 2, 2), 0.5001), target).tolist() == [1.0]
    assert dice_per_image(np.full((1, 2, 2), 0.5), target, threshold=0.4).tolist() == [1.0]


@pytest.mark.parametrize("seed", range(4))
def test_matches_naive_pixel_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    probs = rng.random((12, 9, 7))
    probs[rng.random(probs.shape) < 0.05] = 0.5  # values exactly on the threshold
    targets = (rng.random((12, 9, 7)) < rng.random((12, 1, 1)) * 0.3).astype(np.int64)
    targets[:3] = 0  # some empty targets
    probs[1] = 0.1  # ... one with an empty prediction
    ours = dice_per_image(probs, targets)
    assert ours == pytest.approx(_naive_dice(probs, targets), abs=1e-15)
    assert ours[1] == 1.0
    assert mean_dice(probs[:, None], targets[:, None]) == pytest.approx(np.mean(ours), abs=1e-15)


def test_mean_over_images_not_batch_means() -> None:
    # batch A = 2 images with Dice 1 and 0, batch B = 1 image with Dice 1:
    # mean of batch means = (0.5 + 1) / 2 = 0.75, mean over images = 2/3.
    ones, zeros = np.ones((1, 4, 4)), np.zeros((1, 4, 4))
    batch_a = (np.concatenate([ones, zeros]), np.concatenate([ones, ones]))
    batch_b = (ones, ones)
    acc = DiceAccumulator()
    batch_means = []
    for probs, targets in (batch_a, batch_b):
        acc.update(probs, targets)
        batch_means.append(mean_dice(probs, targets))
    assert np.mean(batch_means) == 0.75
    assert acc.compute() == pytest.approx(2 / 3, abs=1e-15)
    assert acc.count == 3


def test_accumulator_uneven_batches_equal_one_shot() -> None:
    rng = np.random.default_rng(7)
    probs = rng.random((23, 1, 8, 8))
    targets = (rng.random((23, 1, 8, 8)) < 0.2).astype(np.float32)
    targets[::4] = 0
    acc = DiceAccumulator()
    for lo, hi in ((0, 8), (8, 16), (16, 21), (21, 23)):
        acc.update(torch.from_numpy(probs[lo:hi]), torch.from_numpy(targets[lo:hi]))
    assert acc.count == 23
    assert acc.compute() == pytest.approx(mean_dice(probs, targets), abs=1e-12)


def test_torch_input_matches_numpy() -> None:
    rng = np.random.default_rng(3)
    probs = rng.random((5, 1, 6, 6)).astype(np.float32)
    targets = rng.random((5, 1, 6, 6)) < 0.3
    logits = torch.logit(torch.from_numpy(probs)).requires_grad_(True)
    expected = dice_per_image(probs, targets)
    got = dice_per_image(torch.sigmoid(logits), torch.from_numpy(targets))
    assert got == pytest.approx(expected, abs=1e-12)
    half = dice_per_image(torch.from_numpy(probs).half(), torch.from_numpy(targets).float())
    assert half.shape == (5,)


def test_empty_accumulator_and_no_images_are_errors() -> None:
    with pytest.raises(MetricError, match="zero images"):
        DiceAccumulator().compute()
    with pytest.raises(MetricError, match="zero images"):
        mean_dice(np.zeros((0, 4, 4)), np.zeros((0, 4, 4)))


def test_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(MetricError, match=r"probs \(2, 4, 4\) and targets \(2, 4, 5\)"):
        dice_per_image(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(MetricError, match=r"probs \(2, 3, 4, 4\) and targets \(2, 3, 4, 4\)"):
        dice_per_image(np.zeros((2, 3, 4, 4)), np.zeros((2, 3, 4, 4)))
    acc = DiceAccumulator()
    with pytest.raises(MetricError, match=r"probs \(1, 1, 4, 4\) and targets \(2, 1, 4, 4\)"):
        acc.update(torch.zeros(1, 1, 4, 4), torch.zeros(2, 1, 4, 4))


def test_logits_and_non_binary_targets_are_errors() -> None:
    with pytest.raises(MetricError, match="apply the sigmoid"):
        dice_per_image(np.full((1, 2, 2), 3.0), np.ones((1, 2, 2)))
    with pytest.raises(MetricError, match="NaN"):
        dice_per_image(np.full((1, 2, 2), np.nan), np.ones((1, 2, 2)))
    with pytest.raises(MetricError, match="binary targets"):
        dice_per_image(np.full((1, 2, 2), 0.7), np.full((1, 2, 2), 0.5))


# ---------------------------------------------------------------- dice_pos and dice_global


def _random_set(seed: int, n: int = 12, size: int = 9) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and targets where a third of the targets are empty and a few predictions
    on those are not (the cases the two metrics exist for)."""
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, size, size)) < 0.3).astype(np.float64)
    targets[: n // 3] = 0
    probs = rng.random((n, size, size))
    probs[1] = 0.0  # empty target, empty prediction
    return probs, targets


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dice_global_is_sklearn_f1_over_all_pixels(seed: int) -> None:
    from sklearn.metrics import f1_score

    probs, targets = _random_set(seed)
    terms = dice_terms(probs, targets)
    reference = f1_score(targets.ravel().astype(int), (probs > 0.5).ravel().astype(int))
    assert dice_global(*terms) == pytest.approx(reference, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dice_pos_is_mean_sklearn_f1_over_positive_images(seed: int) -> None:
    from sklearn.metrics import f1_score

    probs, targets = _random_set(seed)
    positive = [i for i in range(len(targets)) if targets[i].any()]
    reference = np.mean(
        [
            f1_score(targets[i].ravel().astype(int), (probs[i] > 0.5).ravel().astype(int))
            for i in positive
        ]
    )
    summary = dice_summary(*dice_terms(probs, targets))
    assert summary["dice_pos"] == pytest.approx(reference, abs=1e-12)
    assert summary["dice"] == pytest.approx(np.mean(_naive_dice(probs, targets)), abs=1e-12)


def test_an_all_empty_prediction_wins_dice_but_not_the_other_two() -> None:
    targets = np.zeros((4, 4, 4))
    targets[0, :2, :2] = 1  # one positive image of four
    empty = np.zeros_like(targets)
    summary = dice_summary(*dice_terms(empty, targets))
    assert summary == {"dice": 0.75, "dice_global": 0.0, "dice_pos": 0.0}
    # a perfect mask on the positive plus one stray pixel on each negative: Dice per image drops
    # to 0.25, the global Dice charges 3 false pixels against 8 true ones, dice_pos is perfect
    stray = targets.copy()
    stray[1:, 3, 3] = 1
    summary = dice_summary(*dice_terms(stray, targets))
    assert summary["dice"] == 0.25
    assert summary["dice_global"] == pytest.approx(2 * 4 / (7 + 4))
    assert summary["dice_pos"] == 1.0


def test_summary_without_foreground_and_accumulator_agree() -> None:
    empty = np.zeros((3, 4, 4))
    assert dice_summary(*dice_terms(empty, empty)) == {"dice": 1.0, "dice_global": 1.0}
    with pytest.raises(MetricError, match="dice_pos is undefined"):
        dice_positive(*dice_terms(empty, empty))
    probs, targets = _random_set(5)
    acc = DiceAccumulator()
    acc.update(probs[:5], targets[:5])
    acc.update(torch.from_numpy(probs[5:]), torch.from_numpy(targets[5:]))
    assert acc.summary() == dice_summary(*dice_terms(probs, targets))
