"""AUROC and accuracy against scikit-learn and hand-computed cases; undefined AUROC is an error."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score

from cxrbench.metrics.classification import MetricError, accuracy, macro_auroc, per_class_auroc


def test_hand_computed_auroc() -> None:
    # pairs (pos, neg): 0.35>0.1 ✓, 0.35<0.4 ✗, 0.8>0.1 ✓, 0.8>0.4 ✓ → 3/4
    assert macro_auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    # a tie between a positive and a negative counts one half
    assert macro_auroc(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, 2, size=(200, 4))
    scores = np.round(rng.random((200, 4)) + 0.3 * targets, 1)  # many ties
    ours = per_class_auroc(scores, targets)
    ref = [roc_auc_score(targets[:, c], scores[:, c]) for c in range(4)]
    assert np.allclose(ours, ref, atol=1e-12)
    assert macro_auroc(scores, targets) == pytest.approx(
        roc_auc_score(targets, scores, average="macro"), abs=1e-12
    )


def test_single_label_class_is_an_error_naming_it() -> None:
    targets = np.array([[0, 1], [0, 0], [0, 1]])
    with pytest.raises(MetricError, match=r"'Edema'.*0 positives and 3 negatives"):
        macro_auroc(np.random.default_rng(0).random((3, 2)), targets, ["Edema", "Effusion"])


@pytest.mark.parametrize("seed", range(3))
def test_accuracy_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, 100)
    logits = rng.normal(size=(100, 3)) + 1.5 * np.eye(3)[labels]
    expected = accuracy_score(labels, logits.argmax(1))
    assert accuracy(logits, labels) == expected
    assert accuracy(logits, np.eye(3)[labels]) == expected  # one-hot targets
