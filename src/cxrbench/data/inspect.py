"""``cxrbench data inspect``: summarise a dataset folder and list what is wrong with it.

:func:`inspect_dataset` reads the dataset's official files with its reader (a format error there is
raised, not listed), then checks every image file by reading only its header (in threads) and
returns ``(summary, problems)``. Summary keys per dataset:

* ``mimic``: ``studies``, ``images``, ``frontal_images``, ``pairs`` (frontal images whose cleaned
  report text is non-empty), ``splits`` (pairs per official split ``train``/``validate``/``test``);
* ``chexpert``: ``images`` (rows of train.csv + valid.csv), ``frontal``, ``positives`` (per
  competition class: frontal rows whose label is 1 after the U-ones/U-zeros mapping);
* ``rsna``: ``images`` (distinct patientId), ``positive_images``, ``boxes``, ``mask_pixels`` (sum
  over images of the pixel count of the union of filled boxes at native resolution);
* ``siim``: ``images`` (distinct ImageId), ``positive_images``, ``regions`` (rows whose RLE is not
  ``-1``), ``mask_pixels`` (sum of the union of decoded regions, at each DICOM's native size);
* ``objectcxr``: ``images``, ``positive_images``, ``objects``, ``by_type``
  (rectangle/ellipse/polygon);
* ``covidx``: ``images``, ``classes`` (count per class name of the detected generation).

Problems are strings that start with the offending path: missing image files, unreadable or
truncated files (images, MIMIC reports), boxes or RLE runs outside their image, SIIM ImageIds
without a DICOM. Images whose size is unknown (missing, unreadable) add nothing to ``mask_pixels``.
Report text never appears in a problem.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cxrbench.data.codecs import image_size
from cxrbench.data.formats import chexpert, covidx, get_reader, mimic, objectcxr, rsna, siim
from cxrbench.errors import DataFormatError

Size = tuple[int, int]
Summary = dict[str, Any]
DEFAULT_WORKERS = 8


def _size_or_problem(path: Path) -> Size | str:
    if not path.is_file():
        return f"{path}: missing image file"
    try:
        return image_size(path)
    except DataFormatError as err:
        return str(err)


def check_images(
    paths: Sequence[Path], workers: int = DEFAULT_WORKERS
) -> tuple[list[Size | None], list[str]]:
    """Header-read every image (threads): its ``(height, width)`` or ``None``, and the problems."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(_size_or_problem, paths, chunksize=64))
    sizes = [r if isinstance(r, tuple) else None for r in results]
    return sizes, [r for r in results if isinstance(r, str)]


def _mimic(root: Path, workers: int) -> tuple[Summary, list[str]]:
    index = mimic.read(root)
    _, problems = check_images([i.image_path for i in index.images], workers)
    errors: list[DataFormatError] = []
    texts = mimic.study_texts(index.images, errors=errors)
    problems += [str(err) for err in errors]
    paired = [image for image in index.frontal() if texts[image.study_id]]
    counts = Counter(image.split for image in paired)
    summary = {
        "studies": len({image.study_id for image in index.images}),
        "images": len(index.images),
        "frontal_images": len(index.frontal()),
        "pairs": len(paired),
        "splits": {split: counts[split] for split in mimic.SPLITS},
    }
    return summary, problems


def _chexpert(root: Path, workers: int) -> tuple[Summary, list[str]]:
    index = chexpert.read(root)
    _, problems = check_images([i.image_path for i in index.images], workers)
    frontal = index.frontal()
    positives = {name: 0 for name in chexpert.COMPETITION_CLASSES}
    for image in frontal:
        for name, value in zip(
            chexpert.COMPETITION_CLASSES, image.competition_labels(), strict=True
        ):
            positives[name] += int(value == 1.0)
    return {"images": len(index.images), "frontal": len(frontal), "positives": positives}, problems


def _rsna(root: Path, workers: int) -> tuple[Summary, list[str]]:
    index = rsna.read(root)
    sizes, problems = check_images([i.image_path for i in index.images], workers)
    pixels = 0
    for image, size in zip(index.images, sizes, strict=True):
        if size is None or not image.boxes:
            continue
        try:
            rsna.check_boxes_inside(image, *size)
        except DataFormatError as err:
            problems.append(str(err))
        pixels += int(image.mask(*size).sum())
    summary = {
        "images": len(index.images),
        "positive_images": sum(image.target for image in index.images),
        "boxes": sum(len(image.boxes) for image in index.images),
        "mask_pixels": pixels,
    }
    return summary, problems


def _siim(root: Path, workers: int) -> tuple[Summary, list[str]]:
    index = siim.read(root)
    missing = {image.image_id for image in index.missing_images()}
    problems = [
        f"{image.image_path}: no DICOM for this ImageId under {siim.IMAGES_DIR}/ "
        f"({image.source_file.name} line {image.line})"
        for image in index.images
        if image.image_id in missing
    ]
    present = [image for image in index.images if image.image_id not in missing]
    sizes, unreadable = check_images([i.image_path for i in present], workers)
    problems += unreadable
    pixels = 0
    for image, size in zip(present, sizes, strict=True):
        if size is None or not image.rles:
            continue
        try:
            pixels += int(image.mask(*size).sum())
        except DataFormatError as err:
            problems.append(str(err))
    summary = {
        "images": len(index.images),
        "positive_images": sum(image.positive for image in index.images),
        "regions": sum(len(image.rles) for image in index.images),
        "mask_pixels": pixels,
    }
    return summary, problems


def _objectcxr(root: Path, workers: int) -> tuple[Summary, list[str]]:
    index = objectcxr.read(root)
    sizes, problems = check_images([i.image_path for i in index.images], workers)
    for image, size in zip(index.images, sizes, strict=True):
        if size is not None:
            try:
                objectcxr.check_boxes_inside(image, *size)
            except DataFormatError as err:
                problems.append(str(err))
    kinds = Counter(shape.kind for image in index.images for shape in image.objects)
    summary = {
        "images": len(index.images),
        "positive_images": sum(image.positive for image in index.images),
        "objects": sum(kinds.values()),
        "by_type": {kind: kinds[kind] for kind in objectcxr.SHAPE_KINDS},
    }
    return summary, problems


def _covidx(root: Path, workers: int) -> tuple[Summary, list[str]]:
    index = covidx.read(root)
    _, problems = check_images([i.image_path for i in index.images], workers)
    counts = Counter(image.label for image in index.images)
    return {"images": len(index.images), "classes": {c: counts[c] for c in index.classes}}, problems


_INSPECTORS: dict[str, Callable[[Path, int], tuple[Summary, list[str]]]] = {
    "mimic": _mimic,
    "chexpert": _chexpert,
    "rsna": _rsna,
    "siim": _siim,
    "objectcxr": _objectcxr,
    "covidx": _covidx,
}


def inspect_dataset(
    dataset: str, root: Path, *, workers: int = DEFAULT_WORKERS
) -> tuple[Summary, list[str]]:
    """``(summary, problems)`` for the dataset folder ``root`` (see the module docstring)."""
    get_reader(dataset)  # an unknown key is a RegistryError with a did-you-mean hint
    return _INSPECTORS[dataset](Path(root), workers)
