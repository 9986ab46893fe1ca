"""Callbacks shared by the systems."""

from __future__ import annotations

import random
import time
from typing import Any

import lightning as L
import numpy as np
import torch


class RNGState(L.Callback):
    """Save and restore the Python, NumPy and torch RNG states with each checkpoint.

    Lightning does not checkpoint them, so a resumed run would shuffle and augment differently
    from an uninterrupted one. States are stored as tensors and lists so that checkpoints load
    with ``torch.load(weights_only=True)``.
    """

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
        state: dict[str, Any] = {
            "python": list(random.getstate()[1]),
            "python_version": random.getstate()[0],
            "numpy": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "numpy_meta": [str(kind), int(pos), int(has_gauss), float(gauss)],
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        random.setstate((state["python_version"], tuple(state["python"]), None))
        kind, pos, has_gauss, gauss = state["numpy_meta"]
        keys = state["numpy"].numpy().astype(np.uint32)
        np.random.set_state((kind, keys, int(pos), int(has_gauss), float(gauss)))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class WallClock(L.Callback):
    """Training seconds over every attempt of a run: the checkpoint carries the seconds of the
    attempts before, so a resumed run reports its whole training time, not only the last part."""

    def __init__(self) -> None:
        self.before = 0.0
        self.started: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = time.perf_counter()

    def seconds(self) -> float:
        running = 0.0 if self.started is None else time.perf_counter() - self.started
        return self.before + running

    def state_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.before = float(state.get("seconds", 0.0))


class LoaderPosition(L.Callback):
    """Save and restore the training loader's position (a
    :class:`~cxrbench.data.resumable.ResumableLoader`) with each checkpoint.

    Lightning saves a stateful loader's state itself, but gives it back only when the loader is
    first set up after the checkpoint's loops are restored; a ``configure_optimizers`` that asks
    for ``estimated_stepping_batches`` sets it up before that, and the position is then silently
    dropped (the resumed epoch starts again from its first batch). Callback states are restored
    first, before any batch is drawn."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def state_dict(self) -> dict[str, Any]:
        return dict(self.loader.state_dict())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state)
