"""``chexzero``: CheXzero's released CLIP checkpoints (``rajpurkarlab/CheXzero``), ViT-B/32.

Written from CheXzero's ``model.py`` (OpenAI's CLIP) and ``train.py`` / ``zero_shot.py``:
``run_train.py`` saves ``model.state_dict()`` of the whole ``CLIP`` model, a plain state dict
(no conversion needed). Its image tower ``visual`` (``VisualTransformer``) holds ``conv1``
(patch 32, no bias), ``class_embedding`` (768,), ``positional_embedding`` (50, 768), ``ln_pre``,
``transformer.resblocks.i`` (``ln_1``, ``attn`` = ``nn.MultiheadAttention``, ``ln_2``, ``mlp``
with ``c_fc`` / QuickGELU / ``c_proj``), ``ln_post`` and the joint-space projection ``proj``;
the text tower sits at the top level (``transformer``, ``token_embedding``,
``positional_embedding``, ``ln_final``, ``text_projection``) beside ``logit_scale``. Images are
normalised with mean 101.48761 / std 83.43944 on 0–255 pixel values (0.39799 / 0.32721 on
[0, 1]) and resized to 224 (bicubic) when starting from OpenAI's weights, as every released
CheXzero model did.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from ._keymaps import has_keys, vit_keys
from .base import Ignore, ImportFormat, Layout, register

_TOP = {
    "conv1.weight": "conv_proj.weight",
    "class_embedding": "class_token",
    "positional_embedding": "encoder.pos_embedding",
    "ln_pre.weight": "ln_pre.weight",
    "ln_pre.bias": "ln_pre.bias",
    "ln_post.weight": "encoder.ln.weight",
    "ln_post.bias": "encoder.ln.bias",
}
VISUAL = "visual."  # the image tower's keys; _TOP and _BLOCK name them without it
_BLOCK = re.compile(r"transformer\.resblocks\.(\d+)\.(.+)$")
_INNER = {
    "ln_1": "ln_1",
    "attn.in_proj_weight": "self_attention.in_proj_weight",
    "attn.in_proj_bias": "self_attention.in_proj_bias",
    "attn.out_proj": "self_attention.out_proj",
    "ln_2": "ln_2",
    "mlp.c_fc": "mlp.0",
    "mlp.c_proj": "mlp.3",
}


#: a CLIP ``visual.*`` key → the ``clip_vit_b32`` backbone's key; ``None`` otherwise
clip_visual = vit_keys(VISUAL, _TOP, _BLOCK, _INNER)


def blocks(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """The image tower's depth, counted from its keys (12 in every released CheXzero model)."""
    tower = (k[len(VISUAL) :] for k in state if k.startswith(VISUAL))
    found = {int(m.group(1)) for k in tower if (m := _BLOCK.match(k))}
    return {"depth": max(found) + 1} if found else {}


FORMAT = register(
    ImportFormat(
        name="chexzero",
        description="CheXzero / OpenAI CLIP state dict (visual.*): CLIP ViT-B/32 image tower",
        layouts=(
            Layout(
                "clip_vit_b32",
                clip_visual,
                has_keys("visual.conv1.weight", "visual.class_embedding", "visual.ln_pre.weight"),
                (
                    Ignore("image projection (joint space)", ("visual.proj",)),
                    Ignore(
                        "text tower",
                        (
                            "transformer.",
                            "token_embedding.",
                            "positional_embedding",
                            "ln_final.",
                            "text_projection",
                        ),
                    ),
                    Ignore("temperature", ("logit_scale",)),
                ),
                normalization={"mean": [101.48761 / 255] * 3, "std": [83.43944 / 255] * 3},
                source="rajpurkarlab/CheXzero model.py (CLIP, VisualTransformer), train.py",
                unsqueeze=frozenset({"class_token", "encoder.pos_embedding"}),
                infer=blocks,
            ),
        ),
    )
)
