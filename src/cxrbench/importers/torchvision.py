"""``torchvision``: a plain torchvision state dict (``resnet50``, ``resnet18``, ``vit_b16``).

The keys are the backbone's own (``models/backbones.py`` keeps torchvision's names); the
classifier (``fc.*`` / ``heads.*``) is ignored by rule. This is also the format of a state dict
saved from any torchvision-layout encoder (e.g. ``torch.save(model.state_dict(), ...)``).
"""

from __future__ import annotations

from collections.abc import Callable

from ._keymaps import RESNET_TRUNK, both, has_keys, lacks_keys
from .base import Ignore, ImportFormat, Layout, register

_VIT = ("conv_proj.", "class_token", "encoder.")


def _keep(prefixes: tuple[str, ...]) -> Callable[[str], str | None]:
    return lambda key: key if key.startswith(prefixes) else None


FORMAT = register(
    ImportFormat(
        name="torchvision",
        description="plain torchvision state dict (ResNet-50/18, ViT-B/16)",
        layouts=(
            Layout(
                "resnet50",
                _keep(RESNET_TRUNK),
                has_keys("layer1.0.conv3.weight"),
                (Ignore("classifier head", ("fc.",)),),
                source="torchvision.models.resnet50",
            ),
            Layout(
                "resnet18",
                _keep(RESNET_TRUNK),
                both(has_keys("layer1.0.conv2.weight"), lacks_keys("layer1.0.conv3.weight")),
                (Ignore("classifier head", ("fc.",)),),
                source="torchvision.models.resnet18",
            ),
            Layout(
                "vit_b16",
                _keep(_VIT),
                has_keys("conv_proj.weight", "class_token"),
                (Ignore("classifier head", ("heads.",)),),
                source="torchvision.models.vit_b_16",
            ),
        ),
    )
)
