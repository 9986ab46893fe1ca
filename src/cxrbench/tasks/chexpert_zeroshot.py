"""CheXpert 5×200 zero-shot classification (GLoRIA's protocol, version 1).

The evaluation set is drawn by GLoRIA's rule from the official ``train.csv`` (GLoRIA and MGCA's
``preprocess_chexpert_5x200_data``): frontal images whose **only** positive among the 13
observations other than No Finding is one competition class (Atelectasis, Cardiomegaly,
Consolidation, Edema, Pleural Effusion), blanks read as 0 — an uncertain (−1) anywhere makes an
image ineligible, as the rule compares every column with 0 or 1. From each class's eligible images
``params.per_class`` (200) are drawn without replacement with ``params.draw_seed``; when a class has
fewer, **every class gets the smallest class's count** (the set stays balanced, chance accuracy
stays 1/5) and a warning says so. The draw is fixed (never the run's seed): every method is scored
on the same images; its ids are the split hash and the data fingerprint.

Nothing is trained (``systems/zeroshot.py``): each image is scored against the class prompts of
``params.style`` (GLoRIA's severity × subtype × location prompts, or CheXzero's positive /
negative pairs) through the method's image–text space. Metrics: accuracy (the headline, as GLoRIA
reports) and macro AUROC. The prompts are written in SynthCXR's report vocabulary
(``docs/synthcxr.md``) and recorded by hash with every result.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import ClassVar

import numpy as np

from cxrbench.data import formats
from cxrbench.data.formats.chexpert import COMPETITION_CLASSES, OBSERVATIONS
from cxrbench.errors import CxrbenchError
from cxrbench.tasks import TASKS
from cxrbench.tasks.base import Items, Task, TaskData, fingerprint_items

log = logging.getLogger(__name__)
#: what GLoRIA's rule looks at besides the class: every observation except No Finding
RULE_COLUMNS = tuple(o for o in OBSERVATIONS if o != "No Finding")


def eligible(index: object) -> dict[str, list[str]]:
    """The frontal ``train.csv`` images of each competition class under GLoRIA's rule, by path."""
    out: dict[str, list[str]] = {name: [] for name in COMPETITION_CLASSES}
    for image in index.images:  # type: ignore[attr-defined]
        if image.split != "train" or not image.frontal:
            continue
        values = {k: 0.0 if image.labels[k] is None else image.labels[k] for k in RULE_COLUMNS}
        positives = [k for k, v in values.items() if v == 1.0]
        if len(positives) != 1 or positives[0] not in out:
            continue
        if all(v in (0.0, 1.0) for v in values.values()):
            out[positives[0]].append(image.path)
    return out


def draw(pools: dict[str, list[str]], per_class: int, seed: int) -> dict[str, list[str]]:
    """``n`` ids per class, n = min(per_class, the smallest pool): a seeded draw from each pool
    in path order, returned in path order."""
    n = min(per_class, *(len(p) for p in pools.values()))
    rng = np.random.default_rng(seed)
    out = {}
    for name, pool in pools.items():
        ordered = sorted(pool)
        picks: list[int] = rng.choice(len(ordered), size=n, replace=False).tolist() if n else []
        out[name] = sorted(ordered[i] for i in picks)
    return out


@TASKS.register("chexpert_zeroshot")
class ChexpertZeroshot(Task):
    kind = "zeroshot"
    evaluation_only = True
    dataset = "chexpert"
    metric = "accuracy"
    protocols: ClassVar[dict[int, str]] = {1: "gloria"}

    def data(self, data_root: Path, fraction: float) -> TaskData:
        folder = self.folder(data_root)
        index = formats.get_reader(self.dataset).read(folder)
        params = self.cfg.params
        per_class, seed = int(params.get("per_class", 200)), int(params.get("draw_seed", 0))
        pools = eligible(index)
        counts = {k: len(v) for k, v in pools.items()}
        if min(counts.values()) == 0:
            raise CxrbenchError(
                f"{folder}: GLoRIA's 5×200 rule finds no eligible frontal train.csv image for "
                f"{', '.join(k for k, v in counts.items() if not v)} (eligible: {counts})"
            )
        chosen = draw(pools, per_class, seed)
        n = len(next(iter(chosen.values())))
        if n < per_class:
            log.warning("CheXpert 5×%d: only %d per class (eligible: %s)", per_class, n, counts)
        paths = {image.path: image.image_path for image in index.images}
        ids, labels = [], []
        eye = np.eye(len(COMPETITION_CLASSES), dtype=np.float32)
        for c, name in enumerate(COMPETITION_CLASSES):
            ids += chosen[name]
            labels += [eye[c]] * len(chosen[name])
        test = Items(ids, [paths[i] for i in ids], np.stack(labels))
        empty = Items([], [], np.zeros((0, len(COMPETITION_CLASSES)), np.float32))
        rule = f"gloria-5x{per_class}/seed{seed}/" + ",".join(ids)
        split_hash = hashlib.sha256(rule.encode()).hexdigest()[:16]
        parts = {"train": empty, "val": empty, "test": test}
        return TaskData(empty, empty, empty, test, tuple(COMPETITION_CLASSES), "multiclass",
                        split_hash, fingerprint_items(parts))  # fmt: skip
