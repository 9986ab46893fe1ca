"""DetectionSystem: a box detector on the encoder's C3–C5 maps (frozen by default).

The mgca protocol (PROTOCOLS.md §1, MGCA's ``ssl_detector.py``): a YOLOv3 head (3 scales,
``models/yolo.py``) on the frozen encoder's C3/C4/C5; images resized directly (no padding) to a
square of ``cfg.image.crop`` (paper: 224), normalised mean 0.5 / std 0.5 on 3 replicated channels;
AdamW lr 5e-4, wd 1e-6, batch 16 (1%: lr 2e-4 RSNA / 2.5e-4 Object-CXR, batch 8), at most 50
epochs, early stopping and checkpoint selection on val mAP (``val/select``, below); detections
kept at confidence ≥ 0.5 after NMS at IoU 0.5; mAP@[0.40:0.05:0.75] (``metrics/detection.py``).
One foreground class.

The detectors themselves (``yolov3``; ``faster_rcnn``, not in MGCA), their references and their
deviations live in ``models/detectors.py``; this module holds the data, the parameters and the
LightningModule that trains and scores them.

``cfg.params`` (validated by :func:`detection_params`; an unknown key is a ``ConfigError``):
``detector`` (``yolov3``, the protocol's, or ``faster_rcnn``), ``conf_threshold`` (0.5),
``nms_threshold`` (0.5), ``max_detections`` (100, COCO's ``maxDets``), ``yolo_hidden`` (256, the
YOLOv3 neck width) and, for ``faster_rcnn`` only, ``fpn_channels`` (256), ``representation_size``
(1024) and ``box_batch_size`` (512 sampled RoIs per image): torchvision's defaults.

Frozen encoder (default): eval mode under ``no_grad``, not in the optimiser; without augmentation
its C3–C5 of every image are computed once per run and kept in memory for YOLOv3
(``systems/frozen_maps.py``; Faster R-CNN resizes images itself and reads them every epoch).
``probe.finetune``: trained with lr × ``optim.encoder_lr_scale``. ``probe.augment`` (default
false, MGCA has none): horizontal flip (p 0.5, boxes mirrored) and brightness/contrast
×U(0.8, 1.2) on the training set.

Deviations from MGCA, all deliberate (those of the detectors: ``models/detectors.py``):

- Selection follows ``val/select``: ``val/map`` while it is above 0, and ``-loss / (1 + loss)``
  (in (-1, 0], lower val loss is better) while no detection passes the confidence threshold. A
  head on a weak encoder starts below confidence 0.5 everywhere, so val mAP sits at exactly 0
  for several validations while the val loss still falls; early stopping on mAP alone ended such
  runs on that plateau of zeros and tested them at 0 (synth-small: random init on RSNA at 100%,
  M-FLAG on RSNA at 10%, every seed). Any positive mAP ranks above every zero, so among
  validations that detect something the choice is MGCA's; only how long a run with nothing
  detected yet keeps training differs. Task versions 2 (``rsna_det``, ``objectcxr_det``).
- ``val/map`` (selection) is over all val images; MGCA scored only GT-positive images and
  skipped images without a kept prediction. The test records ``test/map`` (all images),
  ``test/map_mgca`` (GT-positive ones, MGCA's selection) and ``test/map50``.
- Boxes are scaled into new arrays: the records are never mutated (MGCA scaled its stored box
  arrays in place on every ``__getitem__``). All boxes of an image are kept (MGCA padded to 10 /
  20) and each must lie inside its image (``DataFormatError`` naming the file and line otherwise).
- The whole val set is evaluated (MGCA's val loader dropped the last batch).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any, Protocol

import cv2
import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from cxrbench.data.features import FeatureCache
from cxrbench.errors import ConfigError, CxrbenchError
from cxrbench.metrics.classification import MetricError
from cxrbench.metrics.detection import DetectionAccumulator
from cxrbench.models.detectors import (
    DETECTORS,
    DetectionParams,
    Detector,
    Maps,
    build_detector,
)
from cxrbench.models.yolo import Detections
from cxrbench.systems import SYSTEMS, frozen_maps
from cxrbench.systems.base import Prepared, TransferSystem, loader
from cxrbench.tasks.base import Items, Task, TaskConfig, TaskData, probe_mode

FASTER_RCNN_ONLY = ("fpn_channels", "representation_size", "box_batch_size")

Batch = list[dict[str, Any]]
BoxesOf = Callable[[Any, int, int], np.ndarray]


class DetectionTask(Protocol):
    """What a detection task adds to :class:`Task`: its record's boxes in original pixels."""

    def boxes(self, record: Any, height: int, width: int) -> np.ndarray: ...


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
# The system


def _boxes_of(task: Task) -> BoxesOf:
    method = getattr(task, "boxes", None)
    if not callable(method):
        raise CxrbenchError(
            f"task {task.name!r} has no boxes(record, height, width) method; a detection task "
            "turns its annotation record into (N, 4) x1y1x2y2 boxes in original pixels"
        )
    return method


def selection_score(val_map: float, val_loss: float) -> float:
    """What early stopping and the best checkpoint maximise: ``val_map`` when it is above 0, else
    ``-val_loss / (1 + val_loss)`` (in (-1, 0]): every positive mAP outranks every zero, and
    among validations with no kept detection the lower val loss wins."""
    if not math.isfinite(val_loss):
        return -1.0
    if val_map > 0.0:
        return float(val_map)
    loss = max(val_loss, 0.0)
    return -loss / (1.0 + loss)


@SYSTEMS.register("detection")
class DetectionSystem(TransferSystem):
    monitor = "val/select"  # val mAP; while it is 0, the val loss (selection_score)
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
        parts = (("train", data.train), ("val", data.val), ("test", data.test))
        rows: list[Dataset[Any]] = [
            DetectionImages(items, boxes_of, size, part == "train" and cfg.probe.augment)
            for part, items in parts
        ]
        rows, cached = frozen_maps.cached_rows(rows, detector.maps, cfg, usable=detector.takes_maps)
        train, val, test = (
            loader(r, cfg, train=part == "train", collate_fn=collate)
            for r, (part, _) in zip(rows, parts, strict=True)
        )
        return Prepared(system, train, val, test, probe_mode(cfg.probe, cached))

    def __init__(self, detector: Detector, cfg: TaskConfig, params: DetectionParams) -> None:
        super().__init__()
        self.detector = detector
        self.cfg = cfg
        self.params = params
        self._scores = DetectionAccumulator()
        self._ids: list[str] = []  # of the images scored, in order
        self._val_loss = (0.0, 0)

    @staticmethod
    def _unpack(batch: Batch) -> tuple[Tensor | Maps, list[Tensor], list[Tensor]]:
        """Images (or the cached maps of ``systems/frozen_maps.py``), boxes and labels."""
        images: Tensor | Maps
        if "maps" in batch[0]:
            images = Maps(*(torch.stack([row["maps"][k] for row in batch]) for k in range(3)))
        else:
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
        self._ids.extend(str(row["id"]) for row in batch)
        images, boxes, labels = self._unpack(batch)
        loss, found = self.detector.evaluate(images, boxes, labels)
        preds = [{"boxes": b, "scores": s, "labels": lb} for b, s, lb in found]
        gts = [{"boxes": b, "labels": lb} for b, lb in zip(boxes, labels, strict=True)]
        self._scores.update(preds, gts)
        return loss

    def _compute(self, split: str) -> dict[str, float]:
        if split == "test":  # kept detections and ground truth per image (predictions.npz)
            self.test_predictions = {**self._scores.per_image(), "image_ids": np.asarray(self._ids)}
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
        self._ids = []
        self._val_loss = (0.0, 0)  # sum of loss x images, images

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        loss = self._evaluate(batch)
        self._val_loss = (
            self._val_loss[0] + float(loss) * len(batch),
            self._val_loss[1] + len(batch),
        )
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, batch_size=len(batch))

    def on_validation_epoch_end(self) -> None:
        scores = self._compute("val")
        loss = self._val_loss[0] / max(self._val_loss[1], 1)  # the mean val/loss logs
        self.log("val/map", scores["map"], prog_bar=True)
        self.log("val/map50", scores["map50"])
        self.log("val/select", selection_score(scores["map"], loss))

    def on_test_epoch_start(self) -> None:
        self._scores.reset()
        self._ids = []

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
        return self.adamw(groups, o)


__all__ = [
    "DetectionImages",
    "DetectionSystem",
    "DetectionTask",
    "collate",
    "detection_params",
    "resize_square",
    "scale_boxes",
]
