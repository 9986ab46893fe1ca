"""``mrm``: MRM's released pre-training checkpoint (``RL4M/MRM-pytorch``), ViT-B/16.

Written from ``model_mrm.py`` and ``main_pretrain.py``: the MAE-style model keeps the image
encoder at the top level in timm's layout (``patch_embed``, ``cls_token``, ``pos_embed`` (fixed
sin-cos), ``blocks``, ``norm``; LayerNorm eps 1e-6), beside the image decoder (``decoder_*``,
``mask_token``) and the report decoder (``bert_encoder``, ``bert_mlp``). The encoder sees 224 px
images normalised with mean 0.4978 / std 0.2449 on the replicated grey channel. Its checkpoints
(``misc.save_model``) pickle the argparse namespace: convert them first (the import's error gives
the line; the weights are under ``model``).
"""

from __future__ import annotations

from ._keymaps import has_keys, timm_vit
from .base import Ignore, ImportFormat, Layout, register

FORMAT = register(
    ImportFormat(
        name="mrm",
        description="MRM pre-training checkpoint (timm ViT-B/16 at the top level, MAE decoder)",
        layouts=(
            Layout(
                "vit_b16",
                timm_vit(""),
                has_keys("cls_token", "blocks.0.attn.qkv.weight", "decoder_embed.weight"),
                (
                    Ignore("image decoder (MAE)", ("decoder_", "mask_token")),
                    Ignore("report decoder (BERT)", ("bert_encoder.", "bert_mlp.")),
                ),
                normalization={"mean": [0.4978] * 3, "std": [0.2449] * 3},
                source="RL4M/MRM-pytorch model_mrm.py (MRM, mrm()), main_pretrain.py",
            ),
        ),
    )
)
