"""Exponential moving average (EMA) of a transfer system's trainable weights (``train.ema``).

A decoder or detection head trained from scratch for a few hundred steps at a constant learning
rate ends its epochs at points scattered around the minimum it is heading for: with the frozen
protocol's small label fractions, which epoch early stopping keeps moves the test number by
several points from one seed to the next (issue 17). Validating, checkpointing and testing a
running average of the weights instead (Polyak averaging; YOLOv5's ``ModelEMA`` and timm's
``ModelEmaV2`` do the same) removes most of that scatter without changing what is trained.

* :class:`WeightAverage` keeps the average as buffers of a submodule of the system
  (``system.weight_average``), so every checkpoint — the resume point and the best one — carries
  it beside the raw weights, and a resumed run continues the same average.
* :class:`AverageCallback` updates it after every optimiser step and swaps it into the system for
  each validation and test epoch (and back afterwards): early stopping, the best checkpoint and
  the test metrics all see the averaged weights; training continues from the raw ones.

What is averaged: every parameter that trains (``requires_grad``) and the floating-point buffers
(BatchNorm statistics) of the modules that own one; a frozen encoder is left out. The decay ramps
up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so the first steps' random weights
do not linger in the average. The ramp reaches ``decay`` only after ``(10·decay − 1)/(1 − decay)``
updates (440 for 0.98, 890 for 0.99): a shorter run averages with the ramp alone, whatever
``decay`` says (the ``small`` preset's U-Net runs, ≤ 360 steps, gave byte-identical results at
0.98 and 0.99).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

ATTRIBUTE = "weight_average"
"""The name of the :class:`WeightAverage` submodule on a system (its checkpoint keys' prefix)."""


def trained_tensors(model: nn.Module) -> list[tuple[str, Tensor]]:
    """``(name, tensor)`` of what trains in ``model``: parameters with ``requires_grad`` and every
    buffer of a module that owns one (BatchNorm statistics), in ``named_modules`` order."""
    out: list[tuple[str, Tensor]] = []
    for prefix, module in model.named_modules():
        if isinstance(module, WeightAverage):
            continue
        own = [(n, p) for n, p in module.named_parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        dot = f"{prefix}." if prefix else ""
        out.extend((dot + n, p) for n, p in own)
        out.extend((dot + n, b) for n, b in module.named_buffers(recurse=False) if b is not None)
    return out


class WeightAverage(nn.Module):
    """The moving average of ``model``'s trained tensors (:func:`trained_tensors`), as buffers."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        tensors = trained_tensors(model)
        if not tensors:
            raise ValueError("the model has nothing that trains: no weights to average")
        self.names = [name for name, _ in tensors]
        for i, (_, tensor) in enumerate(tensors):
            self.register_buffer(f"w{i}", tensor.detach().clone())
        self.updates: Tensor
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        self._live: tuple[int, list[Tensor]] | None = None  # (id of the model, its tensors)

    def shadow(self) -> list[Tensor]:
        return [getattr(self, f"w{i}") for i in range(len(self.names))]

    def live(self, model: nn.Module) -> list[Tensor]:
        """The model's own tensors, in the order of :attr:`names` (looked up once per model:
        loading a checkpoint copies into the same tensors)."""
        if self._live is not None and self._live[0] == id(model):
            return self._live[1]
        found = dict(trained_tensors(model))
        missing = [n for n in self.names if n not in found]
        if missing:
            raise KeyError(f"the weight average tracks tensors the model lacks: {missing[:3]}")
        tensors = [found[n] for n in self.names]
        self._live = (id(model), tensors)
        return tensors

    def current_decay(self) -> float:
        n = int(self.updates)
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step of ``avg ← d·avg + (1 − d)·live`` (integer buffers are copied)."""
        weight = 1.0 - self.current_decay()
        self.updates.add_(1)
        floats: list[tuple[Tensor, Tensor]] = []
        for avg, now in zip(self.shadow(), self.live(model), strict=True):
            if avg.is_floating_point():
                floats.append((avg, now.detach()))
            else:
                avg.copy_(now)
        if floats:
            averages, current = zip(*floats, strict=True)
            torch._foreach_lerp_(list(averages), list(current), weight)

    @torch.no_grad()
    def swap(self, model: nn.Module) -> None:
        """Exchange the model's tensors and the average (twice restores both)."""
        for avg, now in zip(self.shadow(), self.live(model), strict=True):
            held = now.detach().clone()
            now.copy_(avg)
            avg.copy_(held)


def attach(system: nn.Module, decay: float) -> WeightAverage:
    """Give ``system`` its :class:`WeightAverage` (before ``fit``, so checkpoints carry it)."""
    average = WeightAverage(system, decay)
    setattr(system, ATTRIBUTE, average)
    return average


class AverageCallback(L.Callback):
    """Update the system's :class:`WeightAverage` after each optimiser step; evaluate with it.

    Callback hooks run before the module's, so the averaged weights are in place for every
    validation and test step and the raw ones are back before the module's epoch-end hook (which
    only reduces what the steps accumulated) and before any checkpoint is written."""

    @staticmethod
    def _average(pl_module: L.LightningModule) -> WeightAverage:
        average = getattr(pl_module, ATTRIBUTE, None)
        if not isinstance(average, WeightAverage):
            raise RuntimeError("AverageCallback needs averaging.attach(system, decay) before fit")
        return average

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:  # fmt: skip
        self._average(pl_module).update(pl_module)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._average(pl_module).swap(pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._average(pl_module).swap(pl_module)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._average(pl_module).swap(pl_module)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._average(pl_module).swap(pl_module)
