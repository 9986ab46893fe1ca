"""Negative-free alignment and latent-space geometry losses (M-FLAG, BYOL, Barlow Twins).

- :func:`alignment_loss`: BYOL's regression loss between two projected embeddings, summed over
  both directions as M-FLAG's code does (here the two terms are equal):

      L_align = mean_i [ (2 − 2·cos(p_i, q_i)) + (2 − 2·cos(q_i, p_i)) ]
              = mean_i 4·(1 − cos(p_i, q_i)).

- :func:`orthogonality_loss`: the Barlow Twins redundancy-reduction term of a feature matrix with
  itself, M-FLAG's "orthogonality" loss on the raw (unprojected, unnormalised) image features:

      C = Vᵀ V / B,   L_orth = ½ [ Σ_k (C_kk − 1)² + w · Σ_{k≠l} C_kl² ].

Both are computed in float32 whatever the autocast context: the entries of C are sums of B
products of raw features, and their squares overflow or lose every significant digit in fp16/bf16.
C is estimated on the **local** batch (no all-gather under DDP), as the official M-FLAG code does;
under DDP each rank penalises its own batch's Gram matrix and the gradients are averaged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32, or in its own dtype when that is wider (float64 stays float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def alignment_loss(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``mean_i 4·(1 − cos(p_i, q_i))`` for (B, D) embeddings (range [0, 8]).

    Computed with autocast off in float32 (float64 inputs stay float64); ``F.normalize``'s
    ε = 1e-12 guards a zero vector."""
    if p.shape != q.shape or p.ndim != 2:
        raise ValueError(
            f"alignment_loss needs two (B, D) tensors of one shape, got {p.shape}, {q.shape}"
        )
    with torch.autocast(device_type=p.device.type, enabled=False):
        p_n = F.normalize(_at_least_fp32(p), dim=-1)
        q_n = F.normalize(_at_least_fp32(q), dim=-1)
        cos = (p_n * q_n).sum(dim=-1)
        return ((2.0 - 2.0 * cos) + (2.0 - 2.0 * cos)).mean()


def orthogonality_loss(
    v: torch.Tensor, off_diagonal_weight: float = 0.0051, batch_size: int | None = None
) -> torch.Tensor:
    """``½ [Σ_k (C_kk − 1)² + w Σ_{k≠l} C_kl²]`` with ``C = VᵀV / batch_size`` for raw (B, D) ``v``.

    ``batch_size`` defaults to the rows of ``v`` (the official code divides by the configured
    per-process batch, equal to it with ``drop_last``). Computed with autocast off in float32
    (float64 inputs stay float64), so the result is a float32 scalar under bf16/fp16 autocast.
    """
    if v.ndim != 2:
        raise ValueError(f"orthogonality_loss needs a (B, D) tensor, got {tuple(v.shape)}")
    n = v.shape[0] if batch_size is None else int(batch_size)
    if n < 1:
        raise ValueError(f"orthogonality_loss needs a positive batch size, got {n}")
    with torch.autocast(device_type=v.device.type, enabled=False):
        x = _at_least_fp32(v)
        c = (x.t() @ x) / n
        diagonal = torch.diagonal(c)
        off = c - torch.diag_embed(diagonal)  # exact zeros on the diagonal
        on_term = (diagonal - 1.0).pow(2).sum()
        off_term = off.pow(2).sum()
        return 0.5 * (on_term + off_diagonal_weight * off_term)
