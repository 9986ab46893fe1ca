"""The supervised oracle learns its dataset's labels (loss falls on a repeated batch)."""

from __future__ import annotations

import torch

from cxrbench.data.pretrain import collate
from cxrbench.runner.pretrain import build_method
from cxrbench.runner.resolve import load_config


def test_supervised_fits_a_repeated_batch(synth_tiny) -> None:
    job = load_config("supervised", "tiny", ["params.dataset=rsna"])
    torch.manual_seed(0)
    method = build_method(job, None)
    data = method.train_dataset(synth_tiny, "train")
    batch = collate([data[i] for i in range(16)])
    optimizer = torch.optim.AdamW(method.parameters(), lr=3e-3)
    method.train()
    first = None
    for _ in range(25):
        loss = method.losses(batch)["bce"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.5 * first
