"""Plain ``nn.Module`` building blocks: image backbones and the encoder artifact (contract 2)."""

from cxrbench.models.artifact import (
    ArtifactError,
    encoder_sha256,
    export_encoder,
    load_encoder,
    read_meta,
    verify_encoder,
)
from cxrbench.models.backbones import (
    BACKBONES,
    NORMALIZATION,
    Backbone,
    Features,
    build_backbone,
    freeze,
    unfreeze,
)

__all__ = [
    "BACKBONES",
    "NORMALIZATION",
    "ArtifactError",
    "Backbone",
    "Features",
    "build_backbone",
    "encoder_sha256",
    "export_encoder",
    "freeze",
    "load_encoder",
    "read_meta",
    "unfreeze",
    "verify_encoder",
]
