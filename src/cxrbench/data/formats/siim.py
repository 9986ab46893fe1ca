"""SIIM-ACR Pneumothorax Segmentation (Kaggle, 2019), stage 1 training data.

Official files in the dataset folder (``siim-acr/``):

* ``train-rle.csv`` with the header ``ImageId, EncodedPixels`` (note the space; a header without it
  is accepted too); ``EncodedPixels`` is `` -1`` for an image without pneumothorax, else SIIM's
  *relative*, column-major RLE of one region (:func:`cxrbench.data.codecs.rle_decode`); several rows
  for one image are several regions whose union is the mask;
* DICOMs ``dicom-images-train/STUDY_UID/SERIES_UID/{ImageId}.dcm`` (1024x1024, MONOCHROME2).

(Not the stage-2 ``stage_2_train.csv``, whose RLE is absolute.)

:func:`read` gives one record per distinct ``ImageId`` in order of first appearance, with its
non-``-1`` RLE strings and the CSV line of each (RLE syntax is checked here; runs past the image end
are found when decoding at the image's size). DICOMs are found by one scan of
``dicom-images-train/**/*.dcm`` (file stem = ImageId; DICOMs not listed in the CSV are ignored; a
stem found twice is an error). A CSV ImageId without a DICOM gets ``image_path =
dicom-images-train/{ImageId}.dcm``, a path that does not exist, so that reading it fails with a
clear error; ``cxrbench data inspect`` lists these.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrbench.data.codecs import EMPTY_RLE, rle_decode
from cxrbench.data.formats._common import LINE, first_line, read_csv, require_dir, require_file
from cxrbench.errors import DataFormatError

FOLDER = "siim-acr"
RLE_FILE = "train-rle.csv"
IMAGES_DIR = "dicom-images-train"


@dataclass(frozen=True, slots=True)
class SiimImage:
    """One ImageId: its RLE regions (``-1`` rows left out) and the CSV line of each region."""

    image_id: str
    image_path: Path
    rles: tuple[str, ...]
    rle_lines: tuple[int, ...]
    line: int
    source_file: Path

    @property
    def positive(self) -> bool:
        return bool(self.rles)

    def mask(self, height: int, width: int) -> np.ndarray:
        """Union of the decoded regions, ``(height, width)`` bool; bad RLE names file and line."""
        mask = np.zeros((height, width), dtype=bool)
        for rle, line in zip(self.rles, self.rle_lines, strict=True):
            mask |= rle_decode(rle, height, width, path=self.source_file, line=line)
        return mask


@dataclass(frozen=True)
class SiimIndex:
    root: Path
    images: tuple[SiimImage, ...]

    def ids(self) -> list[str]:
        return [image.image_id for image in self.images]

    def missing_images(self) -> list[SiimImage]:
        """Records whose DICOM was not found under ``dicom-images-train/``."""
        return [image for image in self.images if not image.image_path.is_file()]


def _check_rle_syntax(rle: str, path: Path, line: int) -> None:
    tokens = rle.split()
    if len(tokens) % 2:
        raise DataFormatError(
            path, "an even number of RLE tokens (offset/length pairs) or -1", f"{len(tokens)}", line
        )
    if not all(token.isdigit() for token in tokens):
        raise DataFormatError(path, "non-negative integer RLE tokens", "another token", line)


def scan_dicoms(images_dir: Path) -> dict[str, Path]:
    """Map each DICOM's stem to its path under ``images_dir`` (one recursive scan)."""
    found: dict[str, Path] = {}
    for path in sorted(images_dir.rglob("*.dcm")):
        if path.stem in found:
            raise DataFormatError(
                path,
                "one DICOM per ImageId",
                f"a second file for this ImageId ({found[path.stem]})",
            )
        found[path.stem] = path
    return found


def read(root: Path) -> SiimIndex:
    """Read ``train-rle.csv`` and locate the DICOMs (see the module docstring)."""
    root = require_dir(Path(root), f"the SIIM-ACR folder ({FOLDER}/)")
    path = require_file(root / RLE_FILE, f"the SIIM-ACR RLE file {RLE_FILE}")
    images_dir = require_dir(root / IMAGES_DIR, f"the SIIM-ACR DICOM folder {IMAGES_DIR}/")
    frame = read_csv(path, ("ImageId", "EncodedPixels"))
    empty = (frame["ImageId"] == "") | (frame["EncodedPixels"] == "")
    if empty.any():
        raise DataFormatError(
            path,
            "an ImageId and EncodedPixels (-1 when empty)",
            "an empty field",
            first_line(frame, empty),
        )
    groups: dict[str, tuple[int, list[str], list[int]]] = {}
    rows = zip(frame["ImageId"], frame["EncodedPixels"], frame[LINE], strict=True)
    for image_id, rle, line in rows:
        _, rles, lines = groups.setdefault(image_id, (int(line), [], []))
        if rle != EMPTY_RLE:
            _check_rle_syntax(rle, path, int(line))
            rles.append(rle)
            lines.append(int(line))
    dicoms = scan_dicoms(images_dir)
    images = tuple(
        SiimImage(
            image_id=image_id,
            image_path=dicoms.get(image_id, images_dir / f"{image_id}.dcm"),
            rles=tuple(rles),
            rle_lines=tuple(lines),
            line=first,
            source_file=path,
        )
        for image_id, (first, rles, lines) in groups.items()
    )
    return SiimIndex(root=root, images=images)
