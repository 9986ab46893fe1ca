"""Readers of the official dataset formats, one module per dataset (see ``docs/data-layer.md``).

Each module exposes ``FOLDER`` (the folder name inside a data root) and ``read(root) ->
<Name>Index``; :data:`READERS` maps the dataset key used on the command line (``--dataset``) to its
module and :data:`FOLDERS` to its folder name.
"""

from __future__ import annotations

import difflib
from types import ModuleType

from cxrbench.data.formats import chexpert, covidx, mimic, objectcxr, rsna, siim
from cxrbench.errors import RegistryError

READERS: dict[str, ModuleType] = {
    "mimic": mimic,
    "chexpert": chexpert,
    "rsna": rsna,
    "siim": siim,
    "objectcxr": objectcxr,
    "covidx": covidx,
}
FOLDERS: dict[str, str] = {key: module.FOLDER for key, module in READERS.items()}
#: every dataset key, the one list (``DataRoots``, the CLI, the supervised oracle read it)
DATASETS: tuple[str, ...] = tuple(READERS)


def get_reader(dataset: str) -> ModuleType:
    """The reader module of ``dataset``; an unknown key is a :class:`RegistryError` with a hint."""
    try:
        return READERS[dataset]
    except KeyError:
        close = difflib.get_close_matches(dataset, list(READERS), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise RegistryError(
            f"unknown dataset '{dataset}'; known: {', '.join(READERS)}.{hint}"
        ) from None


__all__ = ["FOLDERS", "READERS", "get_reader"]
