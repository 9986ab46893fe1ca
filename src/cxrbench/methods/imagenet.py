"""ImageNet initialisation — the "ImageNet init" row of the MGCA-protocol tables.

Nothing is trained: the backbone is loaded with torchvision's ImageNet-1k weights
(``backbone.weights: imagenet``) and exported. Without internet the weights must already be in
``$TORCH_HOME/hub/checkpoints`` (the error says which file), or be given as a local file with
``--set backbone.weights=/path/to/resnet50-0676ba61.pth``.
"""

from __future__ import annotations

from typing import Any

from cxrbench.errors import ConfigError
from cxrbench.methods import METHODS
from cxrbench.methods.base import PretrainMethod


@METHODS.register("imagenet")
class ImageNetInit(PretrainMethod):
    needs_text = False
    trains = False

    def __init__(self, params: Any, backbone: Any, text: Any, run: Any) -> None:
        super().__init__(params, backbone, text, run)
        if run.backbone.weights is None:
            raise ConfigError(None, "backbone.weights", "the imagenet row needs ImageNet weights")
