"""The detectors behind ``systems/detection.py``: plain ``nn.Module`` heads on an encoder's C3–C5.

A :class:`Detector` wraps the encoder being evaluated and one head; it returns the training loss
(:meth:`~Detector.losses`), the loss and the kept detections from one encoder pass
(:meth:`~Detector.evaluate`), or the kept detections alone (:meth:`~Detector.detect`). Boxes are
x1y1x2y2 in input pixels, labels count from 0; ``params`` is a :class:`DetectionParams`
(validated by ``systems.detection.detection_params``). :func:`build_detector` picks the class.

- :class:`YoloDetector` (``yolov3``, MGCA's protocol): YOLOv3 (Redmon & Farhadi 2018, arXiv
  1804.02767) as implemented in ``models/yolo.py`` — :class:`~cxrbench.models.yolo.YOLOv3Head`
  on C3/C4/C5 (neck width ``yolo_hidden``), ``yolo_loss``, then decode, confidence filter
  (``conf_threshold``) and NMS (``nms_threshold``, at most ``max_detections`` per image).
- :class:`FasterRcnnDetector` (``faster_rcnn``, not in MGCA; an alternative head on the same
  maps): torchvision's ``FasterRCNN`` (Ren et al. 2015, arXiv 1506.01497) on an FPN (Lin et al.
  2017, arXiv 1612.03144) built by :class:`EncoderFPN` (``torchvision.ops.FeaturePyramidNetwork``
  + max-pool level) over C3–C5; RoIAlign on the three FPN maps; a two-layer MLP box head
  (``representation_size``) and ``box_batch_size`` sampled RoIs per image (torchvision's
  defaults); anchors ``crop/16 · 2^l`` and ``· √2`` on level ``l`` (stride 8·2^l), ratios 0.5,
  1, 2 (4–45 px at 64, 14–158 px at 224; :func:`fpn_anchor_sizes`). ``box_score_thresh`` /
  ``box_nms_thresh`` / ``box_detections_per_img`` are the protocol's thresholds and
  ``max_detections``. Labels shift by one inside (0 is torchvision's background).

Encoder (:func:`encode`): frozen (the default), it runs in eval mode under ``no_grad`` so its
BatchNorm statistics stay those of pre-training; with ``finetune`` it runs as it is and trains.

Deviations, all deliberate:

- The YOLOv3 loss and target assignment are those of ``models/yolo.py`` (see its docstring for
  its deviations from the paper and Darknet), not MGCA's ``YOLOLoss``.
- Faster R-CNN's internal transform neither resizes (``min_size`` = ``max_size`` = the input
  size) nor renormalises (mean 0, std 1): inputs are already resized and normalised by the
  dataset. The FPN covers C3–C5 (+ pool), not the paper's C2–C5, with two anchor sizes per level
  scaled to the input instead of the paper's single 32–512 px size per level.
- The loss of Faster R-CNN in :meth:`~Detector.evaluate` (``val/loss``) runs its RPN and RoI
  heads in training mode (their losses exist only there; they sample anchors and RoIs at random)
  on the features of the same pass that detects.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from cxrbench.errors import CxrbenchError
from cxrbench.models.backbones import Features
from cxrbench.models.yolo import (
    Detections,
    YOLOv3Head,
    build_targets,
    decode,
    postprocess,
    yolo_loss,
)

DETECTORS = ("yolov3", "faster_rcnn")
NUM_CLASSES = 1  # RSNA: pneumonia; Object-CXR: foreign object
LEVELS = ("c3", "c4", "c5")


@dataclass(frozen=True)
class DetectionParams:
    detector: str = "yolov3"
    conf_threshold: float = 0.5
    nms_threshold: float = 0.5
    max_detections: int = 100
    yolo_hidden: int = 256
    fpn_channels: int = 256
    representation_size: int = 1024
    box_batch_size: int = 512


@dataclass(frozen=True)
class Maps:
    """A frozen encoder's C3–C5 of a batch computed ahead (``systems/frozen_maps.py``): what
    :class:`YoloDetector` takes in place of images."""

    c3: Tensor
    c4: Tensor
    c5: Tensor


def encode(encoder: nn.Module, images: Tensor, finetune: bool) -> Features:
    """The encoder's features; a frozen encoder runs in eval mode under ``no_grad``."""
    if finetune:
        features: Features = encoder(images)
        return features
    encoder.eval()  # frozen: BatchNorm statistics stay those of pre-training
    with torch.no_grad():
        features = encoder(images)
    return features


class Detector(nn.Module, ABC):
    """A detector over ``encoder``: losses for training, loss and detections for evaluation.

    Detectors with ``takes_maps`` accept, in place of images, the frozen encoder's maps computed
    ahead (:class:`Maps`, from :meth:`maps`); the others need images."""

    encoder: nn.Module
    takes_maps: ClassVar[bool] = False

    def maps(self, images: Tensor) -> tuple[Tensor, ...]:
        """C3–C5 of the frozen encoder (eval mode, no gradients): what :class:`Maps` holds."""
        f = encode(self.encoder, images, finetune=False)
        return f.c3, f.c4, f.c5

    @abstractmethod
    def losses(self, images: Tensor | Maps, boxes: list[Tensor], labels: list[Tensor]) -> Tensor:
        """The training loss of a batch (boxes x1y1x2y2 in input pixels, labels from 0)."""

    @abstractmethod
    def evaluate(
        self, images: Tensor | Maps, boxes: list[Tensor], labels: list[Tensor]
    ) -> tuple[Tensor, list[Detections]]:
        """The loss and the kept detections of a batch, from one pass of the encoder."""

    @abstractmethod
    def detect(self, images: Tensor | Maps) -> list[Detections]:
        """Kept detections per image: boxes (x1y1x2y2, input pixels), scores, labels from 0."""


class YoloDetector(Detector):
    """YOLOv3 head on C3–C5 (``models/yolo.py``): ``yolo_loss``, decode + confidence + NMS."""

    takes_maps = True

    def __init__(
        self, encoder: nn.Module, in_channels: dict[str, int], image_size: int, finetune: bool,
        params: DetectionParams, num_classes: int = NUM_CLASSES,
    ) -> None:  # fmt: skip
        super().__init__()
        self.encoder = encoder
        self.head = YOLOv3Head(in_channels, num_classes, image_size, hidden=params.yolo_hidden)
        self.image_size, self.finetune, self.params = image_size, finetune, params
        self.num_classes = num_classes

    def _outputs(self, images: Tensor | Maps) -> list[Tensor]:
        f = images if isinstance(images, Maps) else encode(self.encoder, images, self.finetune)
        return [o.float() for o in self.head(f.c3, f.c4, f.c5)]

    def _loss(self, outputs: list[Tensor], boxes: list[Tensor], labels: list[Tensor]) -> Tensor:
        grids = [(o.shape[2], o.shape[3]) for o in outputs]
        targets = build_targets(boxes, labels, self.image_size, self.num_classes, grids)
        return yolo_loss(outputs, [t.to(outputs[0].device) for t in targets])["loss"]

    def _kept(self, outputs: list[Tensor]) -> list[Detections]:
        p = self.params
        decoded = decode(outputs, self.image_size)
        return postprocess(decoded, p.conf_threshold, p.nms_threshold, p.max_detections)

    def losses(self, images: Tensor | Maps, boxes: list[Tensor], labels: list[Tensor]) -> Tensor:
        return self._loss(self._outputs(images), boxes, labels)

    def evaluate(
        self, images: Tensor | Maps, boxes: list[Tensor], labels: list[Tensor]
    ) -> tuple[Tensor, list[Detections]]:
        outputs = self._outputs(images)
        return self._loss(outputs, boxes, labels), self._kept(outputs)

    def detect(self, images: Tensor | Maps) -> list[Detections]:
        return self._kept(self._outputs(images))


class EncoderFPN(nn.Module):
    """The encoder's C3–C5 through an FPN (+ max-pool level): torchvision's backbone contract.

    Returns an OrderedDict ``"0"``, ``"1"``, ``"2"`` (strides 8, 16, 32) and ``"pool"`` (64), all
    with ``out_channels`` channels."""

    def __init__(
        self, encoder: nn.Module, in_channels: dict[str, int], out_channels: int, finetune: bool
    ) -> None:
        from torchvision.ops import FeaturePyramidNetwork
        from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

        super().__init__()
        self.encoder = encoder
        self.fpn = FeaturePyramidNetwork(
            [in_channels[k] for k in LEVELS], out_channels, extra_blocks=LastLevelMaxPool()
        )
        self.out_channels = out_channels
        self.finetune = finetune

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        f = encode(self.encoder, x, self.finetune)
        maps = OrderedDict((str(i), getattr(f, k)) for i, k in enumerate(LEVELS))
        result: OrderedDict[str, Tensor] = self.fpn(maps)
        return result


def fpn_anchor_sizes(image_size: int) -> tuple[tuple[int, ...], ...]:
    """Anchor sizes of the four FPN levels: ``s·2^l`` and ``s·2^l·√2`` with ``s = size / 16``."""
    base = image_size / 16
    return tuple(
        (max(2, round(base * 2**level)), max(2, round(base * 2**level * math.sqrt(2))))
        for level in range(4)
    )


@contextmanager
def _training(*modules: nn.Module, mode: bool = True) -> Iterator[None]:
    """Temporarily set ``modules`` (and their children) to training ``mode``."""
    before = [m.training for m in modules]
    for m in modules:
        m.train(mode)
    try:
        yield
    finally:
        for m, was in zip(modules, before, strict=True):
            m.train(was)


class FasterRcnnDetector(Detector):
    """torchvision's Faster R-CNN on :class:`EncoderFPN`; labels shift by one (0 = background)."""

    def __init__(
        self, encoder: nn.Module, in_channels: dict[str, int], image_size: int, finetune: bool,
        params: DetectionParams, num_classes: int = NUM_CLASSES,
    ) -> None:  # fmt: skip
        from torchvision.models.detection import FasterRCNN
        from torchvision.models.detection.anchor_utils import AnchorGenerator
        from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
        from torchvision.ops import MultiScaleRoIAlign

        super().__init__()
        backbone = EncoderFPN(encoder, in_channels, params.fpn_channels, finetune)
        anchors = AnchorGenerator(fpn_anchor_sizes(image_size), ((0.5, 1.0, 2.0),) * 4)
        c, rep = params.fpn_channels, params.representation_size
        self.model = FasterRCNN(
            backbone,
            min_size=image_size,  # inputs are already image_size²: no second resize
            max_size=image_size,
            image_mean=[0.0, 0.0, 0.0],  # inputs are already normalised (mean 0.5, std 0.5)
            image_std=[1.0, 1.0, 1.0],
            rpn_anchor_generator=anchors,
            box_roi_pool=MultiScaleRoIAlign(["0", "1", "2"], output_size=7, sampling_ratio=2),
            box_head=TwoMLPHead(c * 7 * 7, rep),
            box_predictor=FastRCNNPredictor(rep, num_classes + 1),
            box_score_thresh=params.conf_threshold,
            box_nms_thresh=params.nms_threshold,
            box_detections_per_img=params.max_detections,
            box_batch_size_per_image=params.box_batch_size,
        )
        self.image_size = image_size

    @property
    def encoder(self) -> nn.Module:  # type: ignore[override]
        backbone: EncoderFPN = self.model.backbone
        return backbone.encoder

    @staticmethod
    def _targets(boxes: list[Tensor], labels: list[Tensor]) -> list[dict[str, Tensor]]:
        return [{"boxes": b, "labels": lb + 1} for b, lb in zip(boxes, labels, strict=True)]

    def _features(
        self, images: Tensor | Maps, targets: list[dict[str, Tensor]] | None
    ) -> tuple[Any, list[dict[str, Tensor]] | None, OrderedDict[str, Tensor]]:
        if isinstance(images, Maps):  # its transform resizes images: it needs them
            raise CxrbenchError("the faster_rcnn detector takes images, not precomputed maps")
        batch, targets = self.model.transform(list(images), targets)
        return batch, targets, self.model.backbone(batch.tensors)

    def _loss(self, batch: Any, features: Any, targets: list[dict[str, Tensor]]) -> Tensor:
        """RPN + RoI-head losses (they exist only in training mode, which samples at random)."""
        m = self.model
        with _training(m.rpn, m.roi_heads):
            proposals, rpn_losses = m.rpn(batch, features, targets)
            _, roi_losses = m.roi_heads(features, proposals, batch.image_sizes, targets)
        parts = [*rpn_losses.values(), *roi_losses.values()]
        return torch.stack(parts).sum()

    def _detections(self, batch: Any, features: Any) -> list[Detections]:
        m = self.model
        with _training(m.rpn, m.roi_heads, mode=False):
            proposals, _ = m.rpn(batch, features)
            found, _ = m.roi_heads(features, proposals, batch.image_sizes)
        sizes = [(self.image_size, self.image_size)] * len(found)
        found = m.transform.postprocess(found, batch.image_sizes, sizes)
        return [(d["boxes"], d["scores"], d["labels"] - 1) for d in found]

    def losses(self, images: Tensor | Maps, boxes: list[Tensor], labels: list[Tensor]) -> Tensor:
        batch, targets, features = self._features(images, self._targets(boxes, labels))
        assert targets is not None
        return self._loss(batch, features, targets)

    def evaluate(
        self, images: Tensor | Maps, boxes: list[Tensor], labels: list[Tensor]
    ) -> tuple[Tensor, list[Detections]]:
        batch, targets, features = self._features(images, self._targets(boxes, labels))
        assert targets is not None
        return self._loss(batch, features, targets), self._detections(batch, features)

    def detect(self, images: Tensor | Maps) -> list[Detections]:
        batch, _, features = self._features(images, None)
        return self._detections(batch, features)


def build_detector(
    params: DetectionParams, encoder: nn.Module, feature_dims: dict[str, int], image_size: int,
    finetune: bool,
) -> Detector:  # fmt: skip
    """The detector ``params.detector`` on ``encoder`` (channels from the artifact's dims)."""
    missing = [k for k in LEVELS if k not in feature_dims]
    if missing:
        raise CxrbenchError(f"the encoder's feature_dims lack {missing}; detection needs C3–C5")
    dims = {k: int(feature_dims[k]) for k in LEVELS}
    cls = YoloDetector if params.detector == "yolov3" else FasterRcnnDetector
    return cls(encoder, dims, image_size, finetune, params)


__all__ = [
    "DETECTORS",
    "DetectionParams",
    "Detections",
    "Detector",
    "EncoderFPN",
    "FasterRcnnDetector",
    "YoloDetector",
    "build_detector",
    "encode",
    "fpn_anchor_sizes",
]
