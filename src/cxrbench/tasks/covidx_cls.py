"""COVIDx classification (mgca protocol, version 1).

Classes from the file itself: normal / pneumonia / COVID-19 for the v6-style listings (3 classes),
negative / positive for the CXR-3/4 listings (2 classes). Test = the official ``test.txt``; val =
20% of ``train.txt`` (stratified). Frozen encoder + linear head, cross-entropy, top-1 accuracy.
"""

from __future__ import annotations

from cxrbench.tasks import TASKS
from cxrbench.tasks.base import Task


@TASKS.register("covidx_cls")
class CovidxCls(Task):
    dataset = "covidx"
    metric = "accuracy"
