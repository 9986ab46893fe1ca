"""Attention-weighted word–region alignment (GLoRIA's local loss), vectorised, over the global
batch under DDP.

For an image ``i`` with region features ``r_1..r_N`` (its local map, flattened) and a caption ``j``
with real words ``w_1..w_M`` (padding excluded by ``word_mask``):

1. ``p[r, w] = softmax_w(r_r · w_w)`` — each region's distribution over the caption's words (the
   first softmax of GLoRIA's ``attention_fn``; raw dot products, padded words masked out);
2. ``a[w, r] = softmax_r(τ1 · p[r, w])`` — each word's attention over the regions;
3. ``c_w = Σ_r a[w, r] r_r`` — the word's image context;
4. ``R(i, j) = log Σ_w exp(τ2 · cos(c_w, w_w))`` (``aggregation="sum"``, GLoRIA's default) or
   ``log mean_w exp(...)`` (``"mean"``);
5. ``L = CE_rows(τ3 · R)`` (image → text, row ``i``'s positive is caption ``i``) and
   ``CE_cols(τ3 · R)`` (text → image), each a mean over the batch, returned separately.

The τ are multipliers as in GLoRIA (τ1 = 4, τ2 = 5, τ3 = 10). Padded words have no effect at all:
they are zeroed, excluded from the first softmax and from the aggregation, so they get no gradient
and change no value. Every caption needs at least one real word: one without any gets
``R = −inf`` against every image, hence a non-finite loss, which the pre-training system stops
on with an error.

Memory: the pairwise tensors are (B_img, B_cap, W, N) and (B_img, B_cap, W, D); captions are
processed ``chunk`` at a time (no Python loop over samples) and ``checkpoint=True`` recomputes each
chunk in the backward pass instead of keeping its activations. The loss runs in float32 (or the
inputs' wider type) with autocast off: a log-sum-exp over attention-weighted cosines is not a
bf16 computation.

DDP: region embeddings, word embeddings and word masks are gathered from every rank (the word axis
is first padded to a common length: ``word_length``, or the largest word count of any rank); each
rank scores its own images against every caption (its rows) and its own captions against every
image (its columns). The mean of the rank losses then equals the single-process loss on the
concatenated batch, value and gradient (``gather_with_grad`` sends the gradients back). Every rank
must hold the same number of samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint as run_checkpointed

from cxrbench.losses.distributed import gather_no_grad, gather_with_grad, is_distributed, rank

AGGREGATIONS = ("sum", "mean")
EPS = 1e-8  # GLoRIA's clamp of the norm product in the cosine


@dataclass
class LocalLoss:
    """Output of :func:`local_loss`.

    ``loss_i2t``/``loss_t2i`` are means over this rank's images/captions; ``similarity`` is this
    rank's rows (B, B_global) of ``R`` (before ×τ3); ``attention`` (B, W, N), with
    ``return_attention``, is each image's word→region attention for its own caption (detached; rows
    of real words sum to 1, padded rows are 0).
    """

    loss_i2t: torch.Tensor
    loss_t2i: torch.Tensor
    similarity: torch.Tensor
    attention: torch.Tensor | None = None


def word_region_attention(
    regions: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor, temp1: float = 4.0
) -> torch.Tensor:
    """Word→region attention ``a`` (B, W, N) of matched pairs: ``regions`` (B, N, D) and
    ``words`` (B, W, D) with ``word_mask`` (B, W). Rows of padded words are 0."""
    _check(regions, words, word_mask)
    mask = word_mask.bool()
    words = words * mask.unsqueeze(-1).to(words.dtype)
    scores = torch.einsum("bnd,bwd->bnw", regions, words)
    attention = _attend(scores, mask.unsqueeze(1), temp1)
    return attention * mask.unsqueeze(-1).to(attention.dtype)


def local_similarity(
    regions: torch.Tensor,
    words: torch.Tensor,
    word_mask: torch.Tensor,
    *,
    temp1: float = 4.0,
    temp2: float = 5.0,
    aggregation: str = "sum",
    chunk: int | None = 16,
    checkpoint: bool = False,
) -> torch.Tensor:
    """``R`` (B_img, B_cap) for every image of ``regions`` (B_img, N, D) against every caption of
    ``words`` (B_cap, W, D) / ``word_mask`` (B_cap, W); ``chunk`` captions at a time (None: all).

    Computed in the inputs' dtype (no autocast handling here; :func:`local_loss` does that)."""
    _check(regions, words, word_mask, paired=False)
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    if chunk is not None and chunk < 1:
        raise ValueError(f"chunk must be a positive number of captions or None, got {chunk}")
    mask = word_mask.bool()
    words = words * mask.unsqueeze(-1).to(words.dtype)
    step = words.shape[0] if chunk is None else chunk
    parts = []
    for start in range(0, words.shape[0], max(step, 1)):
        w, m = words[start : start + step], mask[start : start + step]
        if checkpoint and torch.is_grad_enabled():
            part = run_checkpointed(
                _similarity_block, regions, w, m, temp1, temp2, aggregation, use_reentrant=False
            )
            assert isinstance(part, torch.Tensor)
        else:
            part = _similarity_block(regions, w, m, temp1, temp2, aggregation)
        parts.append(part)
    if not parts:
        return regions.new_zeros(regions.shape[0], 0)
    return torch.cat(parts, dim=1)


def local_loss(
    regions: torch.Tensor,
    words: torch.Tensor,
    word_mask: torch.Tensor,
    *,
    temp1: float = 4.0,
    temp2: float = 5.0,
    temp3: float = 10.0,
    aggregation: str = "sum",
    chunk: int | None = 16,
    checkpoint: bool = False,
    word_length: int | None = None,
    return_attention: bool = False,
) -> LocalLoss:
    """GLoRIA's local loss for matched pairs ``regions`` (B, N, D), ``words`` (B, W, D),
    ``word_mask`` (B, W) (True on real words); see the module docstring.

    Under DDP the word axis is padded to ``word_length`` (None: the largest ``W`` of any rank)
    before gathering. GLoRIA's local term is ``loss_i2t + loss_t2i``.
    """
    _check(regions, words, word_mask)
    batch = regions.shape[0]
    dtype = torch.promote_types(torch.promote_types(regions.dtype, words.dtype), torch.float32)
    similarity = partial(local_similarity, temp1=temp1, temp2=temp2, aggregation=aggregation,
                         chunk=chunk, checkpoint=checkpoint)  # fmt: skip
    with torch.autocast(device_type=regions.device.type, enabled=False):
        regions, words = regions.to(dtype), words.to(dtype)
        mask = word_mask.bool()
        if is_distributed():
            words, mask = _pad_words(words, mask, word_length)
            all_regions = gather_with_grad(regions)
            all_words = gather_with_grad(words)
            all_mask = gather_no_grad(mask.to(torch.uint8)).bool()
            rows = similarity(regions, all_words, all_mask)
            cols = similarity(all_regions, words, mask)
        else:
            rows = cols = similarity(regions, words, mask)
        targets = torch.arange(batch, device=regions.device) + rank() * batch
        loss_i2t = F.cross_entropy(temp3 * rows, targets)
        loss_t2i = F.cross_entropy(temp3 * cols.t(), targets)
        attention = None
        if return_attention:
            with torch.no_grad():
                attention = word_region_attention(regions, words, mask, temp1)
    return LocalLoss(loss_i2t, loss_t2i, rows, attention)


def _check(
    regions: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor, paired: bool = True
) -> None:
    if regions.ndim != 3 or words.ndim != 3 or word_mask.ndim != 2:
        raise ValueError(
            "local alignment needs regions (B, N, D), words (B, W, D) and word_mask (B, W), got "
            f"{tuple(regions.shape)}, {tuple(words.shape)}, {tuple(word_mask.shape)}"
        )
    if regions.shape[-1] != words.shape[-1] or word_mask.shape != words.shape[:2]:
        raise ValueError(
            f"shape mismatch: regions {tuple(regions.shape)}, words {tuple(words.shape)}, "
            f"word_mask {tuple(word_mask.shape)}"
        )
    if paired and regions.shape[0] != words.shape[0]:
        raise ValueError(
            f"matched pairs need as many images as captions, got {regions.shape[0]} and "
            f"{words.shape[0]}"
        )


def _attend(scores: torch.Tensor, mask: torch.Tensor, temp1: float) -> torch.Tensor:
    """Word→region attention from region·word ``scores`` (..., N, W); ``mask`` broadcasts to them.

    Softmax over the real words for each region, ×τ1, softmax over the regions for each word:
    returns (..., W, N)."""
    # the dtype's lowest finite value, not -inf: a caption without words stays finite here
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    per_region = scores.softmax(dim=-1)
    return (temp1 * per_region.transpose(-1, -2)).softmax(dim=-1)


def _similarity_block(
    regions: torch.Tensor,
    words: torch.Tensor,
    mask: torch.Tensor,
    temp1: float,
    temp2: float,
    aggregation: str,
) -> torch.Tensor:
    """``R`` (B_img, B_cap) for all images × a block of captions (``words`` already zero-padded)."""
    scores = torch.einsum("ind,jwd->ijnw", regions, words)
    attention = _attend(scores, mask[None, :, None, :], temp1)  # (I, J, W, N)
    context = torch.einsum("ijwn,ind->ijwd", attention, regions)
    dots = torch.einsum("ijwd,jwd->ijw", context, words)
    norms = context.norm(dim=-1) * words.norm(dim=-1).unsqueeze(0)
    cosine = dots / norms.clamp(min=EPS)
    logits = (temp2 * cosine).masked_fill(~mask.unsqueeze(0), float("-inf"))
    similarity = logits.logsumexp(dim=-1)
    if aggregation == "mean":
        count = mask.sum(dim=-1).clamp(min=1).to(similarity.dtype)
        similarity = similarity - count.log().unsqueeze(0)
    return similarity


def _pad_words(
    words: torch.Tensor, mask: torch.Tensor, word_length: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad the word axis to ``word_length`` (None: the largest word count of any rank)."""
    length = words.shape[1]
    if word_length is None:
        longest = torch.tensor([length], device=words.device, dtype=torch.long)
        dist.all_reduce(longest, op=dist.ReduceOp.MAX)
        target = int(longest.item())
    else:
        target = int(word_length)
        if length > target:
            raise ValueError(f"{length} words do not fit word_length={target}")
    if target == length:
        return words, mask
    words = F.pad(words, (0, 0, 0, target - length))
    mask = F.pad(mask.to(torch.uint8), (0, target - length)).bool()
    return words, mask
