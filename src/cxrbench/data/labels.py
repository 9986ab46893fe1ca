"""Image-level labels of every downstream dataset, keyed by the ids the splits use.

One place that says what "the label" of an image is, for the supervised baseline and the
classification tasks alike:

| dataset | id | label | kind |
|---|---|---|---|
| chexpert | ``Path`` (frontal) | 5 competition classes, U-ones/U-zeros, blank → 0 | multilabel |
| rsna | ``patientId`` | pneumonia (any ``Target == 1``) | multilabel (1 class) |
| siim | ``ImageId`` | pneumothorax (any RLE region) | multilabel (1 class) |
| objectcxr | ``image_name`` | any foreign object | multilabel (1 class) |
| covidx | ``filename`` | the class (3- or 2-class generation) | multiclass (one-hot) |
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxrbench.data import formats


@dataclass(frozen=True)
class Labelled:
    """Image paths and label vectors by id; ``classes`` names the label columns."""

    kind: str  # "multilabel" or "multiclass"
    classes: tuple[str, ...]
    paths: dict[str, Path]
    labels: dict[str, np.ndarray]


# the id each dataset's splits and labels use, as an attribute of the reader's image record
ID_FIELDS = {
    "chexpert": "path",
    "covidx": "filename",
    "rsna": "patient_id",
    "siim": "image_id",
    "objectcxr": "image_name",
}


def image_labels(dataset: str, folder: Path) -> Labelled:
    """Read ``dataset`` from ``folder`` and return its image-level labels."""
    return labels_from_index(dataset, formats.get_reader(dataset).read(Path(folder)))


def records_by_id(dataset: str, index: Any) -> dict[str, Any]:
    """Every image record of a reader's ``index`` keyed by the id the splits use (dense tasks
    take their masks and boxes from these records)."""
    key = ID_FIELDS[dataset]
    return {getattr(record, key): record for record in index.images}


def labels_from_index(dataset: str, index: Any) -> Labelled:
    """The image-level labels of an index the dataset's reader has already read."""
    if dataset == "chexpert":
        from cxrbench.data.formats.chexpert import COMPETITION_CLASSES

        frontal = [r for r in index.images if r.frontal]
        return Labelled("multilabel", tuple(COMPETITION_CLASSES),
                        {r.path: r.image_path for r in frontal},
                        {r.path: r.competition_labels() for r in frontal})  # fmt: skip
    if dataset == "covidx":
        eye = np.eye(len(index.classes), dtype=np.float32)
        return Labelled("multiclass", tuple(index.classes),
                        {r.filename: r.image_path for r in index.images},
                        {r.filename: eye[index.label_index(r)] for r in index.images})  # fmt: skip
    key = ID_FIELDS[dataset]
    positive, name = {
        "rsna": (lambda r: r.target == 1, "Pneumonia"),
        "siim": (lambda r: bool(r.rles), "Pneumothorax"),
        "objectcxr": (lambda r: bool(r.objects), "Foreign object"),
    }[dataset]
    return Labelled("multilabel", (name,),
                    {getattr(r, key): r.image_path for r in index.images},
                    {getattr(r, key): np.array([float(positive(r))], np.float32)
                     for r in index.images})  # fmt: skip
