"""Projection heads shared by methods (kept here so methods stay one file each)."""

from __future__ import annotations

from torch import Tensor, nn


def bn_mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """MGCA's global projection: Linear → BN → ReLU → Linear → BN(affine=False)."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim, bias=False),
        nn.BatchNorm1d(hidden_dim),
        nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, out_dim, bias=False),
        nn.BatchNorm1d(out_dim, affine=False),
    )


def mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """The original ConVIRT projection: Linear → ReLU → Linear."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim)
    )


class TokenHead(nn.Module):
    """MGCA's local head: a :func:`bn_mlp` applied per token, to the valid tokens only (``mask``
    (B, N) bool; zeros elsewhere), so padding never enters the BatchNorm statistics."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.mlp = bn_mlp(in_dim, hidden_dim, out_dim)
        self.out_dim = out_dim

    def forward(self, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        if mask is None:
            b, n, d = tokens.shape
            return self.mlp(tokens.reshape(b * n, d)).view(b, n, self.out_dim)
        out = tokens.new_zeros(*tokens.shape[:2], self.out_dim)
        out[mask] = self.mlp(tokens[mask]).to(out.dtype)
        return out
