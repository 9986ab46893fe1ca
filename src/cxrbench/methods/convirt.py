"""ConVIRT — Zhang et al., "Contrastive Learning of Medical Visual Representations from Paired
Images and Text", MLHC 2022 (arXiv 2010.00747).

Implemented: image and report encoders, a projection head on each (global image feature, report
[CLS] feature), and the bidirectional InfoNCE loss over the (global, under DDP) batch

    L = mean_i [ λ · l(v→u)_i + (1 − λ) · l(u→v)_i ],  l = −log softmax(<v_i, u_k> / τ)_i.

Defaults follow the **MGCA re-implementation** that the MGCA, M-FLAG and G2D tables report
(MGCA ``convirt_module.py``): τ = 0.07, 128-d BN-MLP projections (Linear-BN-ReLU-Linear-BN), whole
cleaned report (112 tokens), AdamW lr 2e-5, wd 0.05, warm-up + cosine. The original paper's
variant is a config switch: ``params.variant=original`` gives λ = 0.75, τ = 0.1, 512-d ReLU-MLP
projections (set ``text.freeze`` to freeze its lower BERT layers as the paper did).

Deviations: MGCA sums the two directions (a loss twice the mean at λ = 0.5); we report the mean,
which only rescales the loss (AdamW is invariant to that up to ε). The paper's random sentence
sampling and strong augmentations are not the MGCA setting and are not implemented here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from cxrbench.errors import ConfigError
from cxrbench.losses.contrastive import info_nce
from cxrbench.methods import METHODS
from cxrbench.methods._heads import bn_mlp, mlp
from cxrbench.methods.base import PretrainMethod

ORIGINAL = {"image_weight": 0.75, "temperature": 0.1, "embed_dim": 512, "projection": "mlp"}


@dataclass
class ConvirtConfig:
    variant: str = "mgca"  # "mgca" (re-implementation defaults) or "original" (the paper's)
    embed_dim: int = 128
    hidden_dim: int = 2048
    temperature: float = 0.07
    image_weight: float = 0.5  # λ
    projection: str = "bn_mlp"  # "bn_mlp" (MGCA) or "mlp" (paper)


@METHODS.register("convirt")
class ConVIRT(PretrainMethod):
    Config = ConvirtConfig
    vl_space = True  # zero-shot / retrieval: cosine of the projected image and [CLS] embeddings

    def __init__(self, params: ConvirtConfig, backbone: Any, text: Any, run: Any) -> None:
        super().__init__(params, backbone, text, run)
        if params.variant not in ("mgca", "original"):
            raise ConfigError(None, "params.variant", "must be 'mgca' or 'original'")
        if params.variant == "original":
            for key, value in ORIGINAL.items():
                setattr(params, key, value)
        head = {"bn_mlp": bn_mlp, "mlp": mlp}.get(params.projection)
        if head is None:
            raise ConfigError(None, "params.projection", "must be 'bn_mlp' or 'mlp'")
        self.image_proj = head(backbone.feature_dims["pooled"], params.hidden_dim, params.embed_dim)
        self.text_proj = head(text.hidden_size, params.hidden_dim, params.embed_dim)

    def embed(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected (unnormalised) image and report embeddings of a batch."""
        assert self.text is not None
        image = batch["image"]
        tokens = {k: v.to(image.device) for k, v in self.text.tokenize(batch["text"]).items()}
        text = self.text(tokens["input_ids"], tokens["attention_mask"]).cls
        return self.image_proj(self.backbone(image).pooled), self.text_proj(text)

    def encode_images(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"global": self.global_image(self.image_proj, image)}

    def encode_texts(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return {"global": self.global_text(self.text_proj, texts)}

    def losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        v, u = self.embed(batch)
        p = self.params
        loss, _, _ = info_nce(v, u, p.temperature, image_weight=p.image_weight)
        return {"contrastive": loss}
