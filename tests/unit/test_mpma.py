"""MPMA: each loss term against a naive loop (value and gradient), masking counts and pixel targets
as configured, MIM/MLM on masked positions only, the masked ViT path, the top-k memory, and
learning on a repeated batch (every term falls; the image is reconstructed better)."""

from __future__ import annotations

import math

import pytest
import torch

from cxrbench.errors import ConfigError
from cxrbench.methods.mpma import (
    IGNORE,
    Memory,
    global_alignment,
    local_alignment,
    masked_lm_loss,
    masked_mse,
    patchify,
    pick_tokens,
    pixel_targets,
    random_patch_mask,
    replace_tokens,
    visible_count,
)

# ---------------------------------------------------------------- naive references


def _naive_targets(images, p, normalize):
    b, c, h, w = images.shape
    rows = []
    for n in range(b):
        patches = []
        for i in range(h // p):
            for j in range(w // p):
                values = [images[n, ch, i * p + r, j * p + s]
                          for r in range(p) for s in range(p) for ch in range(c)]  # fmt: skip
                v = torch.stack(values)
                if normalize:
                    mean = v.sum() / len(v)
                    var = ((v - mean) ** 2).sum() / (len(v) - 1)
                    v = (v - mean) / torch.sqrt(var + 1e-6)
                patches.append(v)
        rows.append(torch.stack(patches))
    return torch.stack(rows)


def _naive_mim(pred, target, mask):
    total, count = torch.zeros((), dtype=pred.dtype), 0
    for b in range(pred.shape[0]):
        for n in range(pred.shape[1]):
            if mask[b, n]:
                total = total + ((pred[b, n] - target[b, n]) ** 2).sum() / pred.shape[2]
                count += 1
    return total / count


def _naive_mlm(states, labels, head):
    total, count = torch.zeros((), dtype=states.dtype), 0
    for b in range(states.shape[0]):
        for t in range(states.shape[1]):
            if labels[b, t] != IGNORE:
                logits = head(states[b, t])
                total = total - (logits[labels[b, t]] - torch.logsumexp(logits, 0))
                count += 1
    return total / count


def _naive_itc(image, text, tau):
    n = image.shape[0]
    v = [image[i] / image[i].norm() for i in range(n)]
    u = [text[i] / text[i].norm() for i in range(n)]
    i2t = t2i = torch.zeros((), dtype=image.dtype)
    for i in range(n):
        row = torch.stack([torch.dot(v[i], u[k]) / tau for k in range(n)])
        col = torch.stack([torch.dot(u[i], v[k]) / tau for k in range(n)])
        i2t = i2t - (row[i] - torch.logsumexp(row, 0))
        t2i = t2i - (col[i] - torch.logsumexp(col, 0))
    return 0.5 * (i2t + t2i) / n


def _naive_cta_one(queries, keys, tau):
    """One sample, one direction, uniform weights over ``queries`` (lists of unit vectors)."""
    attended = []
    for q in queries:
        a = torch.softmax(torch.stack([torch.dot(q, k) / tau for k in keys]), 0)
        vec = sum(a[r] * keys[r] for r in range(len(keys)))
        attended.append(vec / vec.norm())
    n = len(queries)
    sim = [[torch.dot(queries[i], attended[j]) / tau for j in range(n)] for i in range(n)]
    loss = torch.zeros((), dtype=queries[0].dtype)
    for i in range(n):
        row = torch.stack(sim[i])
        col = torch.stack([sim[j][i] for j in range(n)])
        loss = loss + (0.5 * (torch.logsumexp(row, 0) - sim[i][i])
                       + 0.5 * (torch.logsumexp(col, 0) - sim[i][i])) / n  # fmt: skip
    return loss


def _naive_local(patches, words, word_mask, tau):
    total = torch.zeros((), dtype=patches.dtype)
    for b in range(patches.shape[0]):
        ps = [patches[b, n] / patches[b, n].norm() for n in range(patches.shape[1])]
        ws = [words[b, w] / words[b, w].norm() for w in range(words.shape[1]) if word_mask[b, w]]
        total = total + 0.5 * (_naive_cta_one(ws, ps, tau) + _naive_cta_one(ps, ws, tau))
    return total / patches.shape[0]


def _close_with_grads(ours, ref, inputs, atol=1e-6):
    assert torch.allclose(ours.double(), ref, atol=atol), (float(ours), float(ref))
    for a, b in zip(torch.autograd.grad(ours, inputs, retain_graph=True),
                    torch.autograd.grad(ref, inputs), strict=True):  # fmt: skip
        assert torch.allclose(a.double(), b, atol=atol)


# ---------------------------------------------------------------- the loss terms


def test_pixel_targets_are_per_patch_normalised_pixels_in_conv_proj_order() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 32, 48, generator=g, dtype=torch.float64) * 2 - 1
    assert torch.allclose(pixel_targets(images, 16), _naive_targets(images, 16, True))
    raw = pixel_targets(images, 16, normalize=False)
    assert torch.equal(raw, _naive_targets(images, 16, False))
    # patch n of the targets is the patch that the ViT's conv_proj turns into token n
    conv = torch.nn.Conv2d(3, 5, 16, 16, bias=False).double()
    tokens = conv(images).flatten(2).transpose(1, 2)
    weight = conv.weight.permute(0, 2, 3, 1).reshape(5, -1)  # (row, column, channel) order
    assert torch.allclose(patchify(images, 16) @ weight.t(), tokens)


def test_mim_matches_naive_and_sees_masked_patches_only() -> None:
    g = torch.Generator().manual_seed(1)
    pred = torch.randn(3, 6, 12, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randn(3, 6, 12, generator=g, dtype=torch.float64)
    mask = torch.rand(3, 6, generator=g) < 0.6
    mask[:, 0], mask[:, 1] = True, False
    _close_with_grads(masked_mse(pred, target, mask), _naive_mim(pred, target, mask), (pred,))
    base = masked_mse(pred, target, mask)
    bumped = pred.detach().clone()
    bumped[~mask] += 5.0  # every visible prediction changes: the loss does not
    assert torch.equal(masked_mse(bumped, target, mask), base)
    bumped[:, 0] += 1.0  # a masked prediction changes: the loss does
    assert not torch.allclose(masked_mse(bumped, target, mask), base)


def test_mlm_matches_naive_and_sees_masked_tokens_only() -> None:
    g = torch.Generator().manual_seed(2)
    states = torch.randn(2, 7, 4, generator=g, dtype=torch.float64, requires_grad=True)
    head = torch.nn.Linear(4, 9).double()
    labels = torch.randint(0, 9, (2, 7), generator=g)
    labels[0, [0, 2, 5, 6]] = IGNORE
    labels[1, [0, 1, 3]] = IGNORE
    ours = masked_lm_loss(states, labels, head)
    _close_with_grads(ours, _naive_mlm(states, labels, head), (states, head.weight))
    bumped = states.detach().clone()
    bumped[labels == IGNORE] += 3.0
    assert torch.equal(masked_lm_loss(bumped, labels, head), ours.detach())
    bumped[1, 2] += 1.0  # a predicted position
    assert not torch.allclose(masked_lm_loss(bumped, labels, head), ours.detach())
    none = torch.full_like(labels, IGNORE)  # nothing masked: zero, still differentiable
    assert masked_lm_loss(states, none, head).item() == 0.0


def test_global_alignment_matches_naive() -> None:
    g = torch.Generator().manual_seed(3)
    image = torch.randn(5, 8, generator=g, dtype=torch.float64, requires_grad=True)
    text = torch.randn(5, 8, generator=g, dtype=torch.float64, requires_grad=True)
    ours = global_alignment(image, text, 0.07)
    _close_with_grads(ours, _naive_itc(image, text, 0.07), (image, text), atol=1e-5)


def test_local_alignment_matches_naive_with_padded_words() -> None:
    g = torch.Generator().manual_seed(4)
    patches = torch.randn(3, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    words = torch.randn(3, 4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    ours = local_alignment(patches, words, mask, 0.1)
    _close_with_grads(ours, _naive_local(patches, words, mask, 0.1), (patches, words), atol=1e-5)


def test_memory_reads_the_topk_slots_of_each_head() -> None:
    torch.manual_seed(5)
    memory = Memory(slots=10, dim=8, heads=2, topk=3).double().requires_grad_(False)
    tokens = torch.randn(2, 3, 8, dtype=torch.float64)
    ours = memory(tokens)
    keys, values = memory.key(memory.memory), memory.value(memory.memory)
    queries = memory.query(tokens)
    ref = torch.zeros(2, 3, 8, dtype=torch.float64)
    for b in range(2):
        for t in range(3):
            heads = []
            for h in range(2):
                cols = slice(4 * h, 4 * h + 4)
                scores = [torch.dot(queries[b, t, cols], keys[s, cols]) / 2.0 for s in range(10)]
                best = sorted(range(10), key=lambda s: -float(scores[s]))[:3]
                w = torch.softmax(torch.stack([scores[s] for s in best]), 0)
                heads.append(sum(w[i] * values[s, cols] for i, s in enumerate(best)))
            ref[b, t] = memory.out(torch.cat(heads))
    assert torch.allclose(ours, ref, atol=1e-10)


# ---------------------------------------------------------------- masking


@pytest.mark.parametrize(("n", "ratio", "visible"), [(16, 0.75, 4), (36, 0.75, 9), (10, 0.7, 3),
                                                     (196, 0.75, 49), (16, 0.5, 8)])  # fmt: skip
def test_patch_mask_keeps_floor_of_the_visible_fraction(n, ratio, visible) -> None:
    assert visible_count(n, ratio) == visible
    g = torch.Generator().manual_seed(6)
    keep, restore, mask = random_patch_mask(4, n, ratio, torch.device("cpu"), g)
    assert keep.shape == (4, visible) and (mask.sum(1) == n - visible).all()
    for b in range(4):
        assert sorted(keep[b].tolist()) == torch.nonzero(~mask[b]).flatten().tolist()
    shuffle = restore.argsort(1)  # restore inverts the shuffle whose head is keep
    assert (shuffle[:, :visible] == keep).all()
    assert mask.gather(1, shuffle)[:, visible:].all()
    assert len({tuple(k.tolist()) for k in keep}) > 1  # per-sample masks


def test_pick_tokens_masks_whole_words_in_the_configured_number() -> None:
    word_ids = torch.tensor([
        [-1, 0, 1, 1, 2, 3, 3, 3, 4, -1, -1, -1],
        [-1, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, -1],
        [-1, 0, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1],
    ])  # fmt: skip
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        picked = pick_tokens(word_ids, 0.3, whole_word=True, generator=g)
        assert not picked[word_ids < 0].any()
        for b, words in enumerate((5, 9, 1)):
            chosen = set(word_ids[b][picked[b]].tolist())
            assert len(chosen) == max(1, round(0.3 * words))  # 2 (1.5 → 2), 3 (2.7), 1
            for w in chosen:  # every sub-word of a picked word
                assert picked[b][word_ids[b] == w].all()
        tokens = pick_tokens(word_ids, 0.3, whole_word=False, generator=g)
        assert tokens.sum(1).tolist() == [max(1, round(0.3 * n)) for n in (8, 10, 1)]
        assert not tokens[word_ids < 0].any()


def test_replace_tokens_follows_the_bert_rule() -> None:
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(10, 50, (400, 100), generator=g)
    picked = torch.rand(400, 100, generator=g) < 0.5
    regular = torch.arange(5, 60)
    out = replace_tokens(ids, picked, 4, regular, "bert", g)
    assert torch.equal(out[~picked], ids[~picked])
    p = out[picked]
    assert abs((p == 4).double().mean().item() - 0.8) < 0.01
    changed = (p != 4) & (p != ids[picked])
    assert abs(changed.double().mean().item() - 0.1 * (1 - 1 / 55)) < 0.01
    assert ((p == 4) | ((p >= 5) & (p < 60))).all()
    all_mask = replace_tokens(ids, picked, 4, regular, "mask", g)
    assert (all_mask[picked] == 4).all() and torch.equal(all_mask[~picked], ids[~picked])


# ---------------------------------------------------------------- the method


@pytest.fixture(scope="module")
def mpma_batch(pairs_corpus):
    from cxrbench.data.pretrain import PairDataset, collate, load_pairs

    pairs = load_pairs(pairs_corpus / "mimic-cxr-jpg", "train")[:8]
    data = PairDataset(pairs, 64, 64, train=False)
    return collate([data[i] for i in range(len(data))])


def _method(text_model, *sets: str, vit: bool = True):
    from cxrbench.runner.pretrain import build_method
    from cxrbench.runner.resolve import load_config

    sets = (f"text.model={text_model}", "text.max_length=32", *sets)
    job = load_config("mpma", "tiny", [*sets, "backbone.name=vit_tiny"] if vit else list(sets))
    torch.manual_seed(0)
    method = build_method(job, text_model)
    method.train()
    return method


def test_mpma_needs_a_vit(text_model) -> None:
    with pytest.raises(ConfigError, match=r"backbone\.name=vit_tiny or vit_b16"):
        _method(text_model, vit=False)


def test_the_visible_path_is_the_backbone_when_nothing_is_masked(text_model, mpma_batch) -> None:
    method = _method(text_model)
    image = mpma_batch["image"][:3]
    keep = torch.arange(method.num_patches).expand(3, -1)
    ours = method.encode_visible(image, keep)
    full = method.backbone(image)
    assert torch.allclose(ours[:, 0], full.pooled, atol=1e-5)
    assert torch.allclose(ours[:, 1:], full.tokens, atol=1e-5)
    shuffled = keep[:, torch.randperm(method.num_patches)[:5]]  # a subset: same per-patch inputs
    assert ours.shape[1] == 17 and method.encode_visible(image, shuffled).shape == (3, 6, 192)


@pytest.mark.parametrize(("sets", "ratio", "mlm_ratio", "normalize"), [
    ((), 0.75, 0.15, True),
    (("params.mask_ratio=0.5", "params.mlm_ratio=0.3", "params.norm_pix_loss=false"), 0.5, 0.3,
     False),
])  # fmt: skip
def test_masks_and_targets_are_what_the_config_says(
    text_model, mpma_batch, sets, ratio, mlm_ratio, normalize
) -> None:
    method = _method(text_model, *sets)
    with torch.no_grad():
        out = method.step_outputs(mpma_batch, torch.Generator().manual_seed(8))
    n = method.num_patches
    assert n == 16 and (out.patch_mask.sum(1) == n - visible_count(n, ratio)).all()
    assert out.pred.shape == out.target.shape == (8, 16, 768)
    expected = pixel_targets(mpma_batch["image"].double(), 16, normalize)  # = naive, tested above
    assert torch.allclose(out.target.double(), expected, atol=1e-4)
    tokens = method.text.tokenize(mpma_batch["text"])
    ids, word_ids = tokens["input_ids"], tokens["word_ids"]
    picked = out.labels != IGNORE
    assert torch.equal(out.labels[picked], ids[picked])
    assert torch.equal(out.masked_ids[~picked], ids[~picked])
    for b in range(8):
        words = int(word_ids[b].max()) + 1
        assert len(set(word_ids[b][picked[b]].tolist())) == max(1, round(mlm_ratio * words))


def test_losses_are_the_naive_terms_of_one_paired_pass(text_model, mpma_batch) -> None:
    method = _method(text_model)
    torch.manual_seed(9)
    terms = method.losses(mpma_batch)
    torch.manual_seed(9)
    out = method.step_outputs(mpma_batch)
    assert set(terms) == {"mim", "mlm", "itc", "local"}
    again = method.terms(out)
    for key, value in terms.items():
        assert torch.allclose(value, again[key], atol=1e-6), key
    d = {k: v.detach().double() for k, v in vars(out).items() if v.is_floating_point()}
    head = method.mlm_logits
    naive = {
        "mim": _naive_mim(d["pred"], d["target"], out.patch_mask),
        "mlm": _naive_mlm(out.text_states.detach(), out.labels, head).double(),
        "itc": _naive_itc(d["image_embed"], d["text_embed"], 0.07),
        "local": _naive_local(d["patches"], d["words"], out.word_mask, 0.1),
    }
    for key, ref in naive.items():
        assert math.isclose(terms[key].item(), ref.item(), rel_tol=1e-4, abs_tol=1e-5), key
    # the method's MIM / MLM see masked positions only
    pred, states = out.pred.detach().clone(), out.text_states.detach().clone()
    pred[~out.patch_mask] += 10.0
    states[out.labels == IGNORE] += 10.0
    assert torch.equal(masked_mse(pred, out.target, out.patch_mask), terms["mim"].detach())
    with torch.no_grad():
        assert torch.allclose(masked_lm_loss(states, out.labels, head), terms["mlm"])


def test_mpma_learns_a_repeated_batch_and_reconstructs_better(text_model, mpma_batch) -> None:
    method = _method(text_model)

    def reconstruction() -> float:
        with torch.no_grad():
            out = method.step_outputs(mpma_batch, torch.Generator().manual_seed(10))
            return masked_mse(out.pred, out.target, out.patch_mask).item()

    before = reconstruction()
    optimizer = torch.optim.AdamW(method.parameters(), lr=2e-3)
    history = []
    for _ in range(25):
        terms = method.losses(mpma_batch)
        loss = sum(terms.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append({"total": loss.item(), **{k: v.item() for k, v in terms.items()}})
    for term in ("total", "mim", "mlm", "itc", "local"):
        first, last = history[0][term], sum(h[term] for h in history[-5:]) / 5
        assert last < 0.9 * first, (term, first, last)
    assert reconstruction() < 0.85 * before
