"""Shared fixtures: one thread per xdist worker; synth-tiny is made once per test session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True, scope="session")
def _one_thread_per_worker() -> None:
    import torch

    torch.set_num_threads(1)
