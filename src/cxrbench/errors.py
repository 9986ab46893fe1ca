"""Errors that name the thing that is wrong.

Every error a user can trigger with bad input derives from :class:`CxrbenchError`, so the CLI can
print it as one clear message (and exit non-zero) instead of a traceback.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class CxrbenchError(Exception):
    """Base class of every error cxrbench raises on purpose."""


class DataFormatError(CxrbenchError):
    """A file on disk is not in the official format we expected.

    ``path`` is the offending file (or folder), ``line`` the 1-based line number for CSV/TXT files
    (``None`` where lines do not apply), ``expected`` what the official format requires and ``got``
    what was found. Patient text is never put into ``got``: callers pass a description, not report
    content.
    """

    def __init__(
        self,
        path: str | Path,
        expected: str,
        got: str | None = None,
        line: int | None = None,
        hint: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.line = line
        self.expected = expected
        self.got = got
        self.hint = hint
        where = f"{self.path}" + (f", line {line}" if line is not None else "")
        msg = f"{where}: expected {expected}"
        if got is not None:
            msg += f"; got {got}"
        if hint:
            msg += f". {hint}"
        super().__init__(msg)

    def __reduce__(self) -> tuple[type, tuple]:
        # pickle by fields, so the error survives a process boundary (data loader workers,
        # process pools, SLURM results) as itself
        return (type(self), (self.path, self.expected, self.got, self.line, self.hint))


class ConfigError(CxrbenchError):
    """A configuration value is missing, unknown or of the wrong type.

    ``file`` is the YAML file (or ``"--set"`` for command-line overrides), ``key`` the dotted key.
    """

    def __init__(self, file: str | Path | None, key: str | None, message: str) -> None:
        self.file = str(file) if file is not None else None
        self.key = key
        self.message = message
        parts = [p for p in (self.file, f"key '{key}'" if key else None) if p]
        prefix = ": ".join([", ".join(parts)]) if parts else "config"
        super().__init__(f"{prefix}: {message}")


class RegistryError(CxrbenchError, KeyError):
    """A name was looked up in a registry that does not hold it."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class FileError(CxrbenchError):
    """Reading or writing a user's file (or folder) failed for a reason outside cxrbench's code:
    no space left, a read-only or missing folder, a truncated or foreign file.

    ``path`` is the file, ``action`` what was being done (``"cannot write the file"``),
    ``cause`` the reason in words (an exception is described by :func:`describe`) and ``hint``
    what to do, if anything. The message is one line: ``<path>: <action>: <cause>[; <hint>]``.
    Programming errors are never turned into a ``FileError``: only the exceptions a caller names
    (:func:`file_errors`) are.
    """

    def __init__(
        self,
        path: str | Path,
        action: str,
        cause: BaseException | str,
        hint: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.action = action
        self.cause = cause if isinstance(cause, str) else describe(cause, self.path)
        self.hint = hint
        super().__init__(f"{self.path}: {action}: {self.cause}" + (f"; {hint}" if hint else ""))


def one_line(text: str, limit: int = 300) -> str:
    """``text`` with its whitespace runs (newlines included) collapsed, cut at ``limit``."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe(err: BaseException, path: str | Path | None = None) -> str:
    """An exception's reason in words, one line. For an ``OSError`` that is the system's reason
    (``No space left on device``), followed by the file it concerns when that is not ``path``
    itself or a temporary file next to it (a parent that is not a folder, say)."""
    if isinstance(err, OSError) and err.strerror:
        text = err.strerror
        path = Path(path) if path is not None else None
        for name in (err.filename, err.filename2):
            if not isinstance(name, str | bytes | os.PathLike):  # None, or a descriptor
                continue
            if path is None or not _same_or_temp(Path(os.fsdecode(name)), path):
                text += f" ({os.fsdecode(name)})"
        return one_line(text)
    return one_line(str(err)) or type(err).__name__


def _same_or_temp(name: Path, path: Path) -> bool:
    return name == path or (name.parent == path.parent and name.name.startswith(f".{path.name}."))


@contextmanager
def file_errors(
    path: str | Path,
    action: str,
    catch: tuple[type[BaseException], ...] = (OSError,),
    hint: str | None = None,
) -> Iterator[None]:
    """Turn the exceptions in ``catch`` (only ``OSError`` unless said otherwise) raised in the
    body into a :class:`FileError` naming ``path`` and ``action``; anything else (a bug) passes
    through with its traceback. A :class:`CxrbenchError` raised in the body is never re-wrapped."""
    try:
        yield
    except CxrbenchError:
        raise
    except catch as err:
        raise FileError(path, action, err, hint) from err
