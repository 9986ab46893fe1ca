"""Prototype (cluster) alignment: Sinkhorn–Knopp codes and the swapped-prediction loss (SwAV, MGCA).

For L2-normalised embeddings ``z`` (B, D) and L2-normalised prototypes ``C`` (K, D), the scores are
``s = z Cᵀ`` (B, K). The **codes** are the equipartitioned soft assignment of the batch to the
prototypes: the transport plan ``P`` (K, B) that starts at ``exp(s / ε)ᵀ`` normalised to sum 1 and
alternately rescales its rows to sum ``1/K`` (every prototype gets an equal share of the batch) and
its columns to sum ``1/B`` (every sample is fully assigned), ``iterations`` times; the codes are
``B · Pᵀ`` (each row sums to 1). Codes carry no gradient.

Under DDP the batch is the **global** batch without gathering the samples: the plan's total and
its row sums are all-reduced (one all-reduce of a K-vector per iteration), the column step is local
(a column is a sample), and ``B`` is the global batch size, so every rank's codes equal the rows of
the single-process plan of the concatenated batch. The score maximum subtracted before ``exp`` for
numerical stability is all-reduced too (a shared constant cancels in the first normalisation).

The swapped prediction (MGCA's CPA) predicts one modality's codes from the other's probabilities
``p = softmax(s / τ)``:  ``L = ½ [ −mean_i Σ_k q^img_ik log p^txt_ik − mean_i Σ_k q^txt_ik log
p^img_ik ]``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from cxrbench.losses.distributed import is_distributed, world_size


def _all_reduce(x: Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> Tensor:
    if is_distributed():
        dist.all_reduce(x, op=op)
    return x


@torch.no_grad()
def sinkhorn_plan(scores: Tensor, epsilon: float, iterations: int) -> Tensor:
    """The transport plan (K, B_local) of this rank's columns; see the module docstring.

    ``scores`` (B_local, K) are similarities ``z Cᵀ``. Computed in float32 (float64 inputs stay
    float64). After the last iteration every column sums to ``1 / B_global``; rows sum to ``1 / K``
    in the limit of many iterations.
    """
    if scores.ndim != 2:
        raise ValueError(f"sinkhorn needs (B, K) scores, got shape {tuple(scores.shape)}")
    if epsilon <= 0 or iterations < 1:
        raise ValueError(f"sinkhorn needs epsilon > 0 and iterations >= 1: {epsilon}, {iterations}")
    dtype = torch.float64 if scores.dtype == torch.float64 else torch.float32
    s = scores.detach().to(dtype)
    top = _all_reduce(s.max().clone(), dist.ReduceOp.MAX)
    plan = torch.exp((s - top) / epsilon).t()  # (K, B)
    plan /= _all_reduce(plan.sum())
    k = plan.shape[0]
    global_batch = plan.shape[1] * world_size()
    for _ in range(iterations):
        rows = _all_reduce(plan.sum(dim=1))
        plan *= (1.0 / k / rows).unsqueeze(1)
        plan *= (1.0 / global_batch / plan.sum(dim=0)).unsqueeze(0)
    return plan


@torch.no_grad()
def sinkhorn_codes(scores: Tensor, epsilon: float = 0.05, iterations: int = 3) -> Tensor:
    """Soft codes (B_local, K), each row summing to 1 (MGCA: ε = 0.05, 3 iterations)."""
    plan = sinkhorn_plan(scores, epsilon, iterations)
    return (plan / plan.sum(dim=0, keepdim=True)).t().to(scores.dtype)


def swapped_prediction(
    image_scores: Tensor,
    text_scores: Tensor,
    temperature: float = 0.2,
    epsilon: float = 0.05,
    iterations: int = 3,
) -> Tensor:
    """MGCA's prototype loss from the (B, K) prototype scores of the two modalities."""
    q_image = sinkhorn_codes(image_scores, epsilon, iterations)
    q_text = sinkhorn_codes(text_scores, epsilon, iterations)
    log_p_image = F.log_softmax(image_scores.float() / temperature, dim=1)
    log_p_text = F.log_softmax(text_scores.float() / temperature, dim=1)
    i2t = -(q_image.float() * log_p_text).sum(dim=1).mean()
    t2i = -(q_text.float() * log_p_image).sum(dim=1).mean()
    return 0.5 * (i2t + t2i)
