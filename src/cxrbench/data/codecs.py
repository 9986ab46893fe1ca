"""Codecs for the official annotation and image encodings.

* SIIM-ACR run-length encoding: the *relative* variant used by the Kaggle SIIM-ACR Pneumothorax
  files. The mask is flattened **column-major** (Fortran order: down each column, then the next
  column); the string is a list of ``offset length`` pairs in which each offset is counted from the
  end of the previous run (the first one from pixel 0). ``-1`` means "no pneumothorax".
* Images: :func:`read_image` decodes JPEG/PNG (Pillow; truncated files are errors, never padded) and
  DICOM (pydicom: Modality LUT / rescale, then VOI LUT or window when present, min-max scaled to
  0-255, MONOCHROME1 inverted, first frame of a multi-frame file); :func:`image_size` reads only the
  header (plus, for JPEG/PNG, the end-of-image marker, and for DICOM the declared Pixel Data length
  against the file size) so that a download can be checked quickly. Both check a DICOM's transfer
  syntax first (:func:`check_transfer_syntax`): one the installed pydicom handlers cannot decode, or
  a compressed syntax over uncompressed Pixel Data (or the reverse), is a :class:`DataFormatError`
  naming the file and the syntax, never a pydicom traceback halfway through a run.
* Object-CXR shapes: ``TYPE x1 y1 x2 y2 ...`` with TYPE 0 rectangle and 1 ellipse (two opposite
  corners of the box; the ellipse is inscribed in it) and 2 polygon (a point list, at least three
  points). A :class:`Shape` gives its bounding box and a filled mask; coordinates are pixel
  positions and both corners belong to the shape (OpenCV's filling convention).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pydicom
from PIL import Image, ImageFile, UnidentifiedImageError
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, AllTransferSyntaxes

from cxrbench.errors import DataFormatError

try:  # pydicom >= 3
    from pydicom.pixels import apply_modality_lut, apply_voi_lut
except ImportError:  # pragma: no cover - pydicom 2.x
    from pydicom.pixel_data_handlers.util import (  # type: ignore[no-redef]
        apply_modality_lut,
        apply_voi_lut,
    )

EMPTY_RLE = "-1"
DICOM_SUFFIXES = (".dcm", ".dicom")
PIXEL_DATA_TAG = 0x7FE00010
_UNDEFINED_LENGTH = 0xFFFFFFFF
_TAIL_BYTES = 1024
_END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND"}


def rle_decode(
    rle: str,
    height: int,
    width: int,
    *,
    path: str | Path = "<rle>",
    line: int | None = None,
) -> np.ndarray:
    """Decode one SIIM relative, column-major RLE string into a ``(height, width)`` boolean mask.

    ``-1`` (or an empty string) decodes to an all-false mask. Malformed input raises
    :class:`DataFormatError` naming ``path`` and ``line``.
    """
    text = rle.strip()
    flat = np.zeros(height * width, dtype=bool)
    if text in ("", EMPTY_RLE):
        return flat.reshape(width, height).T
    tokens = text.split()
    if len(tokens) % 2:
        raise DataFormatError(
            path,
            "an even number of RLE tokens (offset/length pairs)",
            f"{len(tokens)} tokens",
            line,
        )
    try:
        values = np.asarray([int(t) for t in tokens], dtype=np.int64)
    except ValueError:
        raise DataFormatError(path, "integer RLE tokens", "a non-integer token", line) from None
    offsets, lengths = values[0::2], values[1::2]
    if (offsets < 0).any() or (lengths <= 0).any():
        raise DataFormatError(
            path,
            "non-negative offsets and positive run lengths",
            "a negative offset or empty run",
            line,
        )
    ends = np.cumsum(offsets + lengths)
    starts = ends - lengths
    if ends[-1] > flat.size:
        raise DataFormatError(
            path,
            f"runs inside the {height}x{width} image ({flat.size} pixels)",
            f"a run ending at pixel {int(ends[-1])}",
            line,
        )
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        flat[start:end] = True
    return flat.reshape(width, height).T


def rle_encode(mask: np.ndarray) -> str:
    """Encode a 2-D boolean mask as a SIIM relative, column-major RLE string (``-1`` when empty).

    Inverse of :func:`rle_decode`: ``rle_decode(rle_encode(m), *m.shape)`` equals ``m``.
    """
    if mask.ndim != 2:
        raise ValueError(f"rle_encode needs a 2-D mask, got shape {mask.shape}")
    flat = np.asarray(mask, dtype=bool).T.reshape(-1)
    if not flat.any():
        return EMPTY_RLE
    padded = np.concatenate([[False], flat, [False]])
    changes = np.flatnonzero(padded[1:] != padded[:-1])
    starts, ends = changes[0::2], changes[1::2]
    lengths = ends - starts
    prev_ends = np.concatenate([[0], ends[:-1]])
    offsets = starts - prev_ends
    pairs = np.stack([offsets, lengths], axis=1).reshape(-1)
    return " ".join(str(int(v)) for v in pairs)


# ------------------------------------------------------------------------------------------ images


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise DataFormatError(path, "an image file", "no such file")


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    with path.open("rb") as handle:
        head = handle.read(132)
    return head[128:132] == b"DICM"


def read_image(path: str | Path) -> np.ndarray:
    """Decode a JPEG/PNG/DICOM file into a ``(height, width)`` uint8 grayscale array.

    Colour images are converted to grayscale; 16-bit PNGs are scaled from 0-65535. A missing,
    truncated or undecodable file raises :class:`DataFormatError` naming it.
    """
    p = Path(path)
    _require_file(p)
    return _read_dicom(p) if _is_dicom(p) else _read_raster(p)


def read_image_draft(path: str | Path, long_side: int) -> np.ndarray:
    """:func:`read_image`, but a JPEG is decoded at the smallest of 1/1, 1/2, 1/4 and 1/8 scale
    whose long side is still at least ``long_side`` (libjpeg's DCT-domain downscaling, PIL's
    ``Image.draft``), and in grayscale from its luma channel. Several times faster for a
    ~2,500 px radiograph wanted at a few hundred pixels; the pixels differ slightly from
    :func:`read_image` + resize (``benchmarks/perf/input_pipeline.py`` measures by how much).
    Other formats decode as :func:`read_image` does."""
    p = Path(path)
    _require_file(p)
    if _is_dicom(p):
        return _read_dicom(p)
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    with _open_raster(p) as image:
        if image.format == "JPEG" and image.mode in ("L", "RGB", "YCbCr"):
            w, h = image.size
            scale = long_side / max(w, h)
            if scale < 1:
                image.draft("L", (max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale))))
        try:
            image.load()
        except (OSError, SyntaxError, ValueError) as err:
            raise DataFormatError(p, "a complete image file", f"undecodable ({err})") from None
        return _to_gray_uint8(image)


def image_size(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` of a JPEG/PNG/DICOM file, read from its header without decoding pixels.

    Also cheap integrity checks: a JPEG/PNG must end with its end-of-image marker, a DICOM must have
    Pixel Data whose declared length fits in the file. Problems raise :class:`DataFormatError`
    naming the file.
    """
    p = Path(path)
    _require_file(p)
    return _dicom_size(p) if _is_dicom(p) else _raster_size(p)


def _open_raster(path: Path) -> Image.Image:
    try:
        return Image.open(path)
    except (UnidentifiedImageError, OSError) as err:
        raise DataFormatError(path, "a JPEG, PNG or DICOM image", type(err).__name__) from None


def _read_raster(path: Path) -> np.ndarray:
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file must fail, not be padded with grey
    with _open_raster(path) as image:
        try:
            image.load()
        except (OSError, SyntaxError, ValueError) as err:
            raise DataFormatError(path, "a complete image file", f"undecodable ({err})") from None
        return _to_gray_uint8(image)


def _to_gray_uint8(image: Image.Image) -> np.ndarray:
    if image.mode == "L":
        return np.array(image, dtype=np.uint8)
    if image.mode.startswith("I;16"):
        wide = np.asarray(image).astype(np.float64)
        return np.round(wide / 257.0).astype(np.uint8)
    if image.mode in ("I", "F"):
        return _minmax_uint8(np.asarray(image).astype(np.float64))
    return np.array(image.convert("L"), dtype=np.uint8)


def _raster_size(path: Path) -> tuple[int, int]:
    with _open_raster(path) as image:
        width, height = image.size
        kind = image.format or ""
    marker = _END_MARKERS.get(kind)
    if marker is not None:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - _TAIL_BYTES))
            tail = handle.read()
        if marker not in tail:
            raise DataFormatError(
                path, f"a complete {kind} file (ending with its end marker)", "a truncated file"
            )
    return int(height), int(width)


def _minmax_uint8(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((values - low) * (255.0 / (high - low))).astype(np.uint8)


def _dcmread(path: Path, **kwargs: Any) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(path, **kwargs)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError) as err:
        raise DataFormatError(path, "a readable DICOM file", type(err).__name__) from None


def _dicom_size(path: Path) -> tuple[int, int]:
    ds = _dcmread(path, defer_size=1024)
    rows, cols = ds.get("Rows"), ds.get("Columns")
    if rows is None or cols is None:
        raise DataFormatError(path, "a DICOM header with Rows and Columns", "a truncated header")
    element = _pixel_element(ds)
    if element is None:
        raise DataFormatError(path, "a DICOM file with Pixel Data", "no Pixel Data element")
    syntax = check_transfer_syntax(path, ds)
    tell, length = getattr(element, "value_tell", None), getattr(element, "length", None)
    if syntax.is_deflated or length in (None, _UNDEFINED_LENGTH):
        tell = None  # a deflated file's value_tell counts in the inflated stream, not in the file
    size = path.stat().st_size
    if tell is not None and tell + length > size:
        raise DataFormatError(
            path, f"{length} bytes of Pixel Data", f"a truncated file ({size} bytes)"
        )
    return int(rows), int(cols)


# ------------------------------------------------------------------------------ transfer syntaxes


def _decoder_state(uid: UID) -> tuple[bool, list[str]]:
    """Whether the installed pydicom handlers decode ``uid``, and what would add a decoder."""
    try:
        from pydicom.pixels import get_decoder
    except ImportError:  # pragma: no cover - pydicom 2.x: the pixel data handlers
        from pydicom import config

        handlers = [h for h in config.pixel_data_handlers if h.supports_transfer_syntax(uid)]
        return any(h.is_available() for h in handlers), []
    try:
        decoder = get_decoder(uid)
    except (NotImplementedError, ValueError):  # no decoder at all for this syntax
        return False, []
    return bool(decoder.is_available), list(decoder.missing_dependencies)


@cache
def decodable_transfer_syntaxes() -> tuple[UID, ...]:
    """The transfer syntaxes the installed pydicom handlers can decode (uncompressed ones too)."""
    return tuple(UID(uid) for uid in AllTransferSyntaxes if _decoder_state(UID(uid))[0])


def _syntax_text(uid: UID) -> str:
    name = uid.name if uid.name != uid else "an unknown transfer syntax"
    return f"transfer syntax {uid} ({name})"


def _pixel_element(ds: pydicom.Dataset) -> Any:
    """The Pixel Data element (``None`` when absent) without reading a deferred value."""
    try:
        return ds.get_item(PIXEL_DATA_TAG, keep_deferred=True)
    except TypeError:  # pragma: no cover - pydicom 2.x: no keep_deferred
        return ds.get_item(PIXEL_DATA_TAG)


def _undefined_length(element: Any) -> bool:
    flag = getattr(element, "is_undefined_length", None)
    if flag is not None:
        return bool(flag)
    return getattr(element, "length", None) == _UNDEFINED_LENGTH


def check_transfer_syntax(path: str | Path, ds: pydicom.Dataset) -> UID:
    """The DICOM's transfer syntax, if the installed pydicom handlers can decode its Pixel Data.

    Raises :class:`DataFormatError` naming ``path`` when the file meta has no Transfer Syntax UID,
    when no installed handler decodes the syntax (the error gives its UID and name, the syntaxes
    that are supported and, where pydicom knows one, the package that would add a decoder), or when
    Pixel Data is not encoded as the syntax says: a compressed syntax needs encapsulated Pixel Data
    (undefined length), an uncompressed one native Pixel Data (e.g. a file relabelled as JPEG 2000
    whose pixels were left raw).
    """
    meta = getattr(ds, "file_meta", None)
    raw = meta.get("TransferSyntaxUID") if meta is not None else None
    if not raw:
        raise DataFormatError(
            path, "a Transfer Syntax UID (0002,0010) in the DICOM file meta", "none"
        )
    uid = UID(str(raw).strip())
    decodable, missing = _decoder_state(uid)
    if not decodable:
        names = ", ".join(s.name for s in decodable_transfer_syntaxes())
        hint = "pydicom decodes it once one of these is installed: " + "; ".join(missing)
        raise DataFormatError(
            path,
            f"a transfer syntax the installed pydicom handlers decode ({names})",
            _syntax_text(uid),
            hint=hint if missing else None,
        )
    element = _pixel_element(ds)
    if element is not None and uid.is_compressed != _undefined_length(element):
        stored = {True: "encapsulated (compressed)", False: "native (uncompressed)"}
        raise DataFormatError(
            path,
            f"{stored[uid.is_compressed]} Pixel Data, as its {_syntax_text(uid)} says",
            f"{stored[not uid.is_compressed]} Pixel Data",
        )
    return uid


def _read_dicom(path: Path) -> np.ndarray:
    ds = _dcmread(path)
    if PIXEL_DATA_TAG not in ds:
        raise DataFormatError(path, "a DICOM file with Pixel Data", "no Pixel Data element")
    check_transfer_syntax(path, ds)
    try:
        return _dicom_pixels(ds)
    except MemoryError:
        raise
    except Exception as err:  # any decoder failure: name the file instead of a pydicom traceback
        text = " ".join(line.strip() for line in str(err).splitlines()) or type(err).__name__
        raise DataFormatError(path, "decodable DICOM Pixel Data", f"undecodable ({text})") from None


def _dicom_pixels(ds: pydicom.Dataset) -> np.ndarray:
    pixels = np.asarray(ds.pixel_array)
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[0]  # multi-frame: the first frame
    if pixels.ndim == 3:  # colour: pixel_array gives RGB
        return np.asarray(cv2.cvtColor(pixels.astype(np.uint8), cv2.COLOR_RGB2GRAY))
    values = apply_voi_lut(apply_modality_lut(pixels, ds), ds)
    gray = _minmax_uint8(np.asarray(values, dtype=np.float64))
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        gray = 255 - gray
    return gray


# ------------------------------------------------------------------------------------------ shapes

SHAPE_KINDS = {"0": "rectangle", "1": "ellipse", "2": "polygon"}


@dataclass(frozen=True, slots=True)
class Shape:
    """One Object-CXR object: ``kind`` in rectangle/ellipse/polygon and its ``points`` ``(x, y)``.

    Rectangles and ellipses have two points (opposite corners of the box); polygons three or more.
    """

    kind: str
    points: tuple[tuple[float, float], ...]

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """``(x1, y1, x2, y2)``: the given box (rectangle, ellipse) or the points' extent."""
        xs = [x for x, _ in self.points]
        ys = [y for _, y in self.points]
        return min(xs), min(ys), max(xs), max(ys)

    def mask(self, height: int, width: int) -> np.ndarray:
        """Filled ``(height, width)`` boolean mask of the shape (parts outside are dropped)."""
        canvas = np.zeros((height, width), dtype=np.uint8)
        x1, y1, x2, y2 = (round(v) for v in self.bbox)
        if self.kind == "rectangle":
            cv2.rectangle(canvas, (x1, y1), (x2, y2), 1, thickness=-1)
        elif self.kind == "ellipse":
            centre = (round((x1 + x2) / 2), round((y1 + y2) / 2))
            axes = (round((x2 - x1) / 2), round((y2 - y1) / 2))
            cv2.ellipse(canvas, centre, axes, 0, 0, 360, 1, thickness=-1)
        else:
            points = np.round(np.asarray(self.points)).astype(np.int32).reshape(-1, 1, 2)
            cv2.fillPoly(canvas, [points], 1)
        return canvas.astype(bool)


def parse_shape(text: str, *, path: str | Path = "<annotation>", line: int | None = None) -> Shape:
    """Parse one ``TYPE x1 y1 x2 y2 ...`` object; bad input raises :class:`DataFormatError`."""
    tokens = text.split()
    kind = SHAPE_KINDS.get(tokens[0]) if tokens else None
    if kind is None:
        got = f"type {tokens[0]!r}" if tokens and len(tokens[0]) <= 8 else "an unknown type"
        raise DataFormatError(
            path, "an object type 0 (rectangle), 1 (ellipse) or 2 (polygon)", got, line
        )
    coords = _parse_coords(tokens[1:], path, line)
    if kind != "polygon" and len(coords) != 4:
        raise DataFormatError(path, f"4 coordinates for a {kind}", f"{len(coords)}", line)
    if kind == "polygon" and (len(coords) % 2 or len(coords) < 6):
        raise DataFormatError(
            path, "an even number (at least 6) of polygon coordinates", f"{len(coords)}", line
        )
    return Shape(kind, tuple(zip(coords[0::2], coords[1::2], strict=True)))


def _parse_coords(tokens: list[str], path: str | Path, line: int | None) -> list[float]:
    try:
        values = [float(t) for t in tokens]
    except ValueError:
        raise DataFormatError(
            path, "numeric shape coordinates", "a non-numeric token", line
        ) from None
    if not np.isfinite(values).all():
        raise DataFormatError(path, "finite shape coordinates", "nan or inf", line)
    return values


def parse_annotation(
    text: str, *, path: str | Path = "<annotation>", line: int | None = None
) -> tuple[Shape, ...]:
    """Parse an Object-CXR ``annotation`` cell: ``;``-separated objects, empty = no object."""
    parts = [part for part in text.split(";") if part.strip()]
    return tuple(parse_shape(part, path=path, line=line) for part in parts)
