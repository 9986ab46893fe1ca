"""MGCA: each loss against a naive loop, the Sinkhorn plan's marginals, the distributed Sinkhorn
against one process, prototype freezing, the ViT [CLS] attention, and learning on a batch."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from tests.helpers import free_port

from cxrbench.losses.prototypes import sinkhorn_codes, sinkhorn_plan, swapped_prediction
from cxrbench.losses.token_alignment import clipped_weights, token_alignment
from cxrbench.methods.mgca import _vit_cls_attention

# ---------------------------------------------------------------- token alignment (CTA)


def _naive_cta(q, k, tau, w, q_valid, k_valid):
    total = torch.zeros((), dtype=q.dtype)
    for b in range(q.shape[0]):
        qi = [q[b, i] for i in range(q.shape[1]) if q_valid[b][i]]
        ks = [k[b, r] for r in range(k.shape[1]) if k_valid[b][r]]
        ws = [w[b, i] for i in range(q.shape[1]) if q_valid[b][i]]
        attended = []
        for query in qi:
            scores = torch.stack([torch.dot(query, key) / tau for key in ks])
            a = torch.softmax(scores, dim=0)
            vec = sum(a[r] * ks[r] for r in range(len(ks)))
            attended.append(vec / vec.norm())
        n = len(qi)
        sim = [[torch.dot(qi[i], attended[j]) / tau for j in range(n)] for i in range(n)]
        row = col = torch.zeros((), dtype=q.dtype)
        for i in range(n):
            logits = torch.stack(sim[i])
            row = row + ws[i] * (torch.logsumexp(logits, 0) - sim[i][i])
            logits = torch.stack([sim[j][i] for j in range(n)])
            col = col + ws[i] * (torch.logsumexp(logits, 0) - sim[i][i])
        total = total + 0.5 * (row + col)
    return total / q.shape[0]


def test_token_alignment_matches_naive_loop_with_padding() -> None:
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(3, 5, 4, generator=g, dtype=torch.float64), dim=-1)
    k = F.normalize(torch.randn(3, 6, 4, generator=g, dtype=torch.float64), dim=-1)
    q.requires_grad_(True)
    k.requires_grad_(True)
    q_valid = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    k_valid = torch.tensor([[1] * 6, [1, 1, 1, 1, 0, 0], [1, 0, 1, 1, 1, 1]], dtype=torch.bool)
    w = torch.rand(3, 5, generator=g, dtype=torch.float64) * q_valid
    w = w / w.sum(1, keepdim=True)
    ours = token_alignment(q, k, 0.1, w, query_mask=q_valid, key_mask=k_valid)
    ref = _naive_cta(q, k, 0.1, w, q_valid, k_valid)
    assert torch.allclose(ours.double(), ref, atol=1e-6)
    for a, b in zip(torch.autograd.grad(ours, (q, k)), torch.autograd.grad(ref, (q, k)),
                    strict=True):  # fmt: skip
        assert torch.isfinite(a).all()
        assert torch.allclose(a.double(), b, atol=1e-6)


def test_padded_queries_change_nothing() -> None:
    g = torch.Generator().manual_seed(1)
    q = F.normalize(torch.randn(2, 3, 4, generator=g), dim=-1)
    k = F.normalize(torch.randn(2, 5, 4, generator=g), dim=-1)
    w = torch.full((2, 3), 1 / 3)
    base = token_alignment(q, k, 0.1, w)
    padded_q = torch.cat([q, torch.randn(2, 2, 4, generator=g)], dim=1)
    mask = torch.tensor([[1, 1, 1, 0, 0]] * 2, dtype=torch.bool)
    padded_w = torch.cat([w, torch.full((2, 2), 0.7)], dim=1)
    assert torch.allclose(token_alignment(padded_q, k, 0.1, padded_w, query_mask=mask), base,
                          atol=1e-6)  # fmt: skip


def test_clipped_weights_follow_mgca() -> None:
    g = torch.Generator().manual_seed(2)
    values = torch.rand(4, 9, generator=g)
    mask = torch.ones(4, 9, dtype=torch.bool)
    mask[1, 5:] = False
    mask[3, 2:] = False
    ours = clipped_weights(values, mask)
    for b in range(4):
        v = values[b, mask[b]]
        clipped = v.clip(torch.quantile(v, 0.1), torch.quantile(v, 0.9))
        ref = torch.zeros(9)
        ref[mask[b]] = clipped / clipped.sum()
        assert torch.allclose(ours[b], ref, atol=1e-6)
    assert torch.allclose(ours.sum(1), torch.ones(4))


# ---------------------------------------------------------------- Sinkhorn and CPA


def _naive_sinkhorn(scores: torch.Tensor, eps: float, iters: int) -> torch.Tensor:
    q = torch.exp(scores / eps).t().clone()
    k, b = q.shape
    q = q / q.sum()
    for _ in range(iters):
        for r in range(k):
            q[r] = q[r] / q[r].sum() / k
        for c in range(b):
            q[:, c] = q[:, c] / q[:, c].sum() / b
    return (q / q.sum(0, keepdim=True)).t()


def _scores(b: int, k: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(b, 8, generator=g, dtype=dtype), dim=1)
    c = F.normalize(torch.randn(k, 8, generator=g, dtype=dtype), dim=1)
    return z @ c.t()


def test_sinkhorn_matches_naive_loop_and_marginals() -> None:
    s = _scores(12, 7, 0)
    assert torch.allclose(sinkhorn_codes(s, 0.05, 3), _naive_sinkhorn(s, 0.05, 3), atol=1e-10)
    plan = sinkhorn_plan(s, 0.05, 3)
    assert torch.allclose(plan.sum(0), torch.full((12,), 1 / 12, dtype=s.dtype), atol=1e-12)
    converged = sinkhorn_plan(s, 0.5, 500)  # rows reach 1/K once it has converged
    assert torch.allclose(converged.sum(1), torch.full((7,), 1 / 7, dtype=s.dtype), atol=1e-6)
    assert torch.allclose(converged.sum(0), torch.full((12,), 1 / 12, dtype=s.dtype), atol=1e-12)
    codes = sinkhorn_codes(s)
    assert torch.allclose(codes.sum(1), torch.ones(12, dtype=s.dtype)) and (codes >= 0).all()


def test_sinkhorn_is_stable_at_small_epsilon() -> None:
    s = _scores(16, 50, 3, torch.float32) * 1.0
    codes = sinkhorn_codes(s, 0.01, 3)  # exp(1/0.01) overflows float32 without the max shift
    assert torch.isfinite(codes).all()
    assert torch.allclose(codes.sum(1), torch.ones(16), atol=1e-5)


def test_swapped_prediction_matches_naive() -> None:
    si = _scores(6, 5, 4).requires_grad_(True)
    st = _scores(6, 5, 5).requires_grad_(True)
    ours = swapped_prediction(si, st, 0.2, 0.05, 3)
    qi, qt = _naive_sinkhorn(si.detach(), 0.05, 3), _naive_sinkhorn(st.detach(), 0.05, 3)
    pi, pt = torch.softmax(si / 0.2, 1), torch.softmax(st / 0.2, 1)
    ref = 0.5 * (-(qi * pt.log()).sum(1).mean() - (qt * pi.log()).sum(1).mean())
    assert torch.allclose(ours.double(), ref, atol=1e-6)
    for a, b in zip(torch.autograd.grad(ours, (si, st)), torch.autograd.grad(ref, (si, st)),
                    strict=True):  # fmt: skip
        assert torch.allclose(a.double(), b, atol=1e-6)


def _worker(rank: int, world: int, port: int, image, text, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        b = image.shape[0] // world
        img = image[rank * b : (rank + 1) * b].clone().requires_grad_(True)
        txt = text[rank * b : (rank + 1) * b].clone().requires_grad_(True)
        codes = sinkhorn_codes(img, 0.05, 3)
        loss = swapped_prediction(img, txt, 0.2, 0.05, 3)
        loss.backward()
        reduced = loss.detach().clone()
        dist.all_reduce(reduced)
        out[rank] = (codes, reduced / world, img.grad / world, txt.grad / world)
    finally:
        dist.destroy_process_group()


def test_distributed_sinkhorn_equals_one_process_on_the_concatenated_batch() -> None:
    image, text = _scores(10, 7, 6), _scores(10, 7, 7)
    full_i, full_t = image.clone().requires_grad_(True), text.clone().requires_grad_(True)
    ref = swapped_prediction(full_i, full_t, 0.2, 0.05, 3)
    ref.backward()
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(2, free_port(), image, text, out), nprocs=2, join=True)
    codes = torch.cat([out[0][0], out[1][0]])
    assert torch.allclose(codes, sinkhorn_codes(image, 0.05, 3), atol=1e-10)
    assert not torch.allclose(out[0][0], sinkhorn_codes(image[:5], 0.05, 3), atol=1e-3)
    assert torch.allclose(out[0][1], ref.detach(), atol=1e-10)
    assert torch.allclose(torch.cat([out[0][2], out[1][2]]), full_i.grad, atol=1e-10)
    assert torch.allclose(torch.cat([out[0][3], out[1][3]]), full_t.grad, atol=1e-10)


# ---------------------------------------------------------------- the method


def test_vit_cls_attention_equals_the_attention_module() -> None:
    from cxrbench.models.backbones import build_backbone

    torch.manual_seed(0)
    vit = build_backbone("vit_tiny", image_size=32).eval()
    block = vit.encoder.layers[-1]
    seen = {}
    block.ln_1.register_forward_hook(lambda m, a, o: seen.update(x=o))
    vit(torch.randn(2, 3, 32, 32))
    _, weights = block.self_attention(seen["x"], seen["x"], seen["x"], need_weights=True)
    ours = _vit_cls_attention(block, seen["x"])
    assert torch.allclose(ours, weights[:, 0, 1:], atol=1e-6)


@pytest.fixture(scope="module")
def mgca_batch(pairs_corpus):
    from cxrbench.data.pretrain import PairDataset, collate, load_pairs

    pairs = load_pairs(pairs_corpus / "mimic-cxr-jpg", "train")[:8]
    data = PairDataset(pairs, 64, 64, train=False)
    return collate([data[i] for i in range(len(data))])


def _method(text_model, *sets: str):
    from cxrbench.runner.pretrain import build_method
    from cxrbench.runner.resolve import load_config

    job = load_config("mgca", "tiny", [f"text.model={text_model}", "text.max_length=32", *sets])
    torch.manual_seed(0)
    method = build_method(job, text_model)
    method.train()
    return method


def test_prototypes_frozen_in_the_first_epoch_and_normalised(text_model, mgca_batch) -> None:
    method = _method(text_model, "params.num_prototypes=16")
    with torch.no_grad():
        method.prototypes.weight.mul_(3.0)
    method.on_train_step_start(0, 0)
    sum(method.losses(mgca_batch).values()).backward()
    assert torch.allclose(method.prototypes.weight.norm(dim=1), torch.ones(16), atol=1e-6)
    assert method.prototypes.weight.grad is not None
    assert method.prototypes.weight.grad.abs().max() == 0
    method.zero_grad()
    method.on_train_step_start(5, 1)
    sum(method.losses(mgca_batch).values()).backward()
    assert method.prototypes.weight.grad.abs().max() > 0


def test_mgca_learns_a_repeated_batch(text_model, mgca_batch) -> None:
    method = _method(text_model, "params.num_prototypes=16", "params.freeze_prototypes_epochs=0")
    optimizer = torch.optim.AdamW(method.parameters(), lr=1e-3)
    history = []
    for _ in range(30):
        terms = method.losses(mgca_batch)
        loss = sum(terms.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append({k: v.item() for k, v in terms.items()})
    first, last = history[0], history[-1]
    for term in ("ita", "cta", "cpa"):
        assert last[term] < 0.8 * first[term], (term, first[term], last[term])
