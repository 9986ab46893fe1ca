"""MIMIC-CXR-JPG 2.0.0 (PhysioNet) with the MIMIC-CXR free-text reports.

Official files in the dataset folder (``mimic-cxr-jpg/``):

* ``mimic-cxr-2.0.0-split.csv.gz``: ``dicom_id,study_id,subject_id,split`` with split in
  ``train``/``validate``/``test``; one row per image, in the order the index keeps;
* ``mimic-cxr-2.0.0-metadata.csv.gz``: ``dicom_id,subject_id,study_id,``
  ``PerformedProcedureStepDescription,ViewPosition,Rows,Columns,...``; only ``dicom_id`` and
  ``ViewPosition`` are used (frontal = PA or AP; ``ViewPosition`` may be blank);
* ``mimic-cxr-2.0.0-chexpert.csv.gz`` (optional): ``subject_id,study_id`` and the 14 CheXpert
  observations (1.0 / 0.0 / -1.0 / blank), exposed per study as :attr:`MimicIndex.labels`;
* images ``files/p{subject_id[:2]}/p{subject_id}/s{study_id}/{dicom_id}.jpg``;
* reports (from MIMIC-CXR) ``files/p{subject_id[:2]}/p{subject_id}/s{study_id}.txt``.

:func:`read` reads the CSVs only (vectorised pandas; no image is opened or stat'ed: a missing image
is found by ``cxrbench data inspect``). Every ``dicom_id`` of the split file needs a metadata row.
:func:`pairs` reads each frontal study's report once, extracts impression and findings and applies
MGCA's cleaning (:mod:`cxrbench.data.reports`); images whose cleaned text is empty are left out.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.data.formats._common import (
    LINE,
    check_unique,
    check_values,
    first_line,
    read_csv,
    require_dir,
    require_file,
)
from cxrbench.data.reports import read_report, report_sentences
from cxrbench.errors import DataFormatError

FOLDER = "mimic-cxr-jpg"
SPLIT_FILE = "mimic-cxr-2.0.0-split.csv.gz"
METADATA_FILE = "mimic-cxr-2.0.0-metadata.csv.gz"
CHEXPERT_FILE = "mimic-cxr-2.0.0-chexpert.csv.gz"
SPLITS = ("train", "validate", "test")
FRONTAL_VIEWS = ("PA", "AP")
_ID_COLUMNS = ("subject_id", "study_id")
_LABELS = {"1.0": 1.0, "1": 1.0, "0.0": 0.0, "0": 0.0, "-1.0": -1.0, "-1": -1.0, "": np.nan}


@dataclass(frozen=True, slots=True)
class MimicImage:
    """One MIMIC-CXR-JPG image (one row of the split file)."""

    dicom_id: str
    subject_id: str
    study_id: str
    split: str
    view_position: str
    root: Path

    @property
    def study_dir(self) -> Path:
        subject = self.subject_id
        return self.root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{self.study_id}"

    @property
    def image_path(self) -> Path:
        return self.study_dir / f"{self.dicom_id}.jpg"

    @property
    def report_path(self) -> Path:
        return self.study_dir.with_suffix(".txt")

    @property
    def frontal(self) -> bool:
        return self.view_position in FRONTAL_VIEWS


class StudyLabels(Mapping[str, Mapping[str, float | None]]):
    """study_id → ``{observation: 1.0 / 0.0 / -1.0 / None}``, built lazily from one float array."""

    def __init__(self, study_ids: list[str], names: list[str], values: np.ndarray) -> None:
        self._rows = {study: row for row, study in enumerate(study_ids)}
        self._names = tuple(names)
        self._values = values

    def __getitem__(self, study_id: str) -> dict[str, float | None]:
        row = self._values[self._rows[study_id]]
        return {
            name: None if np.isnan(v) else float(v)
            for name, v in zip(self._names, row, strict=True)
        }

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)


@dataclass(frozen=True)
class MimicIndex:
    """All images of a MIMIC-CXR-JPG folder; ``labels`` maps study_id to its CheXpert labels."""

    root: Path
    images: tuple[MimicImage, ...]
    labels: Mapping[str, Mapping[str, float | None]] = field(default_factory=dict, compare=False)

    def ids(self) -> list[str]:
        return [image.dicom_id for image in self.images]

    def frontal(self) -> list[MimicImage]:
        return [image for image in self.images if image.frontal]


def _check_ids(frame: pd.DataFrame, path: Path) -> None:
    for column in _ID_COLUMNS:
        bad = ~frame[column].str.fullmatch(r"\d+")
        if bad.any():
            raise DataFormatError(
                path, f"a numeric {column}", "a non-numeric value", first_line(frame, bad)
            )


def _read_split(root: Path) -> pd.DataFrame:
    path = require_file(root / SPLIT_FILE, f"the MIMIC-CXR-JPG split file {SPLIT_FILE}")
    frame = read_csv(path, ("dicom_id", "study_id", "subject_id", "split"))
    check_values(frame, path, "split", SPLITS, "split train, validate or test")
    check_unique(frame, path, "dicom_id")
    _check_ids(frame, path)
    return frame


def _read_views(root: Path, split: pd.DataFrame) -> pd.Series:
    path = require_file(root / METADATA_FILE, f"the MIMIC-CXR-JPG metadata file {METADATA_FILE}")
    meta = read_csv(path, ("dicom_id", "ViewPosition"))
    check_unique(meta, path, "dicom_id")
    views = split["dicom_id"].map(meta.set_index("dicom_id")["ViewPosition"])
    absent = views.isna()
    if absent.any():
        raise DataFormatError(
            path,
            f"a row for every dicom_id of {SPLIT_FILE}",
            f"{int(absent.sum())} dicom_id(s) without metadata (first at {SPLIT_FILE} line "
            f"{first_line(split, absent)})",
        )
    return views.astype(str)


def _read_labels(root: Path) -> StudyLabels:
    path = root / CHEXPERT_FILE
    if not path.is_file():
        return StudyLabels([], [], np.zeros((0, 0)))
    frame = read_csv(path, _ID_COLUMNS)
    check_unique(frame, path, "study_id")
    names = [c for c in frame.columns if c not in (*_ID_COLUMNS, LINE)]
    values = np.empty((len(frame), len(names)), dtype=np.float32)
    for column, name in enumerate(names):
        check_values(frame, path, name, tuple(_LABELS), f"{name} label 1.0, 0.0, -1.0 or blank")
        values[:, column] = frame[name].str.strip().map(_LABELS).to_numpy(dtype=np.float32)
    return StudyLabels(frame["study_id"].tolist(), names, values)


def read(root: Path) -> MimicIndex:
    """Read a MIMIC-CXR-JPG 2.0.0 folder (split, metadata and optional CheXpert label files)."""
    root = require_dir(Path(root), f"the MIMIC-CXR-JPG folder ({FOLDER}/)")
    split = _read_split(root)
    views = _read_views(root, split)
    columns = [split[c].tolist() for c in ("dicom_id", "subject_id", "study_id", "split")]
    rows = zip(*columns, views.tolist(), strict=True)
    images = tuple(
        MimicImage(dicom, subject, study, part, view, root)
        for dicom, subject, study, part, view in rows
    )
    return MimicIndex(root=root, images=images, labels=_read_labels(root))


def study_sentences(
    images: Iterable[MimicImage], *, errors: list[DataFormatError] | None = None
) -> dict[str, tuple[str, ...]]:
    """Cleaned report sentences per study_id, reading each study's report once.

    With ``errors`` given, unreadable reports are appended to it (their study gets ``()``) instead
    of raising.
    """
    sentences: dict[str, tuple[str, ...]] = {}
    for image in images:
        if image.study_id in sentences:
            continue
        try:
            sentences[image.study_id] = tuple(report_sentences(read_report(image.report_path)))
        except DataFormatError as err:
            if errors is None:
                raise
            errors.append(err)
            sentences[image.study_id] = ()
    return sentences


def study_texts(
    images: Iterable[MimicImage], *, errors: list[DataFormatError] | None = None
) -> dict[str, str]:
    """Cleaned report text per study_id (its sentences joined by spaces; see study_sentences)."""
    return {k: " ".join(v) for k, v in study_sentences(images, errors=errors).items()}


def pairs(index: MimicIndex) -> list[tuple[MimicImage, str]]:
    """Frontal images with their study's cleaned report text, leaving out empty texts."""
    return [(image, " ".join(s)) for image, s in sentence_pairs(index)]


def sentence_pairs(index: MimicIndex) -> list[tuple[MimicImage, tuple[str, ...]]]:
    """Frontal images with their study's cleaned report sentences, leaving out empty reports."""
    frontal = index.frontal()
    sentences = study_sentences(frontal)
    return [(image, sentences[image.study_id]) for image in frontal if sentences[image.study_id]]
