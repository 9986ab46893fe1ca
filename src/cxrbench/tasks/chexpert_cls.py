"""CheXpert classification (mgca protocol, version 1).

Frontal images only; the 5 competition classes (Atelectasis, Cardiomegaly, Consolidation, Edema,
Pleural Effusion); blank → 0; uncertain −1 → 1 for Atelectasis, Edema and Pleural Effusion
(U-ones), → 0 for Cardiomegaly and Consolidation (U-zeros). Test = the official ``valid.csv``
(202 frontal images on the real dataset); val = min(5,000, 15%) held out of ``train.csv``. Frozen
encoder + linear head on the pooled feature, BCE, macro AUROC. MGCA trains this probe with its
``Moco2Transform`` augmentation; the cached-feature default (no augmentation) and the MGCA-exact
mode (``probe.augment: true``) are both recorded in the result (``probe_mode``).
"""

from __future__ import annotations

from cxrbench.tasks import TASKS
from cxrbench.tasks.base import Task


@TASKS.register("chexpert_cls")
class ChexpertCls(Task):
    dataset = "chexpert"
    metric = "auroc"
