"""Shared helpers of the official-format readers: locating files and reading CSVs strictly.

CSV files are read with pandas as strings (``dtype=str``, no NaN conversion), so that a blank cell
is ``""`` and values keep their exact spelling. Column names and the values of the required columns
are stripped of surrounding spaces (SIIM's header is ``ImageId, EncodedPixels``). Every row keeps
its 1-based line number in the file (the header is line 1) in the column :data:`LINE`; rows that are
entirely blank are dropped after numbering, so error messages point at the right line. (Line numbers
assume no quoted field spans several lines, which holds for every official file read here.)
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.errors import DataFormatError

LINE = "__line__"
README_HINT = "See datasets/README.md for the official layout and where to obtain the data"
_PANDAS_LINE = re.compile(r"line (\d+)")


def require_dir(path: Path, what: str) -> Path:
    """``path`` if it is a folder, else a :class:`DataFormatError` pointing to the README."""
    path = Path(path)
    if not path.is_dir():
        raise DataFormatError(path, what, "no such folder", hint=README_HINT)
    return path


def require_file(path: Path, what: str) -> Path:
    """``path`` if it is a file, else a :class:`DataFormatError` pointing to the README."""
    if not path.is_file():
        raise DataFormatError(path, what, "no such file", hint=README_HINT)
    return path


def read_csv(path: Path, required: Sequence[str]) -> pd.DataFrame:
    """Read an official CSV (plain or ``.gz``) as strings; the ``required`` columns must exist."""
    try:
        frame = pd.read_csv(
            path,
            dtype=str,
            keep_default_na=False,
            na_filter=False,
            skip_blank_lines=False,
            compression="infer",
        )
    except pd.errors.EmptyDataError:
        raise DataFormatError(
            path, f"a header with columns {list(required)}", "an empty file", 1
        ) from None
    except pd.errors.ParserError as err:
        found = _PANDAS_LINE.search(str(err))
        line = int(found.group(1)) if found else None
        raise DataFormatError(
            path, "the same number of fields as the header", str(err), line
        ) from None
    except (UnicodeDecodeError, OSError, EOFError, zlib.error) as err:
        raise DataFormatError(
            path, "a readable (UTF-8, optionally gzip) CSV", type(err).__name__
        ) from None
    raw_columns = [str(c) for c in frame.columns]
    frame.columns = pd.Index([c.strip() for c in raw_columns])
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataFormatError(
            path, f"column(s) {missing} in the header", f"columns {raw_columns}", line=1
        )
    frame[LINE] = np.arange(2, len(frame) + 2)
    for column in required:
        frame[column] = frame[column].str.strip()
    blank = (frame[[c for c in frame.columns if c != LINE]] == "").all(axis=1)
    return frame.loc[~blank].reset_index(drop=True)


def first_line(frame: pd.DataFrame, bad: pd.Series | np.ndarray) -> int:
    """Line number of the first row flagged in ``bad``."""
    flags = np.asarray(bad, dtype=bool)
    return int(frame[LINE].to_numpy()[np.flatnonzero(flags)[0]])


def check_values(
    frame: pd.DataFrame, path: Path, column: str, allowed: Sequence[str], expected: str
) -> None:
    """Raise at the first row whose ``column`` is not one of ``allowed``."""
    bad = ~frame[column].isin(list(allowed))
    if bad.any():
        value = str(frame.loc[bad, column].iloc[0])
        got = f"{column}={value!r}" if len(value) <= 20 else f"an unexpected {column}"
        raise DataFormatError(path, expected, got, first_line(frame, bad))


def check_unique(frame: pd.DataFrame, path: Path, column: str) -> None:
    """Raise at the first row whose ``column`` value repeats an earlier row."""
    dup = frame[column].duplicated()
    if dup.any():
        raise DataFormatError(
            path, f"unique {column} values", "a repeated value", first_line(frame, dup)
        )


def box_outside(box: tuple[float, float, float, float], height: int, width: int) -> bool:
    """Whether an ``(x1, y1, x2, y2)`` box leaves the ``[0, width] x [0, height]`` image."""
    x1, y1, x2, y2 = box
    return x1 < 0 or y1 < 0 or x2 > width or y2 > height
