"""Callbacks shared by the systems."""

from __future__ import annotations

import random
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
