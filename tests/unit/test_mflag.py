"""M-FLAG: its losses against naive loops, the frozen language model, the [CLS] cache, learning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cxrbench.data.pretrain import PairDataset, collate, load_pairs
from cxrbench.errors import ConfigError
from cxrbench.losses.geometry import alignment_loss, orthogonality_loss
from cxrbench.methods.mflag import MFLAG, TextFeatureCache, trainable_parameters
from cxrbench.runner.pretrain import build_method
from cxrbench.runner.resolve import load_config

# ----------------------------------------------------------------------------- losses


def _naive_align(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    total = torch.zeros((), dtype=p.dtype)
    for i in range(p.shape[0]):
        cos = torch.dot(p[i], q[i]) / (p[i].norm() * q[i].norm())
        total = total + (2 - 2 * cos) + (2 - 2 * cos)
    return total / p.shape[0]


def _naive_orth(v: torch.Tensor, w: float, n: int) -> torch.Tensor:
    dims = v.shape[1]
    total = torch.zeros((), dtype=v.dtype)
    for k in range(dims):
        for m in range(dims):
            c = sum(v[i, k] * v[i, m] for i in range(v.shape[0])) / n
            total = total + ((c - 1) ** 2 if k == m else w * c**2)
    return total / 2


def _check_grads(ours: torch.Tensor, ref: torch.Tensor, inputs: tuple[torch.Tensor, ...]) -> None:
    g_ours = torch.autograd.grad(ours, inputs)
    g_ref = torch.autograd.grad(ref, inputs)
    for a, b in zip(g_ours, g_ref, strict=True):
        assert torch.allclose(a, b, atol=1e-10)


def test_alignment_loss_matches_naive_loop() -> None:
    g = torch.Generator().manual_seed(0)
    p = torch.randn(6, 8, generator=g, dtype=torch.float64, requires_grad=True)
    q = torch.randn(6, 8, generator=g, dtype=torch.float64, requires_grad=True)
    ours, ref = alignment_loss(p, q), _naive_align(p, q)
    assert ours.dtype == torch.float64
    assert torch.allclose(ours, ref, atol=1e-12)
    _check_grads(ours, ref, (p, q))
    assert alignment_loss(p, p).item() == pytest.approx(0.0, abs=1e-12)
    assert alignment_loss(p, -p).item() == pytest.approx(8.0)


@pytest.mark.parametrize("batch_size", [None, 10])
def test_orthogonality_loss_matches_naive_loop(batch_size: int | None) -> None:
    g = torch.Generator().manual_seed(1)
    v = (torch.randn(6, 5, generator=g, dtype=torch.float64) + 0.5).requires_grad_(True)
    ours = orthogonality_loss(v, 0.0051, batch_size=batch_size)
    ref = _naive_orth(v, 0.0051, batch_size or v.shape[0])
    assert ours.dtype == torch.float64
    assert torch.allclose(ours, ref, atol=1e-12)
    _check_grads(ours, ref, (v,))


def test_orthogonality_is_zero_for_orthonormal_columns() -> None:
    q, _ = torch.linalg.qr(torch.randn(16, 16, dtype=torch.float64))
    assert orthogonality_loss(q * 4.0).item() == pytest.approx(0.0, abs=1e-20)  # C = I


def test_losses_run_in_fp32_under_bf16_autocast() -> None:
    g = torch.Generator().manual_seed(2)
    v = torch.rand(32, 64, generator=g) * 3  # raw ReLU-like features: large Gram entries
    p, q = torch.randn(32, 16, generator=g), torch.randn(32, 16, generator=g)
    ref_orth, ref_align = orthogonality_loss(v), alignment_loss(p, q)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (v.t() @ v).dtype == torch.bfloat16  # autocast is on
        orth, orth_bf16_in = orthogonality_loss(v), orthogonality_loss(v.bfloat16())
        align = alignment_loss(p.bfloat16(), q.bfloat16())
    assert orth.dtype == torch.float32 and orth_bf16_in.dtype == torch.float32
    assert align.dtype == torch.float32
    assert torch.equal(orth, ref_orth)  # same fp32 computation
    assert torch.equal(orth_bf16_in, orthogonality_loss(v.bfloat16().float()))  # only input rounded
    assert torch.allclose(align, ref_align, rtol=2e-2)  # bf16 inputs, fp32 arithmetic


# ----------------------------------------------------------------------------- the method


def _job(text_model, *sets: str):
    return load_config("mflag", "tiny", [f"text.model={text_model}", "text.max_length=32", *sets])


def _method(text_model, *sets: str) -> MFLAG:
    torch.manual_seed(0)
    method = build_method(_job(text_model, *sets), text_model)
    assert isinstance(method, MFLAG)
    method.train()
    return method


@pytest.fixture(scope="module")
def batch(pairs_corpus) -> dict:
    pairs = load_pairs(pairs_corpus / "mimic-cxr-jpg", "train")[:8]  # 8 distinct findings
    data = PairDataset(pairs, 64, 64, train=False)
    return collate([data[i] for i in range(len(data))])


def _count_text_calls(method: MFLAG) -> list[int]:
    """Batch sizes of every forward call of the language model."""
    calls: list[int] = []
    assert method.text is not None

    def hook(module, args, kwargs, output) -> None:
        calls.append(int(kwargs["input_ids"].shape[0]))

    method.text.model.register_forward_hook(hook, with_kwargs=True)
    return calls


EXTRA = ["no acute process", "left pleural effusion is new", "cardiomegaly", "there is edema"]


def test_config_and_shapes(text_model) -> None:
    job = _job(text_model)
    assert job.cfg.text.freeze == "all" and job.cfg.optim.weight_decay == 0.05
    assert job.params.embed_dim == 1024 and job.params.off_diagonal_weight == 0.0051
    paper = load_config("mflag", "paper", [f"text.model={text_model}"]).cfg.optim
    assert paper.lr == 2e-5 and paper.warmup == 0.0 and paper.grad_clip is None  # official
    method = _method(text_model)
    assert method.image_proj[0].in_features == method.backbone.feature_dims["pooled"]
    assert method.text_proj[0].in_features == method.text.hidden_size
    assert method.image_proj[-2].out_features == method.text_proj[-2].out_features == 1024
    counted = sum(trainable_parameters(m) for m in (method.backbone, method.image_proj,
                                                     method.text_proj))  # fmt: skip
    assert trainable_parameters(method.text) == 0
    assert trainable_parameters(method) == counted


def test_text_encoder_stays_frozen_through_training(text_model, batch) -> None:
    method = _method(text_model)
    assert method.text is not None
    before = {k: v.clone() for k, v in method.text.state_dict().items()}
    image_before = method.backbone.state_dict()["conv1.weight"].clone()
    optimizer = torch.optim.AdamW(method.parameters(), lr=1e-2, weight_decay=0.5)
    for _ in range(3):
        method.train()
        assert not method.text.training and not method.text.model.training
        loss = sum(method.losses(batch).values())
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is None for p in method.text.parameters())
        optimizer.step()
    after = method.text.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(image_before, method.backbone.state_dict()["conv1.weight"])
    assert method.text_cache is not None and method.text_cache.hits == 16  # steps 2 and 3


def test_cache_equals_the_model_and_skips_it_on_a_second_pass(text_model, batch) -> None:
    method, plain = _method(text_model), _method(text_model, "params.cache_text=false")
    assert plain.text_cache is None
    calls = _count_text_calls(method)
    texts, device = list(batch["text"]), torch.device("cpu")
    first = method.text_features(texts, device)
    assert calls == [8]
    assert torch.equal(first, plain.text_features(texts, device))
    second = method.text_features(texts, device)
    assert calls == [8] and torch.equal(second, first)  # no model call: all from the cache
    assert first.dtype == torch.float32 and not first.requires_grad
    # a mixed batch: 4 seen, 4 unseen (one of them twice): only the 3 distinct new ones run
    mixed = [*texts[:4], *EXTRA[:3], EXTRA[0]]
    got = method.text_features(mixed, device)
    assert calls == [8, 3]
    ref = plain.text_features(mixed, device)
    # padding to the longest report changes only the last float bits (the kernels' order)
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-6)
    assert torch.equal(got[:4], first[:4]) and torch.equal(got[4], got[7])
    assert method.text_cache is not None and len(method.text_cache) == 11
    # only the [CLS] rows are kept, not the (B, L, H) token features they were sliced from
    assert method.text_cache.nbytes() == 11 * first.shape[1] * 4
    assert method.losses(batch)["align"].isfinite()  # losses go through the cache too
    assert calls == [8, 3]


def test_cache_is_bit_exact_with_fixed_length_padding(text_model, batch) -> None:
    method, plain = _method(text_model), _method(text_model, "params.cache_text=false")
    for m in (method, plain):
        assert m.text is not None
        m.text.padding = "max_length"
    texts, device = list(batch["text"]), torch.device("cpu")
    method.text_features(texts[:5], device)
    mixed = texts[3:] + EXTRA
    assert torch.equal(method.text_features(mixed, device), plain.text_features(mixed, device))


def test_cache_is_not_state_and_empties_when_the_text_model_changes(text_model, batch) -> None:
    method = _method(text_model)
    plain = _method(text_model, "params.cache_text=false")
    calls = _count_text_calls(method)
    texts, device = list(batch["text"]), torch.device("cpu")
    first = method.text_features(texts, device)
    assert len(method.text_cache or []) == 8
    assert list(method.state_dict()) == list(plain.state_dict())
    assert not any("cache" in k for k in method.state_dict())
    assert isinstance(method.__dict__["text_cache"], TextFeatureCache)
    assert method.text is not None
    with torch.no_grad():  # anything changing a weight in place (load_state_dict, a step, ...)
        method.text.model.get_input_embeddings().weight.mul_(1.5)
    changed = method.text_features(texts, device)
    assert calls == [8, 8] and not torch.equal(changed, first)
    state = {k: v for k, v in plain.state_dict().items() if k.startswith("text.")}
    method.load_state_dict(state, strict=False)  # back to the original weights
    assert torch.equal(method.text_features(texts, device), first) and calls == [8, 8, 8]


@pytest.mark.parametrize("freeze", ["none", "1"])
def test_an_unfrozen_text_encoder_is_refused(text_model, freeze: str) -> None:
    with pytest.raises(ConfigError, match=r"text\.freeze"):
        build_method(_job(text_model, f"text.freeze={freeze}"), text_model)


def test_unfreezing_after_building_is_refused(text_model, batch) -> None:
    method = _method(text_model)
    method.losses(batch)
    assert method.text is not None and method.text_cache is not None
    method.text.model.requires_grad_(True)
    with pytest.raises(ConfigError, match=r"text\.freeze"):
        method.losses(batch)
    assert len(method.text_cache) == 0


def test_losses_under_bf16_autocast_are_float32(text_model, batch) -> None:
    method = _method(text_model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = method.losses(batch)
    assert set(terms) == {"align", "orth"}
    assert all(t.dtype == torch.float32 and t.isfinite() for t in terms.values())


def test_mflag_learns_a_repeated_batch(text_model, batch) -> None:
    method = _method(text_model)
    optimizer = torch.optim.AdamW(method.parameters(), lr=1e-3)
    history = []
    for _ in range(25):
        terms = method.losses(batch)
        loss = terms["align"] + terms["orth"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append((loss.item(), terms["align"].item(), terms["orth"].item()))
    first, last = history[0], history[-1]
    assert last[0] < 0.5 * first[0], history[::8]
    assert last[1] < 0.5 * first[1], history[::8]
    assert last[2] < 0.5 * first[2], history[::8]
    with torch.no_grad():  # batch statistics, as in the loss
        _, p, q = method.embed(batch)
        sims = F.normalize(p, dim=-1) @ F.normalize(q, dim=-1).t()
    top1 = (sims.argmax(dim=1) == torch.arange(8)).float().mean().item()
    assert top1 >= 0.5  # chance is 1/8
