"""Released checkpoints → encoder artifacts (``cxrbench import``); one module per format."""

from .base import (
    FORMATS,
    CheckpointImportError,
    Ignore,
    ImportFormat,
    Layout,
    Report,
    import_checkpoint,
    read_checkpoint,
)

__all__ = [
    "FORMATS",
    "CheckpointImportError",
    "Ignore",
    "ImportFormat",
    "Layout",
    "Report",
    "import_checkpoint",
    "read_checkpoint",
]
