"""Checkpoints that are whole or absent: atomic writes, and a check before resuming from one.

Lightning writes a checkpoint through fsspec, which stages it in the system's temp folder and
copies it across devices into the run folder: a full disk there leaves a truncated ``last.ckpt``
that every later attempt dies on. :class:`AtomicCheckpointIO` (a Lightning ``CheckpointIO``
plugin) serialises the checkpoint in memory and writes it to a temp file in the run folder itself,
fsynced, then ``os.replace``s it: the old checkpoint stays whole until the new one is. A failed
write (``ENOSPC``) leaves the previous checkpoint to resume from.

:func:`resume_point` checks a checkpoint before a run resumes from it (it loads, weights only):
one that does not load is set aside as ``<name>.corrupt-<time>`` with a warning naming both files,
and the run starts from scratch instead of dying on it every time.
"""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from cxrbench.errors import CxrbenchError
from cxrbench.utils.io import atomic_write_bytes, load_checkpoint

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Save: whole or not at all (temp file in the same folder, fsync, rename). Load: weights
    only, and an unreadable file is an error that names it."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write_bytes(Path(path), buffer.getvalue())

    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return load_checkpoint(Path(path))


def resume_point(path: Path) -> Path | None:
    """``path`` when it is a checkpoint that loads; ``None`` when absent or set aside."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = load_checkpoint(path)
        if "state_dict" not in state or "global_step" not in state:
            raise CxrbenchError(f"{path}: not a Lightning checkpoint (no state_dict/global_step)")
    except (CxrbenchError, OSError, RuntimeError, ValueError, EOFError) as err:
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
        path.replace(aside)
        log.warning("%s does not load (%s); set aside as %s, starting this run from scratch",
                    path, err, aside)  # fmt: skip
        return None
    return path
