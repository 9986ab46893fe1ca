"""RSNA Pneumonia Detection Challenge (Kaggle), stage 2 training data.

Official files in the dataset folder (``rsna-pneumonia/``):

* ``stage_2_train_labels.csv``: ``patientId,x,y,width,height,Target``; one row per box for
  ``Target`` 1 (box in native pixels, ``x, y`` the top-left corner), one row with empty box fields
  for ``Target`` 0;
* ``stage_2_detailed_class_info.csv`` (optional): ``patientId,class`` with ``Lung Opacity``,
  ``No Lung Opacity / Not Normal`` or ``Normal``;
* images ``stage_2_train_images/{patientId}.dcm`` (1024x1024, usually MONOCHROME2).

:func:`read` gives one record per distinct ``patientId`` in order of first appearance; ``target`` is
1 when its rows have ``Target`` 1 (the protocol's label) and ``boxes`` are its Target-1 boxes
``(x, y, width, height)``. Target-1 rows need four numeric box fields with positive width and
height; Target-0 rows need empty box fields. A patientId with both Target-1 and Target-0 rows
contradicts itself: a :class:`DataFormatError` naming the file and the lines of both kinds. Whether
boxes lie inside the image needs the image size, so it is checked by :func:`check_boxes_inside`
(called by ``inspect`` and by the tasks). A box's mask covers rows
``round(y) .. round(y + height) - 1`` and columns ``round(x) .. round(x + width) - 1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.data.formats._common import (
    LINE,
    box_outside,
    check_values,
    first_line,
    read_csv,
    require_dir,
    require_file,
)
from cxrbench.errors import DataFormatError

FOLDER = "rsna-pneumonia"
LABELS_FILE = "stage_2_train_labels.csv"
CLASS_FILE = "stage_2_detailed_class_info.csv"
IMAGES_DIR = "stage_2_train_images"
BOX_COLUMNS = ("x", "y", "width", "height")

Box = tuple[float, float, float, float]


@dataclass(frozen=True, slots=True)
class RsnaImage:
    """One patientId: label, boxes ``(x, y, width, height)`` and the CSV line of each box."""

    patient_id: str
    image_path: Path
    target: int
    boxes: tuple[Box, ...]
    box_lines: tuple[int, ...]
    line: int
    detail: str | None
    source_file: Path

    def mask(self, height: int, width: int) -> np.ndarray:
        """Union of the filled boxes as a ``(height, width)`` boolean mask."""
        return boxes_mask(self.boxes, height, width)


@dataclass(frozen=True)
class RsnaIndex:
    root: Path
    images: tuple[RsnaImage, ...]

    def ids(self) -> list[str]:
        return [image.patient_id for image in self.images]


def boxes_mask(boxes: tuple[Box, ...], height: int, width: int) -> np.ndarray:
    """Filled ``(x, y, width, height)`` boxes as a boolean mask (parts outside are dropped)."""
    mask = np.zeros((height, width), dtype=bool)
    for x, y, w, h in boxes:
        x0, y0 = max(round(x), 0), max(round(y), 0)
        mask[y0 : max(round(y + h), 0), x0 : max(round(x + w), 0)] = True
    return mask


def check_boxes_inside(image: RsnaImage, height: int, width: int) -> None:
    """Raise :class:`DataFormatError` (labels file and line) for a box outside the image."""
    for (x, y, w, h), line in zip(image.boxes, image.box_lines, strict=True):
        if box_outside((x, y, x + w, y + h), height, width):
            raise DataFormatError(
                image.source_file,
                f"a box inside the {width}x{height} image {image.image_path.name}",
                f"x={x:g}, y={y:g}, width={w:g}, height={h:g}",
                line,
            )


def _validate(frame: pd.DataFrame, path: Path) -> np.ndarray:
    """Check the box fields against Target; return the numeric boxes (NaN for Target 0)."""
    check_values(frame, path, "Target", ("0", "1"), "Target 0 or 1")
    empty = frame[list(BOX_COLUMNS)] == ""
    positive = (frame["Target"] == "1").to_numpy()
    filled = ~positive & ~empty.all(axis=1).to_numpy()
    if filled.any():
        raise DataFormatError(
            path, "empty x,y,width,height for Target 0", "a box", first_line(frame, filled)
        )
    values = frame[list(BOX_COLUMNS)].apply(pd.to_numeric, errors="coerce").to_numpy(float)
    bad = positive & ~np.isfinite(values).all(axis=1)
    if bad.any():
        raise DataFormatError(
            path,
            "numeric x,y,width,height for Target 1",
            "a missing or non-numeric field",
            first_line(frame, bad),
        )
    flat = positive & ((values[:, 2] <= 0) | (values[:, 3] <= 0))
    if flat.any():
        raise DataFormatError(
            path, "positive width and height", "an empty box", first_line(frame, flat)
        )
    return values


def _lines(lines: list[int]) -> str:
    shown = ", ".join(str(n) for n in lines[:5])
    more = f" and {len(lines) - 5} more" if len(lines) > 5 else ""
    return f"line{'s' if len(lines) > 1 else ''} {shown}{more}"


def _check_agreement(groups: dict[str, dict], path: Path) -> None:
    """Raise at the first patientId whose rows say both Target 1 (boxes) and Target 0."""
    mixed = [g for g in groups.values() if g["lines"] and g["negative"]]
    if not mixed:
        return
    first = min(mixed, key=lambda g: max(g["lines"][0], g["negative"][0]))
    raise DataFormatError(
        path,
        "the rows of one patientId to agree: box rows with Target 1, or one row with Target 0",
        f"Target 1 on {_lines(first['lines'])} and Target 0 on {_lines(first['negative'])} "
        "for the same patientId",
        max(first["lines"][0], first["negative"][0]),
    )


def _read_details(root: Path) -> dict[str, str]:
    path = root / CLASS_FILE
    if not path.is_file():
        return {}
    frame = read_csv(path, ("patientId", "class"))
    details: dict[str, str] = {}
    for patient, name in zip(frame["patientId"], frame["class"], strict=True):
        details.setdefault(patient, name)
    return details


def read(root: Path) -> RsnaIndex:
    """Read ``stage_2_train_labels.csv`` (and the optional detailed class file)."""
    root = require_dir(Path(root), f"the RSNA Pneumonia folder ({FOLDER}/)")
    path = require_file(root / LABELS_FILE, f"the RSNA label file {LABELS_FILE}")
    frame = read_csv(path, ("patientId", *BOX_COLUMNS, "Target"))
    empty_id = frame["patientId"] == ""
    if empty_id.any():
        raise DataFormatError(path, "a patientId", "an empty one", first_line(frame, empty_id))
    values = _validate(frame, path)
    details = _read_details(root)
    groups: dict[str, dict] = {}
    rows = zip(frame["patientId"], frame["Target"], frame[LINE], values, strict=True)
    for patient, target, line, box in rows:
        group = groups.setdefault(
            patient, {"line": int(line), "boxes": [], "lines": [], "negative": []}
        )
        if target == "1":
            group["boxes"].append(tuple(float(v) for v in box))
            group["lines"].append(int(line))
        else:
            group["negative"].append(int(line))
    _check_agreement(groups, path)
    images = tuple(
        RsnaImage(
            patient_id=patient,
            image_path=root / IMAGES_DIR / f"{patient}.dcm",
            target=int(bool(group["boxes"])),
            boxes=tuple(group["boxes"]),
            box_lines=tuple(group["lines"]),
            line=group["line"],
            detail=details.get(patient),
            source_file=path,
        )
        for patient, group in groups.items()
    )
    return RsnaIndex(root=root, images=images)
