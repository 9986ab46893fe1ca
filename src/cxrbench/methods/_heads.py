"""Projection heads shared by methods (kept here so methods stay one file each)."""

from __future__ import annotations

from torch import nn


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
