"""A transfer run's test-set predictions: ``predictions.npz`` beside its ``result.json``.

Written by the runner (``runner/transfer.py``) before the record, atomically, from what the
task kind's system leaves in ``test_predictions`` after the test epoch; its sha256 is the record's
``predictions_sha256``. Read by ``cxrbench compare`` (:mod:`cxrbench.report.compare`), which
resamples test images. Neutral like :mod:`cxrbench.runs`: the runner and the report both use it.

The file is a ``.npz`` (members deflated, with fixed timestamps: the same predictions give the
same bytes) of plain arrays (no pickles), one entry per image in test-set order:

* every kind: ``kind`` (0-d string), ``task`` (0-d string), ``ids`` (N,) the test image ids
  (``Items.ids``);
* ``classification``: ``label_kind`` (multilabel | multiclass), ``classes`` (C,), ``targets``
  (N, C) the 0/1 (one-hot for multiclass) labels, ``scores`` (N, C) float32, the sigmoid (multi-
  label) or softmax (multiclass) of the head's logits: what the metrics were computed from;
* ``zeroshot``: as ``classification``, ``scores`` being the class scores of the prompts
  (``systems/zeroshot.py``);
* ``retrieval``: ``i2t_rank`` (N,) the rank of each image's own report, ``t2i_rank`` (N,) the
  best rank of its study's images for its study's report, ``study`` (N,) its study's index
  (``systems/retrieval.py``);
* ``segmentation``: the per-image Dice terms ``intersection``, ``predicted``, ``target`` (pixel
  counts of P ∩ T, P and T at the protocol's size and threshold) and ``dice`` (N,) float64;
* ``detection``: the kept detections and the ground truth as flat arrays with per-image counts
  (``metrics.detection.pack_boxes``): ``pred_boxes`` (K, 4), ``pred_scores``, ``pred_labels``,
  ``pred_count`` (N,), ``gt_boxes`` (M, 4), ``gt_labels``, ``gt_count`` (N,), in the input pixels
  of the protocol (enough to recompute every mAP variant).

:meth:`Predictions.metrics` recomputes the recorded test metrics from the file; they equal the
record's (tested per kind).
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxrbench.errors import CxrbenchError, file_errors
from cxrbench.utils.io import atomic_write_bytes, sha256_file

KINDS = ("classification", "segmentation", "detection", "zeroshot", "retrieval")
#: the array layout of each kind: zero-shot classification scores its classes like a head does
LAYOUT = {k: k for k in KINDS} | {"zeroshot": "classification"}
REQUIRED = {
    "classification": ("label_kind", "classes", "targets", "scores"),
    "segmentation": ("intersection", "predicted", "target", "dice"),
    "detection": ("pred_boxes", "pred_scores", "pred_labels", "pred_count", "gt_boxes",
                  "gt_labels", "gt_count"),
    "retrieval": ("i2t_rank", "t2i_rank", "study"),
}  # fmt: skip
#: the ground truth of each kind: runs compared must agree on it image by image
TRUTH = {
    "classification": ("targets",),
    "segmentation": ("target",),
    "detection": ("gt_boxes", "gt_labels", "gt_count"),
    "retrieval": ("study",),
}
#: metrics computable from each kind's file, by short key
METRICS = {
    "classification": ("auroc", "accuracy"),
    "segmentation": ("dice", "dice_pos", "dice_global"),
    "detection": ("map", "map_mgca", "map50"),
    "retrieval": ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "r_mean"),
}
#: metrics undefined without positives: their bootstrap is stratified by label pattern
NEEDS_POSITIVES = frozenset({"auroc", "map", "map_mgca", "map50", "dice_pos"})
_DATE = (1980, 1, 1, 0, 0, 0)


def encode(arrays: Mapping[str, Any]) -> bytes:
    """The ``.npz`` bytes of ``arrays`` (deterministic: fixed member times, sorted names).
    Object arrays are refused: the file never needs a pickle to load."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            array = np.asarray(arrays[name])
            if array.dtype.hasobject:
                raise TypeError(f"predictions array {name!r} holds Python objects")
            member = io.BytesIO()
            np.lib.format.write_array(member, array, allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, member.getvalue())
    return out.getvalue()


def write_predictions(path: Path, arrays: Mapping[str, Any]) -> str:
    """Check ``arrays`` (:func:`check`), write them atomically to ``path``; their sha256."""
    check(dict(arrays), path)
    data = encode(arrays)
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def read_predictions(path: Path, sha256: str | None = None) -> Predictions:
    """The predictions in ``path``, checked against ``sha256`` (the record's) when given."""
    path = Path(path)
    if not path.is_file():
        raise CxrbenchError(
            f"{path}: no predictions file (the run predates them, or it was removed); re-run "
            "the run (bench --force) to compare it"
        )
    if sha256 is not None and sha256_file(path) != sha256:
        raise CxrbenchError(
            f"{path}: its sha256 is not the one in result.json: the file was changed or "
            "replaced after the run; re-run the run (bench --force)"
        )
    unreadable = (OSError, ValueError, zipfile.BadZipFile)
    with (
        file_errors(path, "cannot read the predictions", unreadable),
        np.load(path, allow_pickle=False) as npz,
    ):
        arrays = {name: npz[name] for name in npz.files}
    check(arrays, path)
    return Predictions(path, arrays)


def check(arrays: dict[str, np.ndarray], path: Path | str = "predictions") -> None:
    """An error naming ``path`` when a key is missing or an array's length is not N."""
    for key in ("kind", "task", "ids"):
        if key not in arrays:
            raise CxrbenchError(f"{path}: not a predictions file (no {key!r})")
    kind = str(arrays["kind"])
    if kind not in KINDS:
        raise CxrbenchError(f"{path}: unknown kind {kind!r}; one of {', '.join(KINDS)}")
    layout = LAYOUT[kind]
    missing = [k for k in REQUIRED[layout] if k not in arrays]
    if missing:
        raise CxrbenchError(f"{path}: {kind} predictions without {missing[0]!r}")
    n = len(np.asarray(arrays["ids"]))
    per_image = {
        "classification": ("targets", "scores"),
        "segmentation": ("intersection", "predicted", "target", "dice"),
        "detection": ("pred_count", "gt_count"),
        "retrieval": ("i2t_rank", "t2i_rank", "study"),
    }[layout]
    for key in per_image:
        if len(np.asarray(arrays[key])) != n:
            raise CxrbenchError(
                f"{path}: {key} has {len(np.asarray(arrays[key]))} rows for {n} test images"
            )


def _retrieval_resampled(
    a: dict[str, np.ndarray], metric: str
) -> Callable[[np.ndarray], np.ndarray]:
    """Recall@K on image resamples. Image→report: the share of drawn images whose report ranks
    in the top K. Report→image: a report is one query per study, so each drawn image carries
    ``1 / m`` of its study's query (``m`` = the study's test images): on the test set itself
    every study weighs 1 and this is the recorded recall; on a resample a study weighs the share
    of its images drawn. ``r_mean`` is the mean of the six on the same resample."""
    from cxrbench.metrics import resample
    from cxrbench.systems.retrieval import KS

    if metric == "r_mean":  # as systems.retrieval.recalls: the mean over both directions and KS
        parts = [_retrieval_resampled(a, f"{d}_r{k}") for d in ("i2t", "t2i") for k in KS]
        return lambda c: np.mean([f(c) for f in parts], axis=0)
    direction, k = metric.split("_r")
    hits = (np.asarray(a[f"{direction}_rank"]) < int(k)).astype(np.float64)
    if direction == "i2t":
        return lambda c: resample.weighted_mean(hits, c)
    _, index, size = np.unique(a["study"], return_inverse=True, return_counts=True)
    share = 1.0 / size[index]
    return lambda c: resample.weighted_mean(hits, c * share)


@dataclass
class Predictions:
    path: Path
    arrays: dict[str, np.ndarray]
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def kind(self) -> str:
        return str(self.arrays["kind"])

    @property
    def task(self) -> str:
        return str(self.arrays["task"])

    @property
    def ids(self) -> np.ndarray:
        return self.arrays["ids"]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def layout(self) -> str:
        return LAYOUT[self.kind]

    def metric_names(self) -> tuple[str, ...]:
        """The metrics this file can give (classification accuracy: multiclass tasks only)."""
        if self.layout == "classification" and str(self.arrays["label_kind"]) != "multiclass":
            return ("auroc",)
        return METRICS[self.layout]

    def truth_digest(self) -> str:
        """sha256 of the image ids and their ground truth: equal for two runs on the same test
        images with the same labels."""
        digest = hashlib.sha256()
        for key in ("ids", *TRUTH[self.layout]):
            array = np.ascontiguousarray(self.arrays[key])
            digest.update(f"{key}:{array.dtype.str}:{array.shape}".encode())
            digest.update(array.tobytes())
        return digest.hexdigest()

    def select(self, order: np.ndarray) -> Predictions:
        """The same predictions with the images in ``order`` (indices into this file's ids)."""
        order = np.asarray(order, dtype=np.int64)
        arrays = dict(self.arrays)
        arrays["ids"] = self.ids[order]
        if self.layout == "detection":
            from cxrbench.metrics.detection import pack_boxes, unpack_boxes

            preds, gts = unpack_boxes(self.arrays)
            arrays.update(pack_boxes([preds[i] for i in order], [gts[i] for i in order]))
        else:
            for key in REQUIRED[self.layout]:
                if key not in ("label_kind", "classes"):
                    arrays[key] = self.arrays[key][order]
        return Predictions(self.path, arrays)

    def metrics(self) -> dict[str, float]:
        """The test metrics recomputed from the file: ``{"test/<metric>": value}``."""
        from cxrbench.metrics import classification as cls_metrics
        from cxrbench.metrics import detection

        a = self.arrays
        if self.layout == "classification":
            out = {}
            if str(a["label_kind"]) == "multiclass":
                out["test/accuracy"] = cls_metrics.accuracy(a["scores"], a["targets"])
            out["test/auroc"] = cls_metrics.macro_auroc(
                a["scores"], a["targets"], [str(c) for c in a["classes"]]
            )
            return out
        if self.layout == "retrieval":
            from cxrbench.systems.retrieval import recalls

            _, first = np.unique(a["study"], return_index=True)
            return recalls(np.asarray(a["i2t_rank"]), np.asarray(a["t2i_rank"])[first])
        if self.layout == "segmentation":
            from cxrbench.metrics.segmentation import dice_summary

            if len(a["dice"]) == 0:
                raise CxrbenchError(f"{self.path}: Dice is undefined on zero images")
            summary = dice_summary(a["intersection"], a["predicted"], a["target"])
            return {f"test/{key}": value for key, value in summary.items()}
        preds, gts = detection.unpack_boxes(a)
        acc = detection.DetectionAccumulator()
        acc.update(preds, gts)
        return {f"test/{k}": v for k, v in acc.compute().items()}

    def strata(self, metric: str) -> np.ndarray | None:
        """Strata of a stratified bootstrap for ``metric`` (None: plain resampling): the label
        pattern of each image for AUROC, GT-positive or not for mAP."""
        if metric not in NEEDS_POSITIVES:
            return None
        from cxrbench.metrics.resample import strata_of

        if self.layout == "classification":
            return strata_of(self.arrays["targets"])
        if self.layout == "segmentation":
            return (np.asarray(self.arrays["target"]) > 0).astype(np.int64)
        return (np.asarray(self.arrays["gt_count"]) > 0).astype(np.int64)

    def resampled(self, metric: str) -> Callable[[np.ndarray], np.ndarray]:
        """``f(counts (B, N)) -> (B,)``: ``metric`` on each resample (NaN where undefined)."""
        from cxrbench.metrics import resample

        if metric not in self.metric_names():
            raise CxrbenchError(
                f"{self.path}: metric {metric!r} is not available for {self.task} "
                f"({self.kind}); available: {', '.join(self.metric_names())}"
            )
        a = self.arrays
        if metric == "auroc":
            return lambda c: resample.macro_auroc(a["scores"], a["targets"], c)
        if metric == "accuracy":
            return lambda c: resample.accuracy(a["scores"], a["targets"], c)
        if self.layout == "retrieval":
            return _retrieval_resampled(a, metric)
        if metric == "dice":
            return lambda c: resample.weighted_mean(a["dice"], c)
        if metric == "dice_pos":
            positive = np.asarray(a["target"]) > 0
            return lambda c: resample.weighted_mean(a["dice"][positive], c[..., positive])
        if metric == "dice_global":
            return lambda c: resample.dice_global(a["intersection"], a["predicted"], a["target"], c)
        key = "map50" if metric == "map50" else "map"
        if key not in self._cache:
            from cxrbench.metrics.detection import unpack_boxes

            thresholds = [0.5] if key == "map50" else resample.IOU_THRESHOLDS
            self._cache[key] = resample.DetectionMatches(*unpack_boxes(a), thresholds)
        matches: resample.DetectionMatches = self._cache[key]
        return lambda c: matches.map(c, positive_only=metric == "map_mgca")
