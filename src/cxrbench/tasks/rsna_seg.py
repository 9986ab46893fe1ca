"""RSNA Pneumonia segmentation (mgca protocol, version 1).

Masks are the patient's ``Target == 1`` boxes of ``stage_2_train_labels.csv``, filled
(:class:`~cxrbench.data.formats.rsna.RsnaImage`; a box outside its image is an error when the image
is read). Splits 60/20/20 stratified (as ``rsna_cls``). Frozen encoder + U-Net
(``systems/segmentation.py``), loss ``10 · focal(γ = 2) − log(soft Dice)``, AdamW lr 5e-4,
wd 0.05, batch 16, at most 50 epochs, early stopping (patience 10) on val loss, test with the best
checkpoint; metric: Dice per image averaged over images. Every image of the label fraction is
used (no positive/negative balancing, as MGCA).
"""

from __future__ import annotations

from cxrbench.tasks import TASKS
from cxrbench.tasks.base import Task


@TASKS.register("rsna_seg")
class RsnaSeg(Task):
    kind = "segmentation"
    dataset = "rsna"
    metric = "dice"
