"""InfoNCE against a naive loop (value and gradient); its DDP version against one process."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tests.helpers import free_port

from cxrbench.losses.contrastive import info_nce


def _naive(image: torch.Tensor, text: torch.Tensor, tau: float, lam: float) -> torch.Tensor:
    v = [x / x.norm() for x in image]
    u = [x / x.norm() for x in text]
    total = torch.zeros((), dtype=image.dtype)
    for i in range(len(v)):
        i2t = torch.stack([torch.dot(v[i], u[k]) / tau for k in range(len(u))])
        t2i = torch.stack([torch.dot(u[i], v[k]) / tau for k in range(len(v))])
        li2t = -(i2t[i] - torch.log(torch.exp(i2t).sum()))
        lt2i = -(t2i[i] - torch.log(torch.exp(t2i).sum()))
        total = total + lam * li2t + (1 - lam) * lt2i
    return total / len(v)


@pytest.mark.parametrize(("tau", "lam"), [(0.07, 0.5), (0.1, 0.75)])
def test_info_nce_matches_naive_loop(tau: float, lam: float) -> None:
    g = torch.Generator().manual_seed(0)
    image = torch.randn(6, 8, generator=g, dtype=torch.float64, requires_grad=True)
    text = torch.randn(6, 8, generator=g, dtype=torch.float64, requires_grad=True)
    ours, _, _ = info_nce(image, text, tau, image_weight=lam)
    ref = _naive(image, text, tau, lam)
    assert torch.allclose(ours.double(), ref, atol=1e-6)
    g_ours = torch.autograd.grad(ours, (image, text))
    g_ref = torch.autograd.grad(ref, (image, text))
    for a, b in zip(g_ours, g_ref, strict=True):
        assert torch.allclose(a.double(), b, atol=1e-6)


def test_perfectly_aligned_pairs_have_low_loss() -> None:
    x = torch.eye(4)
    loss, _, _ = info_nce(x, x, temperature=0.07)
    assert loss < 1e-4
    shuffled, _, _ = info_nce(x, x[[1, 2, 3, 0]], temperature=0.07)
    assert shuffled > math.log(4)


def _worker(rank: int, world: int, port: int, image, text, out) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        b = image.shape[0] // world
        img = image[rank * b : (rank + 1) * b].clone().requires_grad_(True)
        txt = text[rank * b : (rank + 1) * b].clone().requires_grad_(True)
        loss, _, _ = info_nce(img, txt, 0.07, image_weight=0.75)
        loss.backward()
        reduced = loss.detach().clone()
        dist.all_reduce(reduced)
        out[rank] = (reduced / world, img.grad / world, txt.grad / world)
    finally:
        dist.destroy_process_group()


def test_ddp_all_gather_equals_single_process() -> None:
    g = torch.Generator().manual_seed(1)
    image = torch.randn(8, 5, generator=g, dtype=torch.float64)
    text = torch.randn(8, 5, generator=g, dtype=torch.float64)
    full_img, full_txt = image.clone().requires_grad_(True), text.clone().requires_grad_(True)
    ref, _, _ = info_nce(full_img, full_txt, 0.07, image_weight=0.75)
    ref.backward()
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(2, free_port(), image, text, out), nprocs=2, join=True)
    assert torch.allclose(out[0][0], ref.detach(), atol=1e-10)
    got_img = torch.cat([out[0][1], out[1][1]])
    got_txt = torch.cat([out[0][2], out[1][2]])
    assert torch.allclose(got_img, full_img.grad, atol=1e-10)
    assert torch.allclose(got_txt, full_txt.grad, atol=1e-10)
