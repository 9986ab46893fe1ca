"""Provenance of a result: which code and which device produced it."""

from __future__ import annotations

import functools
import platform
import subprocess
from pathlib import Path

import torch

from cxrbench import __version__


@functools.cache
def code_version() -> str:
    """``cxrbench`` version plus the git commit (``+g<sha>``, ``.dirty`` with local changes)."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=10", "HEAD"],
            cwd=here, timeout=5, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here, timeout=5, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{sha}" + (".dirty" if dirty else "")


def device_name(device: torch.device) -> str:
    """``NVIDIA H100 80GB HBM3`` or ``cpu (x86_64, 2 threads)``."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


@functools.cache
def source_hash(modules: tuple[str, ...]) -> str:
    """sha256[:16] of the source of the package's ``modules`` (paths such as
    ``"data/codecs.py"``): what a cache keys on, so a change to the code that made an entry is a
    new key."""
    import hashlib

    package = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for name in modules:
        digest.update(name.encode() + (package / name).read_bytes())
    return digest.hexdigest()[:16]
