"""PLACE — Wang, Zhu, Yu, Bhalerao, He, "Improving Medical Visual Representation Learning with
Pathological-level Cross-Modal Alignment and Correlation Exploration", arXiv 2506.10573 (2025;
journal version Oct 2025). No public code ("code will be released upon the acceptance").

**Sources.** Only the abstract, Fig. 1's caption and third-party summaries could be read; the
method section (equations, sizes, temperatures, weights, backbone) could not. Below, *paper*
marks what that text states; *ours* marks a decision taken where it is silent, with its reason.
Every number in ``configs/method/place.yaml`` is ours.

What the paper states, per component, and how it is implemented here:

- **VPOE** (Visual Pathology Observation Extractor). *Paper*: learnable "pathology query tokens"
  attend to the image encoder's localized tokens and yield visual pathology observation
  representations (V-PORs). *Ours*: ``num_queries`` (16) learnable queries through a pre-LN
  transformer decoder (``decoder_depth`` 2 layers, width ``decoder_dim`` 256, ``decoder_heads``
  4, GELU MLP ×4, no dropout): self-attention among the queries, cross-attention to the image
  tokens (LayerNorm → Linear to the decoder width, plus a learned positional embedding on the
  token grid, resized bilinearly if the grid differs). Reason: the standard DETR/Q-Former form of
  "queries attending to tokens"; the positional embedding is needed for ResNet tokens, which
  carry little position information, and pathology observations are location-bound (left/right,
  lobes). The image tokens are ``Features.tokens``: ViT patch tokens, or the ResNet C4 map
  (``backbone.tokens_from=c5``: C5) flattened into region tokens.
- **T-PORs** (textual pathology observations). *Paper*: pathology observations taken from the
  report. *Ours*: one T-POR per report sentence (a sentence of a radiology report states one
  observation, usually), from **one** text-encoder pass over the whole cleaned report: the word
  features (sub-words summed) of each sentence are averaged. Words are mapped to sentences by
  counting each sentence's words with the tokenizer's own normaliser and pre-tokenizer, so the
  counts agree with the tokenizer's ``word_ids`` (the report is its sentences joined by single
  spaces, so no word crosses a sentence boundary); a slow tokenizer counts the pieces that open
  a word, as ``TextEncoder`` does. A sentence cut by truncation keeps its kept words; one with
  none, and the slots past ``max_sentences`` (16) or past the report's end, are masked
  everywhere. Reason: one pass is as cheap as ITC's and sentences see their context; encoding
  each sentence separately would multiply the text cost by the sentence count.
- **PCMA** (pathological-level cross-modal alignment). *Paper*: maximises the consistency of the
  pathology observations of image and report, without disease labels or external knowledge.
  *Ours*: V-PORs and T-PORs get BN-MLP heads (MGCA's local heads: Linear → BN → ReLU → Linear →
  BN, applied per observation, the BN over valid ones only) to ``embed_dim`` (128) and are
  L2-normalised. **Assignment**: a T-POR ``t`` attends over the K V-PORs ``v_1..v_K`` of an image,
  ``v̂ = normalise(Σ_k softmax_k(<t, v_k> / τa) v_k)`` (τa = ``assign_temperature``, 0.1), and is
  scored ``z = <t, v̂> / τ`` (τ = ``pcma_temperature``, 0.1). A softmax over the queries does not
  depend on their order (the queries are a set), is differentiable, and lets several sentences
  pick the same observation — MIMIC's impression often repeats a finding — which a one-to-one
  Hungarian matching would forbid; it is the cross-attention alignment of GLoRIA and MGCA that
  the paper positions itself against, moved from tokens to observations. **Contrast across the
  batch**, both directions, for every valid sentence ``s`` of report ``i``: *text → image*, ``s``
  is matched in every image of the batch and must score its own image ``i`` highest (CE over
  the images); *image → text*, image ``i``'s observations, matched by ``s``, must fit ``s`` better
  than any sentence of another report (CE over ``s`` and all other reports' sentences, each
  matched in image ``i``). Other sentences of the same report are never negatives (they are
  other observations of the same pair). Each direction averages the sentences of a report, then
  the reports (a long report does not outweigh a short one); ``pcma`` is the sum of the two.
- **Global ITC**. *Paper*: not stated in the text available (the issue asks for it, as every
  method the paper compares with has one). *Ours*: MGCA's ITA — BN-MLP heads on the pooled image
  feature and the report [CLS] to 128-d, symmetric InfoNCE at τ = 0.07, the two directions
  summed (MGCA's convention, so ``itc`` equals ``mgca``'s ``ita``).
- **CCE** (cross-modal correlation exploration). *Paper*: a proxy task in which the model
  identifies correlations among image patches; a summary calls it "predicting patch-level
  covariance conditioned on reports". *Ours*: target ``R = corr(P)``, the patch–patch Pearson
  correlation of the image tokens ``P`` (each token centred over its channels, then cosine;
  "covariance" read as its scale-free form, which also removes the positive offset of post-ReLU
  ResNet features that crowds plain cosines near 1), **stop-gradient**. Prediction: every patch
  cross-attends (multi-head, ``cce_heads`` 4, width ``cce_dim`` 256) to the report's word
  features plus its [CLS] (so no report is ever fully masked), an MLP maps the attended vector to
  ``P̃``, and ``R̂ = corr(P̃)``. The prediction has **no residual path from the patch**: a patch
  enters only through its attention query, so each ``P̃_n`` is a re-description of patch ``n``
  by the report. With a residual, ``P̃ = P`` would give ``R̂ = R`` and a zero loss without any
  learning; without it, patches that look alike must be described alike by the report. The
  gradient reaches the image encoder through the queries and the text encoder through keys and
  values; the stop-gradient keeps the target from collapsing towards an easy-to-predict one.
  Loss (``cce_loss: kl``): row-wise ``KL(softmax(R_n·/τc) ‖ softmax(R̂_n·/τc))`` over the other
  patches (τc = ``cce_temperature``, 0.1; the diagonal, 1 on both sides by construction, is left
  out, else it dominates every row), mean over patches and images — a distribution over which
  patches go together, as relational distillation does; ``cce_loss: mse`` regresses the
  off-diagonal correlations instead.
- **Total**: ``itc + pcma + cce`` (``loss_weights``, 1 each: the paper's weights are not known).

Deviations and limits, and why:

- Everything marked *ours* above may differ from the paper; the component names, the query-token
  extractor, the label-free observation alignment and the report-conditioned, stop-gradient
  correlation target are what the available text fixes.
- Sentences repeated verbatim across reports of a batch ("No pneumothorax.") are still negatives
  of each other in PCMA, as duplicate reports are in ITC: plain InfoNCE, what the paper most
  plausibly uses (no false-negative filtering). Their T-PORs differ only through the report
  context that the single text pass gives every word.
- The losses run in float32 (or float64 inputs' type) with autocast off; under DDP, ITC and PCMA
  gather embeddings with gradients (the negatives are the global batch; each rank scores its
  own sentences against every image and its own images against every sentence), CCE is
  per-image. A batch without ``sentences`` uses each report as one sentence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cxrbench.errors import ConfigError, CxrbenchError
from cxrbench.losses.contrastive import info_nce
from cxrbench.losses.distributed import gather_no_grad, gather_with_grad, is_distributed, rank
from cxrbench.methods import METHODS
from cxrbench.methods._heads import TokenHead, bn_mlp
from cxrbench.methods.base import PretrainMethod

CCE_LOSSES = ("kl", "mse")
EPS = 1e-12  # F.normalize's floor on a vector norm


@dataclass
class PlaceConfig:
    embed_dim: int = 128
    hidden_dim: int = 2048  # BN-MLP heads (MGCA)
    temperature: float = 0.07  # global ITC
    num_queries: int = 16  # pathology query tokens (K)
    decoder_dim: int = 256
    decoder_depth: int = 2
    decoder_heads: int = 4
    max_sentences: int = 16  # T-PORs per report; more are dropped (masked)
    pcma_temperature: float = 0.1
    assign_temperature: float = 0.1  # softmax of a sentence over the K V-PORs
    cce_dim: int = 256
    cce_heads: int = 4
    cce_temperature: float = 0.1
    cce_loss: str = "kl"  # "kl" (row-wise, softmax over the other patches) or "mse"


# ---------------------------------------------------------------- losses (pure functions)


def _wide(*xs: Tensor) -> torch.dtype:
    return torch.float64 if any(x.dtype == torch.float64 for x in xs) else torch.float32


def itc_loss(image: Tensor, text: Tensor, temperature: float) -> Tensor:
    """Global ITC: symmetric InfoNCE over the (global) batch, the two directions summed."""
    loss, _, _ = info_nce(image, text, temperature, normalize=False)
    return 2.0 * loss


def matched_scores(sentences: Tensor, observations: Tensor, assign_temperature: float) -> Tensor:
    """``z[b, s, i] = <t_bs, v̂>``, ``v̂ = normalise(Σ_k softmax_k(<t_bs, v_ik> / τa) v_ik)``.

    ``sentences`` (Bs, S, d) and ``observations`` (Bi, K, d) are L2-normalised; returns
    (Bs, S, Bi). The norm of ``v̂`` comes from the observations' Gram matrix, so no
    (Bs, S, Bi, d) tensor is formed.
    """
    sim = torch.einsum("bsd,ikd->bsik", sentences, observations)
    weights = (sim / assign_temperature).softmax(dim=-1)
    gram = torch.einsum("ikd,ild->ikl", observations, observations)
    squared = (torch.einsum("bsik,ikl->bsil", weights, gram) * weights).sum(dim=-1)
    return (weights * sim).sum(dim=-1) / squared.clamp_min(EPS * EPS).sqrt()


def _report_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean over each report's valid sentences, then over the reports that have one."""
    mask = mask.to(values.dtype)
    per_report = (values * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
    return per_report.sum() / (mask.sum(dim=1) > 0).sum().clamp(min=1)


def pcma_loss(
    sentences: Tensor,
    sentence_mask: Tensor,
    observations: Tensor,
    temperature: float,
    assign_temperature: float,
) -> tuple[Tensor, Tensor]:
    """PCMA's ``(text → image, image → text)`` losses (module docstring), over the global batch.

    ``sentences`` (B, S, d) T-PORs with ``sentence_mask`` (B, S); ``observations`` (B, K, d)
    V-PORs; both L2-normalised. Padded sentences change nothing (value and gradient).
    """
    dtype = _wide(sentences, observations)
    with torch.autocast(sentences.device.type, enabled=False):
        s, v = sentences.to(dtype), observations.to(dtype)
        mask = sentence_mask.bool()
        all_v = gather_with_grad(v)
        b = s.shape[0]
        own = torch.arange(b, device=s.device) + rank() * b
        rows = matched_scores(s, all_v, assign_temperature) / temperature  # (B, S, Bg)
        if is_distributed():
            all_s, all_mask = gather_with_grad(s), gather_no_grad(mask)
            cols = matched_scores(all_s, v, assign_temperature) / temperature  # (Bg, S, B)
        else:
            all_mask, cols = mask, rows
        # text → image: a sentence, matched in every image, picks its own image
        index = own[:, None, None].expand(b, s.shape[1], 1)
        positive = rows.gather(2, index).squeeze(2)  # (B, S)
        t2v = torch.logsumexp(rows, dim=2) - positive
        # image → text: image i, matched by each sentence, fits its own sentence better than any
        # sentence of another report (its report's other sentences are not candidates)
        other = torch.arange(cols.shape[0], device=s.device)[:, None] != own[None, :]  # (Bg, B)
        keep = all_mask[:, :, None] & other[:, None, :]  # (Bg, S, B)
        negatives = torch.logsumexp(cols.masked_fill(~keep, float("-inf")).flatten(0, 1), dim=0)
        v2t = torch.logaddexp(negatives[:, None], positive) - positive
        return _report_mean(t2v, mask), _report_mean(v2t, mask)


def correlation(x: Tensor) -> Tensor:
    """Pearson correlation between the rows of ``x`` (B, N, D): centred over D, then cosine."""
    x = F.normalize(x - x.mean(dim=-1, keepdim=True), dim=-1)
    return torch.bmm(x, x.transpose(1, 2))


def _off_diagonal(x: Tensor) -> Tensor:
    """(B, N, N) → (B, N, N − 1): each row without its diagonal entry."""
    b, n, _ = x.shape
    return x.flatten(1)[:, 1:].reshape(b, n - 1, n + 1)[:, :, :-1].reshape(b, n, n - 1)


def cce_loss(target: Tensor, predicted: Tensor, temperature: float, kind: str = "kl") -> Tensor:
    """CCE: ``corr(predicted)`` against the stop-gradient ``corr(target)``, off the diagonal.

    ``target`` (B, N, Dt) image tokens, ``predicted`` (B, N, Dp) report-conditioned patches.
    ``kl``: mean over rows of ``KL(softmax(R_n·/τ) ‖ softmax(R̂_n·/τ))``; ``mse``: mean of
    ``(R̂ − R)²``.
    """
    dtype = _wide(target, predicted)
    with torch.autocast(predicted.device.type, enabled=False):
        with torch.no_grad():
            r = _off_diagonal(correlation(target.detach().to(dtype)))
        r_hat = _off_diagonal(correlation(predicted.to(dtype)))
        if kind == "mse":
            return (r_hat - r).pow(2).mean()
        log_p = F.log_softmax(r / temperature, dim=-1)
        log_q = F.log_softmax(r_hat / temperature, dim=-1)
        return (log_p.exp() * (log_p - log_q)).sum(dim=-1).mean()


# ---------------------------------------------------------------- sentences → T-POR features


def sentence_word_counts(tokenizer: Any, sentences: list[str] | tuple[str, ...]) -> list[int]:
    """Words of each sentence, counted as the tokenizer's ``word_ids`` count them."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # fast tokenizer: its own normaliser and pre-tokenizer
        if backend.pre_tokenizer is None:
            raise CxrbenchError("place needs a text tokenizer with a pre-tokenizer (BERT-like)")
        normalizer = backend.normalizer
        counts = []
        for sentence in sentences:
            text = normalizer.normalize_str(sentence) if normalizer is not None else sentence
            counts.append(len(backend.pre_tokenizer.pre_tokenize_str(text)))
        return counts
    # slow tokenizer: TextEncoder's word_ids_from_ids opens a word at each non-special piece
    # that does not start with "##"
    special = set(tokenizer.all_special_tokens)
    return [
        sum(1 for piece in tokenizer.tokenize(sentence)
            if piece not in special and not piece.startswith("##"))
        for sentence in sentences
    ]  # fmt: skip


def sentence_assignment(
    counts: list[list[int]], word_mask: Tensor, max_sentences: int
) -> tuple[Tensor, Tensor]:
    """Averaging matrix (B, S, W) from words to sentences, and the sentence mask (B, S).

    Sentence ``s`` of sample ``b`` owns words ``sum(counts[b][:s]) ..`` (its count of them);
    words past ``W`` or outside ``word_mask`` (truncated) are dropped, and a sentence without
    any kept word is masked. ``S = max_sentences``.
    """
    b, w = word_mask.shape
    owner = torch.full((b, w), -1, dtype=torch.long)
    for i, sample in enumerate(counts):
        start = 0
        for s, count in enumerate(sample[:max_sentences]):
            stop = min(start + count, w)
            if start < stop:
                owner[i, start:stop] = s
            start += count
    owner = owner.to(word_mask.device)
    owner = torch.where(word_mask.bool(), owner, torch.full_like(owner, -1))
    index = torch.where(owner >= 0, owner, torch.full_like(owner, max_sentences))
    member = F.one_hot(index, max_sentences + 1)[..., :max_sentences].transpose(1, 2).float()
    size = member.sum(dim=-1)
    return member / size.clamp(min=1).unsqueeze(-1), size > 0


# ---------------------------------------------------------------- modules


class ObservationExtractor(nn.Module):
    """VPOE: learnable pathology queries → transformer decoder over the image tokens."""

    def __init__(
        self, token_dim: int, grid: tuple[int, int], num_queries: int, width: int, depth: int,
        heads: int,
    ) -> None:  # fmt: skip
        super().__init__()
        self.queries = nn.Parameter(torch.empty(num_queries, width))
        self.memory = nn.Sequential(nn.LayerNorm(token_dim), nn.Linear(token_dim, width))
        self.grid = grid
        self.position = nn.Parameter(torch.empty(1, grid[0] * grid[1], width))
        nn.init.trunc_normal_(self.queries, std=0.02)
        nn.init.trunc_normal_(self.position, std=0.02)
        layer = nn.TransformerDecoderLayer(
            width, heads, 4 * width, dropout=0.0, activation="gelu", batch_first=True,
            norm_first=True,
        )  # fmt: skip
        self.decoder = nn.TransformerDecoder(layer, depth, norm=nn.LayerNorm(width))

    def _position(self, grid: tuple[int, int]) -> Tensor:
        if tuple(grid) == self.grid:
            return self.position
        h, w = self.grid
        pos = self.position.reshape(1, h, w, -1).permute(0, 3, 1, 2)
        pos = F.interpolate(pos, size=tuple(grid), mode="bilinear", align_corners=False)
        return pos.flatten(2).transpose(1, 2)

    def forward(self, tokens: Tensor, grid: tuple[int, int]) -> Tensor:
        memory = self.memory(tokens) + self._position(grid)
        queries = self.queries.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        return self.decoder(queries, memory)


class ReportConditionedPatches(nn.Module):
    """CCE's predictor: each patch re-described by the report (cross-attention, no residual)."""

    def __init__(self, token_dim: int, text_dim: int, width: int, heads: int) -> None:
        super().__init__()
        self.query = nn.Sequential(nn.LayerNorm(token_dim), nn.Linear(token_dim, width))
        self.key_norm = nn.LayerNorm(text_dim)
        self.attention = nn.MultiheadAttention(
            width, heads, kdim=text_dim, vdim=text_dim, batch_first=True
        )
        self.out = nn.Sequential(
            nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(), nn.Linear(width, width)
        )

    def forward(self, patches: Tensor, words: Tensor, word_mask: Tensor) -> Tensor:
        keys = self.key_norm(words)
        attended, _ = self.attention(
            self.query(patches), keys, keys, key_padding_mask=~word_mask.bool(),
            need_weights=False,
        )  # fmt: skip
        return self.out(attended)


@METHODS.register("place")
class PLACE(PretrainMethod):
    vl_space = True  # zero-shot / retrieval: cosine of the global image and report embeddings
    Config = PlaceConfig

    def __init__(self, params: PlaceConfig, backbone: Any, text: Any, run: Any) -> None:
        super().__init__(params, backbone, text, run)
        p = params
        _validate(p)
        grid = tuple(backbone.token_grid)
        if grid[0] * grid[1] < 2:
            raise ConfigError(None, "backbone", f"CCE needs at least 2 image tokens, got {grid}")
        dims = backbone.feature_dims
        hidden = text.hidden_size
        self.image_global = bn_mlp(dims["pooled"], p.hidden_dim, p.embed_dim)
        self.text_global = bn_mlp(hidden, p.hidden_dim, p.embed_dim)
        self.extractor = ObservationExtractor(
            dims["tokens"], (grid[0], grid[1]), p.num_queries, p.decoder_dim, p.decoder_depth,
            p.decoder_heads,
        )  # fmt: skip
        self.visual_head = TokenHead(p.decoder_dim, p.hidden_dim, p.embed_dim)
        self.sentence_head = TokenHead(hidden, p.hidden_dim, p.embed_dim)
        self.predictor = ReportConditionedPatches(dims["tokens"], hidden, p.cce_dim, p.cce_heads)

    def _sentences(self, batch: dict[str, Any]) -> list[list[int]]:
        """Word counts of each sample's sentences (checks that they make up its text)."""
        assert self.text is not None
        texts: list[str] = list(batch["text"])
        groups = batch.get("sentences") or [(t,) for t in texts]
        if len(groups) != len(texts):
            raise ValueError("batch['sentences'] and batch['text'] differ in length")
        for i, (text, group) in enumerate(zip(texts, groups, strict=True)):
            if " ".join(group) != text:  # never show the text: it is patient data
                raise ValueError(f"the sentences of sample {i} do not join to its text")
        return [sentence_word_counts(self.text.tokenizer, group) for group in groups]

    def encode(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Normalised global embeddings, T-PORs (+ mask), V-PORs, and CCE's tokens/prediction."""
        assert self.text is not None
        p = self.params
        image = batch["image"]
        counts = self._sentences(batch)
        tokens = {k: v.to(image.device) for k, v in self.text.tokenize(batch["text"]).items()}
        ids, attention = tokens["input_ids"], tokens["attention_mask"]
        t = self.text(ids, attention, word_ids=tokens.get("word_ids"))
        f = self.backbone(image)
        pool, sentence_mask = sentence_assignment(counts, t.word_mask, p.max_sentences)
        sentence_features = torch.bmm(pool.to(t.words.dtype), t.words)
        observations = self.extractor(f.tokens, f.token_grid)
        keys = torch.cat([t.cls[:, None], t.words], dim=1)
        key_mask = torch.cat([t.word_mask.new_ones(t.word_mask.shape[0], 1), t.word_mask], dim=1)
        return {
            "image": F.normalize(self.image_global(f.pooled), dim=-1),
            "text": F.normalize(self.text_global(t.cls), dim=-1),
            "sentences": F.normalize(self.sentence_head(sentence_features, sentence_mask), dim=-1),
            "sentence_mask": sentence_mask,
            "observations": F.normalize(self.visual_head(observations), dim=-1),
            "patches": f.tokens,
            "predicted": self.predictor(f.tokens, keys, key_mask),
        }

    def encode_images(self, image: Tensor) -> dict[str, Tensor]:
        return {"global": self.global_image(self.image_global, image)}

    def encode_texts(self, texts: list[str]) -> dict[str, Tensor]:
        return {"global": self.global_text(self.text_global, texts)}

    def losses(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        p = self.params
        e = self.encode(batch)
        t2v, v2t = pcma_loss(e["sentences"], e["sentence_mask"], e["observations"],
                             p.pcma_temperature, p.assign_temperature)  # fmt: skip
        return {
            "itc": itc_loss(e["image"], e["text"], p.temperature),
            "pcma": t2v + v2t,
            "cce": cce_loss(e["patches"], e["predicted"], p.cce_temperature, p.cce_loss),
        }


def _validate(p: PlaceConfig) -> None:
    if p.cce_loss not in CCE_LOSSES:
        raise ConfigError(None, "params.cce_loss", f"must be one of {CCE_LOSSES}")
    for key in ("embed_dim", "hidden_dim", "num_queries", "decoder_depth", "max_sentences"):
        if getattr(p, key) < 1:
            raise ConfigError(None, f"params.{key}", "must be a positive integer")
    for width, heads in (("decoder_dim", "decoder_heads"), ("cce_dim", "cce_heads")):
        if getattr(p, heads) < 1 or getattr(p, width) % getattr(p, heads):
            raise ConfigError(None, f"params.{heads}", f"must divide params.{width}")
    for key in ("temperature", "pcma_temperature", "assign_temperature", "cce_temperature"):
        if getattr(p, key) <= 0:
            raise ConfigError(None, f"params.{key}", "must be positive")
