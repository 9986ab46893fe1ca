"""YOLOv3 head: anchors, shapes, assignment ⇄ decoding round trips, loss, a learning check."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor
from torchvision.ops import box_iou

from cxrbench.models.yolo import (
    BOX_WEIGHT,
    CLS,
    IGNORE,
    OBJ,
    TH,
    TW,
    TX,
    TY,
    YOLO_ANCHORS_416,
    YOLOv3Head,
    build_targets,
    decode,
    postprocess,
    scaled_anchors,
    targets_to_boxes,
    yolo_loss,
)

DIMS = {"c3": 8, "c4": 16, "c5": 32}


def _features(batch: int, size: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Fake C3/C4/C5 of a ``size`` input (strides 8/16/32, channels :data:`DIMS`)."""
    g = torch.Generator().manual_seed(seed)
    c3, c4, c5 = (
        torch.randn(batch, DIMS[k], size // s, size // s, generator=g)
        for k, s in (("c3", 8), ("c4", 16), ("c5", 32))
    )
    return c3, c4, c5


def _random_boxes(
    g: torch.Generator, size: int, count: int, num_classes: int
) -> tuple[Tensor, Tensor]:
    """Up to ``count`` boxes inside the image with centres in distinct 32-px cells (so no two
    collide on any scale), log-uniform sizes 4..size and pairwise IoU < 0.3 (NMS keeps all)."""
    cells = size // 32
    boxes: list[Tensor] = []
    for c in torch.randperm(cells * cells, generator=g)[: count * 3].tolist():
        if len(boxes) == count:
            break
        centre = torch.tensor([c % cells, c // cells]) * 32 + 2 + 28 * torch.rand(2, generator=g)
        wh = torch.exp(math.log(4) + math.log(size / 4) * torch.rand(2, generator=g))
        wh = torch.minimum(wh, 2 * torch.minimum(centre, size - centre) - 1)
        if (wh < 2).any():
            continue
        box = torch.cat([centre - wh / 2, centre + wh / 2])
        if boxes and box_iou(box[None], torch.stack(boxes)).max() > 0.3:
            continue
        boxes.append(box)
    stacked = torch.stack(boxes) if boxes else torch.zeros(0, 4)
    return stacked, torch.randint(num_classes, (len(boxes),), generator=g)


def _dataset(size: int = 256, num_classes: int = 3) -> tuple[list[Tensor], list[Tensor]]:
    """Image 0: a small, a medium and a large box (one per scale); 1: none; 2-5: random."""
    g = torch.Generator().manual_seed(1234)
    boxes = [
        torch.tensor([[15.0, 14.0, 25.0, 26.0], [55.0, 177.0, 105.0, 222.0], [30, 26, 230, 226]]),
        torch.zeros(0, 4),
    ]
    labels = [torch.tensor([0, 1, 2]), torch.zeros(0, dtype=torch.long)]
    for _ in range(4):
        b, lab = _random_boxes(g, size, 6, num_classes)
        boxes.append(b)
        labels.append(lab)
    return boxes, labels


def _perfect_logits(targets: list[Tensor], big: float = 20.0) -> list[Tensor]:
    """Raw outputs that decode exactly to the targets: logit offsets, ±``big`` obj/class logits."""
    outs = []
    for t in targets:
        pos = t[..., OBJ : OBJ + 1] > 0.5
        xy = torch.logit(t[..., TX : TY + 1].clamp(1e-6, 1 - 1e-6))
        obj = torch.where(pos, big, -big)
        cls = torch.where(t[..., CLS:IGNORE] > 0.5, big, -big)
        outs.append(torch.cat([xy, t[..., TW : TH + 1], obj, cls], dim=-1))
    return outs


def _assert_recovered(
    got: Tensor, got_labels: Tensor, want: Tensor, want_labels: Tensor, min_iou: float
) -> None:
    assert len(got) == len(want)
    if len(want) == 0:
        return
    iou = box_iou(want, got)
    best, idx = iou.max(dim=1)
    assert best.min() > min_iou, best
    assert torch.equal(got_labels[idx], want_labels)
    assert len(set(idx.tolist())) == len(want)


def test_anchors_are_the_yolov3_ones_grouped_by_scale_and_scale_linearly() -> None:
    a416 = scaled_anchors(416)
    assert a416.shape == (3, 3, 2)
    assert a416[0, 0].tolist() == [10, 13] and a416[2, 2].tolist() == [373, 326]
    assert torch.equal(a416, torch.tensor(YOLO_ANCHORS_416, dtype=torch.float32))
    area = a416.prod(dim=-1)
    assert area[0].max() < area[2].min()  # small anchors on stride 8, large on 32
    for size in (224, 96):
        assert torch.allclose(scaled_anchors(size), a416 * size / 416)


@pytest.mark.parametrize("size", [64, 96])
def test_head_outputs_one_map_per_scale_with_low_objectness_prior(size: int) -> None:
    head = YOLOv3Head(DIMS, num_classes=2, image_size=size, hidden=16)
    outs = head(*_features(2, size))
    assert [tuple(o.shape) for o in outs] == [(2, 3, size // s, size // s, 7) for s in (8, 16, 32)]
    for o in outs:
        p = torch.sigmoid(o[..., OBJ]).mean().item()
        assert 0.005 < p < 0.02


def test_head_follows_feature_maps_whose_sizes_are_not_exact_halves() -> None:
    head = YOLOv3Head(DIMS, num_classes=1, image_size=224, hidden=8)
    c3, c4, c5 = torch.randn(1, 8, 38, 38), torch.randn(1, 16, 19, 19), torch.randn(1, 32, 10, 10)
    assert [o.shape[2:4] for o in head(c3, c4, c5)] == [(38, 38), (19, 19), (10, 10)]


def test_targets_invert_exactly_and_perfect_logits_decode_to_the_boxes() -> None:
    size, num_classes = 256, 3
    boxes, labels = _dataset(size, num_classes)
    assert sum(len(b) for b in boxes) >= 12
    targets = build_targets(boxes, labels, size, num_classes)
    assert [tuple(t.shape) for t in targets] == [(6, 3, g, g, 10) for g in (32, 16, 8)]
    for t in targets:  # every scale used, offsets in [0, 1), weights in [1, 2]
        pos = t[..., OBJ] > 0.5
        assert pos.any()
        assert (t[pos][:, TX : TY + 1] >= 0).all() and (t[pos][:, TX : TY + 1] < 1).all()
        assert (t[pos][:, BOX_WEIGHT] >= 1).all() and (t[pos][:, BOX_WEIGHT] <= 2).all()
        assert not (t[..., IGNORE] > 0.5)[pos].any()
    assert int(sum((t[1, ..., OBJ] > 0).sum() for t in targets)) == 0
    inverted = targets_to_boxes(targets, size)
    assert len(inverted) == len(boxes)
    for (got, got_lab), want, want_lab in zip(inverted, boxes, labels, strict=True):
        _assert_recovered(got, got_lab, want, want_lab, 0.999)

    detections = postprocess(decode(_perfect_logits(targets), size), 0.5, 0.5)
    for (got, scores, got_lab), want, want_lab in zip(detections, boxes, labels, strict=True):
        assert (scores > 0.99).all()
        _assert_recovered(got, got_lab, want, want_lab, 0.99)


def test_round_trip_on_grids_of_a_resized_input() -> None:
    boxes = [torch.tensor([[3.0, 5.0, 13.0, 20.0], [40.0, 60.0, 90.0, 100.0], [10, 10, 210, 200]])]
    labels = [torch.tensor([0, 0, 0])]
    grids = [(38, 38), (19, 19), (10, 10)]
    targets = build_targets(boxes, labels, 224, 1, grid_sizes=grids)
    assert [t.shape[2:4] for t in targets] == grids
    ((got, got_lab),) = targets_to_boxes(targets, 224)
    _assert_recovered(got, got_lab, boxes[0], labels[0], 0.999)
    ((got, _, got_lab),) = postprocess(decode(_perfect_logits(targets), 224))
    _assert_recovered(got, got_lab, boxes[0], labels[0], 0.99)


def test_best_anchor_of_all_nine_and_the_shape_iou_ignore_rule() -> None:
    # At 416 a 70×80 box matches (59, 119) best (IoU 0.60, scale 16, anchor 2); (116, 90) has
    # IoU 0.54 > 0.5 (scale 32, anchor 0) and is ignored; (62, 45) has 0.498 and is not.
    box = torch.tensor([[165.0, 160.0, 235.0, 240.0]])
    targets = build_targets([box], [torch.tensor([0])], 416, 1)
    pos = [(t[..., OBJ] > 0.5).nonzero().tolist() for t in targets]
    assert pos == [[], [[0, 2, 12, 12]], []]
    assert (targets[2][..., IGNORE] > 0.5).nonzero().tolist() == [[0, 0, 6, 6]]
    assert targets[0][..., IGNORE].sum() == 0 and targets[1][..., IGNORE].sum() == 0
    t = targets[1][0, 2, 12, 12]
    assert torch.allclose(t[TX : TY + 1], torch.tensor([0.5, 0.5]))
    assert torch.allclose(t[TW : TH + 1], torch.log(torch.tensor([70 / 59, 80 / 119])))
    assert math.isclose(float(t[BOX_WEIGHT]), 2 - 70 * 80 / 416**2, rel_tol=1e-6)

    # The ignored anchor's objectness does not enter the loss; a background anchor's does.
    outs = [torch.zeros(1, 3, g, g, 6) for g in (52, 26, 13)]
    base = yolo_loss(outs, targets)["obj"]
    outs[2][0, 0, 6, 6, OBJ] = 5.0
    assert torch.equal(yolo_loss(outs, targets)["obj"], base)
    outs[2][0, 1, 6, 6, OBJ] = 5.0
    assert yolo_loss(outs, targets)["obj"] > base


def test_two_boxes_on_one_cell_and_anchor_the_later_wins_and_bad_boxes_are_skipped() -> None:
    boxes = torch.tensor([[10.0, 10, 30, 40], [11.0, 9, 31, 41], [5.0, 5, 5, 9]])
    targets = build_targets([boxes], [torch.tensor([0, 1, 0])], 64, 2)
    ((got, got_lab),) = targets_to_boxes(targets, 64)
    _assert_recovered(got, got_lab, boxes[1:2], torch.tensor([1]), 0.999)
    with pytest.raises(ValueError, match="labels"):
        build_targets([boxes[:1]], [torch.tensor([2])], 64, 2)


def test_loss_is_finite_without_boxes_and_score_is_objectness_for_one_class() -> None:
    head = YOLOv3Head(DIMS, num_classes=1, image_size=64, hidden=8)
    outs = head(*_features(3, 64))
    empty = [torch.zeros(0, 4)] * 3
    losses = yolo_loss(outs, build_targets(empty, [torch.zeros(0, dtype=torch.long)] * 3, 64, 1))
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["box"] == 0 and losses["cls"] == 0 and losses["obj"] > 0
    losses["loss"].backward()
    assert all(p.grad is not None for p in head.parameters())

    boxes = [torch.tensor([[8.0, 8, 40, 50]]), torch.zeros(0, 4), torch.zeros(0, 4)]
    labels = [torch.tensor([0]), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)]
    losses = yolo_loss(outs, build_targets(boxes, labels, 64, 1))
    assert all(torch.isfinite(v) for v in losses.values()) and losses["box"] > 0

    (b, scores, lab), *_ = decode(outs, 64)
    obj = torch.cat([torch.sigmoid(o[0, ..., OBJ]).reshape(-1) for o in outs])
    assert torch.allclose(scores, obj) and (lab == 0).all()
    assert b.shape == (obj.numel(), 4) and b.min() >= 0 and b.max() <= 64


def test_head_overfits_four_images_of_fixed_features() -> None:
    torch.manual_seed(0)
    size, num_classes = 64, 2
    head = YOLOv3Head(DIMS, num_classes=num_classes, image_size=size, hidden=16)
    feats = _features(4, size, seed=1)
    boxes = [
        torch.tensor([[4.0, 6, 20, 30], [30, 30, 60, 58]]),
        torch.tensor([[10.0, 10, 54, 50]]),
        torch.zeros(0, 4),
        torch.tensor([[40.0, 4, 48, 14], [2, 40, 22, 62]]),
    ]
    labels = [torch.tensor([0, 1]), torch.tensor([1]), torch.tensor([], dtype=torch.long)]
    labels.append(torch.tensor([0, 0]))
    targets = build_targets(boxes, labels, size, num_classes)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    history = []
    for _ in range(150):
        loss = yolo_loss(head(*feats), targets)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert history[-1] < 0.1 * history[0], (history[0], history[-1])
    with torch.no_grad():
        detections = postprocess(decode(head(*feats), size))
    for (got, _, got_lab), want, want_lab in zip(detections, boxes, labels, strict=True):
        _assert_recovered(got, got_lab, want, want_lab, 0.5)
