"""The segmentation loss of the mgca protocol: ``10 · focal(γ = 2) − log(soft Dice)``.

PROTOCOLS.md §1 (segmentation): binary masks, one logit per pixel.

* :func:`focal_loss`: the binary focal loss of Lin et al. without the class weight α, per pixel
  ``BCE(x, t) · (1 − p_t)^γ`` with ``p_t`` the predicted probability of the true class, **mean over
  every pixel of the batch** (MGCA's ``FocalLoss``: ``(1 − p_t)^γ`` is computed as
  ``exp(γ · logsigmoid(−x · (2t − 1)))``, which stays finite for large logits).
* :func:`soft_dice`: ``(2 · Σ p·t + s) / (Σ p + Σ t + s)`` with ``p = sigmoid(x)``, summed over
  **all pixels of the batch at once** (MGCA's ``dice_loss``, not a mean of per-image values). The
  smoothing constant ``s`` is :data:`SMOOTH` = 1.0 (MGCA's): it keeps the coefficient, its log and
  the gradients finite when a batch has no foreground at all (the coefficient is then
  ``s / (Σ p + s)``, so the loss pushes every probability towards 0) and makes a perfect prediction
  score exactly 1.
* :func:`soft_dice_loss` ``= −log(soft Dice)``; :func:`seg_loss` ``= focal_weight · focal +
  soft_dice_loss`` with ``focal_weight`` 10 (MGCA's ``MixedLoss(alpha=10)``). A perfect, confident
  prediction gives a loss of ~0; the loss is ≥ 0 for binary targets.

:class:`SegLossSums` accumulates the sums the loss is made of over many batches, so that the loss of
a whole validation or test set is the loss of all its pixels at once (independent of the batch
size), as the Dice metric is independent of it (``metrics/segmentation.py``).

Deviations from MGCA: none in the formulas; losses are computed in float32 whatever the training
precision, and targets must be binary (MGCA fed area-resized, fractional masks).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

SMOOTH = 1.0
"""Additive smoothing of the soft Dice coefficient (MGCA's value)."""

FOCAL_WEIGHT = 10.0
GAMMA = 2.0


def _check(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    if logits.shape != targets.shape:
        raise ValueError(
            f"segmentation loss needs logits and targets of one shape; got {tuple(logits.shape)} "
            f"and {tuple(targets.shape)}"
        )
    return logits.float(), targets.float()


def _focal_terms(logits: Tensor, targets: Tensor, gamma: float) -> Tensor:
    """Per-pixel focal loss ``BCE · (1 − p_t)^γ`` (float32, same shape as the inputs)."""
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    modulation = torch.exp(gamma * F.logsigmoid(-logits * (2.0 * targets - 1.0)))
    return modulation * bce


def focal_loss(logits: Tensor, targets: Tensor, gamma: float = GAMMA) -> Tensor:
    """Binary focal loss (no α), mean over every pixel of the batch."""
    logits, targets = _check(logits, targets)
    return _focal_terms(logits, targets, gamma).mean()


def soft_dice(logits: Tensor, targets: Tensor, smooth: float = SMOOTH) -> Tensor:
    """Soft Dice coefficient of ``sigmoid(logits)`` and ``targets`` over the whole batch."""
    logits, targets = _check(logits, targets)
    probs = torch.sigmoid(logits)
    intersection = (probs * targets).sum()
    return (2.0 * intersection + smooth) / (probs.sum() + targets.sum() + smooth)


def soft_dice_loss(logits: Tensor, targets: Tensor, smooth: float = SMOOTH) -> Tensor:
    """``−log(soft Dice)``: 0 for a perfect prediction, growing without bound for a wrong one."""
    return -torch.log(soft_dice(logits, targets, smooth))


def seg_loss(
    logits: Tensor,
    targets: Tensor,
    focal_weight: float = FOCAL_WEIGHT,
    gamma: float = GAMMA,
    smooth: float = SMOOTH,
) -> Tensor:
    """The protocol loss ``focal_weight · focal(γ) − log(soft Dice)`` (a scalar, float32)."""
    return focal_weight * focal_loss(logits, targets, gamma) + soft_dice_loss(
        logits, targets, smooth
    )


class SegLossSums:
    """Sums behind :func:`seg_loss` over many batches; :meth:`compute` is the loss of them all.

    ``compute()`` equals ``seg_loss`` of every logit and target seen, concatenated (up to float
    rounding): the focal part is the mean over all pixels, the Dice part one coefficient of all.
    """

    def __init__(
        self, focal_weight: float = FOCAL_WEIGHT, gamma: float = GAMMA, smooth: float = SMOOTH
    ) -> None:
        self.focal_weight, self.gamma, self.smooth = focal_weight, gamma, smooth
        self.reset()

    def reset(self) -> None:
        self.pixels = 0
        self.focal = 0.0
        self.intersection = 0.0
        self.predicted = 0.0
        self.target = 0.0

    @torch.no_grad()
    def update(self, logits: Tensor, targets: Tensor) -> None:
        logits, targets = _check(logits, targets)
        probs = torch.sigmoid(logits)
        self.pixels += logits.numel()
        self.focal += float(_focal_terms(logits, targets, self.gamma).double().sum())
        self.intersection += float((probs * targets).double().sum())
        self.predicted += float(probs.double().sum())
        self.target += float(targets.double().sum())

    def compute(self) -> float:
        if self.pixels == 0:
            raise ValueError("the segmentation loss is undefined on zero pixels (no update() yet)")
        dice = (2.0 * self.intersection + self.smooth) / (
            self.predicted + self.target + self.smooth
        )
        return self.focal_weight * self.focal / self.pixels - math.log(dice)
