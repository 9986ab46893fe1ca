"""MPMA — Zhang, Yang, Yu, Jiang, Fan, Huang, Han, "Multi-task Paired Masking with Alignment
Modeling for Medical Vision-Language Pre-training", IEEE Transactions on Multimedia 2023 (arXiv
2305.07920; doi 10.1109/TMM.2023.3325965). **No public code.**

**What the paper states** (only its abstract was available to us; its equations, sizes, masking
ratios and loss weights were not): joint image–report reconstruction that *integrates
cross-modal alignment* ("multi-task paired masking": image and report are masked together and
both are reconstructed); a **GLA** (Global and Local Alignment) module that helps the
self-supervised paradigm learn semantic representations; an **MA-CMF** (Memory-Augmented
Cross-Modal Fusion) module that "fully integrates visual information to assist report
reconstruction" and fuses the two modalities. It argues against earlier joint-reconstruction
Med-VLP methods, whose reference is M3AE (ViT + RoBERTa, co-attention fusion, MLM 15 % + MIM 75 %,
each objective in its *own* forward pass); that MPMA is built on M3AE is our (unverified) reading.

**What is implemented** (terms ``mim``, ``mlm``, ``itc``, ``local``; ``loss_weights``, 1 each):

- **Paired masking, one forward pass.** One call of :meth:`MPMA.losses` draws one image mask and
  one report mask for every pair and runs, once each: the masked image through the ViT (visible
  patches only), the masked report through the text encoder, the MA-CMF fusion of the two, the
  MIM decoder and the MLM head; then the *unmasked* image and report through the same encoders for
  GLA. All four terms come from that one pass and are optimised with one backward pass (M3AE
  instead masks one modality at a time, the other one intact, in a separate pass per objective).
- **Masked image** (MAE): the ViT's own ``conv_proj`` patchifies, the backbone's position
  embeddings are added, a per-sample random ``floor(N·(1 − mask_ratio))`` patches (at least 1;
  MAE's ``int()``) are kept in shuffled order, [CLS] (+ its position embedding) is prepended and
  the backbone's ``encoder.dropout``/``layers``/``ln`` run on that short sequence — the same
  weights as the exported encoder. ``mask_ratio`` 0.75 (MAE, M3AE and MRM's value).
- **MIM**: a small MAE decoder (Linear in, mask tokens, fixed 2-D sin-cos position embeddings,
  pre-LN transformer blocks, LayerNorm, Linear to p²·3 values) on the fused image stream; the
  targets are the image's patches in the backbone's input space ((x − 0.5)/0.5), normalised per
  patch (``norm_pix_loss``: mean and *unbiased* variance over the patch's p²·3 values, eps 1e-6, as
  MAE's ``.var()``; ``params.norm_pix_loss=false`` for raw pixels); MSE averaged over the pixels
  of a patch, then over the **masked patches only**.
- **Masked report** (BERT/M3AE): ``mlm_ratio`` 0.15 of each report's words (whole-word masking,
  ``whole_word``; ``false`` masks sub-word tokens) — exactly ``max(1, round(mlm_ratio · n))`` of
  its ``n`` words (round half to even), a uniformly random subset, every sub-word of a picked word
  — with BERT's 80/10/10 rule per picked token ([MASK] / a random non-special token / unchanged;
  ``mlm_replace=mask`` puts [MASK] everywhere). [CLS], [SEP] and padding are never picked.
- **MA-CMF**: both streams are projected to ``fusion_dim`` (None: the text width) and get a
  learned modality embedding. A learnable **memory** ``M ∈ R^{S×d}`` (``memory_slots`` S) is read
  by multi-head attention whose queries are tokens and whose keys/values are linear maps of M,
  each query keeping its ``memory_topk`` best slots per head (R2GenCMN's cross-modal memory).
  The visible image tokens query it and their responses are added to them; the two streams then
  pass ``fusion_layers`` bidirectional co-attention layers (each stream: self-attention,
  cross-attention to the other stream, MLP; M3AE's co-attention); finally the fused text tokens
  query the **same** memory and their responses are added to them before the MLM head. The
  shared memory is the bridge through which visual information assists report reconstruction; the
  MIM decoder reads the fused image stream (M3AE's MIM also reads multimodal image features).
- **MLM head**: Linear → GELU → LayerNorm → Linear to the vocabulary, the last matrix **tied** to
  the text model's word embeddings (BERT, ``tie_mlm_head``); cross-entropy on the **masked
  positions only** (mean over the batch's masked tokens).
- **GLA** on the unmasked views: ``itc`` = symmetric InfoNCE (mean of both directions, global
  batch under DDP, ``losses/contrastive.py``) between 128-d BN-MLP projections
  (``methods/_heads.bn_mlp``) of the ViT's [CLS] (``pooled``) and the report's [CLS], τ = 0.07
  fixed; ``local`` = MGCA's within-pair token–patch cross-attention alignment
  (``losses/token_alignment.py``) between the ViT's patch tokens and the report's words (sub-words
  summed), words → patches and patches → words averaged, τ = 0.1, uniform weights over real words /
  patches, linear per-token projections to 128-d.

**Our decisions where the paper is silent** (to us), with the reason:

- ViT backbone required (masked patches are dropped from the sequence, which a CNN cannot do):
  :class:`~cxrbench.errors.ConfigError` otherwise.
- Exact counts of masked patches / words per sample (not Bernoulli draws): MAE does so for
  patches, and a fixed count gives every short report at least one prediction.
- 15 % whole-word masking with 80/10/10: M3AE's setting (the joint-reconstruction model MPMA is
  most plausibly built on); MRM's 50 % is an override (``params.mlm_ratio=0.5``).
- Co-attention fusion in both directions, pre-LN, no dropout: M3AE's fusion is bidirectional
  (post-LN BERT layers initialised from RoBERTa); for layers trained from scratch pre-LN is the
  stable form.
- Memory queried with top-k multi-head attention (R2GenCMN, the memory used for radiology report
  generation; 2048 slots / top-32 there, 512 / 32 by default here to fit CPUs), responses added as
  residuals (the abstract says the memory *assists*; it does not replace the tokens).
- ``itc`` with a fixed τ = 0.07 and the BN-MLP heads of the suite's ConVIRT/MGCA, so that the
  comparison with them is not about the head or a learnable temperature. Linear (CLIP/ALBEF-style)
  heads were tried: a freshly trained small BERT gives nearly the same [CLS] to every report, and
  ``itc`` stayed at log B on a repeated batch, while the BN-MLP (batch-standardised) learns at once.
- ``local`` = MGCA's CTA (a within-pair token–patch alignment already used and tested in the
  suite; it needs no global batch, and FILIP's batch max-similarity is unstable at small batches),
  with uniform token weights (MGCA's [CLS]-attention weights are MGCA's own contribution).
- MIM decoder on the fused image stream (joint reconstruction: the image is reconstructed with the
  report's help too), fixed sin-cos position embeddings (MAE/MRM), 2 × 128 by default (CPU
  presets; M3AE uses 4 × 384).
- Equal loss weights (M3AE and MRM sum their objectives unweighted).

**Deviations**: encoders are the suite's (ViT from scratch or ImageNet, the run's BERT), not CLIP /
RoBERTa; no ITM term (M3AE has one; the abstract names only reconstruction, GLA and MA-CMF); MIM
and MLM are per-process means under DDP (``itc`` uses the global batch).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cxrbench.errors import ConfigError
from cxrbench.losses.contrastive import info_nce
from cxrbench.losses.token_alignment import token_alignment
from cxrbench.methods import METHODS
from cxrbench.methods._heads import bn_mlp
from cxrbench.methods.base import PretrainMethod
from cxrbench.models.backbones import ViTBackbone
from cxrbench.models.text import word_ids_from_ids

REPLACE_RULES = ("bert", "mask")
IGNORE = -100  # label of a token that is not predicted


@dataclass
class MpmaConfig:
    mask_ratio: float = 0.75  # image patches masked (MAE / M3AE / MRM)
    norm_pix_loss: bool = True  # per-patch normalised pixel targets (MAE)
    mlm_ratio: float = 0.15  # report words (or tokens) masked (BERT / M3AE)
    whole_word: bool = True  # mask whole words (M3AE); false: sub-word tokens
    mlm_replace: str = "bert"  # "bert": 80/10/10 [MASK]/random/unchanged; "mask": all [MASK]
    fusion_dim: int | None = None  # width of MA-CMF (None: the text model's hidden size)
    fusion_layers: int = 2  # bidirectional co-attention layers (M3AE: 6)
    fusion_heads: int = 4  # also the memory's heads
    memory_slots: int = 512  # S (R2GenCMN: 2048)
    memory_topk: int = 32  # slots kept per query and head (R2GenCMN: 32)
    decoder_dim: int = 128  # MIM decoder width (M3AE: 384)
    decoder_depth: int = 2  # MIM decoder blocks (M3AE: 4)
    decoder_heads: int = 4
    embed_dim: int = 128  # GLA projection width
    hidden_dim: int = 2048  # hidden width of the global BN-MLP projections (MGCA / ConVIRT)
    temperature: float = 0.07  # ITC τ
    local_temperature: float = 0.1  # token–patch alignment τ (MGCA's τ2)
    tie_mlm_head: bool = True  # MLM decoder matrix = the text model's word embeddings (BERT)


# ---------------------------------------------------------------- masking


def visible_count(num_patches: int, ratio: float) -> int:
    """Patches an image keeps: ``floor(N · (1 − ratio))`` (MAE's ``int()``), at least 1."""
    return max(1, int(num_patches * (1.0 - ratio) + 1e-9))


def _rand(
    shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None
) -> Tensor:
    """Uniform [0, 1) numbers on ``device``, drawn from ``generator`` (on its own device) if any."""
    if generator is None:
        return torch.rand(shape, device=device)
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def random_patch_mask(
    batch: int,
    num_patches: int,
    ratio: float,
    device: torch.device,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """MAE's per-sample random masking.

    Returns ``keep`` (B, K) indices of the visible patches (shuffled order), ``restore`` (B, N)
    (the inverse permutation: position of every patch in ``[visible, masked]``) and ``mask``
    (B, N), True on masked patches; ``K = visible_count(N, ratio)``."""
    keep_count = visible_count(num_patches, ratio)
    shuffle = _rand((batch, num_patches), device, generator).argsort(dim=1)
    restore = shuffle.argsort(dim=1)
    mask = torch.ones(batch, num_patches, dtype=torch.bool, device=device)
    mask[:, :keep_count] = False
    return shuffle[:, :keep_count], restore, mask.gather(1, restore)


def masked_unit_count(counts: Tensor, ratio: float) -> Tensor:
    """Units (words or tokens) to mask per sample of ``counts`` (B,) units: ``max(1, round(ratio ·
    n))`` (round half to even), 0 if ``n = 0``."""
    count = (ratio * counts.double()).round().long().clamp(min=1)
    return torch.where(counts > 0, count, torch.zeros_like(count))


def pick_tokens(
    word_ids: Tensor, ratio: float, whole_word: bool, generator: torch.Generator | None = None
) -> Tensor:
    """The tokens (B, L) to predict: a uniformly random ``masked_unit_count`` subset of each
    sample's words (all their sub-words) or, without ``whole_word``, of its tokens.

    ``word_ids`` (B, L) is -1 on [CLS]/[SEP]/padding (never picked), else the word index."""
    candidates = word_ids >= 0
    if whole_word:
        units = torch.where(candidates, word_ids, torch.full_like(word_ids, -1))
    else:
        units = torch.where(candidates, candidates.long().cumsum(dim=1) - 1, -1)
    num_units = (units.max(dim=1).values + 1).clamp(min=0)
    width = max(int(num_units.max()) if units.numel() else 0, 1)
    scores = _rand((units.shape[0], width), units.device, generator)
    valid = torch.arange(width, device=units.device)[None] < num_units[:, None]
    rank = scores.masked_fill(~valid, 2.0).argsort(dim=1).argsort(dim=1)
    chosen = rank < masked_unit_count(num_units, ratio)[:, None]
    return chosen.gather(1, units.clamp(min=0)) & candidates


def replace_tokens(
    ids: Tensor,
    picked: Tensor,
    mask_id: int,
    regular_ids: Tensor,
    rule: str = "bert",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Input ids of the masked report: picked tokens become [MASK] (``rule="mask"``) or, BERT's
    rule, [MASK] with p 0.8, a random id of ``regular_ids`` with p 0.1, unchanged with p 0.1."""
    if rule == "mask":
        return torch.where(picked, torch.full_like(ids, mask_id), ids)
    action = _rand(tuple(ids.shape), ids.device, generator)
    index = (_rand(tuple(ids.shape), ids.device, generator) * len(regular_ids)).long()
    random_ids = regular_ids.to(ids.device)[index.clamp(max=len(regular_ids) - 1)]
    out = torch.where(picked & (action < 0.8), torch.full_like(ids, mask_id), ids)
    return torch.where(picked & (action >= 0.8) & (action < 0.9), random_ids, out)


# ---------------------------------------------------------------- targets and losses


def patchify(images: Tensor, patch: int) -> Tensor:
    """(B, C, H, W) → (B, N, patch·patch·C): patches row-major (as ``conv_proj`` flattens its
    grid), the values of a patch ordered (row, column, channel)."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def pixel_targets(images: Tensor, patch: int, normalize: bool = True, eps: float = 1e-6) -> Tensor:
    """MIM targets: the patches of ``images``, normalised per patch (mean, unbiased variance) when
    ``normalize`` (MAE's ``norm_pix_loss``); at least float32."""
    target = patchify(images.to(torch.promote_types(images.dtype, torch.float32)), patch)
    if normalize:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + eps).sqrt()
    return target


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """MAE's loss: per-patch mean squared error, averaged over the patches where ``mask``."""
    dtype = torch.promote_types(pred.dtype, torch.float32)
    per_patch = (pred.to(dtype) - target.to(dtype)).pow(2).mean(dim=-1)
    weights = mask.to(dtype)
    return (per_patch * weights).sum() / weights.sum().clamp(min=1.0)


def masked_lm_loss(states: Tensor, labels: Tensor, head: Callable[[Tensor], Tensor]) -> Tensor:
    """Cross-entropy of ``head(states)`` against ``labels`` on the predicted positions only
    (``labels != -100``; the head runs on those rows only), mean over them."""
    picked = labels != IGNORE
    if not bool(picked.any()):
        return states.sum() * 0.0  # nothing to predict: a zero that keeps the graph
    logits = head(states[picked])
    return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)),
                           labels[picked])  # fmt: skip


def global_alignment(image: Tensor, text: Tensor, temperature: float) -> Tensor:
    """GLA's global term: symmetric image–report InfoNCE (mean of both directions)."""
    loss, _, _ = info_nce(image, text, temperature)
    return loss


def local_alignment(
    patches: Tensor, words: Tensor, word_mask: Tensor, temperature: float
) -> Tensor:
    """GLA's local term: mean of the word→patch and patch→word within-pair cross-attention
    alignments (``token_alignment``) with uniform weights over real words / patches."""
    patches, words = F.normalize(patches, dim=-1), F.normalize(words, dim=-1)
    mask = word_mask.bool()
    word_weights = mask.to(words.dtype) / mask.sum(dim=1, keepdim=True).clamp(min=1)
    patch_weights = torch.full(patches.shape[:2], 1.0 / patches.shape[1], dtype=patches.dtype,
                               device=patches.device)  # fmt: skip
    to_patches = token_alignment(words, patches, temperature, word_weights, query_mask=mask)
    to_words = token_alignment(patches, words, temperature, patch_weights, key_mask=mask)
    return 0.5 * (to_patches + to_words)


# ---------------------------------------------------------------- modules


def sincos_2d(dim: int, grid: tuple[int, int]) -> Tensor:
    """Fixed 2-D sin-cos position embeddings (N, dim): half the channels encode the row, half the
    column, each as [sin(p·ω_i), cos(p·ω_i)] with ω_i = 10000^(−i/(d/4))."""
    if dim % 4:
        raise ConfigError(None, "params.decoder_dim", f"must be a multiple of 4, got {dim}")
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    parts = []
    for pos in (rows, cols):
        angles = pos.flatten().double()[:, None] * omega[None]
        parts += [angles.sin(), angles.cos()]
    return torch.cat(parts, dim=1).float()


class Memory(nn.Module):
    """A learnable memory ``M`` (S, d) read by top-k multi-head attention (R2GenCMN style):
    queries are linear maps of the tokens, keys and values linear maps of M; each query keeps its
    ``topk`` best slots per head, softmax over them; the heads' responses are concatenated and
    mapped out. Returns one response (B, T, d) per token."""

    def __init__(self, slots: int, dim: int, heads: int, topk: int) -> None:
        super().__init__()
        self.memory = nn.Parameter(torch.randn(slots, dim) / math.sqrt(dim))
        self.query, self.key = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.value, self.out = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.heads, self.topk = heads, min(topk, slots)

    def forward(self, tokens: Tensor) -> Tensor:
        b, t, d = tokens.shape
        h, s = self.heads, self.memory.shape[0]
        q = self.query(tokens).view(b, t, h, d // h).transpose(1, 2)
        k = self.key(self.memory).view(s, h, d // h).transpose(0, 1)
        v = self.value(self.memory).view(s, h, d // h).transpose(0, 1)
        scores = torch.einsum("bhtc,hsc->bhts", q, k) / math.sqrt(d // h)
        if self.topk < s:
            top = scores.topk(self.topk, dim=-1)
            attn = torch.zeros_like(scores).scatter(
                -1, top.indices, top.values.softmax(dim=-1).to(scores.dtype)
            )
        else:
            attn = scores.softmax(dim=-1)
        out = torch.einsum("bhts,hsc->bhtc", attn, v.to(attn.dtype))
        return cast(Tensor, self.out(out.transpose(1, 2).reshape(b, t, d)))


class CrossModalLayer(nn.Module):
    """One stream of a co-attention layer (pre-LN): self-attention, cross-attention to the other
    stream (its tokens layer-normalised), MLP."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.norm_other, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(
        self, x: Tensor, x_pad: Tensor | None, other: Tensor, other_pad: Tensor | None
    ) -> Tensor:
        h = self.norm1(x)
        x = x + self.self_attn(h, h, h, key_padding_mask=x_pad, need_weights=False)[0]
        h, kv = self.norm2(x), self.norm_other(other)
        x = x + self.cross_attn(h, kv, kv, key_padding_mask=other_pad, need_weights=False)[0]
        return cast(Tensor, x + self.mlp(self.norm3(x)))


class CoAttentionFusion(nn.Module):
    """``depth`` bidirectional co-attention layers (both streams updated from the previous layer's
    two outputs, as M3AE), then a final LayerNorm per stream."""

    def __init__(self, dim: int, depth: int, heads: int) -> None:
        super().__init__()
        self.text_layers = nn.ModuleList(CrossModalLayer(dim, heads) for _ in range(depth))
        self.image_layers = nn.ModuleList(CrossModalLayer(dim, heads) for _ in range(depth))
        self.text_norm, self.image_norm = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, text: Tensor, text_pad: Tensor, image: Tensor) -> tuple[Tensor, Tensor]:
        for text_layer, image_layer in zip(self.text_layers, self.image_layers, strict=True):
            text, image = (text_layer(text, text_pad, image, None),
                           image_layer(image, None, text, text_pad))  # fmt: skip
        return self.text_norm(text), self.image_norm(image)


class MimDecoder(nn.Module):
    """MAE's decoder: embed the visible tokens ([CLS] first), append mask tokens, undo the shuffle,
    add fixed sin-cos position embeddings, pre-LN blocks, LayerNorm, Linear to pixels; returns
    (B, N, out_dim) for every patch ([CLS] dropped)."""

    pos: Tensor

    def __init__(
        self, in_dim: int, dim: int, depth: int, heads: int, grid: tuple[int, int], out_dim: int
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.normal_(self.mask_token, std=0.02)
        pos = torch.cat([torch.zeros(1, dim), sincos_2d(dim, grid)])[None]
        self.register_buffer("pos", pos, persistent=False)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                dim,
                heads,
                4 * dim,
                dropout=0.0,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, out_dim)

    def forward(self, visible: Tensor, restore: Tensor) -> Tensor:
        x = self.embed(visible)
        b, n = restore.shape
        masks = self.mask_token.to(x.dtype).expand(b, n - (x.shape[1] - 1), -1)
        patches = torch.cat([x[:, 1:], masks], dim=1)
        patches = patches.gather(1, restore[..., None].expand(-1, -1, x.shape[-1]))
        x = torch.cat([x[:, :1], patches], dim=1) + self.pos.to(x.dtype)
        for block in self.blocks:
            x = block(x)
        return cast(Tensor, self.head(self.norm(x))[:, 1:])


@dataclass
class MpmaOutputs:
    """Everything one paired forward pass produces (see :meth:`MPMA.step_outputs`)."""

    pred: Tensor  # (B, N, P) reconstructed patches
    target: Tensor  # (B, N, P) pixel targets
    patch_mask: Tensor  # (B, N) True on masked patches
    text_states: Tensor  # (B, L, F) MLM head input (fused tokens + memory responses)
    labels: Tensor  # (B, L) original id on picked tokens, -100 elsewhere
    masked_ids: Tensor  # (B, L) ids the text encoder saw
    image_embed: Tensor  # (B, E) GLA global embeddings (unnormalised)
    text_embed: Tensor
    patches: Tensor  # (B, N, E) GLA local embeddings (unnormalised)
    words: Tensor  # (B, W, E)
    word_mask: Tensor  # (B, W)


def _check(p: MpmaConfig, fusion_dim: int) -> None:
    for key in ("mask_ratio", "mlm_ratio"):
        if not 0.0 < getattr(p, key) < 1.0:
            raise ConfigError(None, f"params.{key}", "must be strictly between 0 and 1")
    if p.mlm_replace not in REPLACE_RULES:
        raise ConfigError(None, "params.mlm_replace", f"must be one of {REPLACE_RULES}")
    positive = ("fusion_layers", "fusion_heads", "memory_slots", "memory_topk", "decoder_dim",
                "decoder_depth", "decoder_heads", "embed_dim", "hidden_dim")  # fmt: skip
    for key in positive:
        if getattr(p, key) < 1:
            raise ConfigError(None, f"params.{key}", "must be a positive integer")
    if fusion_dim % p.fusion_heads:
        raise ConfigError(None, "params.fusion_heads", f"must divide the fusion width {fusion_dim}")
    if p.decoder_dim % p.decoder_heads:
        raise ConfigError(None, "params.decoder_heads", "must divide params.decoder_dim")


@METHODS.register("mpma")
class MPMA(PretrainMethod):
    vl_space = True  # zero-shot / retrieval: cosine of the global image and report embeddings
    Config = MpmaConfig

    _regular_ids: Tensor

    def __init__(self, params: MpmaConfig, backbone: Any, text: Any, run: Any) -> None:
        super().__init__(params, backbone, text, run)
        if not isinstance(backbone, ViTBackbone):
            raise ConfigError(
                None,
                "backbone.name",
                f"mpma masks image patches and needs a ViT backbone, not {backbone.name!r}: "
                "set backbone.name=vit_tiny or vit_b16",
            )
        p = params
        hidden, dim = int(text.hidden_size), backbone.feature_dims["tokens"]
        fusion = p.fusion_dim or hidden
        _check(p, fusion)
        mask_id = text.tokenizer.mask_token_id
        if mask_id is None:
            raise ConfigError(None, "text.model", "the tokenizer has no [MASK] token")
        self.mask_id = int(mask_id)
        vocab = int(text.model.config.vocab_size)
        special = {int(i) for i in text.tokenizer.all_special_ids}
        regular = torch.tensor([i for i in range(vocab) if i not in special], dtype=torch.long)
        self.register_buffer("_regular_ids", regular, persistent=False)
        self.patch = backbone.patch
        self.num_patches = backbone.token_grid[0] * backbone.token_grid[1]
        # GLA
        self.image_global = bn_mlp(dim, p.hidden_dim, p.embed_dim)
        self.text_global = bn_mlp(hidden, p.hidden_dim, p.embed_dim)
        self.image_local = nn.Linear(dim, p.embed_dim)
        self.text_local = nn.Linear(hidden, p.embed_dim)
        # MA-CMF
        self.image_in, self.text_in = nn.Linear(dim, fusion), nn.Linear(hidden, fusion)
        self.modality = nn.Parameter(torch.zeros(2, fusion))  # 0: text, 1: image
        nn.init.normal_(self.modality, std=0.02)
        self.memory = Memory(p.memory_slots, fusion, p.fusion_heads, p.memory_topk)
        self.fusion = CoAttentionFusion(fusion, p.fusion_layers, p.fusion_heads)
        # reconstruction heads
        self.decoder = MimDecoder(fusion, p.decoder_dim, p.decoder_depth, p.decoder_heads,
                                  backbone.token_grid, self.patch * self.patch * 3)  # fmt: skip
        self.mlm_transform = nn.Sequential(nn.Linear(fusion, hidden), nn.GELU(),
                                           nn.LayerNorm(hidden, eps=1e-12))  # fmt: skip
        self.mlm_bias = nn.Parameter(torch.zeros(vocab))
        self.mlm_decoder = None if p.tie_mlm_head else nn.Linear(hidden, vocab, bias=False)

    # -------------------------------------------------------------- pieces

    def _vit(self) -> ViTBackbone:
        return cast(ViTBackbone, self.backbone)

    def encode_visible(self, image: Tensor, keep: Tensor) -> Tensor:
        """The ViT on the ``keep`` patches only: (B, 1 + K, D), [CLS] first, after its final LN."""
        vit = self._vit()
        x = vit.conv_proj(image).flatten(2).transpose(1, 2)
        pos = vit.encoder.pos_embedding
        x = (x + pos[:, 1:]).gather(1, keep[..., None].expand(-1, -1, x.shape[-1]))
        cls = (vit.class_token + pos[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        return cast(Tensor, vit.encoder.ln(vit.encoder.layers(vit.encoder.dropout(x))))

    def mlm_logits(self, states: Tensor) -> Tensor:
        """The MLM head on fused text states (..., F) → vocabulary logits."""
        h = self.mlm_transform(states)
        if self.mlm_decoder is not None:
            return cast(Tensor, self.mlm_decoder(h)) + self.mlm_bias
        assert self.text is not None
        weight = cast(Any, self.text.model).get_input_embeddings().weight
        return F.linear(h, weight.to(h.dtype), self.mlm_bias.to(h.dtype))

    def step_outputs(
        self, batch: dict[str, Any], generator: torch.Generator | None = None
    ) -> MpmaOutputs:
        """One paired forward pass (module docstring); masks from ``generator`` (None: global)."""
        assert self.text is not None
        p = self.params
        image = batch["image"]
        device = image.device
        tokens = {k: v.to(device) for k, v in self.text.tokenize(batch["text"]).items()}
        ids, attention = tokens["input_ids"], tokens["attention_mask"]
        word_ids = tokens.get("word_ids")
        if word_ids is None:
            word_ids = word_ids_from_ids(ids, attention, self.text._continuation,
                                         self.text._special)  # fmt: skip
        # GLA: the unmasked views
        full = self.backbone(image)
        report = self.text(ids, attention, word_ids=word_ids)
        # paired masking: both modalities of every pair masked in this one pass
        keep, restore, patch_mask = random_patch_mask(image.shape[0], self.num_patches,
                                                      p.mask_ratio, device, generator)  # fmt: skip
        picked = pick_tokens(word_ids, p.mlm_ratio, p.whole_word, generator)
        masked_ids = replace_tokens(ids, picked, self.mask_id, self._regular_ids, p.mlm_replace,
                                    generator)  # fmt: skip
        visible = self.encode_visible(image, keep)
        masked_text = self.text(masked_ids, attention, word_ids=word_ids).tokens
        # MA-CMF
        img = self.image_in(visible) + self.modality[1]
        img = img + self.memory(img)
        txt = self.text_in(masked_text) + self.modality[0]
        txt, img = self.fusion(txt, ~attention.bool(), img)
        txt = txt + self.memory(txt)
        return MpmaOutputs(
            pred=self.decoder(img, restore),
            target=pixel_targets(image, self.patch, p.norm_pix_loss),
            patch_mask=patch_mask,
            text_states=txt,
            labels=torch.where(picked, ids, torch.full_like(ids, IGNORE)),
            masked_ids=masked_ids,
            image_embed=self.image_global(full.pooled),
            text_embed=self.text_global(report.cls),
            patches=self.image_local(full.tokens),
            words=self.text_local(report.words),
            word_mask=report.word_mask,
        )

    def terms(self, out: MpmaOutputs) -> dict[str, Tensor]:
        """The named loss terms of one pass's outputs."""
        p = self.params
        return {
            "mim": masked_mse(out.pred, out.target, out.patch_mask),
            "mlm": masked_lm_loss(out.text_states, out.labels, self.mlm_logits),
            "itc": global_alignment(out.image_embed, out.text_embed, p.temperature),
            "local": local_alignment(out.patches, out.words, out.word_mask, p.local_temperature),
        }

    def encode_images(self, image: Tensor) -> dict[str, Tensor]:
        return {"global": self.global_image(self.image_global, image)}

    def encode_texts(self, texts: list[str]) -> dict[str, Tensor]:
        return {"global": self.global_text(self.text_global, texts)}

    def losses(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        return self.terms(self.step_outputs(batch))
