"""ConVIRT learns: on one repeated batch the loss falls and image→text retrieval beats chance."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cxrbench.data.pretrain import PairDataset, collate, load_pairs
from cxrbench.runner.pretrain import build_method
from cxrbench.runner.resolve import load_config


def test_convirt_learns_a_repeated_batch(pairs_corpus, text_model) -> None:
    job = load_config("convirt", "tiny", [f"text.model={text_model}", "text.max_length=32"])
    torch.manual_seed(0)
    method = build_method(job, text_model)
    method.train()
    pairs = load_pairs(pairs_corpus / "mimic-cxr-jpg", "train")[:8]  # 8 distinct findings
    data = PairDataset(pairs, 64, 64, train=False)
    batch = collate([data[i] for i in range(len(data))])
    optimizer = torch.optim.AdamW(method.parameters(), lr=1e-3)
    losses = []
    for _ in range(40):
        loss = method.losses(batch)["contrastive"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::8]
    with torch.no_grad():  # batch statistics, as in the loss (running BN stats lag 40 fast steps)
        v, u = method.embed(batch)
        sims = F.normalize(v, dim=-1) @ F.normalize(u, dim=-1).t()
    top1 = (sims.argmax(dim=1) == torch.arange(8)).float().mean().item()
    assert top1 >= 0.5  # chance is 1/8
