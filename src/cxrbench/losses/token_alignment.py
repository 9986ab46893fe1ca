"""Cross-attention token alignment inside one image–report pair (MGCA's CTA).

For one sample with L2-normalised query tokens ``q_1..q_n`` (words, or patches) and key tokens
``k_1..k_m`` (patches, or words), each query attends over the keys and the attended vector is
re-normalised:

    a_i = normalise( Σ_r softmax_r(<q_i, k_r> / τ) k_r ),      S_ij = <q_i, a_j> / τ.

A query should match its *own* attended vector better than the other queries' ones, in both
directions of ``S``, with per-query weights ``w`` (MGCA: the report [CLS] attention for words,
uniform or the ViT [CLS] attention for patches) that sum to 1 over the sample's valid queries:

    L = mean_samples ½ [ Σ_i w_i · CE(S_i·, i) + Σ_j w_j · CE(S_·j, j) ].

Masks: invalid keys (padding) get no attention; invalid queries are neither rows nor columns of
``S`` and carry no weight. Everything is batched (no Python loop over samples).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def attend(
    queries: Tensor, keys: Tensor, temperature: float, key_mask: Tensor | None = None
) -> Tensor:
    """Attended, re-normalised keys (B, Nq, D) for every query (B, Nq, D) over keys (B, Nk, D)."""
    scores = torch.bmm(queries, keys.transpose(1, 2)) / temperature
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask.bool()[:, None, :], float("-inf"))
    return F.normalize(torch.bmm(scores.softmax(dim=-1), keys), dim=-1)


def clipped_weights(values: Tensor, mask: Tensor, low: float = 0.1, high: float = 0.9) -> Tensor:
    """MGCA's token weights: ``values`` (B, N) clipped per sample to their ``low``–``high``
    quantiles over the valid entries (linear interpolation, as ``torch.quantile``), zero outside
    ``mask``, normalised to sum 1 per sample. No gradient."""
    with torch.no_grad():
        mask = mask.bool()
        v = values.detach().float().masked_fill(~mask, float("nan"))
        lo = torch.nanquantile(v, low, dim=1, keepdim=True)
        hi = torch.nanquantile(v, high, dim=1, keepdim=True)
        clipped = torch.minimum(torch.maximum(v, lo), hi).nan_to_num(0.0) * mask
        total = clipped.sum(dim=1, keepdim=True)
        uniform = mask.float() / mask.sum(dim=1, keepdim=True).clamp(min=1)
        # all-zero valid values (possible only with degenerate attention): fall back to uniform
        return torch.where(total > 0, clipped / total.clamp(min=1e-12), uniform)


def token_alignment(
    queries: Tensor,
    keys: Tensor,
    temperature: float,
    weights: Tensor,
    query_mask: Tensor | None = None,
    key_mask: Tensor | None = None,
) -> Tensor:
    """The one-direction CTA loss (see the module docstring) for (B, Nq, D) / (B, Nk, D) tokens.

    ``weights`` (B, Nq) should sum to 1 over each sample's valid queries (:func:`clipped_weights`);
    tokens are expected L2-normalised. Returns the mean over samples.
    """
    b, n, _ = queries.shape
    if query_mask is None:
        query_mask = torch.ones(b, n, dtype=torch.bool, device=queries.device)
    query_mask = query_mask.bool()
    attended = attend(queries, keys, temperature, key_mask)
    sim = (torch.bmm(queries, attended.transpose(1, 2)) / temperature).float()
    rows, cols = query_mask[:, :, None], query_mask[:, None, :]
    # invalid columns are -inf inside valid rows; an invalid row is set to 0 (finite: its loss is
    # weighted by 0, and an all -inf row would give NaN gradients through logsumexp)
    by_row = sim.masked_fill(~cols, float("-inf")).masked_fill(~rows, 0.0)
    by_col = sim.masked_fill(~rows, float("-inf")).masked_fill(~cols, 0.0)
    row_ce = torch.logsumexp(by_row, dim=2) - torch.diagonal(by_row, dim1=1, dim2=2)
    col_ce = torch.logsumexp(by_col, dim=1) - torch.diagonal(by_col, dim1=1, dim2=2)
    w = weights.float() * query_mask
    return (0.5 * (w * row_ce).sum(dim=1) + 0.5 * (w * col_ce).sum(dim=1)).mean()
