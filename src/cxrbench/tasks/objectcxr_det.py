"""Object-CXR foreign-object detection (mgca protocol, version 2).

Boxes = every annotated object's bounding box ``(x1, y1, x2, y2)`` in pixels of the original JPEG
(sizes vary): rectangles (type 0) and ellipses (type 1) give their two corners, polygons (type 2)
the extent of their points (``Shape.bbox``); one class (foreign object); images without an object
are negatives. Splits: 90/10 of ``train.csv`` for train/val, the official ``dev.csv`` is the test
set (``data/splits.py``). Frozen encoder C3–C5 + YOLOv3 head, images resized directly (aspect
not kept) to the crop size (paper: 224), confidence 0.5, NMS 0.5, mAP@[0.40:0.05:0.75], early
stopping on val mAP (``systems/detection.py``).

Deviations from MGCA: a polygon becomes its bounding box (MGCA: a square centred on the polygon's
pole of inaccessibility, ``shapely``/``polylabel``); a shape that leaves its image is a
``DataFormatError`` naming the CSV file and line; boxes are new arrays, never scaled in place.
"""

from __future__ import annotations

import numpy as np

from cxrbench.data.formats.objectcxr import ObjectImage, check_boxes_inside
from cxrbench.tasks import TASKS
from cxrbench.tasks.base import Task


def objectcxr_boxes(record: ObjectImage, height: int, width: int) -> np.ndarray:
    """(N, 4) float32 ``x1, y1, x2, y2`` (each object's bounding box) in original pixels.

    Raises :class:`~cxrbench.errors.DataFormatError` (file, line) for a shape outside the image."""
    check_boxes_inside(record, height, width)
    if not record.objects:
        return np.zeros((0, 4), dtype=np.float32)
    return np.array([shape.bbox for shape in record.objects], dtype=np.float32).reshape(-1, 4)


@TASKS.register("objectcxr_det")
class ObjectcxrDet(Task):
    kind = "detection"
    dataset = "objectcxr"
    metric = "map"
    version = 2  # 2: selection breaks val mAP ties at 0 on val loss (systems/detection.py)
    protocols = {1: "mgca", 2: "mgca"}  # noqa: RUF012 - read only

    def boxes(self, record: ObjectImage, height: int, width: int) -> np.ndarray:
        """The record's boxes for the detection system (see :func:`objectcxr_boxes`)."""
        return objectcxr_boxes(record, height, width)
