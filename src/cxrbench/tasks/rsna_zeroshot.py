"""RSNA Pneumonia zero-shot classification (version 1): pneumonia vs normal from text prompts.

The test split of ``rsna_cls`` (the same stored 60/20/20 split, the same test images and labels);
nothing is trained (``systems/zeroshot.py``). Default prompt style ``chexzero``: an image's
pneumonia score is the softmax probability of the positive prompt against the negative one;
metric AUROC. The prompts use SynthCXR's report vocabulary (``docs/synthcxr.md``).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import numpy as np

from cxrbench.tasks import TASKS
from cxrbench.tasks.base import Items, Task, TaskData, fingerprint_items


@TASKS.register("rsna_zeroshot")
class RsnaZeroshot(Task):
    kind = "zeroshot"
    evaluation_only = True
    dataset = "rsna"
    metric = "auroc"
    protocols: ClassVar[dict[int, str]] = {1: "chexzero"}

    def data(self, data_root: Path, fraction: float) -> TaskData:
        """The stored split's test part only: nothing is trained, no label is read elsewhere."""
        full = super().data(data_root, 1.0)
        empty = Items([], [], np.zeros((0, len(full.classes)), np.float32))
        parts = {"train": empty, "val": empty, "test": full.test}
        return replace(full, train=empty, train_all=empty, val=empty,
                       fingerprint=fingerprint_items(parts))  # fmt: skip
