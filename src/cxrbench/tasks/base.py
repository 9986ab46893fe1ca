"""Contract 3: a downstream task, and the protocol it owns.

A task is not a LightningModule: it names its dataset, kind, ``version`` and primary metric, and
turns a data root, a label fraction and a seed into labelled items; the system for its ``kind``
(``systems/``) trains and tests. Every protocol value (frozen or not, head, image size, epochs,
optimiser, early stopping) lives in the task's YAML (``configs/task/<key>.yaml``) merged with the
preset's ``transfer:`` section; method configs cannot set them. A protocol change bumps
``version``, which makes older results and baselines incomparable on purpose.

Adding a task = ``tasks/<dataset>_<kind>.py`` + ``configs/task/<dataset>_<kind>.yaml``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from cxrbench.data import formats
from cxrbench.data.labels import Labelled, labels_from_index, records_by_id
from cxrbench.data.roots import DataRoots, dataset_folder
from cxrbench.data.splits import make_splits


@dataclass
class ImageSpec:
    resize: int = 256  # long side resized, zero-padded square (MGCA)
    crop: int = 224  # random crop for training (when augmenting), centre crop otherwise
    # classification reads images from the preprocessed image store (data/store.py): off |
    # exact (the decoded files' pixels: out of the config hash) | draft (its own hash)
    store: str = "off"


@dataclass
class ProbeSpec:
    finetune: bool = False  # False: frozen encoder in eval mode + head (the mgca protocol)
    augment: bool = False  # True: MGCA's training augmentation, features not cached
    policy: str = "crop"  # augmentation when augmenting: "crop" (DataTransforms) or "moco2"


PROBE_MODES = ("finetune", "augment", "cached", "frozen")
#: the label and split files of a dataset folder (what ``Task.data`` reads; images are not)
LABEL_SUFFIXES = (".csv", ".gz", ".txt", ".tsv", ".json", ".jsonl")
_DATA_KEEP = 8
_DATA_KEPT: dict[tuple[Any, ...], tuple[tuple[Any, ...], dict[str, Any]]] = {}


def label_files_stamp(folder: Path, depth: int = 2) -> tuple[Any, ...]:
    """(path, size, mtime) of every label or split file (:data:`LABEL_SUFFIXES`) in ``folder``
    down to ``depth`` levels: the official CSVs sit at the top or one level down, the stored
    splits in ``cxrbench-splits/``. Image folders are listed, never stat'ed file by file."""
    found: list[tuple[str, int, int]] = []

    def walk(path: Path, level: int) -> None:
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            if entry.is_dir(follow_symlinks=True):
                if level < depth:
                    walk(Path(entry.path), level + 1)
            elif entry.name.endswith(LABEL_SUFFIXES):
                st = entry.stat()
                found.append((entry.path, st.st_size, st.st_mtime_ns))

    walk(Path(folder), 1)
    return tuple(found)


def probe_mode(probe: ProbeSpec, cached: bool = False) -> str:
    """What a result records as ``probe_mode``, for every task kind: ``finetune`` (the encoder is
    trained), else ``augment`` (frozen, augmented images each epoch), else ``cached`` (frozen,
    features from the cache) or ``frozen`` (frozen, images each epoch). Tables key the "fine-tuned"
    caption and protocol families on it."""
    if probe.finetune:
        return "finetune"
    if probe.augment:
        return "augment"
    return "cached" if cached else "frozen"


@dataclass
class OptimSpec:
    lr: float = 5e-4
    weight_decay: float = 1e-6
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    encoder_lr_scale: float = 0.1  # finetune mode only
    # "constant" (the papers' probes) or "cosine": cosine decay from lr to 0 over the run's
    # max_epochs (systems/schedule.py; a run that early-stops ends before the decay does)
    schedule: str = "constant"


@dataclass
class TrainSpec:
    batch_size: int = 48
    max_epochs: int = 50
    patience: int = 10  # early stopping: validations without improvement of the monitor
    val_every: int = 1  # validate (and check early stopping) every N epochs
    workers: int = 2
    feature_batch_size: int = 128  # feature extraction for the frozen-feature cache
    # batch size of the val and test loaders (0: batch_size). Every evaluation metric and loss is
    # computed over the whole split, so it changes only float rounding and speed
    eval_batch_size: int = 0
    # > 0: validate on a fixed subset of at most this many val images, the same for every run,
    # method and seed (``val_subset``); 0: the whole val split, as the papers
    val_limit: int = 0
    min_steps_per_epoch: int = 0  # >0: small training sets are re-passed (systems/base.py)
    max_steps_per_epoch: int = 0  # >0: an epoch is at most this many batches (systems/base.py)
    # dense tasks, frozen and not augmenting: keep the encoder's maps of the run's images in
    # memory when they fit in this many GiB (0: off; systems/frozen_maps.py)
    map_cache_gib: float = 4.0
    # > 0: validate, select and test an exponential moving average of the trained weights with
    # this decay (systems/averaging.py); 0: the raw weights, as the papers
    ema: float = 0.0


@dataclass
class TransferTrainerSpec:
    accelerator: str = "auto"
    devices: int = 1
    precision: str = "32-true"
    progress: bool = True
    checkpoint_every: int = 0  # also save last.ckpt every N steps (0: at validation ends only)
    # ``auto``: a system that can train, select and test without a Lightning Trainer does (the
    # linear probe on cached features: a tensor loop, systems/classification.py); ``lightning``:
    # always the Trainer. The same numbers either way (tested), so it is out of the config hash
    loop: str = "auto"


@dataclass
class TaskConfig:
    """A transfer run's protocol: task YAML, then the preset's ``transfer:``, then ``--set``."""

    dataset: str = ""
    image: ImageSpec = field(default_factory=ImageSpec)
    probe: ProbeSpec = field(default_factory=ProbeSpec)
    optim: OptimSpec = field(default_factory=OptimSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    trainer: TransferTrainerSpec = field(default_factory=TransferTrainerSpec)
    data: DataRoots = field(default_factory=DataRoots)
    # settings of the kind's system (e.g. the detector and its thresholds); the system validates
    # them and names an unknown key
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Items:
    """Labelled images of one split part: ids, paths and a (N, C) float label matrix.

    ``targets`` holds, for dense tasks, each image's annotation record as the dataset reader
    returns it (e.g. :class:`~cxrbench.data.formats.siim.SiimImage` with its RLE regions); empty
    for classification."""

    ids: list[str]
    paths: list[Path]
    labels: np.ndarray
    targets: tuple[Any, ...] = ()


@dataclass(frozen=True)
class TaskData:
    train: Items  # the label fraction
    train_all: Items  # the whole training split (what the frozen-feature cache covers)
    val: Items
    test: Items
    classes: tuple[str, ...]
    label_kind: str  # multilabel | multiclass
    split_hash: str
    fingerprint: str  # sha256 of the ids and labels actually used (train fraction, val, test)


class Task:
    """Base class; subclasses set the class attributes below."""

    kind: ClassVar[str] = "classification"
    #: nothing is trained (zero-shot, retrieval): no label fraction, the method's vision–language
    #: artifact instead of its image encoder alone (``runner/transfer.py``)
    evaluation_only: ClassVar[bool] = False
    version: ClassVar[int] = 1
    #: protocol family (PROTOCOLS.md) of each version of this task; a table shows published rows
    #: only beside records of one family
    protocols: ClassVar[dict[int, str]] = {1: "mgca"}
    dataset: ClassVar[str] = ""
    metric: ClassVar[str] = "auroc"  # primary test metric
    higher_is_better: ClassVar[bool] = True

    def __init__(self, name: str, cfg: TaskConfig) -> None:
        self.name = name
        self.cfg = cfg

    def folder(self, data_root: Path) -> Path:
        return dataset_folder(self.dataset, data_root, self.cfg.data)

    def annotations(self, index: Any) -> dict[str, Any] | None:
        """The annotation record of every image id (``Items.targets``) from the reader's
        ``index``: the reader's own records (masks, boxes) for dense tasks, None for
        classification."""
        return None if self.kind == "classification" else records_by_id(self.dataset, index)

    def select_train(self, train: Items) -> Items:
        """The training items actually used from the label fraction (all of them by default)."""
        return train

    def data(self, data_root: Path, fraction: float) -> TaskData:
        """Items of the stored splits; the training part is the nested label ``fraction``.

        The subset does not depend on the training seed (nested fractions, fixed once). What
        was read is kept in this process while the folder's label and split files are
        unchanged (:func:`label_files_stamp`): a grid's runs read the CSVs once (a real
        CheXpert ``train.csv`` has 224k rows)."""
        folder = self.folder(data_root)
        key = (type(self), self.name, str(folder.resolve()), self.cfg.train.val_limit)
        kept = _DATA_KEPT.get(key)
        if kept is None or kept[0] != label_files_stamp(folder):
            read = self._read_dataset(folder)
            while len(_DATA_KEPT) >= _DATA_KEEP:
                del _DATA_KEPT[next(iter(_DATA_KEPT))]
            kept = _DATA_KEPT[key] = (label_files_stamp(folder), read)  # after splits are written
        read = kept[1]
        fractions: dict[float, TaskData] = read["fractions"]
        if float(fraction) not in fractions:
            fractions[float(fraction)] = self._fraction_data(read, fraction)
        return fractions[float(fraction)]

    def _read_dataset(self, folder: Path) -> dict[str, Any]:
        """What every fraction shares: labels, splits, annotation records, the whole train part."""
        index = formats.get_reader(self.dataset).read(folder)  # read once: labels and records
        labelled = labels_from_index(self.dataset, index)
        splits = make_splits(self.dataset, folder, index=index)
        records = self.annotations(index)
        everything = _items(labelled, list(splits.train), records)
        return {"labelled": labelled, "splits": splits, "records": records,
                "everything": everything, "fractions": {}}  # fmt: skip

    def _fraction_data(self, read: dict[str, Any], fraction: float) -> TaskData:
        labelled, splits, records = read["labelled"], read["splits"], read["records"]
        parts = {
            "train": splits.fraction(fraction),
            "val": val_subset(list(splits.val), labelled, self.cfg.train.val_limit),
            "test": list(splits.test),
        }
        items = {k: _items(labelled, ids, records) for k, ids in parts.items()}
        items["train"] = self.select_train(items["train"])
        return TaskData(
            items["train"],
            read["everything"],
            items["val"],
            items["test"],
            labelled.classes,
            labelled.kind,
            splits.split_hash,
            fingerprint_items(items),
        )

    @classmethod
    def describe(cls) -> dict[str, Any]:
        return {
            "kind": cls.kind,
            "version": cls.version,
            "dataset": cls.dataset,
            "metric": cls.metric,
            "higher_is_better": cls.higher_is_better,
        }


def val_subset(ids: list[str], labelled: Labelled, limit: int) -> list[str]:
    """At most ``limit`` of the val ``ids`` (all of them when ``limit`` is 0 or not smaller),
    in their split order: a fixed draw that depends on the ids only, never on the seed, so every
    run validates on the same images.

    Images with a positive label and images without one are drawn in their split's proportion
    (largest remainder), each stratum in the order of sha256(id): the draw for a smaller limit is
    nearly a subset of a larger one's, and adding images to the split moves few choices."""
    if limit <= 0 or limit >= len(ids):
        return ids
    positive = [i for i in ids if bool(np.any(labelled.labels[i] > 0))]
    negative = [i for i in ids if not np.any(labelled.labels[i] > 0)]
    n_pos = round(limit * len(positive) / len(ids))
    n_pos = min(max(n_pos, limit - len(negative)), len(positive))

    def first(group: list[str], n: int) -> set[str]:
        return set(sorted(group, key=lambda i: hashlib.sha256(i.encode()).hexdigest())[:n])

    keep = first(positive, n_pos) | first(negative, limit - n_pos)
    return [i for i in ids if i in keep]


def _items(labelled: Labelled, ids: list[str], records: dict[str, Any] | None = None) -> Items:
    missing = [i for i in ids if i not in labelled.labels]
    if missing:
        from cxrbench.errors import CxrbenchError

        raise CxrbenchError(
            f"{len(missing)} split ids (e.g. {missing[0]!r}) are not in the dataset's label files; "
            "the splits were made from other files: remake them with cxrbench data splits --force"
        )
    labels = np.stack([labelled.labels[i] for i in ids]).astype(np.float32)
    targets = tuple(records[i] for i in ids) if records is not None else ()
    return Items(list(ids), [labelled.paths[i] for i in ids], labels, targets)


def fingerprint_items(items: dict[str, Items]) -> str:
    """sha256[:16] of the ids and labels of the train, val and test parts (``TaskData``)."""
    digest = hashlib.sha256()
    for part in ("train", "val", "test"):
        digest.update(part.encode())
        for ident, label in zip(items[part].ids, items[part].labels, strict=True):
            digest.update(ident.encode() + label.tobytes())
    return digest.hexdigest()[:16]
