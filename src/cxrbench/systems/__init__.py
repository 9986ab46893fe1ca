"""The only LightningModules: one system per job kind (pre-training, classification, ...).

Transfer systems register under their task ``kind`` in :data:`SYSTEMS` (``systems/<kind>.py``);
the runner looks the kind of a task up here, so a new kind is one file in this folder.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cxrbench.registry import Registry

if TYPE_CHECKING:
    from cxrbench.systems.base import TransferSystem

SYSTEMS: Registry[type[TransferSystem]] = Registry("system", "cxrbench.systems")
