"""Supervised — the oracle row: the encoder trained on a downstream dataset's own labels.

Not a pre-training method from a paper: an upper bound that shows a task is learnable (SynthCXR's
signal check) and how far image–report pre-training is from it. The backbone and a linear head are
trained on the dataset's stored training split (100% of its labels; ``cxrbench data splits``) with
binary cross-entropy per class (multi-label datasets) or cross-entropy (COVIDx), validated on its
val split, and the backbone is exported as any method's is. Labels: ``data/labels.py``.
``params.dataset`` picks the dataset (the runner sets it to the task's). No text is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from cxrbench.data.codecs import read_image
from cxrbench.data.formats import DATASETS as ALL_DATASETS
from cxrbench.data.labels import image_labels
from cxrbench.data.roots import dataset_folder
from cxrbench.data.splits import make_splits
from cxrbench.data.transforms import mgca_image
from cxrbench.errors import ConfigError
from cxrbench.methods import METHODS
from cxrbench.methods.base import PretrainMethod

DATASETS = tuple(d for d in ALL_DATASETS if d != "mimic")  # those with image labels


@dataclass
class SupervisedConfig:
    dataset: str = "chexpert"


class LabelledImages(Dataset[dict[str, Any]]):
    def __init__(self, items: list[tuple[Path, Any]], resize: int, crop: int, train: bool):
        self.items, self.resize, self.crop, self.train = items, resize, crop, train

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        path, label = self.items[i]
        image = mgca_image(read_image(path), self.resize, self.crop, train=self.train)
        return {"image": image, "label": torch.as_tensor(label)}


@METHODS.register("supervised")
class Supervised(PretrainMethod):
    Config = SupervisedConfig
    needs_text = False

    def __init__(self, params: SupervisedConfig, backbone: Any, text: Any, run: Any) -> None:
        super().__init__(params, backbone, text, run)
        if params.dataset not in DATASETS:
            raise ConfigError(None, "params.dataset", f"must be one of {', '.join(DATASETS)}")
        self._data: Any = None
        self.head: torch.nn.Linear | None = None

    def train_dataset(self, data_root: Path, split: str) -> Dataset[dict[str, Any]]:
        name = self.params.dataset
        folder = dataset_folder(name, data_root, self.run.data)
        if self._data is None:
            self._data = (image_labels(name, folder), make_splits(name, folder))
            labelled = self._data[0]
            self.head = torch.nn.Linear(self.backbone.feature_dims["pooled"], len(labelled.classes))
            self.kind = labelled.kind
        labelled, splits = self._data
        ids = splits.part("train" if split == "train" else "val")
        items = [(labelled.paths[i], labelled.labels[i]) for i in ids]
        d = self.run.data
        return LabelledImages(items, d.resize, d.crop, train=split == "train")

    def losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        assert self.head is not None, "train_dataset() builds the head before training"
        logits = self.head(self.backbone(batch["image"]).pooled)
        target = batch["label"].to(logits.dtype)
        if self.kind == "multiclass":
            return {"ce": F.cross_entropy(logits, target.argmax(dim=1))}
        return {"bce": F.binary_cross_entropy_with_logits(logits, target)}
