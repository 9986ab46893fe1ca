"""``mgca``: MGCA's released Lightning checkpoints (``HKU-MedAI/MGCA``), ResNet-50 and ViT-B/16.

Written from ``mgca/models/mgca/mgca_module.py`` and ``mgca/models/backbones/encoder.py``: the
LightningModule holds ``img_encoder_q`` (``ImageEncoder``: ``model`` = torchvision ResNet-50 with
``fc`` replaced by an identity, or BLIP's timm-style ViT-B/16; ``global_embed`` / ``local_embed``
projection heads), ``text_encoder_q`` (the BERT tower and its heads), the two cross-attention
layers and ``prototype_layer``. Its ResNet forward resizes the 224 px input to 299 bilinearly with
``align_corners=True`` before ``conv1`` (``upsample_to=299`` here); images are normalised with
mean 0.5 / std 0.5. The released file pickles its hyper-parameters: convert it first (the
import's error gives the one-line ``torch.load``).
"""

from __future__ import annotations

from ._keymaps import has_keys, strip_prefix, timm_vit
from .base import Ignore, ImportFormat, Layout, register

PREFIX = "img_encoder_q.model."
IGNORE = (
    Ignore("image projection heads", ("img_encoder_q.global_embed.", "img_encoder_q.local_embed.")),
    Ignore("text tower", ("text_encoder_q.",)),
    Ignore("cross-attention layers", ("patch_local_atten_layer.", "word_local_atten_layer.")),
    Ignore("prototypes", ("prototype_layer.",)),
)

FORMAT = register(
    ImportFormat(
        name="mgca",
        description="MGCA Lightning checkpoint (img_encoder_q.model.*): ResNet-50 or ViT-B/16",
        layouts=(
            Layout(
                "resnet50",
                strip_prefix(PREFIX),
                has_keys(PREFIX + "layer1.0.conv3.weight"),
                IGNORE,
                options={"upsample_to": 299},
                source="HKU-MedAI/MGCA mgca/models/backbones/encoder.py (ImageEncoder, resnet_50)",
            ),
            Layout(
                "vit_b16",
                timm_vit(PREFIX),
                has_keys(PREFIX + "cls_token"),
                IGNORE,
                source="HKU-MedAI/MGCA mgca/models/backbones/vits.py (create_vit('base'))",
            ),
        ),
    )
)
