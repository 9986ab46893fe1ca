"""A YOLOv3 detection head on a frozen backbone's C3/C4/C5 maps (strides 8/16/32).

YOLOv3 (Redmon & Farhadi 2018, "YOLOv3: An Incremental Improvement", arXiv 1804.02767), written
from the paper's definitions: three scales with three anchors each (the nine COCO k-means anchors
for a 416 input, scaled linearly to the input size), per anchor and cell the raw outputs
``(tx, ty, tw, th, objectness, class logits...)`` decoded as ``x = (sigmoid(tx) + cx) * stride``,
``w = anchor_w * exp(tw)``; independent logistic (BCE) classifiers instead of a softmax; each
ground-truth box assigned to the single anchor (of all nine) that matches its shape best.

- :class:`YOLOv3Head`: a top-down neck in the paper's spirit (C5 → conv block → prediction;
  1×1 conv, 2× upsample, concatenation with C4 → conv block → prediction; the same with C3).
  ``forward`` returns raw maps (B, 3, H, W, 5 + C) ordered stride 8, 16, 32.
- :func:`build_targets` / :func:`targets_to_boxes`: assignment and its exact inverse.
- :func:`yolo_loss`: box MSE + objectness BCE + class BCE, summed and divided by the batch size.
- :func:`decode` / :func:`postprocess`: boxes in input pixels, confidence filter, class-wise NMS.

Targets per scale are tensors (B, 3, H, W, 7 + C) whose channels are :data:`TX` .. :data:`TH`
(``tx, ty`` cell offsets in [0, 1), ``tw, th = log(box / anchor)``), :data:`OBJ` (1 on assigned
anchors), the class one-hot at ``CLS:CLS + C``, then ``IGNORE`` (1: left out of the objectness
loss) at index ``-2`` and the box-loss weight ``2 - w·h / size²`` at index ``-1``.

Deviations from the paper / Darknet, all deliberate:

- Neck widths: ``hidden`` at stride 32 halving downward (256/128/64 by default instead of
  512/256/128) and 3-conv blocks (1×1, 3×3, 1×1) instead of 5, so the head runs on CPU.
- No Darknet-53: the features come from whatever frozen backbone is evaluated.
- Ignore rule: the paper ignores anchors whose *predicted* box overlaps a ground truth by more than
  0.5; here the rule is static — a non-best anchor whose *shape* IoU (widths/heights, centred) with
  a ground truth exceeds 0.5 is ignored in the cell holding that box's centre on its own scale.
  Targets then do not depend on the predictions.
- Box loss: MSE on ``sigmoid(tx), sigmoid(ty)`` and on ``tw, th`` (the paper uses squared error
  on the raw coordinates), weighted by ``2 - w·h / size²`` as common re-implementations do.
- Collisions: two ground truths on the same scale, anchor and cell — the later one (in the input
  order) wins; the earlier is dropped from the targets.
- Grids are taken from the feature maps, not from ``image_size // stride``: the stride of a scale
  is ``image_size / W`` (``/ H`` vertically), so maps of a resized input (e.g. 224 → 299 with a
  38/19/10 grid) still decode to input pixels; the neck upsamples to the lateral map's exact size.
- Score: ``sigmoid(obj) · max_c sigmoid(cls_c)``; with one class just ``sigmoid(obj)`` (the class
  logit is only ever trained towards 1, so it would add noise, not information).
- Boxes are clipped to the image in :func:`decode` (before NMS, as torchvision's detectors do);
  ``tw, th`` are clamped at :data:`MAX_LOG_SCALE` there so ``exp`` cannot overflow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms

from cxrbench.errors import ConfigError

YOLO_ANCHORS_416: tuple[tuple[tuple[int, int], ...], ...] = (
    ((10, 13), (16, 30), (33, 23)),
    ((30, 61), (62, 45), (59, 119)),
    ((116, 90), (156, 198), (373, 326)),
)
"""The nine YOLOv3 COCO anchors (w, h) in pixels of a 416 input, per scale: stride 8, 16, 32."""

STRIDES: tuple[int, int, int] = (8, 16, 32)
"""Nominal strides of the three scales (C3, C4, C5)."""

NUM_ANCHORS = 3
"""Anchors per scale."""

TX, TY, TW, TH, OBJ, CLS = 0, 1, 2, 3, 4, 5
"""Channel indices of outputs and targets (classes start at ``CLS``)."""

IGNORE, BOX_WEIGHT = -2, -1
"""Channel indices (from the end) of the ignore flag and box-loss weight in targets."""

OBJ_PRIOR = 0.01
"""Initial objectness probability: the objectness bias starts at ``log(p / (1 - p))``."""

IGNORE_IOU = 0.5
"""Shape-IoU above which a non-best anchor is left out of the objectness loss."""

MAX_LOG_SCALE = 10.0
"""Clamp of ``tw, th`` in :func:`decode` (``exp(10)`` ≈ 22,000 anchor widths)."""

Detections = tuple[Tensor, Tensor, Tensor]
"""One image's (boxes (N, 4) x1y1x2y2 pixels, scores (N,), labels (N,) long)."""


def scaled_anchors(image_size: int) -> Tensor:
    """The nine anchors scaled linearly from 416 to ``image_size``: (3 scales, 3, 2) float."""
    return torch.tensor(YOLO_ANCHORS_416, dtype=torch.float32) * (image_size / 416.0)


def _conv(c_in: int, c_out: int, k: int) -> nn.Sequential:
    """Conv (no bias) → BatchNorm → LeakyReLU(0.1), 'same' padding."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.LeakyReLU(0.1, inplace=True),
    )


def _block(c_in: int, width: int) -> nn.Sequential:
    """The neck block: 1×1 to ``width``, 3×3 to ``2·width``, 1×1 back to ``width``."""
    return nn.Sequential(
        _conv(c_in, width, 1), _conv(width, 2 * width, 3), _conv(2 * width, width, 1)
    )


class _Predict(nn.Module):
    """3×3 conv-BN-LeakyReLU then a 1×1 conv (with bias) to ``A·(5 + C)`` raw outputs."""

    def __init__(self, width: int, num_classes: int) -> None:
        super().__init__()
        self.num_outputs = 5 + num_classes
        self.conv = _conv(width, 2 * width, 3)
        self.out = nn.Conv2d(2 * width, NUM_ANCHORS * self.num_outputs, 1)
        nn.init.normal_(self.out.weight, std=0.01)
        bias = torch.zeros(NUM_ANCHORS, self.num_outputs)
        bias[:, OBJ] = math.log(OBJ_PRIOR / (1.0 - OBJ_PRIOR))
        self.out.bias = nn.Parameter(bias.flatten())

    def forward(self, x: Tensor) -> Tensor:
        y = self.out(self.conv(x))
        b, _, h, w = y.shape
        return y.view(b, NUM_ANCHORS, self.num_outputs, h, w).permute(0, 1, 3, 4, 2).contiguous()


class YOLOv3Head(nn.Module):
    """YOLOv3 neck and predictions on C3/C4/C5.

    ``in_channels``: channels of ``c3``, ``c4``, ``c5`` (a backbone's ``feature_dims``; other keys
    are ignored). Block widths: ``hidden`` on C5, ``hidden // 2`` on C4, ``hidden // 4`` on C3;
    the 3×3 convs use twice that. ``image_size`` is kept for decoding (:meth:`anchors`).
    """

    def __init__(
        self, in_channels: dict[str, int], num_classes: int, image_size: int, hidden: int = 256
    ) -> None:
        super().__init__()
        missing = [k for k in ("c3", "c4", "c5") if k not in in_channels]
        if missing:
            raise ConfigError(None, "in_channels", f"missing {missing}")
        if num_classes < 1:
            raise ConfigError(None, "num_classes", f"must be >= 1, got {num_classes}")
        if hidden < 4:
            raise ConfigError(None, "hidden", f"must be >= 4, got {hidden}")
        self.num_classes = num_classes
        self.image_size = image_size
        w5, w4, w3 = hidden, hidden // 2, hidden // 4
        self.block5 = _block(in_channels["c5"], w5)
        self.pred5 = _Predict(w5, num_classes)
        self.lateral5 = _conv(w5, w4, 1)
        self.block4 = _block(in_channels["c4"] + w4, w4)
        self.pred4 = _Predict(w4, num_classes)
        self.lateral4 = _conv(w4, w3, 1)
        self.block3 = _block(in_channels["c3"] + w3, w3)
        self.pred3 = _Predict(w3, num_classes)

    def forward(self, c3: Tensor, c4: Tensor, c5: Tensor) -> list[Tensor]:
        """Raw outputs (B, 3, H, W, 5 + C) for strides 8, 16, 32 (H, W those of c3, c4, c5)."""
        x5 = self.block5(c5)
        up5 = F.interpolate(self.lateral5(x5), size=c4.shape[-2:], mode="nearest")
        x4 = self.block4(torch.cat([up5, c4], dim=1))
        up4 = F.interpolate(self.lateral4(x4), size=c3.shape[-2:], mode="nearest")
        x3 = self.block3(torch.cat([up4, c3], dim=1))
        return [self.pred3(x3), self.pred4(x4), self.pred5(x5)]

    def anchors(self) -> Tensor:
        """This head's anchors in input pixels, (3, 3, 2)."""
        return scaled_anchors(self.image_size)


def _wh_iou(wh: Tensor, anchors: Tensor) -> Tensor:
    """IoU of centred boxes: ``wh`` (M, 2) against ``anchors`` (K, 2) → (M, K)."""
    inter = torch.minimum(wh[:, None, 0], anchors[None, :, 0]) * torch.minimum(
        wh[:, None, 1], anchors[None, :, 1]
    )
    union = (wh[:, 0] * wh[:, 1])[:, None] + (anchors[:, 0] * anchors[:, 1])[None, :] - inter
    return inter / union


def build_targets(
    boxes_per_image: Sequence[Tensor],
    labels_per_image: Sequence[Tensor],
    image_size: int,
    num_classes: int,
    grid_sizes: Sequence[tuple[int, int]] | None = None,
) -> list[Tensor]:
    """YOLOv3 targets, one (B, 3, H, W, 7 + C) tensor per scale (stride 8, 16, 32).

    ``boxes_per_image``: (M, 4) x1y1x2y2 in input pixels (M may be 0); ``labels_per_image``: (M,)
    class indices in ``[0, num_classes)``. ``grid_sizes``: (H, W) per scale, by default
    ``ceil(image_size / stride)``; pass the head's output sizes when they differ.

    Each box goes to the best of all nine anchors by shape IoU, in the cell holding its centre on
    that anchor's scale (centres on the far border go to the last cell). Boxes with a non-positive
    width or height are skipped. A later box on the same scale/anchor/cell overwrites an earlier
    one. Non-best anchors with shape IoU > :data:`IGNORE_IOU` are flagged ``IGNORE`` in the cell of
    the centre on their scale, unless assigned. Returned on the device of the first boxes tensor.
    """
    if len(boxes_per_image) != len(labels_per_image):
        raise ValueError("boxes_per_image and labels_per_image differ in length")
    if grid_sizes is None:
        grid_sizes = [(math.ceil(image_size / s), math.ceil(image_size / s)) for s in STRIDES]
    batch = len(boxes_per_image)
    depth = 7 + num_classes
    targets = [torch.zeros(batch, NUM_ANCHORS, h, w, depth) for h, w in grid_sizes]
    anchors = scaled_anchors(image_size)
    flat_anchors = anchors.reshape(-1, 2)
    for b, (boxes, labels) in enumerate(zip(boxes_per_image, labels_per_image, strict=True)):
        boxes = boxes.detach().to("cpu", torch.float32).reshape(-1, 4)
        labels = labels.detach().to("cpu", torch.long).reshape(-1)
        wh = boxes[:, 2:] - boxes[:, :2]
        keep = (wh > 0).all(dim=1)
        boxes, labels, wh = boxes[keep], labels[keep], wh[keep]
        if len(boxes) == 0:
            continue
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(f"labels must lie in [0, {num_classes}), got {labels.tolist()}")
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2
        iou = _wh_iou(wh, flat_anchors)
        best = iou.argmax(dim=1).tolist()
        # Ignore flags first: an assignment below clears the flag where it lands.
        for m, k in (iou > IGNORE_IOU).nonzero().tolist():
            if k != best[m]:
                s, a = divmod(k, NUM_ANCHORS)
                i, j, _, _ = _cell(centre[m], grid_sizes[s], image_size)
                targets[s][b, a, j, i, IGNORE] = 1.0
        for m in range(len(boxes)):
            s, a = divmod(best[m], NUM_ANCHORS)
            i, j, tx, ty = _cell(centre[m], grid_sizes[s], image_size)
            t = targets[s][b, a, j, i]
            t.zero_()
            t[TX], t[TY] = tx, ty
            t[TW : TH + 1] = torch.log(wh[m] / anchors[s, a])
            t[OBJ] = 1.0
            t[CLS + int(labels[m])] = 1.0
            t[BOX_WEIGHT] = 2.0 - float(wh[m, 0] * wh[m, 1]) / image_size**2
    for t in targets:
        t[..., IGNORE] *= 1.0 - t[..., OBJ]
    device = boxes_per_image[0].device if batch else torch.device("cpu")
    return [t.to(device) for t in targets]


def _cell(centre: Tensor, grid: tuple[int, int], image_size: int) -> tuple[int, int, float, float]:
    """Column, row and in-cell offsets of a centre (x, y) on a (H, W) grid over ``image_size``."""
    h, w = grid
    gx = float(centre[0]) * w / image_size
    gy = float(centre[1]) * h / image_size
    i = min(max(math.floor(gx), 0), w - 1)
    j = min(max(math.floor(gy), 0), h - 1)
    return i, j, gx - i, gy - j


def _grid_boxes(txy: Tensor, twh: Tensor, anchors: Tensor, image_size: int) -> Tensor:
    """Boxes x1y1x2y2 from offsets ``txy`` in [0, 1] and log-scales ``twh``, both (B, A, H, W, 2).

    ``anchors``: (A, 2) in pixels. Returns (B, A, H, W, 4).
    """
    _, _, h, w, _ = txy.shape
    ys, xs = torch.meshgrid(
        torch.arange(h, device=txy.device, dtype=txy.dtype),
        torch.arange(w, device=txy.device, dtype=txy.dtype),
        indexing="ij",
    )
    stride = txy.new_tensor([image_size / w, image_size / h])
    centre = (txy + torch.stack([xs, ys], dim=-1)) * stride
    size = torch.exp(twh) * anchors.to(txy)[None, :, None, None, :]
    return torch.cat([centre - size / 2, centre + size / 2], dim=-1)


def targets_to_boxes(targets: Sequence[Tensor], image_size: int) -> list[tuple[Tensor, Tensor]]:
    """Invert :func:`build_targets`: per image (boxes (N, 4) x1y1x2y2 pixels, labels (N,)).

    Boxes come in scale, anchor, row, column order; the inverse is exact up to float rounding
    except for boxes dropped by a collision (see :func:`build_targets`).
    """
    anchors = scaled_anchors(image_size)
    per_scale = []
    for s, t in enumerate(targets):
        boxes = _grid_boxes(t[..., TX : TY + 1], t[..., TW : TH + 1], anchors[s], image_size)
        per_scale.append((boxes, t[..., OBJ] > 0.5, t[..., CLS:IGNORE].argmax(dim=-1)))
    result = []
    for b in range(targets[0].shape[0] if targets else 0):
        pos = [(bx[b][p[b]], lb[b][p[b]]) for bx, p, lb in per_scale]
        result.append((torch.cat([x for x, _ in pos]), torch.cat([y for _, y in pos])))
    return result


def yolo_loss(outputs: Sequence[Tensor], targets: Sequence[Tensor]) -> dict[str, Tensor]:
    """YOLOv3 loss: ``box`` + ``obj`` + ``cls`` = ``loss``, each summed and divided by batch size.

    - ``box``: on assigned anchors, ``weight · Σ (sigmoid(txy) − offset)² + (twh − log-scale)²``
      with ``weight = 2 − w·h / size²``;
    - ``obj``: BCE with logits on objectness over all anchors not flagged ``IGNORE`` (assigned
      ones never are);
    - ``cls``: BCE with logits on the class logits of assigned anchors (one-hot targets).

    Finite, and connected to ``outputs``, when some or all images have no box.
    """
    batch = max(outputs[0].shape[0], 1)
    zero = outputs[0].new_zeros(())
    box, obj, cls = zero, zero, zero
    for out, tgt in zip(outputs, targets, strict=True):
        tgt = tgt.to(out)
        pos = tgt[..., OBJ] > 0.5
        p, t = out[pos], tgt[pos]
        err_xy = (torch.sigmoid(p[:, TX : TY + 1]) - t[:, TX : TY + 1]).pow(2).sum(dim=1)
        err_wh = (p[:, TW : TH + 1] - t[:, TW : TH + 1]).pow(2).sum(dim=1)
        box = box + (t[:, BOX_WEIGHT] * (err_xy + err_wh)).sum()
        keep = tgt[..., IGNORE] < 0.5
        obj = obj + F.binary_cross_entropy_with_logits(
            out[..., OBJ][keep], tgt[..., OBJ][keep], reduction="sum"
        )
        cls = cls + F.binary_cross_entropy_with_logits(
            p[:, CLS:], t[:, CLS:IGNORE], reduction="sum"
        )
    box, obj, cls = box / batch, obj / batch, cls / batch
    return {"box": box, "obj": obj, "cls": cls, "loss": box + obj + cls}


def decode(outputs: Sequence[Tensor], image_size: int) -> list[Detections]:
    """Every anchor's box, score and label, per image; boxes x1y1x2y2 clipped to the image.

    Score: ``sigmoid(obj) · max_c sigmoid(cls_c)``, label its argmax; with one class the score is
    ``sigmoid(obj)`` alone and the label 0.
    """
    anchors = scaled_anchors(image_size)
    all_boxes, all_scores, all_labels = [], [], []
    for s, out in enumerate(outputs):
        twh = out[..., TW : TH + 1].clamp(max=MAX_LOG_SCALE)
        boxes = _grid_boxes(torch.sigmoid(out[..., TX : TY + 1]), twh, anchors[s], image_size)
        obj = torch.sigmoid(out[..., OBJ])
        if out.shape[-1] - CLS == 1:
            scores, labels = obj, torch.zeros_like(obj, dtype=torch.long)
        else:
            cls_prob, labels = torch.sigmoid(out[..., CLS:]).max(dim=-1)
            scores = obj * cls_prob
        b = out.shape[0]
        all_boxes.append(boxes.reshape(b, -1, 4).clamp(0.0, float(image_size)))
        all_scores.append(scores.reshape(b, -1))
        all_labels.append(labels.reshape(b, -1))
    boxes_cat = torch.cat(all_boxes, dim=1)
    scores_cat = torch.cat(all_scores, dim=1)
    labels_cat = torch.cat(all_labels, dim=1)
    return [(boxes_cat[b], scores_cat[b], labels_cat[b]) for b in range(boxes_cat.shape[0])]


def postprocess(
    decoded: Sequence[Detections],
    conf_threshold: float = 0.5,
    iou_threshold: float = 0.5,
    max_detections: int = 100,
) -> list[Detections]:
    """Keep scores ≥ ``conf_threshold`` and non-empty boxes, class-wise NMS at ``iou_threshold``
    (``torchvision.ops.batched_nms``), then the ``max_detections`` best, in descending score.

    Boxes are already clipped to the image by :func:`decode`.
    """
    result = []
    for boxes, scores, labels in decoded:
        keep = (
            (scores >= conf_threshold) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        )
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        order = batched_nms(boxes, scores, labels, iou_threshold)[:max_detections]
        result.append((boxes[order], scores[order], labels[order]))
    return result
