"""The transfer-system contract: what the runner needs from the system of a task kind.

``run_transfer`` (``runner/transfer.py``) owns everything kind-independent: the run folder and its
identity, loading and freezing the encoder artifact, seeding, the Lightning ``Trainer`` with
checkpointing, early stopping and resume, and the :class:`~cxrbench.report.schema.ResultRecord`.
A system owns the rest: from the task's items and the encoder it builds itself and its data
loaders (:meth:`TransferSystem.prepare`), trains, and after the test epoch leaves its metrics in
``test_results`` (``{"test/<metric>": value, ...}``, computed over the whole test set) and what
they were computed from in ``test_predictions`` (numpy arrays, one entry per test image in the
test loader's order; the keys of its kind are listed in :mod:`cxrbench.predictions`). The runner
writes the latter as ``predictions.npz`` beside ``result.json`` (``cxrbench compare`` resamples
it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cxrbench.data.resumable import EvalLoader, ResumableLoader
from cxrbench.systems.schedule import warmup_cosine

if TYPE_CHECKING:
    from cxrbench.data.features import FeatureCache
    from cxrbench.methods.base import PretrainMethod
    from cxrbench.tasks.base import OptimSpec, Task, TaskConfig, TaskData


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

    trains: ClassVar[bool] = True  # the runner fits and tests it (else: EvaluationSystem)
    monitor: ClassVar[str] = "val/loss"  # what early stopping and the best checkpoint follow
    monitor_mode: ClassVar[str] = "min"

    def __init__(self) -> None:
        super().__init__()
        self.test_results: dict[str, float] = {}
        self.test_predictions: dict[str, np.ndarray] = {}

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

    def fit_without_trainer(self, prepared: Prepared, run_dir: Path) -> float | None:
        """Train, select on :attr:`monitor` and test as the runner's Lightning ``Trainer`` would,
        in a plain loop, leaving ``test_results`` / ``test_predictions`` set; returns the
        selected monitor value. ``None`` (the default): this system, or its config, needs the
        Trainer (``trainer.loop: lightning`` always takes it)."""
        return None

    def adamw(self, groups: list[dict[str, Any]], optim: OptimSpec) -> Any:
        """AdamW on ``groups`` with ``optim``'s decay and betas, and its ``schedule``: constant
        (the papers' probes), or a per-step cosine decay to 0 over the trainer's planned steps
        (``max_epochs`` × batches per epoch; early stopping may end the run before it)."""
        opt = torch.optim.AdamW(
            groups, weight_decay=optim.weight_decay, betas=(optim.betas[0], optim.betas[1])
        )
        if optim.schedule == "constant":
            return opt
        total = int(self.trainer.estimated_stepping_batches)
        sched = warmup_cosine(opt, total, warmup=0.0, min_ratio=0.0)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def loader(
    rows: Dataset[Any],
    cfg: TaskConfig,
    *,
    train: bool,
    workers: int | None = None,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> DataLoader[Any]:
    """A split part's loader: shuffled for training, in order otherwise.

    ``train.min_steps_per_epoch`` (0: off) makes a training epoch at least that many batches by
    drawing several reshuffled passes over the items (never sampling with replacement inside a
    pass; :class:`~cxrbench.data.resumable.EpochSampler`): at 1% labels an epoch can otherwise be
    a single step, and an epoch-based schedule then
    trains a decoder or detection head for a handful of steps. ``train.max_steps_per_epoch``
    (0: off) caps an epoch at that many batches, the next part of one stream of reshuffled passes
    (so every item comes once per pass). With both set to the same value every epoch has that
    size at every label fraction, so a run's compute does not grow with the fraction (the
    ``small`` preset's dense schedule). Evaluation loaders are unchanged, but for their batch
    size, ``train.eval_batch_size`` when set: the metrics, the loss sums (``SegLossSums``) and the
    batch-size-weighted mean losses are all over the whole split, so it changes float rounding
    and speed only (it is left out of the config hash).
    """
    n_workers = cfg.train.workers if workers is None else workers
    common: dict[str, Any] = {
        "batch_size": cfg.train.batch_size,
        "num_workers": n_workers,
        "persistent_workers": n_workers > 0,
        "collate_fn": collate_fn,
    }
    if not train:  # every evaluation sums over the whole split: its batch size is only speed
        return EvalLoader(
            rows,
            shuffle=False,
            **(common | {"batch_size": cfg.train.eval_batch_size or cfg.train.batch_size}),
        )
    size = len(rows)  # type: ignore[arg-type]
    want = max(cfg.train.min_steps_per_epoch * cfg.train.batch_size, size)
    if cfg.train.max_steps_per_epoch:
        want = min(want, cfg.train.max_steps_per_epoch * cfg.train.batch_size)
    # the run's seed (run_transfer seeds everything before the system builds its loaders)
    return ResumableLoader(rows, seed=torch.initial_seed(), num_samples=want, **common)


@dataclass
class Evaluated:
    """What an evaluation-only system hands the runner: as a trained system's test epoch."""

    test_results: dict[str, float]
    test_predictions: dict[str, np.ndarray]
    extra: dict[str, Any]
    probe_mode: str = "zeroshot"


class EvaluationSystem:
    """Base class of the systems of kinds that train nothing (zero-shot, retrieval): the runner
    rebuilds the method from its vision–language artifact and calls :meth:`evaluate` once,
    instead of fitting and testing."""

    trains: ClassVar[bool] = False
    monitor: ClassVar[str] = ""

    @classmethod
    def evaluate(
        cls, task: Task, cfg: TaskConfig, data: TaskData, method: PretrainMethod
    ) -> Evaluated:
        raise NotImplementedError
