"""``biovil``: BioViL's and BioViL-T's released image models (``microsoft/hi-ml``), ResNet-50.

Written from ``hi-ml-multimodal/src/health_multimodal/image/model/``: ``ImageModel`` holds
``encoder`` (``ImageEncoder``), whose ``encoder`` is ``ResNetHIML``, torchvision's ResNet-50
with only ``forward`` changed (so torchvision's key names, ``fc`` included though unused), and
``projector`` (``MLP`` of 1×1 convs to the 128-d joint space); an optional ``classifier``.
BioViL-T's ``MultiImageModel`` has the same trunk under ``encoder.encoder`` plus a temporal
pooler (``encoder.backbone_to_vit``, ``encoder.vit_pooler``, ``encoder.missing_previous_emb``),
which pools the trunk's C5 over a current and a prior image: it is not part of a single-image
encoder and is ignored by rule. Both models read images with ``ToTensor`` and no ``Normalize``
(``data/transforms.py``): pixel values in [0, 1] on 3 replicated channels (mean 0, std 1), at
480 px (BioViL: resize 512, centre crop 480) or 448 px (BioViL-T). The artifact records the
statistics; the tasks keep the protocol's input size.
"""

from __future__ import annotations

from ._keymaps import has_keys, strip_prefix
from .base import NORMALIZATIONS, Ignore, ImportFormat, Layout, register

PREFIX = "encoder.encoder."

FORMAT = register(
    ImportFormat(
        name="biovil",
        description="BioViL / BioViL-T image model state dict (encoder.encoder.*): ResNet-50",
        layouts=(
            Layout(
                "resnet50",
                strip_prefix(PREFIX),
                has_keys(PREFIX + "layer1.0.conv3.weight"),
                (
                    Ignore("ImageNet classifier (unused)", (PREFIX + "fc.",)),
                    Ignore("image projector", ("projector.",)),
                    Ignore("downstream classifier", ("classifier.",)),
                    Ignore(
                        "temporal pooler (BioViL-T)",
                        (
                            "encoder.backbone_to_vit.",
                            "encoder.vit_pooler.",
                            "encoder.missing_previous_emb",
                        ),
                    ),
                ),
                normalization=dict(NORMALIZATIONS["unit"]),
                source="microsoft/hi-ml health_multimodal/image/model (ImageModel, ResNetHIML)",
            ),
        ),
    )
)
