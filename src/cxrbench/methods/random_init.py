"""Random initialisation — the lower-bound row of every MGCA-protocol table.

Nothing is trained: the backbone is initialised (seeded by the pre-training seed) exactly as its
builder does, and exported as an artifact like any method, so it is evaluated by the same tasks.

For the zero-shot and retrieval tasks it is the chance control: its image–text space is the
untrained one every contrastive method starts from. When built with a text tower (only for the
vision–language export, ``models/vl_artifact.py``; pre-training reads no reports), it adds
ConVIRT's projection heads (MGCA's BN-MLP, 2048 → 128) with their initial weights, drawn after
the backbone's, so the image encoder is the same with or without them.
"""

from __future__ import annotations

from typing import Any

import torch

from cxrbench.methods import METHODS
from cxrbench.methods._heads import bn_mlp
from cxrbench.methods.base import PretrainMethod

HIDDEN_DIM, EMBED_DIM = 2048, 128  # ConVIRT's (MGCA re-implementation) projection sizes


@METHODS.register("random_init")
class RandomInit(PretrainMethod):
    needs_text = False
    trains = False
    vl_space = True

    def __init__(self, params: Any, backbone: Any, text: Any, run: Any) -> None:
        super().__init__(params, backbone, text, run)
        if text is not None:
            self.image_proj = bn_mlp(backbone.feature_dims["pooled"], HIDDEN_DIM, EMBED_DIM)
            self.text_proj = bn_mlp(text.hidden_size, HIDDEN_DIM, EMBED_DIM)

    def encode_images(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"global": self.global_image(self.image_proj, image)}

    def encode_texts(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return {"global": self.global_text(self.text_proj, texts)}
