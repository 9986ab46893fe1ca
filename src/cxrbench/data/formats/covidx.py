"""COVIDx (COVID-Net, github.com/lindawangg/COVID-Net): chest X-ray classification.

Official files in the dataset folder (``covidx/``): split listings without a header, one image per
line, space-separated ``patient_id filename class data_source`` (some early versions have only the
first three fields; both are accepted, ``source`` is then ``""``), and the images in ``train/`` and
``test/`` (``val/`` for versions with a ``val`` listing). Listing names differ between versions; the
first of these that exists is used:

1. ``train.txt`` + ``test.txt`` (+ ``val.txt`` when present; COVIDx CXR-3/4),
2. ``train_COVIDx9A.txt`` + ``test_COVIDx9A.txt`` (the name MGCA's constants use),
3. ``train_split.txt`` + ``test_split.txt`` (COVIDx v5/v6),
4. otherwise exactly one ``train_X.txt`` with a matching ``test_X.txt`` (``val_X.txt`` optional);
   several such pairs are an error (keep one pair in the folder).

Class generation, detected from the labels: ``normal`` / ``pneumonia`` / ``COVID-19`` → the 3-class
generation (``classes = ("normal", "pneumonia", "COVID-19")``, MGCA's order); ``negative`` /
``positive`` → the 2-class generation of COVIDx CXR-3/4 (``("negative", "positive")``). Labels are
matched without case and stored in the spelling above; any other label, or labels of both
generations, is a :class:`DataFormatError` naming the file and line. A line with more than four
fields is read as a file name containing spaces when its third-last or second-last field is a class
name. ``filename`` must be unique within a listing (the same file in two listings is allowed: some
COVIDx releases have that).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cxrbench.data.formats._common import README_HINT, require_dir
from cxrbench.errors import DataFormatError

FOLDER = "covidx"
GENERATIONS = (("normal", "pneumonia", "COVID-19"), ("negative", "positive"))
_CANONICAL = {name.lower(): name for classes in GENERATIONS for name in classes}
_FIXED_LISTINGS: tuple[tuple[str, str], ...] = (
    ("train.txt", "test.txt"),
    ("train_COVIDx9A.txt", "test_COVIDx9A.txt"),
    ("train_split.txt", "test_split.txt"),
)


@dataclass(frozen=True, slots=True)
class CovidxImage:
    """One line of a COVIDx listing."""

    patient_id: str
    filename: str
    label: str
    source: str
    split: str
    image_path: Path
    line: int
    source_file: Path


@dataclass(frozen=True)
class CovidxIndex:
    """All listed images; ``classes`` is the detected generation, ``listings`` the files read."""

    root: Path
    images: tuple[CovidxImage, ...]
    classes: tuple[str, ...]
    listings: tuple[Path, ...]

    def ids(self) -> list[str]:
        return [image.filename for image in self.images]

    def label_index(self, image: CovidxImage) -> int:
        return self.classes.index(image.label)


def _with_val(root: Path, train: str, test: str) -> dict[str, Path]:
    listings = {"train": root / train, "test": root / test}
    val = root / ("val.txt" if train == "train.txt" else "val" + train[len("train") :])
    if val.is_file():
        listings["val"] = val
    return listings


def locate(root: Path) -> dict[str, Path]:
    """Split name → listing file, following the order in the module docstring."""
    for train, test in _FIXED_LISTINGS:
        if (root / train).is_file() and (root / test).is_file():
            return _with_val(root, train, test)
    pairs = [
        (p.name, "test" + p.name[len("train") :])
        for p in sorted(root.glob("train_*.txt"))
        if (root / ("test" + p.name[len("train") :])).is_file()
    ]
    if len(pairs) > 1:
        raise DataFormatError(
            root,
            "one pair of COVIDx listings",
            f"several: {[a for a, _ in pairs]}",
            hint=README_HINT,
        )
    if not pairs:
        raise DataFormatError(
            root,
            "COVIDx listings train.txt and test.txt (or train_X.txt and test_X.txt)",
            "none",
            hint=README_HINT,
        )
    return _with_val(root, *pairs[0])


def _split_fields(fields: list[str], path: Path, line: int) -> tuple[str, str, str, str]:
    """``(patient_id, filename, class, source)`` of one listing line."""
    if len(fields) == 3:
        return fields[0], fields[1], fields[2], ""
    if len(fields) == 4:
        return fields[0], fields[1], fields[2], fields[3]
    if len(fields) > 4 and fields[-2].lower() in _CANONICAL:
        return fields[0], " ".join(fields[1:-2]), fields[-2], fields[-1]
    if len(fields) > 4 and fields[-1].lower() in _CANONICAL:
        return fields[0], " ".join(fields[1:-1]), fields[-1], ""
    raise DataFormatError(
        path,
        "space-separated 'patient_id filename class [data_source]'",
        f"{len(fields)} fields",
        line,
    )


def _read_listing(root: Path, split: str, path: Path) -> list[CovidxImage]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataFormatError(path, "a UTF-8 text listing", "undecodable bytes") from None
    images: list[CovidxImage] = []
    seen: set[str] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        fields = raw.split()
        if not fields:
            continue
        patient, filename, label, source = _split_fields(fields, path, number)
        canonical = _CANONICAL.get(label.lower())
        if canonical is None:
            raise DataFormatError(
                path,
                "class normal, pneumonia, COVID-19, positive or negative",
                f"{label!r}",
                number,
            )
        if filename in seen:
            raise DataFormatError(path, "unique file names", "a repeated file name", number)
        seen.add(filename)
        image_path = root / split / filename
        images.append(
            CovidxImage(patient, filename, canonical, source, split, image_path, number, path)
        )
    return images


def _generation(images: list[CovidxImage]) -> tuple[str, ...]:
    if not images:
        return GENERATIONS[0]
    classes = next(g for g in GENERATIONS if images[0].label in g)
    for image in images:
        if image.label not in classes:
            raise DataFormatError(
                image.source_file,
                f"a class of the generation {list(classes)} (set by the first line)",
                f"{image.label!r}",
                image.line,
            )
    return classes


def read(root: Path) -> CovidxIndex:
    """Read the COVIDx listings of a folder and detect the class generation."""
    root = require_dir(Path(root), f"the COVIDx folder ({FOLDER}/)")
    listings = locate(root)
    images: list[CovidxImage] = []
    for split, path in listings.items():
        images.extend(_read_listing(root, split, path))
    classes = _generation(images)
    return CovidxIndex(root, tuple(images), classes, tuple(listings.values()))
