"""DetectionSystem: a box detector on the encoder's C3–C5 maps (frozen by default).

The mgca protocol (PROTOCOLS.md §1, MGCA's ``ssl_detector.py``): a YOLOv3 head (3 scales,
``models/yolo.py``) on the frozen encoder's C3/C4/C5; images resized directly (no padding) to a
square of ``cfg.image.crop`` (paper: 224), normalised mean 0.5 / std 0.5 on 3 replicated channels;
AdamW lr 5e-4, wd 1e-6, batch 16 (1%: lr 2e-4 RSNA / 2.5e-4 Object-CXR, batch 8), at most 50
epochs, early stopping and checkpoint selection on ``val/map``; detections kept at confidence
≥ 0.5 after NMS at IoU 0.5; mAP@[0.40:0.05:0.75] (``metrics/detection.py``). One foreground class.

``cfg.params`` (validated by :func:`detection_params`; an unknown key is a ``ConfigError``):
``detector`` (``yolov3``, the protocol's, or ``faster_rcnn``), ``conf_threshold`` (0.5),
``nms_threshold`` (0.5), ``max_detections`` (100, COCO's ``maxDets``), ``yolo_hidden`` (256, the
YOLOv3 neck width) and, for ``faster_rcnn`` only, ``fpn_channels`` (256), ``representation_size``
(1024) and ``box_batch_size`` (512 sampled RoIs per image): torchvision's defaults.

``faster_rcnn`` (not in MGCA; an alternative head on the same maps): torchvision's ``FasterRCNN``
on an FPN (``torchvision.ops.FeaturePyramidNetwork`` + max-pool level) over C3–C5, RoIAlign on the
three FPN maps; anchors ``crop/16 · 2^l`` and ``· √2`` on level ``l`` (stride 8·2^l), ratios 0.5,
1, 2 (4–45 px at 64, 14–158 px at 224). Its internal transform neither resizes (``min_size`` =
``max_size`` = the input size) nor renormalises (mean 0, std 1): inputs are already normalised
by the dataset. ``box_score_thresh`` / ``box_nms_thresh`` are the protocol's thresholds.
``val/loss`` of Faster R-CNN runs its RPN and RoI heads in training mode (their losses exist only
there; they sample anchors and RoIs at random) on the features of the same pass that detects.

Frozen encoder (default): eval mode under ``no_grad``, not in the optimiser. ``probe.finetune``:
trained with lr × ``optim.encoder_lr_scale``. ``probe.augment`` (default false, MGCA has none):
horizontal flip (p 0.5, boxes mirrored) and brightness/contrast ×U(0.8, 1.2) on the training set.

Deviations from MGCA, all deliberate:

- ``val/map`` (early stopping) is over all val images; MGCA scored only GT-positive images and
  skipped images without a kept prediction. The test records ``test/map`` (all images),
  ``test/map_mgca`` (GT-positive ones, MGCA's selection) and ``test/map50``.
- Boxes are scaled into new arrays: the records are never mutated (MGCA scaled its stored box
  arrays in place on every ``__getitem__``). All boxes of an image are kept (MGCA padded to 10 /
  20) and each must lie inside its image (``DataFormatError`` naming the file and line otherwise).
- The YOLOv3 loss and target assignment are those of ``models/yolo.py`` (see its docstring),
  not MGCA's ``YOLOLoss``; the whole val set is evaluated (MGCA's val loader dropped the last
  batch).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any, Protocol

import cv2
import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from cxrbench.data.features import FeatureCache
from cxrbench.errors import ConfigError, CxrbenchError
from cxrbench.metrics.classification import MetricError
from cxrbench.metrics.detection import DetectionAccumulator
from cxrbench.models.backbones import Features
from cxrbench.models.yolo import (
    Detections,
    YOLOv3Head,
    build_targets,
    decode,
    postprocess,
    yolo_loss,
)
from cxrbench.systems import SYSTEMS
from cxrbench.systems.base import Prepared, TransferSystem
from cxrbench.tasks.base import Items, Task, TaskConfig, TaskData

DETECTORS = ("yolov3", "faster_rcnn")
FASTER_RCNN_ONLY = ("fpn_channels", "representation_size", "box_batch_size")
NUM_CLASSES = 1  # RSNA: pneumonia; Object-CXR: foreign object
LEVELS = ("c3", "c4", "c5")

Batch = list[dict[str, Any]]
BoxesOf = Callable[[Any, int, int], np.ndarray]


class DetectionTask(Protocol):
    """What a detection task adds to :class:`Task`: its record's boxes in original pixels."""

    def boxes(self, record: Any, height: int, width: int) -> np.ndarray: ...


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


def detection_params(raw: Mapping[str, Any]) -> DetectionParams:
    """Validate ``cfg.params`` of a detection task; every error names ``params.<key>``."""
    known = {f.name: f.default for f in fields(DetectionParams)}
    for key in raw:
        if key not in known:
            raise ConfigError(
                None, f"params.{key}", f"unknown detection setting; known: {', '.join(known)}"
            )
    values = {**known, **raw}
    if values["detector"] not in DETECTORS:
        msg = f"must be one of {', '.join(DETECTORS)}; got {values['detector']!r}"
        raise ConfigError(None, "params.detector", msg)
    for key in ("conf_threshold", "nms_threshold"):
        v = values[key]
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 <= v <= 1.0:
            raise ConfigError(None, f"params.{key}", f"must be a number in [0, 1]; got {v!r}")
        values[key] = float(v)
    for key in ("max_detections", "yolo_hidden", *FASTER_RCNN_ONLY):
        v = values[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < (4 if key == "yolo_hidden" else 1):
            raise ConfigError(None, f"params.{key}", f"must be a positive integer; got {v!r}")
    if values["detector"] != "faster_rcnn":
        extra = [k for k in FASTER_RCNN_ONLY if k in raw]
        if extra:
            raise ConfigError(None, f"params.{extra[0]}", "applies to detector faster_rcnn only")
    return DetectionParams(**values)


# ---------------------------------------------------------------------------------------------
# Data


def scale_boxes(boxes: np.ndarray, height: int, width: int, size: int) -> np.ndarray:
    """(N, 4) x1y1x2y2 boxes of a ``height × width`` image in pixels of its ``size²`` resizing.

    Returns a new float32 array; ``boxes`` is never written to."""
    src = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    factors = np.array([size / width, size / height, size / width, size / height])
    return (src * factors).astype(np.float32)


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """A uint8 grayscale (or colour, averaged) image resized directly to ``size × size``.

    Area interpolation when shrinking both sides, bilinear otherwise (no aspect kept, no pad)."""
    if image.ndim == 3:
        image = image.mean(axis=2).round().astype(np.uint8)
    if image.ndim != 2:
        raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {image.shape}")
    h, w = image.shape
    interp = cv2.INTER_AREA if size <= min(h, w) else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interp)


def _augment(image: Tensor, boxes: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Flip (p 0.5, boxes mirrored) and brightness/contrast jitter on a normalised image."""
    if float(torch.rand(())) < 0.5:
        image = image.flip(-1)
        boxes = torch.stack([size - boxes[:, 2], boxes[:, 1], size - boxes[:, 0], boxes[:, 3]], 1)
    pixels = image * 0.5 + 0.5
    brightness, contrast = (0.8 + 0.4 * torch.rand(2)).tolist()
    pixels = (pixels * brightness).clamp(0, 1)
    mean = pixels.mean()
    pixels = ((pixels - mean) * contrast + mean).clamp(0, 1)
    return (pixels - 0.5) / 0.5, boxes


class DetectionImages(Dataset[dict[str, Any]]):
    """Images resized to ``size²`` with their boxes (x1y1x2y2 in input pixels) and labels."""

    def __init__(self, items: Items, boxes_of: BoxesOf, size: int, augment: bool) -> None:
        if len(items.targets) != len(items.ids):
            raise CxrbenchError(
                f"detection needs an annotation record per image; got {len(items.targets)} "
                f"for {len(items.ids)} images (the task's annotations() returned none?)"
            )
        self.items, self.boxes_of, self.size, self.augment = items, boxes_of, size, augment

    def __len__(self) -> int:
        return len(self.items.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from cxrbench.data.codecs import read_image
        from cxrbench.data.transforms import to_tensor

        raw = read_image(self.items.paths[i])
        h, w = raw.shape[:2]
        boxes = scale_boxes(self.boxes_of(self.items.targets[i], h, w), h, w, self.size)
        image = to_tensor(resize_square(raw, self.size))
        box_t = torch.from_numpy(boxes)
        if self.augment:
            image, box_t = _augment(image, box_t, self.size)
        labels = torch.zeros(len(box_t), dtype=torch.long)
        return {"id": self.items.ids[i], "image": image, "boxes": box_t, "labels": labels}


def collate(rows: list[dict[str, Any]]) -> Batch:
    """A batch is the list of per-image dicts (images differ in their number of boxes)."""
    return list(rows)


# ---------------------------------------------------------------------------------------------
# Detectors


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
    """A detector over ``encoder``: losses for training, loss and detections for evaluation."""

    encoder: nn.Module

    @abstractmethod
    def losses(self, images: Tensor, boxes: list[Tensor], labels: list[Tensor]) -> Tensor:
        """The training loss of a batch (boxes x1y1x2y2 in input pixels, labels from 0)."""

    @abstractmethod
    def evaluate(
        self, images: Tensor, boxes: list[Tensor], labels: list[Tensor]
    ) -> tuple[Tensor, list[Detections]]:
        """The loss and the kept detections of a batch, from one pass of the encoder."""

    @abstractmethod
    def detect(self, images: Tensor) -> list[Detections]:
        """Kept detections per image: boxes (x1y1x2y2, input pixels), scores, labels from 0."""


class YoloDetector(Detector):
    """YOLOv3 head on C3–C5 (``models/yolo.py``): ``yolo_loss``, decode + confidence + NMS."""

    def __init__(
        self, encoder: nn.Module, in_channels: dict[str, int], image_size: int, finetune: bool,
        params: DetectionParams, num_classes: int = NUM_CLASSES,
    ) -> None:  # fmt: skip
        super().__init__()
        self.encoder = encoder
        self.head = YOLOv3Head(in_channels, num_classes, image_size, hidden=params.yolo_hidden)
        self.image_size, self.finetune, self.params = image_size, finetune, params
        self.num_classes = num_classes

    def _outputs(self, images: Tensor) -> list[Tensor]:
        f = encode(self.encoder, images, self.finetune)
        return [o.float() for o in self.head(f.c3, f.c4, f.c5)]

    def _loss(self, outputs: list[Tensor], boxes: list[Tensor], labels: list[Tensor]) -> Tensor:
        grids = [(o.shape[2], o.shape[3]) for o in outputs]
        targets = build_targets(boxes, labels, self.image_size, self.num_classes, grids)
        return yolo_loss(outputs, [t.to(outputs[0].device) for t in targets])["loss"]

    def _kept(self, outputs: list[Tensor]) -> list[Detections]:
        p = self.params
        decoded = decode(outputs, self.image_size)
        return postprocess(decoded, p.conf_threshold, p.nms_threshold, p.max_detections)

    def losses(self, images: Tensor, boxes: list[Tensor], labels: list[Tensor]) -> Tensor:
        return self._loss(self._outputs(images), boxes, labels)

    def evaluate(
        self, images: Tensor, boxes: list[Tensor], labels: list[Tensor]
    ) -> tuple[Tensor, list[Detections]]:
        outputs = self._outputs(images)
        return self._loss(outputs, boxes, labels), self._kept(outputs)

    def detect(self, images: Tensor) -> list[Detections]:
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
        self, images: Tensor, targets: list[dict[str, Tensor]] | None
    ) -> tuple[Any, list[dict[str, Tensor]] | None, OrderedDict[str, Tensor]]:
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

    def losses(self, images: Tensor, boxes: list[Tensor], labels: list[Tensor]) -> Tensor:
        batch, targets, features = self._features(images, self._targets(boxes, labels))
        assert targets is not None
        return self._loss(batch, features, targets)

    def evaluate(
        self, images: Tensor, boxes: list[Tensor], labels: list[Tensor]
    ) -> tuple[Tensor, list[Detections]]:
        batch, targets, features = self._features(images, self._targets(boxes, labels))
        assert targets is not None
        return self._loss(batch, features, targets), self._detections(batch, features)

    def detect(self, images: Tensor) -> list[Detections]:
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


# ---------------------------------------------------------------------------------------------
# The system


def _boxes_of(task: Task) -> BoxesOf:
    method = getattr(task, "boxes", None)
    if not callable(method):
        raise CxrbenchError(
            f"task {task.name!r} has no boxes(record, height, width) method; a detection task "
            "turns its annotation record into (N, 4) x1y1x2y2 boxes in original pixels"
        )
    return method


@SYSTEMS.register("detection")
class DetectionSystem(TransferSystem):
    monitor = "val/map"
    monitor_mode = "max"

    @classmethod
    def prepare(
        cls,
        task: Task,
        cfg: TaskConfig,
        data: TaskData,
        encoder: nn.Module,
        meta: dict[str, Any],
        cache: FeatureCache,
    ) -> Prepared:
        params = detection_params(cfg.params)
        boxes_of = _boxes_of(task)
        size = cfg.image.crop
        detector = build_detector(params, encoder, meta["feature_dims"], size, cfg.probe.finetune)
        system = cls(detector, cfg, params)
        loaders = []
        for part, items in (("train", data.train), ("val", data.val), ("test", data.test)):
            augment = part == "train" and cfg.probe.augment
            workers = cfg.train.workers
            loaders.append(
                DataLoader(
                    DetectionImages(items, boxes_of, size, augment),
                    batch_size=cfg.train.batch_size,
                    shuffle=part == "train",
                    num_workers=workers,
                    persistent_workers=workers > 0,
                    collate_fn=collate,
                )
            )
        train, val, test = loaders
        mode = "finetune" if cfg.probe.finetune else "augment" if cfg.probe.augment else "frozen"
        return Prepared(system, train, val, test, mode)

    def __init__(self, detector: Detector, cfg: TaskConfig, params: DetectionParams) -> None:
        super().__init__()
        self.detector = detector
        self.cfg = cfg
        self.params = params
        self._scores = DetectionAccumulator()

    @staticmethod
    def _unpack(batch: Batch) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        images = torch.stack([row["image"] for row in batch])
        return images, [row["boxes"] for row in batch], [row["labels"] for row in batch]

    def detect(self, images: Tensor) -> list[Detections]:
        """Kept detections (confidence and NMS thresholds applied) per image, input pixels."""
        return self.detector.detect(images)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        loss = self.detector.losses(*self._unpack(batch))
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=len(batch))
        return loss

    def _evaluate(self, batch: Batch) -> Tensor:
        images, boxes, labels = self._unpack(batch)
        loss, found = self.detector.evaluate(images, boxes, labels)
        preds = [{"boxes": b, "scores": s, "labels": lb} for b, s, lb in found]
        gts = [{"boxes": b, "labels": lb} for b, lb in zip(boxes, labels, strict=True)]
        self._scores.update(preds, gts)
        return loss

    def _compute(self, split: str) -> dict[str, float]:
        try:
            return self._scores.compute()
        except MetricError as err:
            raise MetricError(
                f"detection mAP on the {split} split ({self._scores.count} images): {err}; the "
                f"{split} split needs at least one ground-truth box"
            ) from err
        finally:
            self._scores.reset()

    def on_validation_epoch_start(self) -> None:
        self._scores.reset()

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        loss = self._evaluate(batch)
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, batch_size=len(batch))

    def on_validation_epoch_end(self) -> None:
        scores = self._compute("val")
        self.log("val/map", scores["map"], prog_bar=True)
        self.log("val/map50", scores["map50"])

    def on_test_epoch_start(self) -> None:
        self._scores.reset()

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch)

    def on_test_epoch_end(self) -> None:
        scores = self._compute("test")
        self.test_results = {f"test/{k}": float(v) for k, v in scores.items()}
        self.log("test/map", scores["map"])

    def configure_optimizers(self) -> Any:
        o = self.cfg.optim
        encoder_ids = {id(p) for p in self.detector.encoder.parameters()}
        head = [p for p in self.detector.parameters() if id(p) not in encoder_ids]
        groups: list[dict[str, Any]] = [{"params": head, "lr": o.lr}]
        if self.cfg.probe.finetune:
            trainable = [p for p in self.detector.encoder.parameters() if p.requires_grad]
            groups.append({"params": trainable, "lr": o.lr * o.encoder_lr_scale})
        return torch.optim.AdamW(
            groups, weight_decay=o.weight_decay, betas=(o.betas[0], o.betas[1])
        )


__all__ = [
    "DETECTORS",
    "DetectionImages",
    "DetectionParams",
    "DetectionSystem",
    "DetectionTask",
    "Detector",
    "EncoderFPN",
    "FasterRcnnDetector",
    "YoloDetector",
    "build_detector",
    "collate",
    "detection_params",
    "encode",
    "fpn_anchor_sizes",
    "resize_square",
    "scale_boxes",
]
