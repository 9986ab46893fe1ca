"""Image–text InfoNCE (CLIP / ConVIRT), over the global batch under DDP.

For L2-normalised embeddings ``v`` (image) and ``u`` (text), pair ``i`` is the positive of row
``i``:

    l(v→u)_i = −log softmax_k(<v_i, u_k> / τ)_i,    l(u→v)_i likewise with the roles swapped,
    L = mean_i [ λ · l(v→u)_i + (1 − λ) · l(u→v)_i ].

λ = 0.5 gives the symmetric loss (MGCA's ConVIRT re-implementation multiplies that by 2: it sums the
two directions, ``weight_sum=True``). Under DDP the keys are gathered from all ranks with gradients
and each rank scores its own queries against them; averaged over ranks this equals the
single-process loss on the whole batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cxrbench.losses.distributed import gather_with_grad, rank


def info_nce(
    image: torch.Tensor,
    text: torch.Tensor,
    temperature: float,
    image_weight: float = 0.5,
    normalize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``(loss, loss_i2t, loss_t2i)`` for local ``image``/``text`` batches of shape (B, D).

    ``loss = image_weight * loss_i2t + (1 - image_weight) * loss_t2i``; both terms are means over
    the local rows.
    """
    if image.shape != text.shape or image.ndim != 2:
        raise ValueError(
            f"info_nce needs two (B, D) tensors of one shape, got {image.shape}, {text.shape}"
        )
    if normalize:
        image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
    all_image, all_text = gather_with_grad(image), gather_with_grad(text)
    offset = rank() * image.shape[0]
    targets = torch.arange(image.shape[0], device=image.device) + offset
    logits_i2t = image @ all_text.t() / temperature
    logits_t2i = text @ all_image.t() / temperature
    loss_i2t = F.cross_entropy(logits_i2t.float(), targets)
    loss_t2i = F.cross_entropy(logits_t2i.float(), targets)
    loss = image_weight * loss_i2t + (1.0 - image_weight) * loss_t2i
    return loss, loss_i2t, loss_t2i
