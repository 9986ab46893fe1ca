"""systems/base.py: the shared loader and its minimum number of steps per training epoch."""

from __future__ import annotations

import itertools

import torch

from cxrbench.systems.base import loader
from cxrbench.tasks.base import TaskConfig


def _cfg(batch: int, min_steps: int) -> TaskConfig:
    cfg = TaskConfig()
    cfg.train.batch_size, cfg.train.min_steps_per_epoch, cfg.train.workers = batch, min_steps, 0
    return cfg


def test_small_training_sets_are_repassed_to_the_minimum_steps() -> None:
    rows = list(range(5))
    torch.manual_seed(0)
    batches = list(loader(rows, _cfg(2, 4), train=True))  # type: ignore[arg-type]
    assert len(batches) == 4
    seen = torch.cat(batches).tolist()
    assert len(seen) == 8 and set(seen) == set(rows)
    assert sorted(seen[:5]) == rows  # the first pass is a permutation: nothing drawn twice in it


def test_evaluation_and_large_sets_are_unchanged() -> None:
    rows = list(range(5))
    ordered = loader(rows, _cfg(2, 4), train=False)  # type: ignore[arg-type]
    assert torch.cat(list(ordered)).tolist() == rows
    assert len(loader(list(range(20)), _cfg(2, 4), train=True)) == 10  # type: ignore[arg-type]
    assert len(loader(rows, _cfg(2, 0), train=True)) == 3  # type: ignore[arg-type]


def test_a_capped_epoch_has_a_fixed_size_and_draws_every_item_in_turn() -> None:
    cfg = _cfg(2, 3)
    cfg.train.max_steps_per_epoch = 3
    rows = list(range(20))
    torch.manual_seed(0)
    train = loader(rows, cfg, train=True)  # type: ignore[arg-type]
    small = loader(list(range(4)), cfg, train=True)  # type: ignore[arg-type]
    assert len(train) == len(small) == 3  # one epoch size at every training-set size
    epochs = []
    for epoch in range(8):
        train.sampler.set_epoch(epoch)  # type: ignore[union-attr]
        drawn = torch.cat(list(train)).tolist()
        assert len(drawn) == 6
        epochs.append(drawn)
    assert epochs[0] != epochs[1]  # a fresh part each epoch
    stream = [i for drawn in epochs for i in drawn]  # consecutive parts of one stream
    assert sorted(stream[:20]) == sorted(stream[20:40]) == rows  # every item once per pass
    assert stream[:20] != stream[20:40]  # each pass reshuffled


def test_cosine_schedule_decays_per_step_to_zero_over_the_planned_steps() -> None:
    import lightning as L

    from cxrbench.systems.base import TransferSystem

    class Probe(TransferSystem):
        def __init__(self, schedule: str) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)
            self.cfg = _cfg(4, 0)
            self.cfg.optim.schedule = schedule
            self.lrs: list[float] = []

        def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
            self.lrs.append(self.optimizers().param_groups[0]["lr"])  # type: ignore[union-attr]
            return self.layer(batch).pow(2).mean()

        def configure_optimizers(self):  # type: ignore[no-untyped-def]
            return self.adamw([{"params": self.layer.parameters(), "lr": 0.1}], self.cfg.optim)

    runs = {}
    for schedule in ("constant", "cosine"):
        system = Probe(schedule)
        trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
        trainer.fit(system, torch.utils.data.DataLoader(torch.randn(20, 4), batch_size=4))
        runs[schedule] = system.lrs
    assert runs["constant"] == [0.1] * 10
    cosine = runs["cosine"]
    assert len(cosine) == 10 and cosine[0] == 0.1 and cosine[-1] > 0
    assert all(a > b for a, b in itertools.pairwise(cosine))
    assert abs(cosine[5] - 0.05) < 1e-9  # half-way through the 10 planned steps: half the lr


def test_unknown_schedule_is_a_config_error() -> None:
    import pytest

    from cxrbench.errors import ConfigError
    from cxrbench.runner.resolve import load_task

    with pytest.raises(ConfigError, match=r"optim\.schedule.*cosine"):
        load_task("siim_seg", "tiny", ["optim.schedule=linear"])
    assert (
        load_task("siim_seg", "tiny", ["optim.schedule=constant"]).config_hash
        == load_task("siim_seg", "tiny").config_hash
    )
