"""Errors that name the thing that is wrong.

Every error a user can trigger with bad input derives from :class:`CxrbenchError`, so the CLI can
print it as one clear message (and exit non-zero) instead of a traceback.
"""

from __future__ import annotations

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
