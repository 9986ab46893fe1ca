"""SIIM-ACR pneumothorax segmentation (mgca protocol, version 1).

Masks are the union of each image's RLE regions in ``train-rle.csv`` (SIIM's relative,
column-major encoding; :class:`~cxrbench.data.formats.siim.SiimImage`). Splits 70/15/15 stratified
on "any region" (MGCA's). Frozen encoder + U-Net (``systems/segmentation.py``), loss
``10 · focal(γ = 2) − log(soft Dice)``, AdamW lr 5e-4, wd 0.05, batch 8, at most 50 epochs, early
stopping (patience 10) on val loss, test with the best checkpoint; metric: Dice per image averaged
over images.

Training set (PROTOCOLS.md: "all positives + an equal number of negatives; val/test keep all"):
every positive image of the label fraction and, of its negative images, the first ones in the
given order, as many as there are positives. That order is the split's fixed stratified order
(``data/splits.py``), so the choice is deterministic, independent of the training seed and nested
(the balanced 1 % set is inside the balanced 10 % set). When the fraction holds fewer negatives than
positives, all of them are kept (and a warning is logged).

Deviation from MGCA: MGCA balanced the whole training split with a random draw of negatives
(``np.random.choice``, global seed) and then drew the label fraction from the balanced set; here
the nested fraction is taken first and then balanced. Both give ``≈ 2 · fraction · positives``
training images.
"""

from __future__ import annotations

import logging

from cxrbench.tasks import TASKS
from cxrbench.tasks.base import Items, Task

log = logging.getLogger(__name__)


def balance(items: Items) -> Items:
    """All positives (label column 0) + as many negatives, the first in the given order.

    The kept items stay in their given order."""
    positive = [bool(row[0] >= 0.5) for row in items.labels]
    n_pos = sum(positive)
    negatives = [i for i, p in enumerate(positive) if not p]
    if len(negatives) < n_pos:
        log.warning(
            "the training set has %d positive and only %d negative images; keeping all of them",
            n_pos,
            len(negatives),
        )
    chosen = set(negatives[:n_pos])
    keep = [i for i, p in enumerate(positive) if p or i in chosen]
    return Items(
        [items.ids[i] for i in keep],
        [items.paths[i] for i in keep],
        items.labels[keep],
        tuple(items.targets[i] for i in keep) if items.targets else (),
    )


@TASKS.register("siim_seg")
class SiimSeg(Task):
    kind = "segmentation"
    dataset = "siim"
    metric = "dice"

    def select_train(self, train: Items) -> Items:
        return balance(train)
