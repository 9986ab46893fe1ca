"""RSNA Pneumonia classification (mgca protocol, version 1).

Label = any ``Target == 1`` row of the patient in ``stage_2_train_labels.csv``. Splits 60/20/20
stratified (MGCA's detection split sizes 16,010 / 5,337 / 5,337). Frozen encoder + linear head,
BCE, AUROC. DICOMs are read with MONOCHROME1 inversion and VOI LUT (``data/codecs.py``).
"""

from __future__ import annotations

from cxrbench.tasks import TASKS
from cxrbench.tasks.base import Task


@TASKS.register("rsna_cls")
class RsnaCls(Task):
    dataset = "rsna"
    metric = "auroc"
