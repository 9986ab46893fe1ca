"""RSNA Pneumonia zero-shot classification (version 1): pneumonia vs normal from text prompts.

The test split of ``rsna_cls`` (the same stored 60/20/20 split, the same test images and labels);
nothing is trained (``systems/zeroshot.py``). Default prompt style ``chexzero``: an image's
pneumonia score is the softmax probability of the positive prompt against the negative one;
metric AUROC. The prompts use SynthCXR's report vocabulary (``docs/synthcxr.md``).
"""

from __future__ import annotations

from typing import ClassVar

from cxrbench.tasks import TASKS
from cxrbench.tasks.base import Task


@TASKS.register("rsna_zeroshot")
class RsnaZeroshot(Task):
    kind = "zeroshot"
    evaluation_only = True
    dataset = "rsna"
    metric = "auroc"
    protocols: ClassVar[dict[int, str]] = {1: "chexzero"}
