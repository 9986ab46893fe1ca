"""``gloria``: GLoRIA's released Lightning checkpoints (``marshuang80/gloria``), ResNet-50.

Written from ``gloria/models/gloria_model.py`` and ``gloria/models/vision_model.py``: the
LightningModule holds ``gloria`` whose ``img_encoder`` (``ImageEncoder``) has ``model`` (torchvision
ResNet-50 with ``fc`` replaced by an identity), ``global_embedder`` (Linear) and
``local_embedder`` (1×1 conv), and whose ``text_encoder`` is the BERT tower. Its ResNet forward
resizes the input to 299 bilinearly with ``align_corners=True`` (``upsample_to=299``); the
pre-training config normalises with mean 0.5 / std 0.5 (``norm: 'half'``) on 224 px crops.
"""

from __future__ import annotations

from ._keymaps import has_keys, strip_prefix
from .base import Ignore, ImportFormat, Layout, register

PREFIX = "gloria.img_encoder.model."

FORMAT = register(
    ImportFormat(
        name="gloria",
        description="GLoRIA Lightning checkpoint (gloria.img_encoder.model.*): ResNet-50",
        layouts=(
            Layout(
                "resnet50",
                strip_prefix(PREFIX),
                has_keys(PREFIX + "layer1.0.conv3.weight"),
                (
                    Ignore(
                        "image projection heads",
                        (
                            "gloria.img_encoder.global_embedder.",
                            "gloria.img_encoder.local_embedder.",
                        ),
                    ),
                    Ignore("text tower", ("gloria.text_encoder.",)),
                ),
                options={"upsample_to": 299},
                source="marshuang80/gloria gloria/models/vision_model.py (ImageEncoder)",
            ),
        ),
    )
)
