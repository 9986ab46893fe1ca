"""CheXpert v1.0 (Stanford AIMI), full or downsampled ("-small").

Official layout: a folder ``CheXpert-v1.0-small/`` (or ``CheXpert-v1.0/``) holding ``train.csv``,
``valid.csv`` and the images ``train/patientNNNNN/studyN/viewN_frontal.jpg`` (``valid/`` likewise).
The CSVs have the columns ``Path``, ``Sex``, ``Age``, ``Frontal/Lateral``, ``AP/PA`` and the 14
observations (``No Finding``, ``Enlarged Cardiomediastinum``, ``Cardiomegaly``, ``Lung Opacity``,
``Lung Lesion``, ``Edema``, ``Consolidation``, ``Pneumonia``, ``Atelectasis``, ``Pneumothorax``,
``Pleural Effusion``, ``Pleural Other``, ``Fracture``, ``Support Devices``); ``Path`` starts with
the dataset folder name (``CheXpert-v1.0-small/train/...``); labels are ``1.0`` / ``0.0`` / ``-1.0``
(uncertain) / blank.

:func:`read` takes the dataset folder ``chexpert/`` that contains the inner folder (if both exist,
``CheXpert-v1.0-small`` is used) or the inner folder itself. ``image_path`` is the inner folder
joined with ``Path`` minus its first component when that component starts with ``CheXpert`` (so a
renamed inner folder still works), else the inner folder joined with ``Path``. Required columns:
``Path``, ``Frontal/Lateral`` and the 14 observations; ``AP/PA`` is optional.

Competition labels (MGCA protocol): Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural
Effusion; blank → 0; uncertain → 1 for Atelectasis, Edema, Pleural Effusion (U-ones) and → 0 for
Cardiomegaly, Consolidation (U-zeros).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrbench.data.formats._common import (
    README_HINT,
    check_unique,
    check_values,
    first_line,
    read_csv,
    require_dir,
)
from cxrbench.errors import DataFormatError

FOLDER = "chexpert"
INNER_FOLDERS = ("CheXpert-v1.0-small", "CheXpert-v1.0")
SPLIT_FILES = {"train": "train.csv", "valid": "valid.csv"}
OBSERVATIONS = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
COMPETITION_CLASSES = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
U_ONES = frozenset({"Atelectasis", "Edema", "Pleural Effusion"})
U_ZEROS = frozenset({"Cardiomegaly", "Consolidation"})
_DATASET_PREFIX = re.compile(r"^CheXpert[^/]*/")
_LABEL_VALUES = {"1.0": 1.0, "1": 1.0, "0.0": 0.0, "0": 0.0, "-1.0": -1.0, "-1": -1.0, "": None}


def competition_value(name: str, value: float | None) -> float:
    """One competition label after the U-ones/U-zeros mapping (blank → 0)."""
    if value is None:
        return 0.0
    if value == -1.0:
        return 1.0 if name in U_ONES else 0.0
    return float(value)


@dataclass(frozen=True, slots=True)
class ChexpertImage:
    """One CheXpert image (a row of ``train.csv`` or ``valid.csv``); ``labels`` are the raw 14."""

    path: str
    split: str
    frontal: bool
    ap_pa: str
    labels: dict[str, float | None]
    inner: Path

    @property
    def image_path(self) -> Path:
        return self.inner / _DATASET_PREFIX.sub("", self.path)

    def competition_labels(self) -> np.ndarray:
        """The 5 competition labels (float32) after the U-ones/U-zeros mapping, blank → 0."""
        values = [competition_value(name, self.labels[name]) for name in COMPETITION_CLASSES]
        return np.asarray(values, dtype=np.float32)


@dataclass(frozen=True)
class ChexpertIndex:
    """``train.csv`` then ``valid.csv`` rows; ``inner`` is the detected inner folder."""

    root: Path
    inner: Path
    images: tuple[ChexpertImage, ...]

    def ids(self) -> list[str]:
        return [image.path for image in self.images]

    def frontal(self) -> list[ChexpertImage]:
        return [image for image in self.images if image.frontal]


def locate(root: Path) -> Path:
    """The inner folder holding ``train.csv``: ``root`` itself or one of :data:`INNER_FOLDERS`."""
    root = require_dir(Path(root), f"the CheXpert folder ({FOLDER}/)")
    if (root / SPLIT_FILES["train"]).is_file():
        return root
    for name in INNER_FOLDERS:
        if (root / name / SPLIT_FILES["train"]).is_file():
            return root / name
    raise DataFormatError(
        root,
        f"{INNER_FOLDERS[0]}/train.csv or {INNER_FOLDERS[1]}/train.csv (or train.csv) inside it",
        "neither",
        hint=README_HINT,
    )


def _read_split(inner: Path, split: str) -> list[ChexpertImage]:
    path = inner / SPLIT_FILES[split]
    if not path.is_file():
        raise DataFormatError(
            path, f"the CheXpert file {path.name}", "no such file", hint=README_HINT
        )
    frame = read_csv(path, ("Path", "Frontal/Lateral", *OBSERVATIONS))
    empty = frame["Path"] == ""
    if empty.any():
        raise DataFormatError(path, "a non-empty Path", "an empty one", first_line(frame, empty))
    check_unique(frame, path, "Path")
    check_values(frame, path, "Frontal/Lateral", ("Frontal", "Lateral"), "Frontal or Lateral")
    labels = {}
    for name in OBSERVATIONS:
        check_values(frame, path, name, tuple(_LABEL_VALUES), f"{name} 1.0, 0.0, -1.0 or blank")
        labels[name] = [_LABEL_VALUES[value] for value in frame[name].tolist()]
    ap_pa = frame["AP/PA"].str.strip().tolist() if "AP/PA" in frame.columns else [""] * len(frame)
    return [
        ChexpertImage(
            path=value,
            split=split,
            frontal=view == "Frontal",
            ap_pa=str(projection),
            labels={name: labels[name][i] for name in OBSERVATIONS},
            inner=inner,
        )
        for i, (value, view, projection) in enumerate(
            zip(frame["Path"].tolist(), frame["Frontal/Lateral"].tolist(), ap_pa, strict=True)
        )
    ]


def read(root: Path) -> ChexpertIndex:
    """Read ``train.csv`` and ``valid.csv`` of a CheXpert folder (see the module docstring)."""
    inner = locate(Path(root))
    images = _read_split(inner, "train") + _read_split(inner, "valid")
    return ChexpertIndex(root=Path(root), inner=inner, images=tuple(images))
