"""Training loaders that resume exactly: order and augmentation are functions of (seed, epoch).

A training run killed mid-epoch and resumed from its checkpoint must end with the same weights as
one that was never interrupted. Three things make that hold here, whatever the worker count:

- :class:`EpochSampler` draws the epoch's order from ``(seed, epoch)`` alone (several reshuffled
  passes when an epoch is asked to be longer than the data) and, under DDP, gives each rank its
  share of it. It yields ``(epoch, index)`` keys.
- :class:`SeededItems` reads item ``index`` with torch's global generator seeded from
  ``(seed, epoch, index)`` and restored afterwards (items draw from torch's generator only): an
  item's random crop or flip no longer depends on which worker made it, how many workers there
  are, or what was drawn before; the main process's generators (dropout, masking) are left to
  the model.
- :class:`ResumableLoader` counts the batches handed to the training loop. Lightning saves that
  count with each checkpoint (a loader with ``state_dict``/``load_state_dict`` is "stateful" to
  it) and gives it back on resume; the sampler then skips those batches without reading them.
  ``iter()`` puts torch's global generator back as it found it (a ``DataLoader`` draws its
  workers' base seed there), so where a run resumes does not move the model's random stream
  either.

Evaluation loaders need none of this (no randomness): :class:`EvalLoader` is a ``DataLoader``
whose ``iter()`` only leaves the global generator alone, for the same reason. (A dedicated
``torch.Generator`` per loader would do that too, but it does not survive ``ddp_spawn``'s
pickling.)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cxrbench.errors import CxrbenchError


def _world() -> tuple[int, int]:
    """(rank, world size) of the running DDP group; (0, 1) outside one."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


STREAM_KEY = 2**31
"""Keeps the passes of capped epochs' stream apart from the per-epoch permutations' seeds."""


class EpochSampler(Sampler[tuple[int, int]]):
    """The items of one epoch as ``(epoch, index)`` keys, in an order fixed by ``(seed, epoch)``.

    ``num_samples`` > ``n`` makes an epoch several reshuffled passes over the items (never an
    item twice within a pass); ``num_samples`` < ``n`` (shuffled only) makes epoch ``e`` the
    part ``[e·num_samples, (e+1)·num_samples)`` of one stream of reshuffled passes, so epochs have
    a fixed size whatever the number of items and every item comes once per pass. Under DDP
    each rank takes every ``world``-th key of the order, padded to a multiple of ``world`` by
    wrapping around (as ``DistributedSampler``). ``skip`` keys (a resumed epoch's consumed part)
    are left out of the next iteration only.
    """

    def __init__(
        self, n: int, *, seed: int, shuffle: bool = True, num_samples: int | None = None
    ) -> None:
        self.n, self.seed, self.shuffle = int(n), int(seed), shuffle
        want = int(num_samples or n)
        self.num_samples = want if shuffle and 0 < want < n else max(want, int(n))
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:  # called by Lightning at every epoch start
        self.epoch = int(epoch)

    def order(self, epoch: int) -> np.ndarray:
        """This rank's item indices for ``epoch``."""
        if self.n == 0:
            return np.zeros(0, dtype=np.int64)
        passes = math.ceil(self.num_samples / self.n)
        if self.shuffle and self.num_samples < self.n:  # a part of the stream of passes
            start = epoch * self.num_samples
            first, last = start // self.n, (start + self.num_samples - 1) // self.n
            stream = [
                np.random.default_rng([self.seed, STREAM_KEY, p]).permutation(self.n)
                for p in range(first, last + 1)
            ]
            offset = start - first * self.n
            full = np.concatenate(stream)[offset : offset + self.num_samples]
        elif self.shuffle:
            rng = np.random.default_rng([self.seed, epoch])
            full = np.concatenate([rng.permutation(self.n) for _ in range(passes)])
        else:
            full = np.tile(np.arange(self.n), passes)
        full = full[: self.num_samples]
        rank, world = _world()
        if world > 1:
            total = math.ceil(len(full) / world) * world
            full = np.resize(full, total)[rank::world]
        return full

    def __len__(self) -> int:
        _, world = _world()
        return math.ceil(self.num_samples / world) if self.n else 0

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, skip = self.epoch, self.skip
        self.skip = 0
        for index in self.order(epoch)[skip:]:
            yield epoch, int(index)


@contextmanager
def seeded(*key: int) -> Iterator[None]:
    """torch's global (CPU) generator seeded from ``key`` inside the block and put back as it was
    after it. Only torch's: what an item draws (crops, flips, albumentations' seed) must come
    from it. NumPy's and Python's global generators are left alone: seeding them costs ~0.1 ms
    per item, which is most of a cached-feature probe's time, and no item code uses them."""
    words = np.random.SeedSequence([abs(int(k)) for k in key]).generate_state(2)
    state = torch.get_rng_state()
    try:
        torch.default_generator.manual_seed(int(words[0]) << 32 | int(words[1]))
        yield
    finally:
        torch.set_rng_state(state)


class SeededItems(Dataset[Any]):
    """``items[index]`` read under :func:`seeded` ``(seed, epoch, index)``; items whose
    ``draws_random`` attribute is false (cached feature rows) are read as they are."""

    def __init__(self, items: Dataset[Any], seed: int) -> None:
        self.items, self.seed = items, int(seed)

    def __len__(self) -> int:
        return len(self.items)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        if not getattr(self.items, "draws_random", True):  # e.g. cached feature rows
            return self.items[index]
        with seeded(self.seed, epoch, index):
            return self.items[index]


class ResumableLoader(DataLoader[Any]):
    """A training loader over ``items`` with :class:`EpochSampler` order, :class:`SeededItems`
    augmentation and a resumable position (``state_dict``/``load_state_dict``, which Lightning
    saves in and restores from its checkpoints). Other keyword arguments go to ``DataLoader``
    (``shuffle``/``sampler``/``generator`` are this class's own)."""

    def __init__(
        self,
        items: Dataset[Any],
        *,
        seed: int,
        batch_size: int,
        shuffle: bool = True,
        num_samples: int | None = None,
        **kwargs: Any,
    ) -> None:
        n = len(items)  # type: ignore[arg-type]
        sampler = EpochSampler(n, seed=seed, shuffle=shuffle, num_samples=num_samples)
        super().__init__(SeededItems(items, seed), batch_size=batch_size, sampler=sampler,
                         **kwargs)  # fmt: skip
        self._consumed = 0

    @property
    def epoch_sampler(self) -> EpochSampler:
        assert isinstance(self.sampler, EpochSampler)
        return self.sampler

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        assert self.batch_size is not None
        self._consumed = self.epoch_sampler.skip // self.batch_size
        for batch in _quiet_iter(super().__iter__):
            self._consumed += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """Where the next batch is: ``epoch`` and the ``batches`` of it already consumed."""
        s = self.epoch_sampler
        epoch, consumed = s.epoch, self._consumed
        if consumed >= len(self):  # a finished epoch: the next one starts at its beginning
            epoch, consumed = epoch + 1, 0
        return {"epoch": epoch, "batches": consumed, "seed": s.seed, "samples": s.num_samples}

    def load_state_dict(self, state: dict[str, int]) -> None:
        s = self.epoch_sampler
        if (int(state["seed"]), int(state["samples"])) != (s.seed, s.num_samples):
            raise CxrbenchError(
                f"the checkpoint's data order (seed {state['seed']}, {state['samples']} items "
                f"per epoch) is not this run's (seed {s.seed}, {s.num_samples}); it belongs to "
                "another run"
            )
        assert self.batch_size is not None
        s.epoch = int(state["epoch"])
        s.skip = int(state["batches"]) * self.batch_size
        self._consumed = int(state["batches"])


def _quiet_iter(make: Any) -> Any:
    """``make()`` (a ``DataLoader``'s ``iter``) with torch's global generator put back after."""
    state = torch.get_rng_state()
    try:
        return make()
    finally:
        torch.set_rng_state(state)


class EvalLoader(DataLoader[Any]):
    """An evaluation loader whose ``iter()`` leaves torch's global generator as it was."""

    def __iter__(self) -> Any:
        return _quiet_iter(super().__iter__)
