"""The moving average of a transfer system's weights (systems/averaging.py, ``train.ema``)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cxrbench.systems.averaging import AverageCallback, WeightAverage, attach, trained_tensors


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    for p in model[0].parameters():  # a frozen "encoder": not averaged
        p.requires_grad_(False)
    return model


def test_only_what_trains_is_tracked() -> None:
    names = [name for name, _ in trained_tensors(_model())]
    assert names == [
        "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked",
        "2.weight", "2.bias",
    ]  # fmt: skip


def test_update_follows_the_ramped_decay_and_swap_is_an_exchange() -> None:
    model = _model()
    average = WeightAverage(model, decay=0.9)
    start = model[2].weight.detach().clone()
    history = [start]
    for step in range(1, 30):
        with torch.no_grad():
            model[2].weight.add_(1.0)
            model[1].num_batches_tracked.fill_(step)
        history.append(model[2].weight.detach().clone())
        average.update(model)
    expected = start.clone()
    for n, now in enumerate(history[1:]):
        d = min(0.9, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * now
    shadow = dict(zip(average.names, average.shadow(), strict=True))
    assert torch.allclose(shadow["2.weight"], expected, atol=1e-5)
    assert int(shadow["1.num_batches_tracked"]) == 29  # integers are copied, not averaged
    frozen = model[0].weight.detach().clone()
    raw = model[2].weight.detach().clone()
    average.swap(model)
    assert torch.allclose(model[2].weight, expected, atol=1e-5)
    assert torch.equal(model[0].weight, frozen)
    average.swap(model)
    assert torch.equal(model[2].weight, raw)


def test_decay_must_be_a_fraction() -> None:
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        WeightAverage(_model(), decay=1.0)


class _Probe(L.LightningModule):
    """Records the weights each validation and test step sees."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(2, 1)
        self.seen: list[tuple[str, torch.Tensor]] = []

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        self.seen.append(("val", self.net.weight.detach().clone()))
        self.log("val/loss", nn.functional.mse_loss(self.net(batch[0]), batch[1]))

    def test_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        self.seen.append(("test", self.net.weight.detach().clone()))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.2)


def test_validation_checkpoints_and_test_see_the_average(tmp_path: Path) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    torch.manual_seed(0)
    x = torch.randn(64, 2)
    data = DataLoader(TensorDataset(x, x @ torch.tensor([[2.0], [-1.0]])), batch_size=8)
    module = _Probe()
    average = attach(module, decay=0.8)
    best = ModelCheckpoint(dirpath=tmp_path, filename="end")  # the last epoch's state
    trainer = L.Trainer(max_epochs=2, callbacks=[AverageCallback(), best], logger=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0)  # fmt: skip
    trainer.fit(module, data, data)
    averaged = average.shadow()[0].clone()
    raw = module.net.weight.detach().clone()
    assert not torch.allclose(raw, averaged)  # training keeps the raw weights
    assert torch.equal(module.seen[-1][1], averaged)  # validation saw the average
    state = torch.load(best.best_model_path, weights_only=True)["state_dict"]
    assert torch.equal(state["net.weight"], raw)  # the checkpoint: raw weights, and the average
    assert torch.equal(state["weight_average.w0"], averaged)
    module.seen.clear()
    trainer.test(module, data, ckpt_path=best.best_model_path, weights_only=True, verbose=False)
    assert all(kind == "test" and torch.equal(w, averaged) for kind, w in module.seen)
    assert torch.equal(module.net.weight, raw)  # swapped back after the test epoch
