"""Codecs for the official annotation and image encodings.

* SIIM-ACR run-length encoding: the *relative* variant used by the Kaggle SIIM-ACR Pneumothorax files. The mask
  is flattened **column-major** (Fortran order: down each column, then the next column); the string is a list of
  ``offset length`` pairs in which each offset is counted from the end of the previous run (the first one from
  pixel 0). ``-1`` means "no pneumothorax".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxrbench.errors import DataFormatError

EMPTY_RLE = "-1"


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
            path, "an even number of RLE tokens (offset/length pairs)", f"{len(tokens)} tokens", line
        )
    try:
        values = np.asarray([int(t) for t in tokens], dtype=np.int64)
    except ValueError:
        raise DataFormatError(path, "integer RLE tokens", "a non-integer token", line) from None
    offsets, lengths = values[0::2], values[1::2]
    if (offsets < 0).any() or (lengths <= 0).any():
        raise DataFormatError(
            path, "non-negative offsets and positive run lengths", "a negative offset or empty run", line
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
