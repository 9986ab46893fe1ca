"""GLoRIA: the local loss against a naive per-pair loop (value, gradients, padding), its DDP
version against one process, the global loss, sentence sampling, and learning on a repeated batch.

The method and runner are imported inside their tests: the DDP test's spawned workers import this
module and need only torch and the local loss.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from tests.helpers import free_port

from cxrbench.losses.local import local_loss, local_similarity, word_region_attention

T1, T2, T3 = 4.0, 5.0, 10.0


def _softmax(x: torch.Tensor) -> torch.Tensor:
    e = torch.exp(x - x.max())
    return e / e.sum()


def _naive_attention(region: torch.Tensor, word: torch.Tensor, t1: float) -> torch.Tensor:
    """a[w, r] for one image (N, D) and the real words (M, D) of one caption."""
    n, m = region.shape[0], word.shape[0]
    scores = [torch.stack([region[r] @ word[w] for w in range(m)]) for r in range(n)]
    p = torch.stack([_softmax(row) for row in scores])  # p[r, w]: softmax over the words
    return torch.stack([_softmax(t1 * p[:, w]) for w in range(m)])


def _naive_r(region: torch.Tensor, word: torch.Tensor, t1: float, t2: float, agg: str):
    a = _naive_attention(region, word, t1)
    terms = []
    for w in range(word.shape[0]):
        context = sum(a[w, r] * region[r] for r in range(region.shape[0]))
        assert isinstance(context, torch.Tensor)
        cos = (context @ word[w]) / torch.clamp(context.norm() * word[w].norm(), min=1e-8)
        terms.append(torch.exp(t2 * cos))
    total = torch.stack(terms).sum()
    return torch.log(total if agg == "sum" else total / len(terms))


def _naive_loss(regions, words, mask, agg: str = "sum") -> torch.Tensor:
    """(image→text + text→image) cross-entropies of τ3·R, straight from the formulas."""
    b = regions.shape[0]
    sim = torch.stack(
        [
            torch.stack([_naive_r(regions[i], words[j][mask[j]], T1, T2, agg) for j in range(b)])
            for i in range(b)
        ]
    )
    logits = T3 * sim
    i2t = torch.stack([-torch.log(_softmax(logits[i])[i]) for i in range(b)]).mean()
    t2i = torch.stack([-torch.log(_softmax(logits[:, j])[j]) for j in range(b)]).mean()
    return i2t + t2i


def _inputs(seed: int, batch: int = 4, regions: int = 6, dim: int = 5):
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(batch, regions, dim, generator=g, dtype=torch.float64)
    w = torch.randn(batch, 5, dim, generator=g, dtype=torch.float64)
    mask = torch.tensor(
        [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 0, 1, 1, 0]], dtype=torch.bool
    )[:batch]  # different lengths, one caption with an inner gap
    return r, w, mask


def _ours(regions, words, mask, **kw) -> torch.Tensor:
    out = local_loss(regions, words, mask, temp1=T1, temp2=T2, temp3=T3, **kw)
    return out.loss_i2t + out.loss_t2i


@pytest.mark.parametrize(
    ("agg", "chunk", "checkpoint"),
    [("sum", 16, False), ("sum", 3, True), ("mean", 1, False), ("sum", None, False)],
)
def test_local_loss_matches_naive_loop(agg, chunk, checkpoint) -> None:
    regions, words, mask = _inputs(0)
    regions.requires_grad_(True)
    words.requires_grad_(True)
    ours = _ours(regions, words, mask, aggregation=agg, chunk=chunk, checkpoint=checkpoint)
    ref = _naive_loss(regions, words, mask, agg)
    assert ours.dtype == torch.float64
    assert torch.allclose(ours, ref, atol=1e-6), (ours.item(), ref.item())
    g_ours = torch.autograd.grad(ours, (regions, words))
    g_ref = torch.autograd.grad(ref, (regions, words))
    for a, b in zip(g_ours, g_ref, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    assert g_ours[1][~mask].abs().max() == 0  # padded words get no gradient


def test_padded_words_change_nothing() -> None:
    regions, words, mask = _inputs(1)
    garbage = torch.randn(4, 3, 5, dtype=torch.float64) * 10  # padding with non-zero values
    longer = torch.cat([words, garbage], dim=1)
    longer_mask = torch.cat([mask, torch.zeros(4, 3, dtype=torch.bool)], dim=1)
    results = []
    for w, m in ((words, mask), (longer, longer_mask)):
        r, w = regions.clone().requires_grad_(True), w.clone().requires_grad_(True)
        loss = _ours(r, w, m)
        loss.backward()
        assert r.grad is not None and w.grad is not None
        results.append((loss.detach(), r.grad, w.grad))
    (l0, r0, w0), (l1, r1, w1) = results
    assert torch.allclose(l0, l1, atol=1e-12)
    assert torch.allclose(r0, r1, atol=1e-12)
    assert torch.allclose(w0, w1[:, :5], atol=1e-12)
    assert w1[:, 5:].abs().max() == 0


def test_attention_rows_sum_to_one_and_match_the_loop() -> None:
    regions, words, mask = _inputs(2)
    attention = word_region_attention(regions, words, mask, T1)
    assert attention.shape == (4, 5, 6)
    assert torch.allclose(attention.sum(-1)[mask], torch.ones(int(mask.sum()), dtype=torch.float64))
    assert attention[~mask].abs().max() == 0
    for k in range(4):
        ref = _naive_attention(regions[k], words[k][mask[k]], T1)
        assert torch.allclose(attention[k][mask[k]], ref, atol=1e-10)
    returned = local_loss(regions, words, mask, return_attention=True).attention
    assert returned is not None and torch.allclose(returned, attention)
    sim = local_similarity(regions, words, mask)  # the loss's similarity agrees with the loop
    assert torch.allclose(sim[1, 3], _naive_r(regions[1], words[3][mask[3]], T1, T2, "sum"))


def test_global_loss_is_symmetric_cosine_cross_entropy() -> None:
    from cxrbench.methods.gloria import global_loss

    g = torch.Generator().manual_seed(3)
    image = torch.randn(6, 8, generator=g, dtype=torch.float64)
    text = torch.randn(6, 8, generator=g, dtype=torch.float64)
    i2t, t2i = global_loss(image, text, T3)
    cos = torch.stack([torch.stack([(a @ b) / (a.norm() * b.norm()) for b in text]) for a in image])
    logits = T3 * cos
    ref_i2t = torch.stack([-torch.log(_softmax(logits[i])[i]) for i in range(6)]).mean()
    ref_t2i = torch.stack([-torch.log(_softmax(logits[:, j])[j]) for j in range(6)]).mean()
    assert torch.allclose(i2t.double() + t2i.double(), ref_i2t + ref_t2i, atol=1e-6)
    assert torch.allclose(i2t.double(), ref_i2t, atol=1e-6)


def _worker(rank: int, world: int, port: int, parts, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        regions, words, mask = parts[rank]
        for word_length in (None, 8):
            r = regions.clone().requires_grad_(True)
            w = words.clone().requires_grad_(True)
            out_ = local_loss(r, w, mask, chunk=2, word_length=word_length)
            loss = out_.loss_i2t + out_.loss_t2i
            loss.backward()
            reduced = loss.detach().clone()
            dist.all_reduce(reduced)
            out[(rank, word_length)] = (reduced / world, r.grad / world, w.grad / world)
    finally:
        dist.destroy_process_group()


def test_ddp_local_loss_equals_single_process() -> None:
    g = torch.Generator().manual_seed(4)
    regions = torch.randn(6, 6, 5, generator=g, dtype=torch.float64)
    words = torch.randn(6, 6, 5, generator=g, dtype=torch.float64)
    lengths = torch.tensor([2, 4, 1, 6, 2, 3])
    mask = torch.arange(6)[None, :] < lengths[:, None]
    # rank 0 holds captions of at most 4 words (W = 4), rank 1 of up to 6 (W = 6)
    parts = [(regions[:3], words[:3, :4], mask[:3, :4]), (regions[3:], words[3:], mask[3:])]
    full_r, full_w = regions.clone().requires_grad_(True), words.clone().requires_grad_(True)
    ref = _ours(full_r, full_w, mask)
    ref.backward()
    assert full_r.grad is not None and full_w.grad is not None
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(2, free_port(), parts, out), nprocs=2, join=True)
    for word_length in (None, 8):
        (l0, r0, w0), (l1, r1, w1) = out[(0, word_length)], out[(1, word_length)]
        assert torch.allclose(l0, ref.detach(), atol=1e-10)
        assert torch.allclose(l1, ref.detach(), atol=1e-10)
        assert torch.allclose(torch.cat([r0, r1]), full_r.grad, atol=1e-10)
        assert torch.allclose(w0, full_w.grad[:3, :4], atol=1e-10)
        assert torch.allclose(w1, full_w.grad[3:], atol=1e-10)


def test_sentence_sampling(text_model) -> None:
    from cxrbench.runner.pretrain import build_method
    from cxrbench.runner.resolve import load_config

    sets = [f"text.model={text_model}", "text.max_length=32", "params.sentence_sampling=true"]
    method = build_method(load_config("gloria", "tiny", sets), text_model)
    sentences = [("there is cardiomegaly", "no other acute process"), ("right pneumothorax",)]
    batch = {"text": [" ".join(s) for s in sentences], "sentences": sentences}
    method.train()
    torch.manual_seed(0)
    draws = [method.captions(batch) for _ in range(20)]
    for texts in draws:
        assert all(t in s for t, s in zip(texts, sentences, strict=True))
    assert {texts[0] for texts in draws} == set(sentences[0])  # both sentences get drawn
    torch.manual_seed(0)
    assert [method.captions(batch) for _ in range(20)] == draws  # the global RNG decides
    method.eval()
    assert method.captions(batch) == batch["text"]


def test_gloria_learns_a_repeated_batch(pairs_corpus, text_model) -> None:
    from cxrbench.data.pretrain import PairDataset, collate, load_pairs
    from cxrbench.runner.pretrain import build_method
    from cxrbench.runner.resolve import load_config

    job = load_config("gloria", "tiny", [f"text.model={text_model}", "text.max_length=32"])
    torch.manual_seed(0)
    method = build_method(job, text_model)
    method.train()
    pairs = load_pairs(pairs_corpus / "mimic-cxr-jpg", "train")[:8]  # 8 distinct findings
    data = PairDataset(pairs, 64, 64, train=False)
    batch = collate([data[i] for i in range(len(data))])
    optimizer = torch.optim.AdamW(method.parameters(), lr=1e-3)
    history: dict[str, list[float]] = {"global": [], "local": [], "total": []}
    for _ in range(25):
        terms = method.losses(batch)
        loss = terms["global"] + terms["local"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        for key, value in (*terms.items(), ("total", loss)):
            history[key].append(value.item())
    for key, values in history.items():  # seeds 0-2: below 0.03 × the first value
        assert values[-1] < 0.25 * values[0], (key, values[::5])
    with torch.no_grad():  # batch statistics, as in the loss
        e = method.embed(batch)
        sims = {
            "global": F.normalize(e.image, dim=-1) @ F.normalize(e.text, dim=-1).t(),
            "local": local_similarity(e.regions, e.words, e.word_mask),
        }
    for key, sim in sims.items():
        top1 = (sim.argmax(dim=1) == torch.arange(8)).float().mean().item()
        assert top1 >= 0.5, (key, top1)  # chance is 1/8
