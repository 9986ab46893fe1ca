"""Small file helpers: atomic writes, hashing, checkpoints and safetensors files read safely.

Every helper that touches a user's file names it when that fails
(:class:`~cxrbench.errors.FileError`: ``<path>: <what failed>: <cause>``, one line).

An atomic write puts the data into a temporary file ``.NAME.<random>.tmp`` next to ``NAME``,
then renames it over ``NAME``: a reader sees the old file or the whole new one. The file gets
the mode an ordinary ``open`` would give it (``0o666`` less the umask). A process killed
mid-write leaves its temporary file behind; :func:`remove_orphan_temps` deletes those a run
folder holds when the folder is opened again.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import pickle
import re
import secrets
import time
import zipfile
from pathlib import Path
from typing import Any

from cxrbench.errors import FileError, describe, file_errors, one_line

#: when this process started using cxrbench's writes (every temporary file it makes is newer)
PROCESS_STARTED = time.time()
#: the name of an atomic write's temporary file: ``.NAME.<random>.tmp``
TEMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{6,}\.tmp$")
_WRITE = "cannot write the file"


def _create_temp(path: Path) -> tuple[int, Path]:
    """Create ``.NAME.<random>.tmp`` next to ``path`` for writing. Unlike ``mkstemp`` (0600) it
    is opened with mode 0o666, so the kernel applies the umask as for any new file."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no unused temporary file name", str(path.parent))


def _make_folder(folder: Path, path: Path, action: str) -> None:
    """``mkdir -p folder``, or a :class:`FileError` naming ``path`` when a part is a file."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as err:  # a part of the way is not a folder
        raise FileError(path, action, f"{_nearest_existing(folder)} is not a folder") from err


def _nearest_existing(folder: Path) -> Path:
    """``folder``, or its nearest parent that exists (maybe a file in the way)."""
    while folder.parent != folder and not (folder.exists() or folder.is_symlink()):
        folder = folder.parent
    return folder


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one."""
    path = Path(path)
    with file_errors(path, _WRITE):
        _make_folder(path.parent, path, _WRITE)
        fd, tmp = _create_temp(path)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def check_writable(folder: str | Path, what: str = "output folder") -> None:
    """Fail now, naming ``folder``, when files cannot be written in it: a part of its path is a
    file, it is read-only, or its device is full. A folder that does not exist yet is checked
    where it would be made (its nearest existing parent), and is not created."""
    folder = Path(folder)
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise FileError(folder, f"cannot use it as the {what}", f"{existing} is not a folder")
    probe = existing / "cxrbench-write-check"  # written as .cxrbench-write-check.<random>.tmp
    try:
        fd, tmp = _create_temp(probe)
        try:
            with os.fdopen(fd, "wb") as fh:  # one block: a full device fails here
                fh.write(b"x")
                fh.flush()
                os.fsync(fh.fileno())
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
    except OSError as err:
        raise FileError(folder, f"cannot write to the {what}", describe(err, probe)) from err


def remove_orphan_temps(folder: str | Path, depth: int = 1) -> list[Path]:
    """Delete the temporary files of atomic writes (``.NAME.<random>.tmp``) that processes
    killed mid-write left in ``folder`` and its sub-folders down to ``depth``. Only files last
    written before this process started are removed, so a write in progress is never touched.
    Returns the removed paths."""
    removed: list[Path] = []
    folders, level = [Path(folder)], 0
    while folders:
        below: list[Path] = []
        for here in folders:
            for entry in _entries(here):
                if entry.is_dir(follow_symlinks=False):
                    below.append(Path(entry.path))
                elif TEMP_NAME.match(entry.name) and _older(entry):
                    with file_errors(entry.path, "cannot remove this file left by a killed write"):
                        Path(entry.path).unlink(missing_ok=True)
                    removed.append(Path(entry.path))
        folders, level = (below if level < depth else []), level + 1
    return removed


def _entries(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as it:
            return list(it)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as err:
        raise FileError(folder, "cannot list the folder", err) from err


def _older(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.stat(follow_symlinks=False).st_mtime < PROCESS_STARTED
    except FileNotFoundError:
        return False


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with file_errors(path, "cannot read the file"), open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _refused_pickle(err: pickle.UnpicklingError) -> str:
    """Why torch's weights-only unpickler refused a file, without torch's advice to retry
    unsafely: the lines of its message that name what it found (a global, an opcode)."""
    detail = [
        line.strip()
        for line in str(err).splitlines()
        if line.strip()
        and not re.search(r"weights.only|documentation|file an issue|error:\s*$", line, re.I)
    ]
    text = _first_sentence(detail[0]) if detail else ""
    return (
        "not a weights-only checkpoint: it holds pickled objects other than tensors and plain "
        "containers (or is corrupt), and cxrbench never unpickles code"
        + (f" (torch: {text})" if text and not re.search(r"weights.only", text, re.I) else "")
    )


def torch_load(path: str | Path, action: str, *, mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU: no code is unpickled. A missing,
    unreadable, truncated, foreign or code-holding file is a :class:`FileError` naming ``path``
    and ``action``. ``mmap``: map the tensors instead of reading them (a zip checkpoint only)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileError(path, action, "no such file" if not path.exists() else "not a file")
    if mmap and not zipfile.is_zipfile(path):
        raise FileError(path, action, "truncated or not a PyTorch checkpoint (no zip directory)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        raise FileError(path, action, _refused_pickle(err)) from None  # its text says retry
    except OSError as err:
        raise FileError(path, action, err) from err
    except (EOFError, KeyError) as err:  # the bytes end early, or are no pickle torch knows
        raise FileError(path, action, "truncated or not a PyTorch checkpoint") from err
    except (RuntimeError, ValueError) as err:  # torch's reading of the zip archive and records
        first = _first_sentence(str(err)) or type(err).__name__
        if re.search(r"zip archive|corrupt|magic number|truncat", str(err), re.I):
            first += "; the file is truncated or corrupt"
        raise FileError(path, action, first) from err


def _first_sentence(text: str) -> str:
    """The first sentence of a library's message, on one line, without its full stop."""
    return one_line(re.split(r"(?<=\.)\s", text.strip(), maxsplit=1)[0], 200).rstrip(".")


def load_checkpoint(path: str | Path, *, mmap: bool = False) -> dict:
    """Load a checkpoint with ``weights_only=True`` (no code unpickled); errors name the file."""
    action = "cannot load the checkpoint"
    state = torch_load(path, action, mmap=mmap)
    if not isinstance(state, dict):
        got = type(state).__name__
        raise FileError(path, action, f"expected a checkpoint dictionary, got {got}")
    return state


def read_safetensors(path: str | Path, action: str = "cannot read the tensors") -> dict:
    """All tensors of a ``.safetensors`` file, on the CPU; a missing, unreadable, truncated or
    foreign file is a :class:`FileError` naming ``path`` and ``action``."""
    import safetensors.torch
    from safetensors import SafetensorError

    path = Path(path)
    if not path.is_file():
        raise FileError(path, action, "no such file" if not path.exists() else "not a file")
    try:
        return safetensors.torch.load_file(str(path), device="cpu")
    except OSError as err:
        raise FileError(path, action, err) from err
    except SafetensorError as err:
        raise FileError(path, action, f"truncated or not a safetensors file ({err})") from err
