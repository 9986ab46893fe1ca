"""``cxrbench data inspect``: summarise a dataset folder and list what is wrong with it.

:func:`inspect_dataset` reads the dataset's official files with its reader (a format error there is
raised, not listed: e.g. RSNA rows that contradict each other), then checks every listed image file
in threads: its header (size, truncation, for a DICOM a transfer syntax that the installed pydicom
handlers decode and that matches how Pixel Data is stored) and a full decode with
:func:`cxrbench.data.codecs.read_image`, the loaders' own decoder. With ``quick=True`` every header
is still read but only a deterministic sample of at most :data:`QUICK_SAMPLE` (64) images per
dataset is decoded: images evenly spaced over the listing order, the first and the last included
(:func:`sample_indices`). It returns ``(summary, problems)``. Every summary has ``decoded`` (how
many images were decoded without error); the other keys per dataset:

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

Problems are strings that start with the offending path: an empty listing (a CSV with only its
header, a COVIDx listing without image lines), no training images (CheXpert ``train.csv`` without
a frontal row, MIMIC without a frontal ``train`` image whose report has text; the test sets of
CheXpert likewise), missing image files, unreadable, truncated or undecodable files (images, MIMIC
reports), DICOMs whose transfer syntax cannot be decoded, boxes or RLE runs outside their image,
SIIM ImageIds without a DICOM. Images whose size is unknown (missing, unreadable) add nothing to
``mask_pixels``. Report text never appears in a problem.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxrbench.data.codecs import image_size, read_image
from cxrbench.data.formats import chexpert, covidx, get_reader, mimic, objectcxr, rsna, siim
from cxrbench.errors import DataFormatError
from cxrbench.log import progress_bar

Size = tuple[int, int]
Summary = dict[str, Any]
DEFAULT_WORKERS = 8
#: images decoded per dataset with ``quick=True`` (``--quick``)
QUICK_SAMPLE = 64


def sample_indices(n: int, k: int | None = None) -> list[int]:
    """Up to ``k`` (default :data:`QUICK_SAMPLE`) indices of ``range(n)``, evenly spaced, the first
    and the last included: the same files for the same listing, spread over all of it."""
    k = QUICK_SAMPLE if k is None else k
    if n <= k:
        return list(range(n))
    if k <= 1:
        return [0] if k == 1 else []
    return [round(i * (n - 1) / (k - 1)) for i in range(k)]


def _check_image(path: Path, decode: bool) -> Size | str:
    if not path.is_file():
        return f"{path}: missing image file"
    try:
        size = image_size(path)
        if decode:
            read_image(path)  # the loaders' decoder: what a run would hit
        return size
    except DataFormatError as err:
        return str(err)


@dataclass
class ImageChecker:
    """How images are checked: threads, all decoded or a sample (``quick``), a progress bar."""

    workers: int = DEFAULT_WORKERS
    quick: bool = False
    progress: Any = None  # a rich Progress, or None
    label: str = "images"
    decoded: int = 0  # images decoded without error so far

    def __call__(self, paths: Sequence[Path]) -> tuple[list[Size | None], list[str]]:
        """Header-check every image and decode all (or a sample): sizes and problems."""
        chosen = set(sample_indices(len(paths)) if self.quick else range(len(paths)))
        decode = [i in chosen for i in range(len(paths))]
        task = None
        if self.progress is not None:
            what = f"{len(chosen)} decoded" if self.quick else "all decoded"
            task = self.progress.add_task(f"{self.label} ({what})", total=len(paths))
        results: list[Size | str] = []
        with ThreadPoolExecutor(max_workers=max(1, self.workers)) as pool:
            for result in pool.map(_check_image, paths, decode):
                results.append(result)
                if task is not None:
                    self.progress.advance(task)
        self.decoded += sum(isinstance(results[i], tuple) for i in chosen)
        sizes = [r if isinstance(r, tuple) else None for r in results]
        return sizes, [r for r in results if isinstance(r, str)]


def check_images(
    paths: Sequence[Path], workers: int = DEFAULT_WORKERS, *, quick: bool = False
) -> tuple[list[Size | None], list[str]]:
    """Check every image (threads): its ``(height, width)`` or ``None``, and the problems."""
    return ImageChecker(workers, quick)(paths)


def _no_rows(path: Path, what: str, header: bool = True) -> str:
    got = "only the header line" if header else "no image lines (an empty listing)"
    return str(DataFormatError(path, f"at least one {what}", got))


def _mimic(root: Path, check: ImageChecker) -> tuple[Summary, list[str]]:
    index = mimic.read(root)
    split_file = index.root / mimic.SPLIT_FILE
    problems = [_no_rows(split_file, "image row")] if not index.images else []
    problems += check([i.image_path for i in index.images])[1]
    errors: list[DataFormatError] = []
    texts = mimic.study_texts(index.images, errors=errors)
    problems += [str(err) for err in errors]
    paired = [image for image in index.frontal() if texts[image.study_id]]
    counts = Counter(image.split for image in paired)
    if index.images and not counts["train"]:
        expected = (
            "at least one training pair (a frontal image of split 'train' whose report has "
            "findings or impression text)"
        )
        problems.insert(0, str(DataFormatError(split_file, expected, "none")))
    summary = {
        "studies": len({image.study_id for image in index.images}),
        "images": len(index.images),
        "frontal_images": len(index.frontal()),
        "pairs": len(paired),
        "splits": {split: counts[split] for split in mimic.SPLITS},
    }
    return summary, problems


def _chexpert(root: Path, check: ImageChecker) -> tuple[Summary, list[str]]:
    index = chexpert.read(root)
    problems: list[str] = []
    for split, role in (("train", "training"), ("valid", "test")):
        path = index.inner / chexpert.SPLIT_FILES[split]
        rows = [image for image in index.images if image.split == split]
        if not rows:
            problems.append(_no_rows(path, "image row"))
        elif not any(image.frontal for image in rows):
            expected = f"at least one Frontal row (the {role} images are its Frontal rows)"
            got = f"only Lateral rows ({len(rows)})"
            problems.append(str(DataFormatError(path, expected, got)))
    problems += check([i.image_path for i in index.images])[1]
    frontal = index.frontal()
    positives = {name: 0 for name in chexpert.COMPETITION_CLASSES}
    for image in frontal:
        for name, value in zip(
            chexpert.COMPETITION_CLASSES, image.competition_labels(), strict=True
        ):
            positives[name] += int(value == 1.0)
    return {"images": len(index.images), "frontal": len(frontal), "positives": positives}, problems


def _rsna(root: Path, check: ImageChecker) -> tuple[Summary, list[str]]:
    index = rsna.read(root)
    labels = index.root / rsna.LABELS_FILE
    problems = [_no_rows(labels, "patientId row")] if not index.images else []
    sizes, unreadable = check([i.image_path for i in index.images])
    problems += unreadable
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


def _siim(root: Path, check: ImageChecker) -> tuple[Summary, list[str]]:
    index = siim.read(root)
    csv = index.root / siim.RLE_FILE
    problems = [_no_rows(csv, "ImageId row")] if not index.images else []
    missing = {image.image_id for image in index.missing_images()}
    problems += [
        f"{image.image_path}: no DICOM for this ImageId under {siim.IMAGES_DIR}/ "
        f"({image.source_file.name} line {image.line})"
        for image in index.images
        if image.image_id in missing
    ]
    present = [image for image in index.images if image.image_id not in missing]
    sizes, unreadable = check([i.image_path for i in present])
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


def _objectcxr(root: Path, check: ImageChecker) -> tuple[Summary, list[str]]:
    index = objectcxr.read(root)
    splits = Counter(image.split for image in index.images)
    problems = [
        _no_rows(index.root / name, "image row")
        for split, name in objectcxr.SPLIT_FILES.items()
        if not splits[split]
    ]
    sizes, unreadable = check([i.image_path for i in index.images])
    problems += unreadable
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


def _covidx(root: Path, check: ImageChecker) -> tuple[Summary, list[str]]:
    index = covidx.read(root)
    listed = Counter(image.source_file for image in index.images)
    problems = [
        _no_rows(path, "image line", header=False) for path in index.listings if not listed[path]
    ]
    problems += check([i.image_path for i in index.images])[1]
    counts = Counter(image.label for image in index.images)
    return {"images": len(index.images), "classes": {c: counts[c] for c in index.classes}}, problems


_INSPECTORS: dict[str, Callable[[Path, ImageChecker], tuple[Summary, list[str]]]] = {
    "mimic": _mimic,
    "chexpert": _chexpert,
    "rsna": _rsna,
    "siim": _siim,
    "objectcxr": _objectcxr,
    "covidx": _covidx,
}


def inspect_dataset(
    dataset: str,
    root: Path,
    *,
    workers: int = DEFAULT_WORKERS,
    quick: bool = False,
    progress: bool = False,
) -> tuple[Summary, list[str]]:
    """``(summary, problems)`` for the dataset folder ``root`` (see the module docstring).

    ``quick`` decodes a sample of :data:`QUICK_SAMPLE` images instead of all; ``progress`` shows
    a progress bar (on stderr) while the images are checked.
    """
    get_reader(dataset)  # an unknown key is a RegistryError with a did-you-mean hint
    with progress_bar(progress) as bar:
        check = ImageChecker(workers, quick, bar, f"{dataset} images")
        summary, problems = _INSPECTORS[dataset](Path(root), check)
    return {**summary, "decoded": check.decoded}, problems
