"""Segmentation metric of the mgca protocol: foreground Dice per image, averaged over images.

Definitions (PROTOCOLS.md §1, "Dice"):

* Inputs are ``probs`` (probabilities, i.e. after the sigmoid, in [0, 1]) and binary ``targets``
  (values 0/1 or bool), each of shape (N, H, W) or (N, 1, H, W); numpy arrays or torch tensors on
  any device (detached and moved to the CPU here).
* The predicted mask of an image is ``P = probs > threshold`` (strictly greater, threshold 0.5 by
  default, as MGCA's ``get_dice``); the target mask is ``T = targets == 1``.
* Per image, foreground Dice = 2·|P ∩ T| / (|P| + |T|). When the target is empty the image counts
  1.0 if the prediction is empty too and 0.0 otherwise (the formula gives 0.0 there anyway; only
  empty/empty needs the rule). A non-empty target with an empty prediction gives 0.0.
* ``dice`` (the task metric, MGCA-compatible) is the **mean over images** of the per-image Dice.
  Deviation from MGCA: MGCA averaged per-batch means (the mean of batch means), which weights the
  images of a short last batch more and makes the number depend on the batch size;
  :class:`DiceAccumulator` keeps every image's Dice and averages those.

Two more numbers are recorded beside it (:func:`dice_summary`), from the same thresholded masks:

* ``dice_pos``: the mean per-image Dice over the images whose target has foreground (images with
  an empty target are left out; undefined, a :class:`MetricError`, when no image has any).
* ``dice_global``: dataset-level Dice, 2·ΣᵢTPᵢ / (ΣᵢPᵢ + ΣᵢTᵢ) over every pixel of every image
  (1.0 when no image has a predicted or target pixel, as the per-image rule).

Why ``dice`` alone misleads on a set that is mostly negative: an image with an empty target counts
1.0 when the prediction is empty and 0.0 when a single pixel is predicted, so on a test set that is
75 % negative a model that never predicts anything scores about 0.75, and one threshold flip on
the negatives moves the mean by tens of points. ``dice_pos`` says how well the lesions are
delineated, ``dice_global`` charges every false-positive pixel (on negative images too) and gives
0 to an all-empty prediction; neither rewards predicting nothing.

Inputs that break the definitions are errors, not silently coerced: a shape mismatch, a channel
dimension other than 1, probabilities outside [0, 1] or NaN (logits passed by mistake), targets with
values other than 0 and 1.
"""

from __future__ import annotations

import numpy as np
import torch

from cxrbench.metrics.classification import MetricError

ArrayLike = np.ndarray | torch.Tensor


def _to_numpy(values: ArrayLike) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        tensor = values.detach().cpu()
        if tensor.dtype in (torch.bfloat16, torch.float16):
            tensor = tensor.float()
        return tensor.numpy()
    return np.asarray(values)


def _as_images(values: np.ndarray, shapes: str) -> np.ndarray:
    if values.ndim == 4 and values.shape[1] == 1:
        return values[:, 0]
    if values.ndim == 3:
        return values
    raise MetricError(f"Dice needs arrays of shape (N, H, W) or (N, 1, H, W); got {shapes}")


def _masks(probs: ArrayLike, targets: ArrayLike, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    p_raw, t_raw = _to_numpy(probs), _to_numpy(targets)
    shapes = f"probs {tuple(p_raw.shape)} and targets {tuple(t_raw.shape)}"
    p, t = _as_images(p_raw, shapes), _as_images(t_raw, shapes)
    if p.shape != t.shape:
        raise MetricError(f"Dice needs probs and targets of one shape; got {shapes}")
    if p.size and not (np.all(p >= 0) and np.all(p <= 1)):  # also catches NaN
        finite = p[np.isfinite(p)]
        seen = f"[{finite.min()}, {finite.max()}]" if finite.size else "no finite values"
        raise MetricError(
            f"Dice needs probabilities in [0, 1] (apply the sigmoid first); got {seen}"
            f"{' and NaN/inf' if finite.size < p.size else ''}"
        )
    if t.dtype != np.bool_ and t.size and not np.all((t == 0) | (t == 1)):
        raise MetricError(f"Dice needs binary targets (0/1); got values {np.unique(t)[:10]}")
    return p > threshold, t.astype(bool)


def dice_terms(
    probs: ArrayLike, targets: ArrayLike, threshold: float = 0.5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image, the pixel counts Dice is made of: ``(|P ∩ T|, |P|, |T|)``, each (N,) int64."""
    pred, target = _masks(probs, targets, threshold)
    n, pixels = pred.shape[0], pred.shape[1] * pred.shape[2]
    pred, target = pred.reshape(n, pixels), target.reshape(n, pixels)
    intersection = np.count_nonzero(pred & target, axis=1).astype(np.int64)
    return (
        intersection,
        np.count_nonzero(pred, axis=1).astype(np.int64),
        np.count_nonzero(target, axis=1).astype(np.int64),
    )


def dice_from_terms(
    intersection: np.ndarray, predicted: np.ndarray, target: np.ndarray
) -> np.ndarray:
    """Per-image Dice (N,) float64 from :func:`dice_terms` (1.0 where both masks are empty)."""
    intersection = np.asarray(intersection, dtype=np.float64)
    total = np.asarray(predicted, dtype=np.float64) + np.asarray(target, dtype=np.float64)
    dice = np.ones(intersection.shape, dtype=np.float64)  # total == 0: both masks empty
    nonempty = total > 0
    dice[nonempty] = 2.0 * intersection[nonempty] / total[nonempty]
    return dice


def dice_per_image(probs: ArrayLike, targets: ArrayLike, threshold: float = 0.5) -> np.ndarray:
    """Foreground Dice of each image, shape (N,), float64 (module docstring for the rules)."""
    return dice_from_terms(*dice_terms(probs, targets, threshold))


def mean_dice(probs: ArrayLike, targets: ArrayLike, threshold: float = 0.5) -> float:
    """Mean over images of :func:`dice_per_image`; no images is a :class:`MetricError`."""
    dice = dice_per_image(probs, targets, threshold)
    if dice.size == 0:
        raise MetricError("Dice is undefined on zero images")
    return float(dice.mean())


def dice_positive(intersection: np.ndarray, predicted: np.ndarray, target: np.ndarray) -> float:
    """``dice_pos``: mean per-image Dice over the images with a non-empty target."""
    positive = np.asarray(target) > 0
    if not positive.any():
        raise MetricError("dice_pos is undefined without an image that has target foreground")
    return float(dice_from_terms(intersection, predicted, target)[positive].mean())


def dice_global(intersection: np.ndarray, predicted: np.ndarray, target: np.ndarray) -> float:
    """``dice_global``: 2·ΣTP / (ΣP + ΣT) over all pixels of all images (1.0 if both are 0)."""
    total = int(np.sum(predicted, dtype=np.int64)) + int(np.sum(target, dtype=np.int64))
    if total == 0:
        return 1.0
    return 2.0 * int(np.sum(intersection, dtype=np.int64)) / total


def dice_summary(
    intersection: np.ndarray, predicted: np.ndarray, target: np.ndarray
) -> dict[str, float]:
    """``{"dice", "dice_pos", "dice_global"}`` of a test set from its per-image terms; ``dice_pos``
    is left out when no image has target foreground (it is undefined there)."""
    if len(intersection) == 0:
        raise MetricError("Dice is undefined on zero images")
    per_image = dice_from_terms(intersection, predicted, target)
    positive = np.asarray(target) > 0
    out = {
        "dice": float(per_image.mean()),
        "dice_global": dice_global(intersection, predicted, target),
    }
    if positive.any():
        out["dice_pos"] = float(per_image[positive].mean())
    return out


class DiceAccumulator:
    """Collects per-image Dice over batches; :meth:`compute` is the mean over all images seen.

    Batches may differ in size; the result equals :func:`mean_dice` on all images at once.
    """

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold
        self._values: list[np.ndarray] = []
        self._terms: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def update(self, probs: ArrayLike, targets: ArrayLike) -> None:
        terms = dice_terms(probs, targets, self.threshold)
        self._terms.append(terms)
        self._values.append(dice_from_terms(*terms))

    def per_image(self) -> dict[str, np.ndarray]:
        """Every image seen, in order: ``dice`` and its terms ``intersection``, ``predicted``
        and ``target`` (pixel counts; :func:`dice_terms`)."""
        out = {
            name: np.concatenate([*(terms[k] for terms in self._terms), np.zeros(0, np.int64)])
            for k, name in enumerate(("intersection", "predicted", "target"))
        }
        out["dice"] = np.concatenate([*self._values, np.zeros(0)])
        return out

    @property
    def count(self) -> int:
        """Number of images seen so far."""
        return int(sum(v.size for v in self._values))

    def compute(self) -> float:
        if self.count == 0:
            raise MetricError("Dice is undefined on zero images (no update() with images yet)")
        return float(np.concatenate(self._values).mean())

    def summary(self) -> dict[str, float]:
        """:func:`dice_summary` of every image seen: ``dice`` (= :meth:`compute`), ``dice_pos``
        (when some image has foreground) and ``dice_global``."""
        terms = self.per_image()
        return dice_summary(terms["intersection"], terms["predicted"], terms["target"])

    def reset(self) -> None:
        self._values = []
        self._terms = []
