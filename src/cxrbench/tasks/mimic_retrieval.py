"""MIMIC-CXR image–report retrieval (version 1).

The official ``test`` split of ``mimic-cxr-2.0.0-split.csv.gz``: every frontal (PA/AP) image whose
study has a non-empty cleaned report, paired with that report as pre-training pairs it (MGCA's
cleaning of FINDINGS + IMPRESSION, ``data/formats/mimic.py``). Pre-training never trains on this
split (it validates on validate + test, as MGCA does). Nothing is trained
(``systems/retrieval.py``): image→report and report→image Recall@1/5/10 in the method's
image–text space; the headline is their mean. The split's ids are the split hash.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import ClassVar

import numpy as np

from cxrbench.data.formats import mimic
from cxrbench.data.roots import dataset_folder
from cxrbench.errors import DataFormatError
from cxrbench.tasks import TASKS
from cxrbench.tasks.base import Items, Task, TaskData, fingerprint_items


@TASKS.register("mimic_retrieval")
class MimicRetrieval(Task):
    kind = "retrieval"
    evaluation_only = True
    dataset = "mimic"
    metric = "r_mean"
    protocols: ClassVar[dict[int, str]] = {1: "cxrbench"}  # no published protocol to match

    def folder(self, data_root: Path) -> Path:
        return dataset_folder("mimic", data_root, self.cfg.data)

    def data(self, data_root: Path, fraction: float) -> TaskData:
        folder = self.folder(data_root)
        index = mimic.read(folder)
        pairs = [(img, s) for img, s in mimic.sentence_pairs(index) if img.split == "test"]
        if not pairs:
            raise DataFormatError(
                folder,
                "frontal images with a non-empty report in the official test split",
                "none (mimic-cxr-2.0.0-split.csv.gz)",
            )
        ids = [f"{img.study_id}/{img.dicom_id}" for img, _ in pairs]
        texts = tuple(" ".join(s) for _, s in pairs)
        test = Items(ids, [img.image_path for img, _ in pairs],
                     np.zeros((len(ids), 1), np.float32), texts)  # fmt: skip
        empty = Items([], [], np.zeros((0, 1), np.float32))
        split_hash = hashlib.sha256(("mimic-test/" + ",".join(ids)).encode()).hexdigest()[:16]
        parts = {"train": empty, "val": empty, "test": test}
        return TaskData(empty, empty, empty, test, ("report",), "retrieval", split_hash,
                        fingerprint_items(parts))  # fmt: skip
