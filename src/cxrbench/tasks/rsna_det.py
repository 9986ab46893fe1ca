"""RSNA Pneumonia detection (mgca protocol, version 2).

Boxes = the ``Target == 1`` rows of a patient in ``stage_2_train_labels.csv`` (``x, y, width,
height`` in pixels of the 1024×1024 DICOM) → ``(x, y, x + width, y + height)``; one class
(pneumonia); patients without a box stay in every split as negatives. Splits 60/20/20 stratified on
having a box (MGCA's sizes 16,010 / 5,337 / 5,337, ``data/splits.py``). Frozen encoder C3–C5 +
YOLOv3 head, images resized directly to the crop size (paper: 224), confidence 0.5, NMS 0.5,
mAP@[0.40:0.05:0.75], early stopping on val mAP (``systems/detection.py``).

Deviation from MGCA: a box that leaves its image is a ``DataFormatError`` naming the labels file
and line (MGCA used boxes as given); boxes are returned as new arrays, never scaled in place.
"""

from __future__ import annotations

import numpy as np

from cxrbench.data.formats.rsna import RsnaImage, check_boxes_inside
from cxrbench.tasks import TASKS
from cxrbench.tasks.base import Task


def rsna_boxes(record: RsnaImage, height: int, width: int) -> np.ndarray:
    """(N, 4) float32 ``x1, y1, x2, y2`` in pixels of the ``height × width`` original image.

    Raises :class:`~cxrbench.errors.DataFormatError` (file, line) for a box outside the image."""
    check_boxes_inside(record, height, width)
    if not record.boxes:
        return np.zeros((0, 4), dtype=np.float32)
    xywh = np.array(record.boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1).astype(np.float32)


@TASKS.register("rsna_det")
class RsnaDet(Task):
    kind = "detection"
    dataset = "rsna"
    metric = "map"
    version = 2  # 2: selection breaks val mAP ties at 0 on val loss (systems/detection.py)
    protocols = {1: "mgca", 2: "mgca"}  # noqa: RUF012 - read only

    def boxes(self, record: RsnaImage, height: int, width: int) -> np.ndarray:
        """The record's boxes for the detection system (see :func:`rsna_boxes`)."""
        return rsna_boxes(record, height, width)
