"""systems/base.py: the shared loader and its minimum number of steps per training epoch."""

from __future__ import annotations

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
