"""Dataset folders: <data root>/<folder> by default, a configured path when given."""

from __future__ import annotations

import pytest

from cxrbench.data.roots import DataRoots, dataset_folder
from cxrbench.errors import DataFormatError


def test_default_override_and_direct_folder(tmp_path) -> None:
    (tmp_path / "siim-acr").mkdir()
    elsewhere = tmp_path / "mnt" / "my-siim"
    elsewhere.mkdir(parents=True)
    assert dataset_folder("siim", tmp_path) == tmp_path / "siim-acr"
    assert dataset_folder("siim", tmp_path, DataRoots(siim=str(elsewhere))) == elsewhere
    assert dataset_folder("siim", tmp_path / "siim-acr") == tmp_path / "siim-acr"


def test_missing_folder_names_it_and_the_fix(tmp_path) -> None:
    with pytest.raises(DataFormatError) as info:
        dataset_folder("rsna", tmp_path)
    message = str(info.value)
    assert "rsna-pneumonia" in message and "--set data.rsna=" in message
    assert "datasets/README.md" in message


def test_one_dataset_list() -> None:
    """The dataset keys are the readers' keys; every other list is derived from them or checked
    here (a dataset added to the readers needs its folder override, and nothing else)."""
    from dataclasses import fields

    from cxrbench.data.formats import DATASETS, READERS
    from cxrbench.methods.supervised import DATASETS as LABELLED
    from cxrbench.runner.resolve import PRETRAIN_NON_RESULT_KEYS

    assert tuple(READERS) == DATASETS
    assert tuple(f.name for f in fields(DataRoots)) == DATASETS
    assert tuple(d for d in DATASETS if d != "mimic") == LABELLED
    assert {f"data.{d}" for d in DATASETS} <= set(PRETRAIN_NON_RESULT_KEYS)
