"""GLoRIA — Huang, Shen, Lungren, Yeung, "GLoRIA: A Multimodal Global-Local Representation Learning
Framework for Label-efficient Medical Image Recognition", ICCV 2021 (official code:
marshuang80/gloria).

Implemented:

- **Image.** The backbone's pooled feature → ``Linear(pooled, E)`` (global embedding) and its c4
  map (ResNet layer3; 19×19 for ResNet-50 on the 299-px upsampled input) → bias-free 1×1 conv to
  ``E`` (region embeddings). ``E`` (``embed_dim``) defaults to the text width, as in GLoRIA where
  the image is projected into the 768-d BERT space and the text is not projected.
- **Text.** Word features = sub-word features summed into words (``TextFeatures.words``) from the
  sum of the last four BERT layers (``text.layers: last4_sum`` in the YAML); sentence embedding =
  mean of the real word features. With ``embed_dim`` different from the text width, two linear
  projections (words, sentence) map the text to ``E`` (the official code has the placeholders but
  never builds them).
- **Global loss.** Cosine similarity ×τ3, cross-entropy over the batch in both directions
  (``info_nce`` at τ = 1/τ3).
- **Local loss.** Attention-weighted word–region alignment (``losses/local.py``): softmax over the
  caption's words of region·word, ×τ1, softmax over regions; word context = attention-weighted
  regions; ``R(i, j) = log Σ_w exp(τ2 cos(context_w, word_w))``; cross-entropy of τ3·R in both
  directions. τ1 = 4, τ2 = 5, τ3 = 10 (multipliers, the paper's values).
- **Terms.** ``{"global": L_i2t + L_t2i, "local": L_i2t + L_t2i}``: each term is the *sum* of its
  two directions, as ``calc_loss`` in the official code; both weights 1 (``loss_weights``).
- **Text sampling.** ``sentence_sampling: true`` is the paper's "one random sentence per image per
  step" (official ``full_report: false``): in training mode one sentence per sample is drawn
  uniformly from ``batch["sentences"]`` with torch's global RNG (seeded by Lightning); in eval
  mode the full report is used. ``false`` (the default) uses the full cleaned report throughout.

Deviations from the official code, and why:

1. **Words are only real words.** The official word sequence starts with [CLS] (its token
   aggregation keeps it as word 0), ``cap_lens`` count the real words plus one and the local loss
   slices ``words[:, :cap_len]`` (with a ``TODO: remove [SEP]`` next to the commented-out
   ``1:cap_len+1`` slice): an off-by-one that makes [CLS] a "word" of every caption. We use the
   real words only (special tokens belong to no word), as the paper describes.
2. **Sentence embedding = mean of the real words.** The official code averages the aggregated
   token sequence over *all* ``max_length`` positions ([CLS], [SEP] and zero padding included),
   i.e. its direction is the sum of [CLS] + words + [SEP]; padding only rescales it. We average
   the real words, so the embedding does not depend on the padding length.
3. **Padding fully masked.** The official local loss does not mask anything inside a caption
   (it slices each caption to its length in a Python loop); ours is vectorised with word masks,
   and padded words take part in neither softmax nor sum (same values as the loop).
4. **Optimiser and schedule.** The suite's AdamW (decoupled weight decay 1e-6, none on biases and
   norms) with linear warm-up + cosine decay per step, instead of Adam (L2 weight decay 1e-6) with
   ReduceLROnPlateau on the validation loss and early stopping: one schedule for every method of
   the benchmark. lr 5e-5 and gradient clipping 0.25 are the official values (YAML).
5. **Global batch under DDP.** Both losses are computed over the batch gathered from every rank
   (``gather_with_grad``), equal to a single process holding the whole batch; the official runs
   used Lightning DataParallel (``dp``) / one GPU with batch 48.
6. **Text length and sentences.** The official tokenises one sentence to at most 97 tokens, built
   from its own regex sentence splitter over CheXpert impressions; we use the suite's MGCA-cleaned
   MIMIC report and its sentence split, and the suite's ``text.max_length`` (112 tokens by default,
   MGCA's), the same for every method. With ``sentence_sampling`` the official validation also
   samples a sentence; we validate on the full report (a deterministic validation loss).
7. **Precision.** The local loss runs in float32 with autocast off (the official used fp16 AMP);
   image encoder and BERT still run in the trainer's precision.
8. **Cosine.** The global cosine uses ``F.normalize`` (ε = 1e-12 per vector) instead of the
   official clamp of the norm product at 1e-8; only degenerate zero vectors differ.
9. **Images and backbone.** The suite's MGCA image pipeline and backbones (ResNet-50 upsampled to
   299 in the paper preset, as GLoRIA's ResNet path) rather than GLoRIA's own transforms.
10. **Full report by default.** ``sentence_sampling`` defaults to false (the whole cleaned report,
    as every other method of the suite sees it); the official setting (``full_report: false``)
    is ``params.sentence_sampling=true``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cxrbench.errors import ConfigError
from cxrbench.losses.contrastive import info_nce
from cxrbench.losses.local import AGGREGATIONS, local_loss, local_similarity
from cxrbench.methods import METHODS
from cxrbench.methods.base import PretrainMethod


@dataclass
class GloriaConfig:
    temp1: float = 4.0  # τ1: sharpens the word→region attention
    temp2: float = 5.0  # τ2: word–context cosine scale inside R(i, j)
    temp3: float = 10.0  # τ3: scale of the global cosine and of R(i, j) in the cross-entropies
    embed_dim: int | None = None  # None: the text hidden size (image projected into BERT space)
    sentence_sampling: bool = False  # True: one random sentence per sample per training step
    aggregation: str = "sum"  # "sum" (GLoRIA) or "mean" of exp(τ2 cos) over words
    chunk: int = 16  # captions per block of the local loss (bounds its peak memory)
    checkpoint: bool = False  # recompute the local loss blocks in backward (less memory)


@dataclass
class GloriaEmbeddings:
    """Embeddings of a batch: ``image`` (B, E), ``regions`` (B, N, E) on ``grid`` (h, w),
    ``text`` (B, E) sentence embeddings, ``words`` (B, W, E) and ``word_mask`` (B, W)."""

    image: torch.Tensor
    regions: torch.Tensor
    grid: tuple[int, int]
    text: torch.Tensor
    words: torch.Tensor
    word_mask: torch.Tensor


def global_loss(
    image: torch.Tensor, text: torch.Tensor, temp3: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """GLoRIA's global loss: cross-entropies of cosine ×τ3, (image→text, text→image)."""
    _, loss_i2t, loss_t2i = info_nce(image, text, 1.0 / temp3)
    return loss_i2t, loss_t2i


@METHODS.register("gloria")
class Gloria(PretrainMethod):
    #: zero-shot / retrieval: GLoRIA's score, the mean of the global cosine and the local
    #: word–region similarity (``gloria.py``'s ``get_similarities``, "both")
    vl_space = True
    Config = GloriaConfig

    def __init__(self, params: GloriaConfig, backbone: Any, text: Any, run: Any) -> None:
        super().__init__(params, backbone, text, run)
        for key in ("temp1", "temp2", "temp3"):
            if not getattr(params, key) > 0:
                raise ConfigError(None, f"params.{key}", "must be positive")
        if params.aggregation not in AGGREGATIONS:
            raise ConfigError(None, "params.aggregation", f"must be one of {AGGREGATIONS}")
        if params.chunk < 1:
            raise ConfigError(None, "params.chunk", "must be a positive number of captions")
        if params.embed_dim is not None and params.embed_dim < 1:
            raise ConfigError(None, "params.embed_dim", "must be positive (or null)")
        hidden = int(text.hidden_size)
        embed = params.embed_dim or hidden
        self.embed_dim = embed
        self.global_proj = nn.Linear(backbone.feature_dims["pooled"], embed)
        self.local_proj = nn.Conv2d(backbone.feature_dims["c4"], embed, kernel_size=1, bias=False)
        self.word_proj: nn.Module = nn.Identity()
        self.sentence_proj: nn.Module = nn.Identity()
        if embed != hidden:
            self.word_proj = nn.Linear(hidden, embed)
            self.sentence_proj = nn.Linear(hidden, embed)

    def captions(self, batch: dict[str, Any]) -> list[str]:
        """The text of each sample: one random sentence (training with ``sentence_sampling``)
        or the full report."""
        texts = list(batch["text"])
        if not (self.params.sentence_sampling and self.training):
            return texts
        if "sentences" not in batch:
            raise KeyError("sentence_sampling needs batch['sentences'] (data/pretrain.py)")
        draws = torch.rand(len(texts)).tolist()  # the global RNG, seeded by Lightning
        chosen = []
        for text, sentences, u in zip(texts, batch["sentences"], draws, strict=True):
            options = [s for s in sentences if s] or [text]
            chosen.append(options[min(int(u * len(options)), len(options) - 1)])
        return chosen

    def embed(self, batch: dict[str, Any]) -> GloriaEmbeddings:
        """Global and local embeddings of images and captions (unnormalised)."""
        assert self.text is not None
        image = batch["image"]
        features = self.backbone(image)
        regions = self.local_proj(features.c4)  # (B, E, h, w)
        grid = (int(regions.shape[2]), int(regions.shape[3]))
        regions = regions.flatten(2).transpose(1, 2)  # (B, N, E)
        encoded = self.text.tokenize(self.captions(batch))
        tokens = {k: v.to(image.device) for k, v in encoded.items()}
        out = self.text(
            tokens["input_ids"], tokens["attention_mask"], word_ids=tokens.get("word_ids")
        )
        mask = out.word_mask
        weights = mask.unsqueeze(-1).to(out.words.dtype)
        sentence = (out.words * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return GloriaEmbeddings(
            image=self.global_proj(features.pooled),
            regions=regions,
            grid=grid,
            text=self.sentence_proj(sentence),
            words=self.word_proj(out.words),
            word_mask=mask,
        )

    def encode_images(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(image)
        regions = self.local_proj(features.c4).flatten(2).transpose(1, 2)  # (B, N, E)
        return {"global": F.normalize(self.global_proj(features.pooled), dim=-1),
                "regions": regions}  # fmt: skip

    def encode_texts(self, texts: list[str]) -> dict[str, torch.Tensor]:
        assert self.text is not None
        device = next(self.global_proj.parameters()).device
        tokens = {k: v.to(device) for k, v in self.text.tokenize(list(texts)).items()}
        out = self.text(tokens["input_ids"], tokens["attention_mask"],
                        word_ids=tokens.get("word_ids"))  # fmt: skip
        weights = out.word_mask.unsqueeze(-1).to(out.words.dtype)
        sentence = (out.words * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return {"global": F.normalize(self.sentence_proj(sentence), dim=-1),
                "words": self.word_proj(out.words), "word_mask": out.word_mask}  # fmt: skip

    def similarity(
        self, images: dict[str, torch.Tensor], texts: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """(global cosine + local similarity) / 2, as GLoRIA's zero-shot and retrieval code."""
        p = self.params
        local = local_similarity(images["regions"].float(), texts["words"].float(),
                                 texts["word_mask"], temp1=p.temp1, temp2=p.temp2,
                                 aggregation=p.aggregation, chunk=p.chunk)  # fmt: skip
        return (images["global"] @ texts["global"].t() + local) / 2

    def losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        e = self.embed(batch)
        p = self.params
        g_i2t, g_t2i = global_loss(e.image, e.text, p.temp3)
        local = local_loss(e.regions, e.words, e.word_mask, temp1=p.temp1, temp2=p.temp2,
                           temp3=p.temp3, aggregation=p.aggregation, chunk=p.chunk,
                           checkpoint=p.checkpoint)  # fmt: skip
        return {"global": g_i2t + g_t2i, "local": local.loss_i2t + local.loss_t2i}

    def attention_maps(self, batch: dict[str, Any]) -> torch.Tensor:
        """Each image's word→region attention for its own caption, (B, W, h, w) (visualisation;
        rows of padded words are 0)."""
        from cxrbench.losses.local import word_region_attention

        with torch.no_grad():
            e = self.embed(batch)
            attention = word_region_attention(e.regions, e.words, e.word_mask, self.params.temp1)
        return attention.reshape(*attention.shape[:2], *e.grid)
