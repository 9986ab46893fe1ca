"""Image–report pairs for pre-training, from a MIMIC-CXR-JPG layout folder (real or SynthCXR).

Pairs are the frontal images (PA/AP) whose MGCA-cleaned impression + findings text is non-empty
(``formats.mimic.pairs``); the official ``train`` split trains, ``validate`` + ``test`` validate
(MGCA merges them). A batch is ``{"image": (B, 3, S, S) float, "text": list[str], "sentences":
list[tuple[str, ...]], "study_id": list[str]}`` (``text`` is the cleaned report, ``sentences`` the
same words split into its cleaned sentences, for methods that sample or align sentences);
tokenisation belongs to the method's text encoder, so this module knows nothing about
any method.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from cxrbench.data.formats import mimic
from cxrbench.data.store import ImageStore, read_resized
from cxrbench.data.transforms import mgca_image
from cxrbench.errors import DataFormatError

TRAIN_SPLITS = {"train": ("train",), "val": ("validate", "test")}


@dataclass(frozen=True)
class Pair:
    image_path: Path
    text: str
    study_id: str
    sentences: tuple[str, ...] = ()  # the cleaned sentences; ``text`` is them joined by spaces


def load_pairs(mimic_root: Path, split: str, limit: int | None = None) -> list[Pair]:
    """The usable pairs of ``split`` (``train`` or ``val``); none is an error naming the folder."""
    if split not in TRAIN_SPLITS:
        raise ValueError(f"split must be one of {tuple(TRAIN_SPLITS)}, got {split!r}")
    index = mimic.read(Path(mimic_root))
    wanted = TRAIN_SPLITS[split]
    chosen = [(img, sents) for img, sents in mimic.sentence_pairs(index) if img.split in wanted]
    if not chosen:
        raise DataFormatError(
            mimic_root,
            f"at least one frontal (PA/AP) image with a non-empty findings/impression report "
            f"in the "
            f"official {'/'.join(wanted)} split",
            "no usable image-report pairs",
        )
    pairs = [Pair(img.image_path, " ".join(s), img.study_id, s) for img, s in chosen]
    return pairs[:limit] if limit else pairs


def pair_store(
    mimic_root: Path, resize: int, decoder: str, cache_root: Path, progress: bool = False
) -> ImageStore:
    """The image store of every pre-training pair's image (train and val) at ``resize``."""
    from cxrbench.data.store import dataset_images

    return ImageStore.ensure(dataset_images("mimic", mimic_root), resize, cache_root=cache_root,
                             decoder=decoder, progress=progress)  # fmt: skip


class PairDataset(Dataset[dict[str, Any]]):
    """Decoded, resized, cropped image + its report text."""

    def __init__(
        self,
        pairs: list[Pair],
        resize: int,
        crop: int,
        *,
        train: bool,
        store: ImageStore | None = None,
    ) -> None:
        self.pairs = pairs
        self.resize, self.crop, self.train = resize, crop, train
        self.store = store  # preprocessed images (data/store.py); None: decode the files

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict[str, Any]:
        pair = self.pairs[i]
        image = mgca_image(
            read_resized(pair.image_path, self.resize, self.store),
            self.resize,
            self.crop,
            train=self.train,
        )
        sentences = pair.sentences or (pair.text,)
        return {
            "image": image,
            "text": pair.text,
            "sentences": sentences,
            "study_id": pair.study_id,
        }


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors, keep strings as lists."""
    out: dict[str, Any] = {}
    for key in items[0]:
        values = [item[key] for item in items]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return out
