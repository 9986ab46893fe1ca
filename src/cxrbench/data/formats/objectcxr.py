"""Object-CXR (JF Healthcare, MIDL 2020 challenge): foreign objects on chest X-rays.

Official files in the dataset folder (``object-cxr/``):

* ``train.csv`` and ``dev.csv`` with ``image_name,annotation``; ``annotation`` is empty (no object)
  or ``;``-separated objects ``TYPE x1 y1 x2 y2 ...``: TYPE 0 rectangle and 1 ellipse give two
  opposite corners of the (bounding) box, TYPE 2 polygon a point list
  (:func:`cxrbench.data.codecs.parse_shape`);
* images ``train/{image_name}`` and ``dev/{image_name}`` (JPEG, sizes vary).

:func:`read` reads ``train.csv`` then ``dev.csv`` (split ``train`` / ``dev``; the official ``dev``
set is the protocol's test set). ``image_name`` must be unique over both files (it is the split id).
A shape outside its image is found by :func:`check_boxes_inside` once the image size is known.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cxrbench.data.codecs import Shape, parse_annotation
from cxrbench.data.formats._common import (
    LINE,
    box_outside,
    first_line,
    read_csv,
    require_dir,
    require_file,
)
from cxrbench.errors import DataFormatError

FOLDER = "object-cxr"
SPLIT_FILES = {"train": "train.csv", "dev": "dev.csv"}
SHAPE_KINDS = ("rectangle", "ellipse", "polygon")


@dataclass(frozen=True, slots=True)
class ObjectImage:
    """One Object-CXR image with its objects (empty tuple = no foreign object)."""

    image_name: str
    image_path: Path
    split: str
    objects: tuple[Shape, ...]
    line: int
    source_file: Path

    @property
    def positive(self) -> bool:
        return bool(self.objects)


@dataclass(frozen=True)
class ObjectIndex:
    root: Path
    images: tuple[ObjectImage, ...]

    def ids(self) -> list[str]:
        return [image.image_name for image in self.images]


def check_boxes_inside(image: ObjectImage, height: int, width: int) -> None:
    """Raise :class:`DataFormatError` (CSV file and line) when a shape leaves the image."""
    for shape in image.objects:
        if box_outside(shape.bbox, height, width):
            raise DataFormatError(
                image.source_file,
                f"{shape.kind} inside the {width}x{height} image {image.image_name}",
                "a box from ({:g}, {:g}) to ({:g}, {:g})".format(*shape.bbox),
                image.line,
            )


def _read_split(root: Path, split: str, seen: dict[str, tuple[Path, int]]) -> list[ObjectImage]:
    path = require_file(root / SPLIT_FILES[split], f"the Object-CXR file {SPLIT_FILES[split]}")
    frame = read_csv(path, ("image_name", "annotation"))
    empty = frame["image_name"] == ""
    if empty.any():
        raise DataFormatError(path, "an image_name", "an empty one", first_line(frame, empty))
    images = []
    for name, annotation, line in zip(
        frame["image_name"], frame["annotation"], frame[LINE], strict=True
    ):
        if name in seen:
            other, other_line = seen[name]
            raise DataFormatError(
                path, "unique image names", f"a repeat of {other} line {other_line}", int(line)
            )
        seen[name] = (path, int(line))
        objects = parse_annotation(annotation, path=path, line=int(line))
        images.append(ObjectImage(name, root / split / name, split, objects, int(line), path))
    return images


def read(root: Path) -> ObjectIndex:
    """Read ``train.csv`` and ``dev.csv`` of an Object-CXR folder."""
    root = require_dir(Path(root), f"the Object-CXR folder ({FOLDER}/)")
    seen: dict[str, tuple[Path, int]] = {}
    images = _read_split(root, "train", seen) + _read_split(root, "dev", seen)
    return ObjectIndex(root=root, images=tuple(images))
