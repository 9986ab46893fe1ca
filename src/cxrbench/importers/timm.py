"""``timm``: a timm / DeiT / MAE ViT-B/16 state dict (``patch_embed``, ``cls_token``, ``blocks``).

The keys are renamed to torchvision's ViT (``_keymaps.timm_vit``); the classifier (``head.*``,
``fc_norm.*`` of fine-tuned MAE models) and an MAE decoder (``decoder_*``, ``mask_token``) are
ignored by rule. These models are trained on ImageNet statistics (recorded in the artifact; pass
``--normalization half`` for a checkpoint trained with mean / std 0.5).
"""

from __future__ import annotations

from ._keymaps import has_keys, timm_vit
from .base import NORMALIZATIONS, Ignore, ImportFormat, Layout, register

FORMAT = register(
    ImportFormat(
        name="timm",
        description="timm / DeiT / MAE ViT-B/16 state dict (patch_embed, cls_token, blocks.*)",
        layouts=(
            Layout(
                "vit_b16",
                timm_vit(""),
                has_keys("cls_token", "blocks.0.attn.qkv.weight"),
                (
                    Ignore("classifier head", ("head.", "fc_norm.")),
                    Ignore("image decoder (MAE)", ("decoder_", "mask_token")),
                ),
                normalization=dict(NORMALIZATIONS["imagenet"]),
                source="timm VisionTransformer (vit_base_patch16_224), DeiT, MAE",
            ),
        ),
    )
)
