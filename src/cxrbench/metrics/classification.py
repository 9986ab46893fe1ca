"""Classification metrics of the mgca protocol.

* **AUROC**: per class, the probability that a random positive scores above a random negative
  (ties count one half) — the Mann–Whitney statistic, equal to scikit-learn's ``roc_auc_score``;
  the task metric is the macro mean over classes. A class whose test labels are all one value
  has no AUROC: that is an error naming the class, never a silent NaN.
* **Accuracy**: top-1 over classes (COVIDx).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import rankdata

from cxrbench.errors import CxrbenchError


class MetricError(CxrbenchError):
    """A metric is undefined on the given labels."""


def _as_2d(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return values[:, None] if values.ndim == 1 else values


def binary_auroc(scores: np.ndarray, targets: np.ndarray, name: str = "class") -> float:
    """AUROC of one class via average ranks (ties averaged)."""
    targets = np.asarray(targets).astype(bool)
    n_pos = int(targets.sum())
    n_neg = len(targets) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise MetricError(
            f"AUROC is undefined for {name}: the test labels hold {n_pos} positives and "
            f"{n_neg} negatives (a class needs both)"
        )
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    return float((ranks[targets].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def per_class_auroc(
    scores: np.ndarray, targets: np.ndarray, class_names: Sequence[str] | None = None
) -> list[float]:
    s, t = _as_2d(scores), _as_2d(targets)
    if s.shape != t.shape:
        raise ValueError(f"scores {s.shape} and targets {t.shape} differ in shape")
    names = list(class_names) if class_names else [f"class {c}" for c in range(s.shape[1])]
    return [binary_auroc(s[:, c], t[:, c], repr(names[c])) for c in range(s.shape[1])]


def macro_auroc(
    scores: np.ndarray, targets: np.ndarray, class_names: Sequence[str] | None = None
) -> float:
    """Mean of the per-class AUROCs."""
    return float(np.mean(per_class_auroc(scores, targets, class_names)))


def accuracy(scores: np.ndarray, targets: np.ndarray) -> float:
    """Top-1 accuracy; ``targets`` are class indices (N,) or one-hot rows (N, C)."""
    s = np.asarray(scores)
    t = np.asarray(targets)
    labels = t.argmax(axis=1) if t.ndim == 2 else t.astype(int)
    return float((s.argmax(axis=1) == labels).mean())


HIGHER_IS_BETTER = {"auroc": True, "accuracy": True}
