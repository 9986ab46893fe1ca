"""Trivial references of a table's columns: what a method that learnt nothing would score.

A table shows them in their own rows below the methods (:mod:`cxrbench.report.tables`), never
ranked or bold, so that a lone ``place 71.7`` on SIIM reads against the 74.3 of predicting no
mask at all. Per metric (short key):

* segmentation, ``all-empty mask``: the per-image ``dice`` of predicting no foreground anywhere is
  the share of test images whose target mask is empty (empty target and empty prediction score 1,
  :func:`cxrbench.metrics.segmentation.dice_from_terms`; any other image 0); ``dice_pos`` and
  ``dice_global`` are 0;
* detection, ``no detections``: every mAP variant is 0;
* classification (and zero-shot classification): ``chance``, the AUROC of uninformative scores,
  0.5; ``majority class``, the ``accuracy`` of always predicting the test set's most frequent
  class;
* retrieval, ``random ranking``: the Recall@K of a random order of the gallery
  (:func:`cxrbench.systems.retrieval.chance`; ``r_mean`` the mean of the six).

The test-set dependent ones (``dice``, ``accuracy``) are read from the runs' own
``predictions.npz`` (:mod:`cxrbench.predictions`): the runs of one (task, fraction) cell share the
test set, so any of them gives it; every readable file of the cell is read and they must agree
(else a warning, and no value). A cell whose runs kept no predictions (schema 1 records) has no
value: the table prints ``–`` rather than a guess.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from cxrbench.errors import CxrbenchError
from cxrbench.report.schema import ResultRecord
from cxrbench.runs import PREDICTIONS_FILE

log = logging.getLogger(__name__)

RETRIEVAL = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "r_mean")
#: metric (short key) → the label of its reference row
LABELS = {
    "auroc": "chance",
    "accuracy": "majority class",
    "map": "no detections", "map50": "no detections", "map_mgca": "no detections",
    "dice": "all-empty mask", "dice_pos": "all-empty mask", "dice_global": "all-empty mask",
} | {k: "random ranking" for k in RETRIEVAL}  # fmt: skip
#: the reference rows in table order
ORDER = ("chance", "majority class", "random ranking", "no detections", "all-empty mask")
#: references that do not depend on the test set, in metric units
CONSTANT = {"auroc": 0.5, "map": 0.0, "map50": 0.0, "map_mgca": 0.0, "dice_pos": 0.0,
            "dice_global": 0.0}  # fmt: skip
#: references read from a run's predictions.npz
FROM_TEST_SET = frozenset({"dice", "accuracy", *RETRIEVAL})
#: what each row is, in words (for captions)
MEANING = {
    "chance": "AUROC of uninformative scores (50)",
    "majority class": "accuracy of always predicting the test set's most frequent class",
    "random ranking": "Recall@K of a random order of the gallery",
    "no detections": "mAP of predicting no box (0)",
    "all-empty mask": (
        "Dice of predicting an empty mask for every image, which is the share of test images "
        "whose mask is empty for per-image Dice and 0 for Dice (positives) and Dice (global)"
    ),
}

TestValues = Mapping[tuple[str, float], Mapping[str, float]]  # (task, fraction) → metric → value


def reference(metric: str, test_values: Mapping[str, float] | None = None) -> float | None:
    """The reference of ``metric`` in metric units; None when it depends on the test set and
    ``test_values`` (:func:`values_from_predictions` of the column's runs) lacks it. A metric
    without a reference (not in :data:`LABELS`) is an error: ask :data:`LABELS` first."""
    if metric not in LABELS:
        raise KeyError(f"metric {metric!r} has no trivial reference")
    if metric in CONSTANT:
        return CONSTANT[metric]
    return (test_values or {}).get(metric)


def values_from_predictions(arrays: Mapping[str, np.ndarray]) -> dict[str, float]:
    """The test-set dependent references of one run's predictions (its arrays): ``dice`` for
    segmentation, ``accuracy`` for multiclass classification, the Recall@K of a random ranking
    for retrieval; ``{}`` for other kinds."""
    from cxrbench.predictions import LAYOUT

    kind = LAYOUT.get(str(arrays["kind"]), str(arrays["kind"]))
    if kind == "retrieval":
        from cxrbench.systems.retrieval import chance

        study = np.asarray(arrays["study"])
        if len(study) == 0:
            return {}
        values = {k.removeprefix("chance_"): v
                  for k, v in chance(len(study), np.bincount(study)).items()}  # fmt: skip
        return values | {"r_mean": float(np.mean(list(values.values())))}
    if kind == "segmentation":
        from cxrbench.metrics.segmentation import dice_from_terms

        target = np.asarray(arrays["target"])
        if len(target) == 0:
            return {}
        empty = np.zeros_like(target)
        return {"dice": float(dice_from_terms(empty, empty, target).mean())}
    if kind == "classification" and str(arrays["label_kind"]) == "multiclass":
        from cxrbench.metrics.classification import accuracy

        targets = np.asarray(arrays["targets"])
        if len(targets) == 0:
            return {}
        majority = np.bincount(targets.argmax(axis=1), minlength=targets.shape[1]).argmax()
        scores = np.zeros(targets.shape, dtype=np.float32)
        scores[:, majority] = 1.0
        return {"accuracy": accuracy(scores, targets)}
    return {}


def _run_values(path: Path, record: ResultRecord) -> dict[str, float] | None:
    """The references of the run whose ``result.json`` is ``path``; None when it kept no
    readable predictions (a warning says why when the file is bad)."""
    from cxrbench.predictions import read_predictions

    if not record.predictions_sha256:
        return None
    try:
        preds = read_predictions(path.parent / PREDICTIONS_FILE, record.predictions_sha256)
    except CxrbenchError as err:
        log.warning("trivial reference: %s", err)
        return None
    return values_from_predictions(preds.arrays)


def cell_test_values(runs: Iterable[tuple[Path, ResultRecord]]) -> dict[tuple[str, float], dict]:
    """Per (task, fraction): the test-set dependent references of its runs (``result.json`` path
    and record pairs), read from their predictions. Only columns whose metric needs them are
    read; a cell whose runs disagree (other test sets) gets none, with a warning."""
    groups: dict[tuple[str, float], list[tuple[Path, ResultRecord]]] = {}
    for path, record in runs:
        if record.metric.split("/")[-1] in FROM_TEST_SET:
            groups.setdefault((record.task, float(record.fraction)), []).append((path, record))
    out: dict[tuple[str, float], dict] = {}
    for key, group in sorted(groups.items()):
        found = [(p, v) for p, r in group if (v := _run_values(p, r)) is not None]
        if not found:
            continue
        (first, values), others = found[0], found[1:]
        differ = [p for p, v in others if v != values]
        if differ:
            log.warning(
                "%s %g%%: no trivial reference, the runs' test sets differ (%s and %s)",
                key[0], key[1] * 100, first.parent, differ[0].parent,
            )  # fmt: skip
            continue
        out[key] = values
    return out
