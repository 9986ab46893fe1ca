"""The only LightningModules: one system per job kind (pre-training, classification, ...).

Transfer systems register under their task ``kind`` in :data:`SYSTEMS` (``systems/<kind>.py``);
the runner looks the kind of a task up here, so a new kind is one file in this folder.
"""

from __future__ import annotations

from typing import Any

from cxrbench.registry import Registry

#: a kind's system: a :class:`~cxrbench.systems.base.TransferSystem` (trained), or for a kind
#: that trains nothing (zero-shot, retrieval) a class with ``trains = False`` and ``evaluate``
SYSTEMS: Registry[type[Any]] = Registry("system", "cxrbench.systems")
