"""The transfer-system contract: what the runner needs from the system of a task kind.

``run_transfer`` (``runner/transfer.py``) owns everything kind-independent: the run folder and its
identity, loading and freezing the encoder artifact, seeding, the Lightning ``Trainer`` with
checkpointing, early stopping and resume, and the :class:`~cxrbench.report.schema.ResultRecord`.
A system owns the rest: from the task's items and the encoder it builds itself and its data
loaders (:meth:`TransferSystem.prepare`), trains, and after the test epoch leaves its metrics in
``test_results`` (``{"test/<metric>": value, ...}``, computed over the whole test set).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import lightning as L
from torch import nn
from torch.utils.data import DataLoader

if TYPE_CHECKING:
    from cxrbench.data.features import FeatureCache
    from cxrbench.tasks.base import Task, TaskConfig, TaskData


@dataclass
class Prepared:
    """A system with its loaders; ``probe_mode`` is recorded in the result (e.g. ``cached``)."""

    system: TransferSystem
    train: DataLoader[Any]
    val: DataLoader[Any]
    test: DataLoader[Any]
    probe_mode: str


class TransferSystem(L.LightningModule):
    """Base class of the downstream systems; subclasses register in ``SYSTEMS`` by task kind."""

    monitor: ClassVar[str] = "val/loss"  # what early stopping and the best checkpoint follow
    monitor_mode: ClassVar[str] = "min"

    def __init__(self) -> None:
        super().__init__()
        self.test_results: dict[str, float] = {}

    @classmethod
    def prepare(
        cls,
        task: Task,
        cfg: TaskConfig,
        data: TaskData,
        encoder: nn.Module,
        meta: dict[str, Any],
        cache: FeatureCache,
    ) -> Prepared:
        """Build the system (head on ``encoder``, frozen or not per ``cfg``) and its loaders."""
        raise NotImplementedError
