"""Where each dataset lives: ``<data root>/<folder>`` unless its own path is configured.

A data root holds one folder per dataset, named as SynthCXR names them (``mimic-cxr-jpg``,
``chexpert``, ``rsna-pneumonia``, ``siim-acr``, ``object-cxr``, ``covidx``). Real downloads live
wherever users put them, so each folder can be given on its own: ``--set data.siim=/mnt/siim``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cxrbench.data.formats import FOLDERS
from cxrbench.errors import DataFormatError


@dataclass
class DataRoots:
    """Per-dataset folder overrides (``None``: ``<data root>/<folder>``); one field per entry of
    :data:`cxrbench.data.formats.DATASETS`, in its order (a test holds them together)."""

    mimic: str | None = None
    chexpert: str | None = None
    rsna: str | None = None
    siim: str | None = None
    objectcxr: str | None = None
    covidx: str | None = None


def dataset_folder(dataset: str, data_root: str | Path, roots: DataRoots | None = None) -> Path:
    """The folder of ``dataset``: its configured path, ``data_root/<folder>``, or ``data_root``
    itself when that already is the dataset's folder. Missing → an error saying what and where."""
    override = getattr(roots, dataset, None) if roots is not None else None
    if override:
        folder = Path(override)
    else:
        root = Path(data_root)
        folder = root / FOLDERS[dataset]
        if not folder.is_dir() and root.name == FOLDERS[dataset]:
            folder = root
    if not folder.is_dir():
        raise DataFormatError(
            folder,
            f"the {dataset} dataset folder ({FOLDERS[dataset]}/ in the official layout)",
            "no such folder",
            hint=f"see datasets/README.md, or set its path with --set data.{dataset}=PATH",
        )
    return folder
