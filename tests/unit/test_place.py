"""PLACE: each loss term against a naive loop (value and gradient), PCMA's invariance to the order
of the pathology queries, sentence masking and pooling, the simulated DDP path, both backbone
families, and learning on a repeated batch."""

from __future__ import annotations

import bisect

import pytest
import torch
import torch.nn.functional as F

from cxrbench.methods import place
from cxrbench.methods.place import (
    cce_loss,
    itc_loss,
    pcma_loss,
    sentence_assignment,
    sentence_word_counts,
)

TAU, TAU_A = 0.1, 0.1


def _unit(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def _grads(loss: torch.Tensor, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(loss, inputs, retain_graph=True)


def _close(a: torch.Tensor, b: torch.Tensor, ours: tuple, ref: tuple, atol: float = 1e-8) -> None:
    assert torch.allclose(a.double(), b, atol=atol), (a.item(), b.item())
    for x, y in zip(ours, ref, strict=True):
        assert torch.isfinite(x).all()
        assert torch.allclose(x.double(), y, atol=atol)


# ---------------------------------------------------------------- ITC


def test_itc_matches_naive_loop() -> None:
    v, u = _unit(5, 6, seed=0).requires_grad_(True), _unit(5, 6, seed=1).requires_grad_(True)
    ours = itc_loss(v, u, 0.07)
    ref = torch.zeros((), dtype=torch.float64)
    for i in range(5):
        row = torch.stack([torch.dot(v[i], u[k]) / 0.07 for k in range(5)])
        col = torch.stack([torch.dot(u[i], v[k]) / 0.07 for k in range(5)])
        ref = ref + (torch.logsumexp(row, 0) - row[i] + torch.logsumexp(col, 0) - col[i]) / 5
    _close(ours, ref, _grads(ours, (v, u)), _grads(ref, (v, u)))


# ---------------------------------------------------------------- PCMA


def _naive_pcma(t, mask, v, tau, tau_a):
    b, s_max, _ = t.shape

    def score(sentence, image):  # the sentence matched in image `image`
        a = torch.softmax(torch.stack([torch.dot(sentence, o) / tau_a for o in v[image]]), 0)
        matched = sum(a[k] * v[image, k] for k in range(v.shape[1]))
        return torch.dot(sentence, matched / matched.norm()) / tau

    valid = [(i, s) for i in range(b) for s in range(s_max) if mask[i][s]]
    t2v, v2t = [], []
    for i in range(b):
        per_t2v, per_v2t = [], []
        for s in (s for (j, s) in valid if j == i):
            z = torch.stack([score(t[i, s], k) for k in range(b)])
            per_t2v.append(torch.logsumexp(z, 0) - z[i])
            pos = score(t[i, s], i)
            cands = [pos] + [score(t[j, r], i) for (j, r) in valid if j != i]
            per_v2t.append(torch.logsumexp(torch.stack(cands), 0) - pos)
        if per_t2v:
            t2v.append(sum(per_t2v) / len(per_t2v))
            v2t.append(sum(per_v2t) / len(per_v2t))
    return sum(t2v) / len(t2v), sum(v2t) / len(v2t)


MASK = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 1, 1], [1, 1, 0]], dtype=torch.bool)


def test_pcma_matches_naive_loop() -> None:
    t = _unit(4, 3, 5, seed=2).requires_grad_(True)
    v = _unit(4, 4, 5, seed=3).requires_grad_(True)
    ours = pcma_loss(t, MASK, v, TAU, TAU_A)
    ref = _naive_pcma(t, MASK, v, TAU, TAU_A)
    for a, b in zip(ours, ref, strict=True):
        _close(a, b, _grads(a, (t, v)), _grads(b, (t, v)))


def test_pcma_is_invariant_to_the_order_of_the_observations() -> None:
    t, v = _unit(4, 3, 5, seed=4), _unit(4, 4, 5, seed=5)
    base = pcma_loss(t, MASK, v, TAU, TAU_A)
    perm = torch.tensor([2, 0, 3, 1])
    for a, b in zip(pcma_loss(t, MASK, v[:, perm], TAU, TAU_A), base, strict=True):
        assert torch.allclose(a, b, atol=1e-12)


def test_padded_sentences_change_nothing() -> None:
    t = _unit(4, 3, 5, seed=6).requires_grad_(True)
    v = _unit(4, 4, 5, seed=7).requires_grad_(True)
    base = sum(pcma_loss(t, MASK, v, TAU, TAU_A))
    garbage = (_unit(4, 2, 5, seed=8) * 3).requires_grad_(True)
    padded = torch.cat([t, garbage], dim=1)
    mask = torch.cat([MASK, torch.zeros(4, 2, dtype=torch.bool)], dim=1)
    # a masked slot inside the report (sentence 1 of report 1) also holds garbage already
    ours = sum(pcma_loss(padded, mask, v, TAU, TAU_A))
    assert torch.allclose(ours, base, atol=1e-12)
    g_t, g_v, g_garbage = _grads(ours, (t, v, garbage))
    ref_t, ref_v = _grads(base, (t, v))
    assert torch.allclose(g_t, ref_t, atol=1e-12) and torch.allclose(g_v, ref_v, atol=1e-12)
    assert g_garbage.abs().max() == 0 and g_t[~MASK].abs().max() == 0


def test_pcma_distributed_path_equals_one_process(monkeypatch) -> None:
    """Two simulated ranks (gathers return the global tensors): the mean of the rank losses and its
    gradient equal the single-process loss on the whole batch."""
    t = _unit(4, 3, 5, seed=9).requires_grad_(True)
    v = _unit(4, 4, 5, seed=10).requires_grad_(True)
    ref = sum(pcma_loss(t, MASK, v, TAU, TAU_A))
    ref_grads = _grads(ref, (t, v))
    current = {"rank": 0}

    def gather(x: torch.Tensor) -> torch.Tensor:
        r = current["rank"]
        for full in (t, v, MASK):
            part = full[2 * r : 2 * r + 2]
            if x.shape == part.shape and x.data_ptr() == part.data_ptr():
                return full
        raise AssertionError("unexpected gather")

    monkeypatch.setattr(place, "is_distributed", lambda: True)
    monkeypatch.setattr(place, "rank", lambda: current["rank"])
    monkeypatch.setattr(place, "gather_with_grad", gather)
    monkeypatch.setattr(place, "gather_no_grad", gather)
    total = torch.zeros((), dtype=torch.float64)
    for r in (0, 1):
        current["rank"] = r
        sl = slice(2 * r, 2 * r + 2)
        total = total + sum(pcma_loss(t[sl], MASK[sl], v[sl], TAU, TAU_A)) / 2
    _close(total, ref.detach(), _grads(total, (t, v)), ref_grads, atol=1e-10)


# ---------------------------------------------------------------- CCE


def _naive_cce(target, predicted, tau, kind):
    def corr(x):
        c = [(row - row.mean()) / (row - row.mean()).norm() for row in x]
        return [[torch.dot(a, b) for b in c] for a in c]

    total, rows = torch.zeros((), dtype=torch.float64), 0
    for b in range(target.shape[0]):
        r, r_hat = corr(target[b].detach()), corr(predicted[b])
        n = len(r)
        for i in range(n):
            others = [j for j in range(n) if j != i]
            x = torch.stack([r[i][j] for j in others])
            y = torch.stack([r_hat[i][j] for j in others])
            if kind == "mse":
                total, rows = total + ((y - x) ** 2).sum(), rows + len(others)
            else:
                p, log_q = torch.softmax(x / tau, 0), torch.log_softmax(y / tau, 0)
                total, rows = total + (p * (p.log() - log_q)).sum(), rows + 1
    return total / rows


@pytest.mark.parametrize("kind", ["kl", "mse"])
def test_cce_matches_naive_loop_and_stops_the_target_gradient(kind) -> None:
    g = torch.Generator().manual_seed(11)
    target = torch.randn(2, 5, 4, generator=g, dtype=torch.float64).requires_grad_(True)
    predicted = torch.randn(2, 5, 3, generator=g, dtype=torch.float64).requires_grad_(True)
    ours = cce_loss(target, predicted, 0.1, kind)
    ref = _naive_cce(target, predicted, 0.1, kind)
    grad, target_grad = torch.autograd.grad(ours, (predicted, target), allow_unused=True)
    _close(ours, ref, (grad,), _grads(ref, (predicted,)))
    assert target_grad is None  # stop-gradient target
    assert cce_loss(predicted, predicted, 0.1, kind).abs() < 1e-12  # R̂ = R: zero loss


# ---------------------------------------------------------------- sentences → T-PORs


def test_sentence_pooling_follows_the_tokenizer_word_ids(text_model) -> None:
    """Counting words per sentence with the pre-tokenizer gives the sentences of the tokenizer's
    own word ids (located by character offsets), truncation included."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(text_model))
    groups = [
        ("there is cardiomegaly.", "no other acute process.", "Cardiomegaly, 2.5cm!"),
        ("left pleural effusion.",),
        ("right pneumothorax,no other acute process.", "", "right pneumothorax.") * 3,
    ]
    texts = [" ".join(g) for g in groups]
    enc = tok(texts, padding="longest", truncation=True, max_length=24,
              return_offsets_mapping=True)  # fmt: skip
    n_words = max(max((w for w in enc.word_ids(i) if w is not None), default=-1) for i in
                  range(3)) + 1  # fmt: skip
    word_mask = torch.zeros(3, n_words, dtype=torch.bool)
    expected = torch.zeros(3, 4, n_words)
    for i, group in enumerate(groups):
        starts = [sum(len(s) + 1 for s in group[:k]) for k in range(len(group))]
        seen = {}
        for w, (a, _) in zip(enc.word_ids(i), enc["offset_mapping"][i], strict=True):
            if w is not None and w not in seen:
                seen[w] = bisect.bisect_right(starts, a) - 1
        for w, s in seen.items():
            word_mask[i, w] = True
            if s < 4:
                expected[i, s, w] = 1.0
    expected = expected / expected.sum(-1, keepdim=True).clamp(min=1)
    counts = [sentence_word_counts(tok, g) for g in groups]
    pool, mask = sentence_assignment(counts, word_mask, 4)
    assert torch.equal(pool, expected)
    assert torch.equal(mask, expected.sum(-1) > 0)
    assert mask[2].tolist() == [True, False, True, False]  # empty and truncated-away: masked
    assert counts[2][2] == 3 and int((pool[2, 2] > 0).sum()) == 2  # cut sentence: kept words
    assert not mask[1, 1:].any()

    class Slow:  # a tokenizer without a backend: pieces that open a word (TextEncoder's rule)
        all_special_tokens = tok.all_special_tokens
        tokenize = staticmethod(tok.tokenize)

    assert [sentence_word_counts(Slow(), g) for g in groups] == counts


# ---------------------------------------------------------------- the method


@pytest.fixture(scope="module")
def place_batch(pairs_corpus):
    from cxrbench.data.pretrain import PairDataset, collate, load_pairs

    pairs = load_pairs(pairs_corpus / "mimic-cxr-jpg", "train")[:8]
    data = PairDataset(pairs, 64, 64, train=False)
    return collate([data[i] for i in range(len(data))])


def _method(text_model, *sets: str):
    from cxrbench.runner.pretrain import build_method
    from cxrbench.runner.resolve import load_config

    job = load_config("place", "tiny", [f"text.model={text_model}", "text.max_length=32", *sets])
    torch.manual_seed(0)
    method = build_method(job, text_model)
    method.train()
    return method


@pytest.mark.parametrize("sets", [(), ("backbone.tokens_from=c5",), ("backbone.name=vit_tiny",)])
def test_runs_on_resnet_and_vit_tokens(text_model, place_batch, sets) -> None:
    method = _method(text_model, "params.decoder_dim=32", "params.cce_dim=32", *sets)
    terms = method.losses(place_batch)
    assert set(terms) == {"itc", "pcma", "cce"}
    assert all(v.ndim == 0 and torch.isfinite(v) for v in terms.values())
    sum(terms.values()).backward()
    for name in ("pcma", "cce"):  # each new term alone reaches the image encoder
        method.zero_grad()
        method.losses(place_batch)[name].backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0
                   for p in method.backbone.parameters()), name  # fmt: skip


def test_pcma_is_invariant_to_permuting_the_query_tokens(text_model, place_batch) -> None:
    method = _method(text_model, "params.decoder_dim=32", "params.cce_dim=32").double()
    batch = {**place_batch, "image": place_batch["image"].double()}
    with torch.no_grad():
        before = method.encode(batch)
        pcma = sum(pcma_loss(before["sentences"], before["sentence_mask"],
                             before["observations"], TAU, TAU_A))  # fmt: skip
        perm = torch.randperm(method.params.num_queries, generator=torch.Generator().manual_seed(0))
        method.extractor.queries.copy_(method.extractor.queries[perm])
        after = method.encode(batch)
        permuted = sum(pcma_loss(after["sentences"], after["sentence_mask"],
                                 after["observations"], TAU, TAU_A))  # fmt: skip
    assert torch.allclose(after["observations"], before["observations"][:, perm], atol=1e-10)
    assert not torch.allclose(after["observations"], before["observations"], atol=1e-3)
    assert torch.allclose(permuted, pcma, atol=1e-10)


def test_sentence_slots_beyond_the_reports_change_nothing(text_model, place_batch) -> None:
    small = ("params.decoder_dim=32", "params.cce_dim=32")
    losses = []
    for cap in (3, 16):  # the batch has at most 3 sentences per report
        method = _method(text_model, *small, f"params.max_sentences={cap}")
        with torch.no_grad():
            losses.append(method.losses(place_batch))
    for key in ("itc", "pcma", "cce"):
        assert torch.allclose(losses[0][key], losses[1][key], atol=1e-6), key


def test_place_learns_a_repeated_batch(text_model, place_batch) -> None:
    method = _method(text_model)
    optimizer = torch.optim.AdamW(method.parameters(), lr=1e-3)
    history = []
    for _ in range(30):
        terms = method.losses(place_batch)
        loss = sum(terms.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append({"total": loss.item(), **{k: v.item() for k, v in terms.items()}})
    first, last = history[0], history[-1]
    for term in ("total", "itc", "pcma", "cce"):
        assert last[term] < 0.8 * first[term], (term, first[term], last[term])


def test_bad_params_are_config_errors(text_model) -> None:
    from cxrbench.errors import ConfigError

    with pytest.raises(ConfigError, match="decoder_heads"):
        _method(text_model, "params.decoder_dim=30", "params.decoder_heads=4")
    with pytest.raises(ConfigError, match="cce_loss"):
        _method(text_model, "params.cce_loss=l1")
