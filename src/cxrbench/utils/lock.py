"""One process per run folder or cache entry: an exclusive ``flock`` on ``<folder>/.lock``.

The lock file says who holds it (pid, host, since when). A second process that finds it held
waits for it, saying whom it waits for (``wait=False``: fails with that message); when it gets
the lock the first run is finished, so it finds the result and returns it instead of redoing and
overwriting it. The kernel releases a ``flock`` when its holder dies, however it dies, so a lock
left by a killed process is taken over at once: the file's text then names a process that is
gone, and nothing waits on it. (``flock`` is per host on some network file systems: two
machines sharing a run folder over NFS are not protected from each other.)

Only one process of a distributed (DDP) run takes the lock: the others are the same run.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cxrbench.errors import CxrbenchError

log = logging.getLogger(__name__)
LOCK_FILE = ".lock"


def _other_rank() -> bool:
    """True in every process of a distributed launch but the first (they share its lock)."""
    for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        value = os.environ.get(name)
        if value not in (None, "", "0"):
            return True
    return False


def holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        text = ""
    return text or "another process"


@contextmanager
def exclusive(
    folder: Path, *, wait: bool = True, what: str = "run folder", lock_file: Path | None = None
) -> Iterator[None]:
    """Hold the lock of ``folder`` (created if missing) for the block: ``folder/.lock``, or
    ``lock_file`` for a thing that is not a folder of its own (a cache entry)."""
    folder = Path(folder)
    if _other_rank():
        yield
        return
    path = Path(lock_file) if lock_file is not None else folder / LOCK_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise CxrbenchError(f"{path}: cannot create the lock file of this {what}: {err}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            who = holder(path)
            if not wait:
                raise CxrbenchError(
                    f"{folder}: this {what} is in use by {who}; wait for it to finish or use "
                    "another output folder"
                ) from None
            log.warning("%s: this %s is in use by %s; waiting for it to finish", folder, what, who)
            fcntl.flock(fd, fcntl.LOCK_EX)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
